"""The HTTP API benchmark's defaults and bounds (see :mod:`sluice.bench.api`)."""

from __future__ import annotations

from decimal import Decimal

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/sluice_bench_api"
CLIENTS = 50
DURATION_S = 10.0
WARMUP_S = 2.0
PACED_RATE = 1_000.0
WORKER_COUNTS = (1, 2)
TIER = 4
DEPOSIT = Decimal(5_000)  # per customer: 500,000 withdrawals of 0.01 before a balance runs dry
WITHDRAWAL_AMOUNT = "0.01"
READS_PER_S_TARGET = 1_000.0
READ_P99_TARGET_MS = 50.0
ACTOR = "sluice bench api"
SCENARIOS = ("health", "balance", "withdrawal")

# Rate limits far above anything the benchmark sends: they are not what is measured.
RATE_LIMITS_OFF: dict[str, object] = {
    "rate_limits.key_per_s": 1_000_000.0,
    "rate_limits.key_burst": 1_000_000,
    "rate_limits.global_per_s": 10_000_000.0,
    "rate_limits.global_burst": 10_000_000,
}

SERVER_START_S = 60.0
LISTEN_BACKLOG = 2048  # as sluice serve listens
SERVER_STOP_S = 30.0
REQUEST_TIMEOUT_S = 30.0
DRAIN_S = 60.0  # how long a paced run may overrun its duration before it stops sending
WRK_SLACK_S = 120.0  # wrk's own time limit beyond the run's duration
INSTALL_S = 300.0
LATENCIES_MAX = 2_000_000  # bound on the latencies one Python run keeps
