"""The HTTP API benchmark (:mod:`sluice.bench.api`), as a smoke test on SQLite: a short run of the
whole harness against a real uvicorn server has the report's shape, its numbers counted from the
answers, every withdrawal request accounted for in the database, and is recorded in the page;
requests the API refuses are counted as failures, never as throughput, by both load generators.

Runs last a second or two each (a smoke test of the harness, not a measurement). The wrk runs need
``wrk`` on the PATH (``make test`` installs it): without it they skip, and under ``CI=true`` fail.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.bench.api import (
    DEPOSIT,
    HEADER,
    SECTION,
    ApiBenchReport,
    ApiBenchSettings,
    Exchange,
    LoadRun,
    RawRun,
    Request,
    WithdrawalCheck,
    WorkersResult,
    api_server,
    check_withdrawals,
    load_run,
    measure,
    prepare_exchange,
    python_run,
    record_api_report,
    requests_for,
    wrk_run,
)
from tests.conftest import missing

pytestmark = pytest.mark.slow

CLIENTS = 3
EARLIER = (
    "# Benchmarks\n\n## Ingestion (`sluice bench ingest`)\n\n"
    "| date | machine |\n|---|---|\n| 2026-01-01 | box |\n\nIngestion prose that must stay.\n"
)


@pytest.fixture
def exchange(tmp_path: Path) -> Exchange:
    return prepare_exchange(f"sqlite:///{tmp_path / 'api.db'}", CLIENTS)


@pytest.fixture
def server(exchange: Exchange, tmp_path: Path) -> Iterator[str]:
    with api_server(exchange, 1, tmp_path / "server.log") as base:
        yield base


def _run(tool: str, base: str, requests: list[Request], run: str, tmp_path: Path) -> RawRun:
    if tool == "wrk":
        if shutil.which("wrk") is None:
            missing("wrk (`make test` installs it)")  # skips here, fails under CI=true
        return wrk_run(base, requests, run=run, duration_s=1, scratch=tmp_path)
    return python_run(base, requests, run=run, duration_s=1)


def _wrong_key(request: Request) -> Request:
    headers = tuple(
        (name, value[:-4] + "0000" if name == "X-API-Key" else value)
        for name, value in request.headers
    )
    return dataclasses.replace(request, headers=headers)


def test_a_short_run_reports_every_figure_and_accounts_for_every_withdrawal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = ApiBenchSettings(
        url=f"sqlite:///{tmp_path / 'api.db'}",
        clients=CLIENTS,
        duration_s=1.0,
        warmup_s=0.5,
        paced_rate=30.0,
        worker_counts=(1,),
        tool="python",
    )
    report = measure(settings, scratch=tmp_path / "scratch")

    assert (report.db, report.tool, report.clients) == ("sqlite", "python", CLIENTS)
    [result] = report.results
    assert [(run.scenario, run.mode) for run in result.runs] == [
        ("health", "closed"),
        ("balance", "closed"),
        ("balance", "paced"),
        ("withdrawal", "closed"),
    ]
    for run in result.runs:
        assert run.clients == CLIENTS and run.workers == 1
        assert run.ok > 0 and run.answered == run.ok and run.errors == 0
        assert run.requests_per_s == pytest.approx(run.ok / run.duration_s, rel=0.01)
        assert 0 < run.p50_ms <= run.p99_ms <= run.max_ms
    paced = result.run("balance", "paced")
    assert paced is not None and paced.offered_per_s == 30.0
    assert 25 <= paced.answered <= 31  # 30/s for one second, give or take the last one
    withdrawal = result.run("withdrawal")
    assert withdrawal is not None and set(withdrawal.statuses) == {"201"}
    check = result.withdrawals
    assert check.exact and check.books_balance
    assert check.recorded == check.answered_ok == check.sent >= withdrawal.ok
    assert report.books_balance and report.withdrawals_exact
    # The paced rate (30/s) is below the target's, so the closed loop's figures are judged.
    closed = result.run("balance")
    assert closed is not None
    assert report.target_met() == (closed.requests_per_s >= 1_000 and closed.p99_ms < 50)

    page = tmp_path / "benchmarks.md"
    page.write_text(EARLIER)
    record_api_report(report, page, command="sluice bench api --clients 3")
    text = page.read_text()
    assert text.startswith(EARLIER.rstrip("\n"))
    assert text.count(SECTION) == 1 and HEADER in text
    rows = [line for line in text.split(SECTION)[1].splitlines() if line.startswith("| 20")]
    assert len(rows) == 1
    assert f"{report.server} × 1" in rows[0] and "`sluice bench api --clients 3`" in rows[0]
    assert ("NOT met" in rows[0]) == (not report.target_met())

    # Prose under the details stays; the rows accumulate; the details are this run's.
    page.write_text(text + "\n### Why\n\nProse that must stay.\n")
    record_api_report(report, page, command="sluice bench api --clients 3 --duration 1")
    again = page.read_text()
    assert again.count(SECTION) == again.count("### Latest run") == 1
    assert again.endswith("### Why\n\nProse that must stay.\n")
    rows = [line for line in again.split(SECTION)[1].splitlines() if line.startswith("| 20")]
    assert len(rows) == 2 and "`sluice bench api --clients 3 --duration 1`" in rows[1]
    assert json.dumps(report.as_dict(), default=str)  # what the command prints
    capsys.readouterr()


@pytest.mark.parametrize("tool", ["python", "wrk"])
def test_refused_requests_are_counted_as_failures_not_throughput(
    tool: str, exchange: Exchange, server: str, tmp_path: Path
) -> None:
    wrong = [_wrong_key(request) for request in requests_for("balance", exchange)]
    run = load_run(
        _run(tool, server, wrong, "refused", tmp_path),
        workers=1,
        scenario="balance",
        mode="closed",
        tool=tool,
    )
    assert run.answered > 0
    assert run.ok == 0 and run.failed == run.answered == run.statuses["401"]
    assert run.requests_per_s == 0.0 and run.errors == run.answered


@pytest.mark.parametrize("tool", ["python", "wrk"])
def test_refused_withdrawals_are_failures_and_leave_no_record(
    tool: str, exchange: Exchange, server: str, tmp_path: Path
) -> None:
    # More than the deposit, less than what would need approvals: refused for the balance.
    over = str(DEPOSIT + 1_000)
    assert exchange.coin.id == "Amulet" and DEPOSIT + 1_000 < 10_000
    too_much = [
        dataclasses.replace(request, body=(request.body or "").replace('"0.01"', f'"{over}"'))
        for request in requests_for("withdrawal", exchange)
    ]
    allowed = requests_for("withdrawal", exchange)
    refused_raw = _run(tool, server, too_much, "too-much", tmp_path)
    allowed_raw = _run(tool, server, allowed, "allowed", tmp_path)
    refused = load_run(refused_raw, workers=1, scenario="withdrawal", mode="closed", tool=tool)
    assert refused.ok == 0 and refused.failed == refused.answered > 0
    assert set(refused.statuses) == {"422"}  # insufficient balance (code 62)

    check = check_withdrawals(
        server, exchange, [("too-much", refused_raw), ("allowed", allowed_raw)]
    )
    assert check.exact and check.books_balance
    assert check.answered_failed >= refused.failed
    assert check.recorded == check.answered_ok > 0  # only the allowed ones were booked


def test_requests_nobody_answers_are_lost_not_successes(exchange: Exchange) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    raw = python_run(base, requests_for("balance", exchange), run="nobody", duration_s=0.3)
    run = load_run(raw, workers=1, scenario="balance", mode="closed", tool="python")
    assert run.answered == run.ok == 0 and run.requests_per_s == 0.0
    assert run.lost == run.socket_errors == sum(t.sent for t in raw.tallies) > 0
    assert run.errors == run.lost


def _balance_run(mode: str, per_s: float, p99_ms: float, *, failed: int = 0) -> LoadRun:
    return LoadRun(
        workers=1,
        scenario="balance",
        mode=mode,
        tool="wrk",
        clients=50,
        duration_s=10.0,
        offered_per_s=1_000.0 if mode == "paced" else None,
        answered=int(per_s * 10) + failed,
        ok=int(per_s * 10),
        failed=failed,
        lost=0,
        in_flight=0,
        socket_errors=0,
        statuses={"200": int(per_s * 10)},
        requests_per_s=per_s,
        p50_ms=p99_ms / 4,
        p99_ms=p99_ms,
        max_ms=p99_ms * 2,
    )


@pytest.mark.parametrize(
    ("closed", "paced", "paced_rate", "met"),
    [
        ((1_200.0, 40.0, 0), None, None, True),
        ((999.0, 10.0, 0), None, None, False),  # too few reads
        ((1_200.0, 60.0, 0), None, None, False),  # closed loop judged: p99 too high
        ((1_200.0, 40.0, 1), None, None, False),  # an error is never throughput
        ((1_200.0, 200.0, 0), (1_000.0, 30.0, 0), 1_000.0, True),  # the paced run is judged
        ((1_200.0, 20.0, 0), (1_000.0, 60.0, 0), 1_000.0, False),  # paced p99 too high
        ((1_200.0, 20.0, 0), (1_000.0, 30.0, 2), 1_000.0, False),  # paced errors
        ((1_200.0, 40.0, 0), (30.0, 90.0, 0), 30.0, True),  # a pace below the target: closed
    ],
)
def test_the_read_target_is_judged_from_the_figures(
    closed: tuple[float, float, int],
    paced: tuple[float, float, int] | None,
    paced_rate: float | None,
    met: bool,
) -> None:
    runs = [_balance_run("closed", closed[0], closed[1], failed=closed[2])]
    if paced is not None:
        runs.append(_balance_run("paced", paced[0], paced[1], failed=paced[2]))
    check = WithdrawalCheck(0, 0, 0, 0, 0, 0, 0, 0, books_balance=True)
    report = ApiBenchReport(
        db="postgresql",
        tool="wrk",
        server="uvicorn",
        clients=50,
        duration_s=10.0,
        warmup_s=2.0,
        paced_rate=paced_rate,
        results=(WorkersResult(1, tuple(runs), check),),
    )
    assert report.target_met() is met
