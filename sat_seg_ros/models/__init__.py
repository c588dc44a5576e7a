"""Bundled models (``default/`` is the model used when none is given)."""
