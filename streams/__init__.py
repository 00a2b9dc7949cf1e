"""Faust stream processors: pairing responses into battles, ratings from verdicts."""
