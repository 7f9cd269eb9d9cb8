"""Benchmarks, run through ``sluice bench …`` and recorded in ``docs/benchmarks.md``."""
