"""Producers: put instructions (and other events) onto the topics."""
