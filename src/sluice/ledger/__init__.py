"""Adapters for the token ledger: ``local`` (the embedded reference ledger) and, later, ``canton``.

Both hand updates to the services in the JSON Ledger API v2 shape (see :mod:`sluice.ports`).
"""
