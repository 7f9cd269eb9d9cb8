"""The simulation's entry points: ``sluice sim`` (one seed, its line) and ``python -m sluice.sim``
(many seeds, in several processes if asked, and a summary line)."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from sluice.sim.scenario import run_simulation
from sluice.sim.state import SimulationResult

# Counted in the summary when late commits are on: injected, then delivered (committed or
# rejected because an input was spent meanwhile), and the fences the worker sent.
LATE_COMMIT_OUTCOMES = (
    "fault_late_commit",
    "late_commit_committed",
    "late_commit_rejected",
    "worker_fenced",
)
# What the Bitcoin and iSTSi actors did, summed over the seeds (every summary has them): Bitcoin
# deposits confirmed and reorged away, issuance operations completed, held, stuck, redemptions
# asked, payouts completed, and the crashes of the watcher and the router.
ISSUANCE_OUTCOMES = (
    "btc_confirmed",
    "btc_watch_reorgs",
    "btc_batches_reorged",
    "btc_payouts_completed",
    "istsi_deposit",
    "istsi_completed",
    "istsi_held",
    "istsi_stuck",
    "istsi_redeem_asked",
    "istsi_transfer_approved",
    "istsi_transfer_rejected",
)
ISSUANCE_CRASH_PREFIXES = ("crash_istsi_", "crash_btc_")


def simulate_command(
    seed: int,
    steps: int,
    crash_rate: float = 0.05,
    fault_rate: float = 0.05,
    db_url: str | None = None,
    via_http: bool = False,
    late_commit_rate: float = 0.0,
) -> int:
    """``sluice sim``: run one simulation, print its JSON line; the exit code (1 on any
    violation)."""
    result = run_simulation(
        seed,
        steps,
        crash_rate=crash_rate,
        fault_rate=fault_rate,
        db_url=db_url,
        via_http=via_http,
        late_commit_rate=late_commit_rate,
    )
    print(result.as_json_line())
    return 0 if result.ok else 1


def _parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if last:
            seeds.extend(range(int(first), int(last) + 1))
        else:
            seeds.append(int(first))
    return seeds


def _run_one(
    arguments: tuple[int, int, float, float, str | None, bool, float],
) -> SimulationResult:
    seed, steps, crash_rate, fault_rate, db_url, via_http, late_commit_rate = arguments
    return run_simulation(
        seed,
        steps,
        crash_rate=crash_rate,
        fault_rate=fault_rate,
        db_url=db_url,
        via_http=via_http,
        late_commit_rate=late_commit_rate,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m sluice.sim --seeds 1-500 --steps 400``: many seeds; prints the line of every
    seed with violations, then a summary line; exit code 1 if any seed had one."""
    parser = argparse.ArgumentParser(prog="python -m sluice.sim", description=main.__doc__)
    parser.add_argument("--seeds", default="1", help="e.g. 7, 1-500 or 1-10,42")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--crash-rate", type=float, default=0.05)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--db", default=None, help="a database URL (emptied first); one job only")
    parser.add_argument("--jobs", type=int, default=1, help="processes running seeds")
    parser.add_argument(
        "--via-http",
        action="store_true",
        help="the exchange talks to the ledger through the Canton client over a local server",
    )
    parser.add_argument(
        "--late-commit-rate",
        type=float,
        default=0.0,
        help="share of the faults that are a late commit of the treasury's next command "
        "(0: none, and the other faults draw as without it)",
    )
    options = parser.parse_args(argv)
    seeds = _parse_seeds(options.seeds)
    jobs = 1 if options.db else max(1, options.jobs)
    work = [
        (
            seed,
            options.steps,
            options.crash_rate,
            options.fault_rate,
            options.db,
            options.via_http,
            options.late_commit_rate,
        )
        for seed in seeds
    ]
    started = time.perf_counter()
    failed: list[int] = []
    totals: Counter[str] = Counter()

    def absorb(result: SimulationResult) -> None:
        totals.update(
            deposits=result.deposits,
            withdrawals=result.withdrawals,
            crashes=result.crashes,
            faults=result.faults,
        )
        totals.update({name: result.outcomes[name] for name in LATE_COMMIT_OUTCOMES})
        totals.update({name: result.outcomes[name] for name in ISSUANCE_OUTCOMES})
        totals["issuance_crashes"] += sum(
            count
            for name, count in result.outcomes.items()
            if name.startswith(ISSUANCE_CRASH_PREFIXES)
        )
        if not result.ok:
            failed.append(result.seed)
            print(result.as_json_line(), flush=True)

    if jobs == 1:
        for item in work:
            absorb(_run_one(item))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for result in pool.map(_run_one, work, chunksize=8):
                absorb(result)
    summary = {
        "seeds": len(seeds),
        "steps": options.steps,
        **{name: totals[name] for name in ("deposits", "withdrawals", "crashes", "faults")},
        **(
            {name: totals[name] for name in LATE_COMMIT_OUTCOMES}
            if options.late_commit_rate
            else {}
        ),
        "issuance": {name: totals[name] for name in (*ISSUANCE_OUTCOMES, "issuance_crashes")},
        "failed": failed,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 1 if failed else 0
