"""The version of mcsim (a foundation: it imports nothing, so the runner reads it without importing
the package's public face)."""

__version__ = "0.1.0"
