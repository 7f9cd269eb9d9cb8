"""The HTTP API (FastAPI): customers, exchange systems and administrators reach sluice here.

:func:`sluice.api.app.create_app` builds the application around an :class:`ApiContext`; `sluice
serve` (``sluice.server``) builds the context from the configuration and runs it with the workers
and ingestion.
"""
