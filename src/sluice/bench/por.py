"""Measuring the proof-of-liabilities Merkle-sum tree: build time and peak memory at 1M and 10M
customers, proofs generated and verified per second on one core.

**Per size, a fresh process.** Each size runs in its own child (``python -m sluice.bench.por``)
so that its peak RSS is its own: the inputs (a list of customer ids and one of balances, as the
snapshot hands them to the tree) and the tree. The build hashes on every core the process may
use (``threads`` in the JSON line); then the child pins itself to one core, so the proof and
verification rates are one core's. Customer ids are 25 characters
(``customer-000001234-a1b2c3``); balances are random integers below 10^16 units (a million
tokens at 10 decimals), from a fixed seed.

**The figures** (one JSON line per size):

* ``build_s``: :func:`~sluice.por.tree.build_tree` from those lists to a built tree (nonces,
  uids, leaves, the order by uid, every level); ``inputs_rss_mb`` is the RSS before it, and
  ``peak_rss_mb`` the child's peak (``VmHWM``), the inputs included;
* ``proofs_per_s``: proofs of random customers, each to its JSON-ready shape
  (``Proof.as_json()``: hex hashes and decimal strings), from the built tree;
* ``verifications_per_s``: :func:`~sluice.por.verify.verify_proof` of distinct proofs already
  parsed (``Proof.from_json`` of the JSON shape, done before the clock starts) against the root
  in a loop: every hash of the path recomputed and every check made; reading and parsing the
  files is not counted.

``implementation`` says which builder and path hashing ran (the C extension, or pure Python when
it is not built). Targets (issue 17): 1M leaves built in under 2 s; 10M in under 25 s and under
3 GB peak RSS; ≥ 50,000 verifications/s on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sluice.bench.record import insert_table_row, machine

SECTION = "## Proof of liabilities (`sluice bench por`)"
HEADER = (
    "| date | machine | implementation | leaves | depth | build s | inputs RSS MB "
    "| peak RSS MB | proofs/s | verifications/s (one core) | targets | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)
DEFAULT_SIZES = (1_000_000, 10_000_000)
SECRET = b"sluice bench por: not a real secret"
SNAPSHOT_ID = "bench-snapshot-1"
INSTRUMENT = "Amulet@DSO::1220bench"
DECIMALS = 10
SAMPLE_PROOFS = 20_000
BUILD_TARGET_S = {1_000_000: 2.0, 10_000_000: 25.0}
RSS_TARGET_MB = {10_000_000: 3072.0}
VERIFICATIONS_TARGET = 50_000


def customers(count: int, seed: int = 17) -> tuple[list[str], list[int]]:
    """``count`` distinct customer ids and their balances in units, from a fixed seed."""
    rng = random.Random(seed)
    ids = [f"customer-{i:09d}-{rng.getrandbits(24):06x}" for i in range(count)]
    units = [rng.randrange(10**16) for _ in range(count)]
    return ids, units


def _pin_to_one_core() -> None:
    setter = getattr(os, "sched_setaffinity", None)
    if setter is not None:
        setter(0, {min(os.sched_getaffinity(0))})


def _status_mb(field: str) -> float | None:
    """A memory figure of this process from /proc/self/status (Linux), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM first: ``ru_maxrss`` survives ``exec`` on Linux, so in a
    child it can report the parent's larger peak from before the child's own program ran."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(leaves: int, *, sample: int = SAMPLE_PROOFS) -> dict[str, Any]:
    """Measure one size in this process (the child's work)."""
    from sluice.por.documents import Proof
    from sluice.por.tree import IMPLEMENTATION, NATIVE, build_tree
    from sluice.por.verify import verify_proof

    # the C extension hashes on as many threads as the cores it may run on, at most 8
    threads = min(len(os.sched_getaffinity(0)), 8) if NATIVE else 1
    ids, units = customers(leaves)
    inputs_rss_mb = _status_mb("VmRSS") or 0.0
    started = time.perf_counter()
    tree = build_tree(SECRET, SNAPSHOT_ID, INSTRUMENT, ids, units, decimals=DECIMALS)
    build_s = time.perf_counter() - started
    root = tree.root(datetime.now(UTC))
    _pin_to_one_core()  # the build may use every core; proofs and verifications get one
    rng = random.Random(leaves)
    positions = [rng.randrange(leaves) for _ in range(min(sample, leaves))]
    started = time.perf_counter()
    documents = [tree.proof_at(position).as_json() for position in positions]
    proofs_s = time.perf_counter() - started
    proofs = [Proof.from_json(document) for document in documents]
    started = time.perf_counter()
    valid = sum(1 for proof in proofs if verify_proof(proof, root).valid)
    verify_s = time.perf_counter() - started
    if valid != len(proofs):
        raise AssertionError(f"{len(proofs) - valid} of {len(proofs)} proofs did not verify")
    return {
        "leaves": leaves,
        "depth": root.depth,
        "implementation": IMPLEMENTATION,
        "threads": threads,
        "build_s": round(build_s, 3),
        "inputs_rss_mb": round(inputs_rss_mb, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "proofs_per_s": round(len(documents) / proofs_s),
        "verifications_per_s": round(len(proofs) / verify_s),
        "verifications": "parsed Proof objects against the parsed Root, one core",
        "root_hash": root.root_hash.hex(),
    }


def measure_in_child(leaves: int) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter so that its peak RSS is this size's alone."""
    completed = subprocess.run(
        [sys.executable, "-m", "sluice.bench.por", "--leaves", str(leaves)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"the {leaves}-leaf run failed ({completed.returncode}): {completed.stderr.strip()}"
        )
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def targets(result: dict[str, Any]) -> str:
    """The issue's targets that apply to this size, each met or NOT met."""
    leaves = result["leaves"]
    verdicts = []
    if leaves in BUILD_TARGET_S:
        limit = BUILD_TARGET_S[leaves]
        met = "met" if result["build_s"] < limit else "NOT met"
        verdicts.append(f"build < {limit:g} s: {met}")
    if leaves in RSS_TARGET_MB:
        limit = RSS_TARGET_MB[leaves]
        met = "met" if result["peak_rss_mb"] < limit else "NOT met"
        verdicts.append(f"peak RSS < {limit / 1024:g} GB: {met}")
    met = "met" if result["verifications_per_s"] >= VERIFICATIONS_TARGET else "NOT met"
    verdicts.append(f"≥ {VERIFICATIONS_TARGET:,} verifications/s: {met}")
    return "; ".join(verdicts)


def append_por_result(path: Path, result: dict[str, Any], *, command: str) -> None:
    """Add one row to the section's table in ``path`` (made on first use); the rest of the file,
    prose under the table included, stays in place."""
    row = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {machine()}, load {os.getloadavg()[0]:.1f} "
        f"| {result['implementation']}, {result['threads']} thread(s) "
        f"| {result['leaves']:,} | {result['depth']} "
        f"| {result['build_s']} | {result['inputs_rss_mb']} | {result['peak_rss_mb']} "
        f"| {result['proofs_per_s']:,} | {result['verifications_per_s']:,} "
        f"| {targets(result)} | `{command}` |\n"
    )
    insert_table_row(path, SECTION, HEADER, row)


def bench_command(sizes: Sequence[int], record: Path | None) -> list[dict[str, Any]]:
    """``sluice bench por``: one child per size, one JSON line each, rows to ``record``."""
    results = []
    for leaves in sizes:
        result = measure_in_child(leaves)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        results.append(result)
    if record is not None:
        command = (
            " ".join(["sluice", *sys.argv[1:]])
            if sys.argv[1:2] == ["bench"]
            else f"sluice bench por --record {record}"
        )
        for result in results:
            append_por_result(record, result, command=command)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One size of sluice bench por (the child).")
    parser.add_argument("--leaves", type=int, required=True)
    parser.add_argument("--sample", type=int, default=SAMPLE_PROOFS)
    arguments = parser.parse_args(argv)
    sys.stdout.write(json.dumps(measure(arguments.leaves, sample=arguments.sample)) + "\n")


if __name__ == "__main__":
    main()
