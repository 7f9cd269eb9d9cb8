"""sluice: moves value between an exchange's books and the ledgers it touches, under control."""

__version__ = "0.1.0"
