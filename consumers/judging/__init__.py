"""Judge helpers: parsing of dual-score judge text (more to come: templates, policies, reference judge)."""
