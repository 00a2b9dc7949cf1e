"""Consumers: generation pools, judge pools and the SQL ledger."""
