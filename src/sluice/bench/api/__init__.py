"""Measuring the HTTP API under load: a balance read and a withdrawal request, next to a baseline.

What is measured, in one run (``sluice bench api``):

* **The exchange.** An emptied database (PostgreSQL by default; created when missing) holding a
  :class:`~sluice.sandbox.Sandbox` world with ``clients`` customers (50), each raised to KYC tier 4
  (the risk rules are off in the sandbox's registry), each credited by a real deposit that
  ingestion booked, and one ``user`` API key per customer. The embedded ledger is closed once the
  deposits are ingested: the API needs only the database, so no worker runs and withdrawals stay
  ``reserved`` (while the treasury's holdings last) or ``queued`` — either way a request has done
  its whole path: authentication, rate limits, the pause check, the customer's lock, the KYC
  decision, the debit, the record and its audit entries, committed.
* **The server.** uvicorn serving the real application (:func:`sluice.api.app.create_app`) on
  127.0.0.1 in spawned processes — 1 (what ``sluice serve`` runs), then 2, each with its own
  listening socket on the same port (see :func:`api_server`) — configured as ``sluice serve``
  has it:
  uvicorn's default HTTP and event loop implementations (:func:`server_stack` names them), sluice's
  own access log line per request to stderr (here a file in the scratch folder)
  instead of uvicorn's, the production caches of API keys (5 s) and runtime settings (1 s), the
  default thread pool (40) and connection pool (10 + 10), and the application's lifespan, which
  opens the asyncio read pool (2–10 connections) that answers balance reads on the event loop.
  Each process builds its own context and engine (:func:`serve`); the context's clock is the
  system clock, and the rate limits are raised so that they never refuse the benchmark. Each
  process count starts from a freshly built exchange. The load generator runs on the same
  machine, and so does PostgreSQL: the figures are those of the whole machine, which the report
  names.
* **The load.** ``clients`` concurrent clients, each with its own keep-alive connection, customer
  and key, in a closed loop (a client sends its next request when the previous one is answered)
  for ``duration_s`` after ``warmup_s`` of the same load, for three requests:
  ``GET /health`` (the **baseline**: the framework, no credentials, no database),
  ``GET /v1/customers/{id}/balances``, and ``POST /v1/customers/{id}/withdrawals`` of 0.01 CC
  with a new ``Idempotency-Key`` every time. The load generator is ``wrk`` when it is installed
  (installed with apt-get when missing and possible) with one thread per connection and a
  generated Lua script that gives each connection its client; else the Python generator below.
  The report says which one ran. (wrk, not wrk2: it cannot pace, hence the Python generator
  for the paced run.)
* **Paced reads.** A closed loop measures the most the server does; latency at a given rate is
  another question. The balance read is also sent open-loop at ``paced_rate`` (1,000/s) by the
  Python generator: client *i*'s *n*-th request is due at ``t0 + (n·clients + i) / rate``, and
  its latency runs from that due time (a late answer delays the next request of the same client,
  and that wait counts: no coordinated omission).

**Counting.** Every figure is counted from answers: ``ok`` is the 2xx answers, ``failed`` every
other status, and ``requests/s`` is ``ok`` per second of the run — a refused request is an error,
never throughput. Latencies (p50, p99, max) are over all answers. ``wrk`` counts through the Lua
``response`` hook, the Python generator per answer.

**Checked after each worker count.** Every withdrawal request has a unique idempotency key
``<run>-<client>-<n>``; the generators record which keys were answered with an error and which
were never answered: still in flight when wrk stopped, lost with a connection, or (one per wrk
run) made by wrk to verify the script and never sent. Those are sent again with the same key
(answered 200 if the first one was booked, 201 if it never arrived), then the withdrawal records
in the database must be exactly the keys answered 2xx — none missing, none extra, none twice —
and the books invariant (:func:`sluice.services.books.check_invariant`) must hold.

**Targets** (issue 6): ≥ 1,000 balance reads/s with p99 < 50 ms. Met when some worker count
serves ≥ 1,000 reads/s in the closed loop without errors and, where the paced run was made,
answers the paced reads at 1,000/s with p99 < 50 ms (else the closed loop's p99 is what is
judged). Each row of the recorded table is judged for its own worker count.

The parts: :mod:`.settings` (defaults and bounds), :mod:`.exchange` (the exchange and the API
server processes), :mod:`.load` (the requests and what a run returns), :mod:`.python_generator`
and :mod:`.wrk` (the two load generators), :mod:`.benchmark` (every run and the withdrawal check)
and :mod:`.report` (recording, and the command).
"""

from __future__ import annotations

from .benchmark import (
    ApiBenchReport,
    ApiBenchSettings,
    WithdrawalCheck,
    WorkersResult,
    check_withdrawals,
    choose_tool,
    measure,
    measure_workers,
    resend,
)
from .exchange import (
    Client,
    Exchange,
    api_context,
    api_server,
    listening_sockets,
    prepare_exchange,
    serve,
    server_stack,
)
from .load import ClientTally, LoadRun, RawRun, Request, idempotency_key, load_run, requests_for
from .python_generator import HttpConnection, python_run
from .report import HEADER, SECTION, bench_command, record_api_report
from .settings import (
    ACTOR,
    CLIENTS,
    DEFAULT_DB,
    DEPOSIT,
    DRAIN_S,
    DURATION_S,
    INSTALL_S,
    LATENCIES_MAX,
    LISTEN_BACKLOG,
    PACED_RATE,
    RATE_LIMITS_OFF,
    READ_P99_TARGET_MS,
    READS_PER_S_TARGET,
    REQUEST_TIMEOUT_S,
    SCENARIOS,
    SERVER_START_S,
    SERVER_STOP_S,
    TIER,
    WARMUP_S,
    WITHDRAWAL_AMOUNT,
    WORKER_COUNTS,
    WRK_SLACK_S,
)
from .wrk import LUA_TEMPLATE, install_wrk, wrk_run, wrk_script, wrk_version

__all__ = [
    "ACTOR",
    "CLIENTS",
    "DEFAULT_DB",
    "DEPOSIT",
    "DRAIN_S",
    "DURATION_S",
    "HEADER",
    "INSTALL_S",
    "LATENCIES_MAX",
    "LISTEN_BACKLOG",
    "LUA_TEMPLATE",
    "PACED_RATE",
    "RATE_LIMITS_OFF",
    "READS_PER_S_TARGET",
    "READ_P99_TARGET_MS",
    "REQUEST_TIMEOUT_S",
    "SCENARIOS",
    "SECTION",
    "SERVER_START_S",
    "SERVER_STOP_S",
    "TIER",
    "WARMUP_S",
    "WITHDRAWAL_AMOUNT",
    "WORKER_COUNTS",
    "WRK_SLACK_S",
    "ApiBenchReport",
    "ApiBenchSettings",
    "Client",
    "ClientTally",
    "Exchange",
    "HttpConnection",
    "LoadRun",
    "RawRun",
    "Request",
    "WithdrawalCheck",
    "WorkersResult",
    "api_context",
    "api_server",
    "bench_command",
    "check_withdrawals",
    "choose_tool",
    "idempotency_key",
    "install_wrk",
    "listening_sockets",
    "load_run",
    "measure",
    "measure_workers",
    "prepare_exchange",
    "python_run",
    "record_api_report",
    "requests_for",
    "resend",
    "serve",
    "server_stack",
    "wrk_run",
    "wrk_script",
    "wrk_version",
]
