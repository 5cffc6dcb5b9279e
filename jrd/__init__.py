"""jrd, the Jupyter remote daemon."""

__version__ = "0.1.0"
