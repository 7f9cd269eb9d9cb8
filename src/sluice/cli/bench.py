"""``sluice bench``: the benchmarks (results go to docs/benchmarks.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from sluice.cli.common import err, fail_with
from sluice.domain.errors import SluiceError

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (results go to docs/benchmarks.md).")


@bench_app.command("withdrawals")
def bench_withdrawals(
    record: Annotated[
        Path | None, typer.Option("--record", help="Append the figures to this Markdown file.")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A short run (smoke test).")] = False,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database to benchmark; it is EMPTIED first (default: scratch)."),
    ] = None,
) -> None:
    """Measure withdrawal throughput and coin selection on the embedded ledger."""
    from sluice.bench.withdrawals import bench_command

    bench_command(record, quick, db)


@bench_app.command("wire")
def bench_wire(
    updates: Annotated[int, typer.Option("--updates", min=100, help="Stream length.")] = 20_000,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=10)] = 2,
    record: Annotated[
        Path | None, typer.Option("--record", help="Append the figures to this Markdown file.")
    ] = None,
) -> None:
    """Ingestion over WebSocket / HTTP from `sluice ledger serve` against in process."""
    from sluice.bench.wire import bench_command

    with err.status(f"measuring ingestion of {updates} updates in process and over the wire"):
        result = bench_command(updates, rounds, record)
    sys.stdout.write(json.dumps(result) + "\n")


@bench_app.command("screening")
def bench_screening(
    list_dir: Annotated[Path, typer.Option("--list", help="Sanctions list directory.")] = Path(
        "../shared/reference/sanctions"
    ),
    prefix: Annotated[str, typer.Option("--prefix", help="OFAC file set to load.")] = "full-",
    count: Annotated[
        int, typer.Option("--count", min=100, help="Screenings in the timed stream.")
    ] = 20_000,
    seed: Annotated[int | None, typer.Option("--seed", help="Labelled set seed.")] = None,
    record: Annotated[
        Path | None, typer.Option(help="Write the figures to this Markdown file.")
    ] = None,
) -> None:
    """Screenings per second and p99 on one core against the full list, and precision / recall
    at the default threshold on a labelled set of listed-name variations and unlisted names."""
    from sluice.bench.screening import DEFAULT_SEED, bench_command

    try:
        with err.status(f"loading {list_dir} ({prefix}*) and screening…"):
            bench_command(
                list_dir,
                prefix=prefix,
                count=count,
                seed=DEFAULT_SEED if seed is None else seed,
                record=record,
            )
    except SluiceError as exc:
        fail_with(exc)


@bench_app.command("api")
def bench_api(
    db: Annotated[
        str, typer.Option("--db", help="Database to serve from; it is EMPTIED first.")
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/sluice_bench_api",
    clients: Annotated[
        int, typer.Option("--clients", min=1, max=500, help="Concurrent clients.")
    ] = 50,
    duration: Annotated[
        float, typer.Option("--duration", min=1.0, max=600.0, help="Seconds per run.")
    ] = 10.0,
    warmup: Annotated[
        float, typer.Option("--warmup", min=0.0, max=60.0, help="Seconds of warm-up per run.")
    ] = 2.0,
    paced_rate: Annotated[
        float,
        typer.Option("--paced-rate", min=0.0, help="Balance reads/s of the paced run (0: none)."),
    ] = 1_000.0,
    workers: Annotated[
        list[int] | None,
        typer.Option("--workers", min=1, max=16, help="uvicorn worker processes (repeatable)."),
    ] = None,
    tool: Annotated[
        str,
        typer.Option("--tool", help="Load generator: auto (wrk if it can be had), wrk, python."),
    ] = "auto",
    record: Annotated[
        Path | None, typer.Option("--record", help="Write the figures to this Markdown file.")
    ] = None,
) -> None:
    """Balance reads and withdrawal requests per second and their p50 / p99 over HTTP, with
    concurrent clients against uvicorn, next to GET /health as the baseline."""
    from sluice.bench.api import WORKER_COUNTS, ApiBenchSettings, bench_command

    if tool not in ("auto", "wrk", "python"):
        raise typer.BadParameter("one of auto, wrk, python", param_hint="--tool")
    settings = ApiBenchSettings(
        url=db,
        clients=clients,
        duration_s=duration,
        warmup_s=warmup,
        paced_rate=paced_rate or None,
        worker_counts=tuple(workers or WORKER_COUNTS),
        tool=tool,
    )
    # No spinner: its refresh thread would share the GIL with the paced load generator.
    err.print(f"measuring the HTTP API with {clients} clients against {db}…")
    bench_command(settings, record)


@bench_app.command("ingest")
def bench_ingest(
    updates: Annotated[int, typer.Option("--updates", min=100, help="Stream length.")] = 100_000,
    db: Annotated[
        str, typer.Option("--db", help="Database to benchmark; it is EMPTIED first.")
    ] = "sqlite:///data/bench/bench.db",
    live_updates: Annotated[
        int, typer.Option(help="How many updates to replay one per DB transaction.")
    ] = 2_000,
    stream: Annotated[
        Path | None, typer.Option(help="Reuse (or keep) the generated stream at this path.")
    ] = None,
    record: Annotated[
        Path | None, typer.Option(help="Append the figures to this Markdown file.")
    ] = None,
) -> None:
    """Generate a realistic treasury stream, then measure replaying it into the database."""
    from sluice.bench.measure import measure_in_child
    from sluice.bench.record import append_result
    from sluice.bench.stream import generate

    path = stream or Path("data/bench") / f"stream-{updates}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    setup_file = path.with_suffix(".setup.json")
    if not (path.exists() and setup_file.exists()):
        with err.status(f"generating {updates} updates with the embedded ledger → {path}"):
            generate(path, updates)
    with err.status(f"measuring replay of {path} into {db}"):
        result = measure_in_child(path, db, live_updates)
    result["db"] = db.split("://", 1)[0]
    sys.stdout.write(json.dumps(result) + "\n")
    if record is not None:
        append_result(record, result, command=" ".join(["sluice", *sys.argv[1:]]))


@bench_app.command("compliance")
def bench_compliance(
    sqlite: Annotated[
        str, typer.Option("--sqlite", help="SQLite database to benchmark; it is EMPTIED first.")
    ] = "sqlite:///data/bench/compliance.db",
    postgresql: Annotated[
        str, typer.Option("--postgresql", help="PostgreSQL database; it is EMPTIED first.")
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/sluice_bench_compliance",
    engines: Annotated[
        str, typer.Option("--engines", help="Which to run: sqlite, postgresql or both.")
    ] = "both",
    requests: Annotated[
        int, typer.Option("--requests", min=1, max=10_000, help="Timed requests per history.")
    ] = 200,
    record: Annotated[
        Path | None, typer.Option("--record", help="Append the figures to this Markdown file.")
    ] = None,
) -> None:
    """A withdrawal request's time for customers with 10, 1,000 and 10,000 earlier operations
    this month (one JSON line per engine; target: p50 ratio 10,000 : 10 ≤ 1.3)."""
    from sluice.bench.compliance import bench_command

    urls = {"sqlite": [sqlite], "postgresql": [postgresql], "both": [sqlite, postgresql]}
    if engines not in urls:
        raise typer.BadParameter(
            f"sqlite, postgresql or both, not {engines!r}", param_hint="--engines"
        )
    with err.status("measuring withdrawal requests against customers' histories"):
        bench_command(urls[engines], requests=requests, record=record)


@bench_app.command("bitcoin")
def bench_bitcoin(
    blocks: Annotated[int, typer.Option("--blocks", min=1, help="Blocks measured.")] = 50,
    outputs: Annotated[
        int, typer.Option("--outputs", min=2, max=2_000, help="Outputs paid per block.")
    ] = 1_000,
    custody: Annotated[
        int, typer.Option("--custody", min=1, help="Of those, to customers' deposit addresses.")
    ] = 20,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, max=20, help="Alternating raw / watcher passes.")
    ] = 5,
    sign_runs: Annotated[
        int, typer.Option("--sign-runs", min=1, help="Payouts signed per input count.")
    ] = 9,
    node: Annotated[
        str,
        typer.Option(
            "--node", help="auto (litecoind if on the PATH, else in-memory), litecoind, in-memory."
        ),
    ] = "auto",
    rpc_url: Annotated[
        str | None,
        typer.Option(
            "--rpc-url",
            help="A running regtest node (http://user:password@host:port/) whose wallet pays.",
        ),
    ] = None,
    network: Annotated[
        str, typer.Option("--network", help="The node's chain (custody addresses' network).")
    ] = "litecoin-regtest",
    record: Annotated[
        Path | None, typer.Option("--record", help="Append the figures to this Markdown file.")
    ] = None,
) -> None:
    """The deposit watcher's blocks/s against the node's raw getblock (verbosity 2) rate over
    the same regtest blocks of many outputs, and 2-of-3 signing of payouts of 1, 10 and 100
    inputs (targets: ratio ≥ 0.5; 100 inputs signed in < 500 ms)."""
    import logging

    import structlog

    from sluice.bench.bitcoin import BitcoinBenchSettings, bench_command
    from sluice.domain.chains import CHAINS

    if node not in ("auto", "litecoind", "in-memory"):
        raise typer.BadParameter("one of auto, litecoind, in-memory", param_hint="--node")
    if network not in CHAINS:
        raise typer.BadParameter(f"one of {', '.join(sorted(CHAINS))}", param_hint="--network")
    if custody > outputs:
        raise typer.BadParameter("at most --outputs", param_hint="--custody")
    # stdout carries the JSON line alone: the watcher's log lines go to stderr, warnings only.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    settings = BitcoinBenchSettings(
        blocks=blocks,
        outputs_per_block=outputs,
        custody_per_block=custody,
        customers=max(200, custody),
        rounds=rounds,
        sign_runs=sign_runs,
        node=node,
        rpc_url=rpc_url,
        network=network,
    )
    with err.status("measuring the deposit watcher and custody signing") as status:
        bench_command(settings, record, progress=lambda text: status.update(text))


@bench_app.command("por")
def bench_por(
    sizes: Annotated[
        str, typer.Option("--sizes", help="Leaf counts, comma-separated (one child process each).")
    ] = "1000000,10000000",
    record: Annotated[
        Path | None, typer.Option("--record", help="Append the figures to this Markdown file.")
    ] = None,
) -> None:
    """The proof-of-liabilities tree: build time and peak RSS per size, proofs generated and
    verified per second on one core (targets: 1M < 2 s; 10M < 25 s and < 3 GB; ≥ 50,000
    verifications/s)."""
    from sluice.bench.por import bench_command

    try:
        counts = [int(part) for part in sizes.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter("comma-separated integers", param_hint="--sizes") from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("at least one size, each ≥ 1", param_hint="--sizes")
    with err.status(f"building Merkle-sum trees of {', '.join(f'{n:,}' for n in counts)} leaves"):
        bench_command(counts, record)


@bench_app.command("events")
def bench_events(
    events: Annotated[
        int, typer.Option("--events", min=10, help="Committed outbox rows published per run.")
    ] = 100_000,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Database to benchmark; it is EMPTIED first (default: a fresh SQLite file in a "
            "temporary directory; PostgreSQL e.g. "
            "postgresql+psycopg://postgres@127.0.0.1:5432/sluice_bench_events).",
        ),
    ] = None,
    nats_url: Annotated[
        str, typer.Option("--nats-url", help="NATS server with JetStream.")
    ] = "nats://127.0.0.1:4222",
    stream: Annotated[
        str | None,
        typer.Option(
            "--stream", help="Bench-only stream (deleted after; default: a new SLUICE_BENCH_ name)."
        ),
    ] = None,
    in_flight: Annotated[
        int | None,
        typer.Option(
            "--in-flight",
            min=1,
            help="Acks in flight (default: the events section's max_in_flight).",
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch", min=1, help="Rows claimed per round (default: the events section's batch)."
        ),
    ] = None,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, max=10, help="Alternating bare / relay pairs.")
    ] = 2,
    record: Annotated[
        Path | None, typer.Option("--record", help="Append the figures to this Markdown file.")
    ] = None,
) -> None:
    """Events/s from committed outbox rows to JetStream acks through the relay, against bare
    nats-py publishing the same envelopes to the same kind of stream in the same run (targets:
    ≥ 10,000 events/s; ratio ≥ 0.5)."""
    import logging

    import structlog

    from sluice.bench.events import EventsBenchSettings, bench_command

    defaults = EventsBenchSettings()
    settings = EventsBenchSettings(
        events=events,
        db=db,
        nats_url=nats_url,
        stream=stream or "",
        rounds=rounds,
        max_in_flight=in_flight or defaults.max_in_flight,
        batch=batch or defaults.batch,
    )
    # stdout carries the JSON line alone: the relay's log lines go to stderr, warnings only.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        with err.status(f"publishing {events:,} events: bare nats-py and the relay, alternately"):
            bench_command(settings, record)
    except SluiceError as exc:
        fail_with(exc)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
