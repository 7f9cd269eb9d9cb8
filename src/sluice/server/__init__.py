"""``sluice serve``: the HTTP API, the workers and ingestion in one process.

With no configuration at all it runs on the embedded defaults: an SQLite Integration DB and an
embedded ledger file under the data directory. On the first start the ledger file is created with
the sandbox's small world (:func:`prepare_embedded_world`); later starts reuse it. With a
configuration file it runs against the deployment's database and ledger (a Canton participant or
a named embedded ledger file).

Threads and what they touch
---------------------------
The API (uvicorn's event loop and its worker threads) only uses the Integration DB. Everything that
touches the ledger runs on one background thread, the :class:`ServiceLoop`: each round it moves the
embedded ledger's clock to the wall clock (embedded only), ingests up to the ledger end, runs one
tick of the withdrawal worker and one of the deposit worker, flushes the embedded ledger, and
executes operations left approved by a crash. One thread because an embedded ledger file has
exactly one writer; against a participant node the same loop is simply the process's worker.

Ingestion has one writer per (treasury party, node) across processes: the ingestion part holds
the pair's writer lock (an advisory lock on PostgreSQL, a lock file next to an SQLite file). In
a second ``sluice serve`` for the same pair the API and the workers run as usual, while its
ingestion part tries the lock without waiting each round (:class:`IngestionStandby`) and ingests
only once the writer is gone. The lock is taken in the first round and kept until shutdown.

Shutting down
-------------
SIGTERM or Ctrl-C stops the HTTP server first (requests in progress finish, for a bounded time),
then asks the loop to stop: the round in progress finishes — a worker finishes or records what it
claimed, and every record a withdrawal worker claimed is either submitted and recorded, or left in
its previous state for the next worker — then the embedded ledger is flushed and closed and the DB
disposed. A second signal cuts the HTTP server's graceful wait short.
"""

from sluice.server.loop import (
    ROUND_TRANSACTIONS_MAX,
    IngestionStandby,
    Outcome,
    Part,
    PartStatus,
    ServiceLoop,
    deposit_part,
    ingestion_part,
    pause_reason,
    withdrawal_part,
)
from sluice.server.serving import (
    FIRST_KEY_HINT,
    bind,
    configure_logging,
    serve,
    url_of,
)
from sluice.server.wiring import (
    Service,
    approvals_part,
    build_service,
)
from sluice.server.world import (
    CLOCK_STEP_S,
    TREASURY_KEY,
    WORLD_CHECKPOINT_INTERVAL_S,
    WORLD_SEED,
    EmbeddedWorld,
    FollowedClock,
    prepare_embedded_world,
)

__all__ = [
    "CLOCK_STEP_S",
    "FIRST_KEY_HINT",
    "ROUND_TRANSACTIONS_MAX",
    "TREASURY_KEY",
    "WORLD_CHECKPOINT_INTERVAL_S",
    "WORLD_SEED",
    "EmbeddedWorld",
    "FollowedClock",
    "IngestionStandby",
    "Outcome",
    "Part",
    "PartStatus",
    "Service",
    "ServiceLoop",
    "approvals_part",
    "bind",
    "build_service",
    "configure_logging",
    "deposit_part",
    "ingestion_part",
    "pause_reason",
    "prepare_embedded_world",
    "serve",
    "url_of",
    "withdrawal_part",
]
