"""tokend: an asynchronous, event-driven JWT token service."""

__version__ = "0.1.0"
