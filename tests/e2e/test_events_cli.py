"""``sluice events relay`` and ``sluice events tail`` through their console script: the relay
publishes what is pending (``--once``, a JSON summary) to NATS JetStream or the embedded bus,
``tail`` prints the envelopes, and a relay SIGKILLed between publish and mark publishes again
with JetStream dropping the copies."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats

from sluice import bootstrap
from sluice.domain.events import Event, decode_event
from sluice.services.events import emit
from tests.e2e.test_cli_over_the_wire import environment, sluice, sluice_script
from tests.integration.nats_support import NatsTarget, read_stream

pytest_plugins = ["tests.integration.nats_support"]

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = (("withdrawal_requested", "w"), ("deposit_credited", "d"), ("alert_raised", "a"))


def world(tmp_path: Path, config: str) -> tuple[dict[str, str], bootstrap.Database]:
    data = tmp_path / "data"
    config_file = tmp_path / "sluice.toml"
    config_file.write_text(config)
    env = environment(data, SLUICE_CONFIG=str(config_file))
    return env, bootstrap.database(f"sqlite:///{data / 'sluice.db'}")


def commit(db: bootstrap.Database, count: int, *, start: int = 0, kinds=KINDS) -> list[Event]:  # type: ignore[no-untyped-def]
    out: list[Event] = []
    with db.uow() as uow:
        for i in range(start, start + count):
            kind, prefix = kinds[i % len(kinds)]
            at = T0 + timedelta(seconds=i)
            out.append(emit(uow, kind, f"{prefix}{i % 4}", {"n": i}, at=at))
        uow.commit()
    return out


def stream_order(events: list[Event]) -> list[Event]:
    """The order one relay round publishes committed events in: ordering key (aggregate type)
    by name, then commit order within each."""
    return [e for _i, e in sorted(enumerate(events), key=lambda p: (p[1].aggregate_type, p[0]))]


def lines(text: str) -> list[Event]:
    return [decode_event(line) for line in text.splitlines() if line.strip()]


def start_tail(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``sluice events tail ARGS``, returned once it follows (its note on stderr)."""
    process = subprocess.Popen(
        [sluice_script(), "events", "tail", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "following" in line, line
    return process


def test_relay_once_and_tail_on_jetstream(tmp_path: Path, nats_target: NatsTarget) -> None:
    env, db = world(tmp_path, nats_target.config_toml())
    try:
        committed = commit(db, 25)
        done = sluice("events", "relay", "--once", env=env)
        summary = json.loads(done.stdout)
        assert summary["published"] == 25 and summary["pending"] == 0
        assert summary["failed"] == 0 and summary["bus"] == "nats"
        assert summary["stream"] == nats_target.stream

        shown = sluice("events", "tail", "--from-start", "--count", "25", "--json", env=env)
        published = stream_order(committed)
        assert [e.envelope() for e in lines(shown.stdout)] == [e.envelope() for e in published]

        alerts = [e for e in committed if e.type == "alert_raised"]
        shown = sluice(
            "events", "tail", "--from-start", "--type", "alert_raised",
            "--count", str(len(alerts)), "--json", env=env,
        )  # fmt: skip
        assert [e.event_id for e in lines(shown.stdout)] == [e.event_id for e in alerts]

        shown = sluice("events", "tail", "--last", "3", "--count", "3", "--json", env=env)
        assert [e.event_id for e in lines(shown.stdout)] == [e.event_id for e in published[-3:]]

        # Following: new events show as the relay publishes them.
        follower = start_tail(env, "--count", "4", "--json")
        later = commit(db, 4, start=25)
        summary = json.loads(sluice("events", "relay", "--once", env=env).stdout)
        assert summary["published"] == 4
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert [e.event_id for e in lines(out)] == [e.event_id for e in stream_order(later)]

        # A line for people without --json.
        shown = sluice("events", "tail", "--last", "1", "--count", "1", env=env)
        last = stream_order(later)[-1]
        assert last.event_id in shown.stdout and last.type in shown.stdout
    finally:
        db.dispose()


def test_relay_on_the_embedded_bus_is_refused_without_force(tmp_path: Path) -> None:
    env, db = world(tmp_path, "[events]\ninterval_s = 0.1\n")
    try:
        commit(db, 3)
        for args in (("--once",), ()):
            done = sluice("events", "relay", *args, env=env, code=2)
            assert done.code == 2, done.output
            assert "sluice serve" in done.stderr and 'bus = "nats"' in done.stderr
            assert "--force" in done.stderr
        with db.uow() as uow:
            stats = uow.events.stats()
        assert stats.published == 0 and stats.pending == 3  # nothing taken from serve
    finally:
        db.dispose()


def test_relay_once_and_tail_on_the_embedded_bus(tmp_path: Path) -> None:
    env, db = world(tmp_path, "[events]\ninterval_s = 0.1\n")
    try:
        committed = commit(db, 9)
        summary = json.loads(sluice("events", "relay", "--once", "--force", env=env).stdout)
        assert summary["published"] == 9 and summary["bus"] == "embedded"
        assert summary["stream"] is None and summary["pending"] == 0
        shown = sluice("events", "tail", "--from-start", "--count", "9", "--json", env=env)
        assert [e.envelope() for e in lines(shown.stdout)] == [e.envelope() for e in committed]

        follower = start_tail(env, "--count", "2", "--json", "--type", "deposit_credited")
        later = commit(db, 6, start=9)
        relayed = sluice("events", "relay", "--once", "--force", env=env)
        assert json.loads(relayed.stdout)["published"] == 6
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        wanted = [e.event_id for e in later if e.type == "deposit_credited"]
        assert [e.event_id for e in lines(out)] == wanted
    finally:
        db.dispose()


def test_tail_on_the_embedded_bus_shows_a_row_committed_after_a_higher_one(
    tmp_path: Path, postgres_url: str
) -> None:
    """PostgreSQL: seq 1's transaction commits after seq 2's was published and shown."""
    env, sqlite_db = world(tmp_path, "[events]\ninterval_s = 0.1\n")
    sqlite_db.dispose()
    db = bootstrap.database(postgres_url)
    on_pg = ("--db", postgres_url)
    try:
        before = commit(db, 2)  # already published when the tail starts: not shown
        sluice("events", "relay", "--once", "--force", *on_pg, env=env)
        follower = start_tail(env, "--count", "3", "--json", *on_pg)
        try:
            with db.uow() as late:
                slow = emit(late, "withdrawal_requested", "w-late", {"n": "late"}, at=T0)
                fast = commit(db, 1, start=2)[0]  # a higher seq, committed first
                summary = json.loads(
                    sluice("events", "relay", "--once", "--force", *on_pg, env=env).stdout
                )
                assert summary["published"] == 1 and summary["pending"] == 0
                assert follower.stdout is not None
                assert decode_event(follower.stdout.readline()).event_id == fast.event_id
                late.commit()
            with db.uow() as uow:
                rows = {r.event.event_id: r.seq for r in uow.events.find(limit=10)}
            assert rows[slow.event_id] < rows[fast.event_id]  # really the lower seq
            summary = json.loads(
                sluice("events", "relay", "--once", "--force", *on_pg, env=env).stdout
            )
            assert summary["published"] == 1
            newest = commit(db, 1, start=3)[0]
            sluice("events", "relay", "--once", "--force", *on_pg, env=env)
            out, err = follower.communicate(timeout=60)
            assert follower.returncode == 0, err
            shown = [e.event_id for e in lines(out)]
            assert shown == [slow.event_id, newest.event_id]  # each once, nothing of before
            assert not {e.event_id for e in before} & set(shown)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.communicate()
    finally:
        db.dispose()


async def _messages(target: NatsTarget) -> int:
    nc = await nats.connect(target.url)
    try:
        return int((await nc.jetstream().stream_info(target.stream)).state.messages)
    except Exception:
        return 0
    finally:
        await nc.close()


def test_relay_sigkilled_between_publish_and_mark_publishes_again(
    tmp_path: Path, nats_target: NatsTarget
) -> None:
    total = 3000
    # One ordering key and one batch: nothing is marked until all of it is acked.
    config = nats_target.config_toml(batch=total, max_in_flight=2)
    env, db = world(tmp_path, config)
    try:
        committed = commit(db, total, kinds=(("withdrawal_requested", "w"),))
        relay = subprocess.Popen(
            [sluice_script(), "events", "relay"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            stored = 0
            while time.monotonic() < deadline and relay.poll() is None:
                stored = asyncio.run(_messages(nats_target))
                if stored > 0:
                    break
                time.sleep(0.01)
            relay.send_signal(signal.SIGKILL)
            relay.wait(30)
        finally:
            if relay.poll() is None:
                relay.kill()
        assert stored > 0, "the relay published nothing before it was killed"
        stored = asyncio.run(_messages(nats_target))
        with db.uow() as uow:
            stats = uow.events.stats()
        assert 0 < stored < total, stored  # killed mid-batch: published, not marked
        assert stats.published == 0 and stats.pending == total

        again = tmp_path / "again.toml"  # the relay started again, with a wider window
        again.write_text(nats_target.config_toml(batch=total, max_in_flight=256))
        env = {**env, "SLUICE_CONFIG": str(again)}
        summary = json.loads(sluice("events", "relay", "--once", env=env).stdout)
        assert summary["published"] == total and summary["pending"] == 0
        assert summary["duplicates"] == stored  # JetStream had those: dropped as duplicates
        assert asyncio.run(_messages(nats_target)) == total

        messages = asyncio.run(
            read_stream(nats_target.url, nats_target.stream, nats_target.subjects, expect=total)
        )
        seen: set[str] = set()
        once = []
        for _seq, _subject, event, _id in messages:  # a consumer deduping on event_id
            if event.event_id not in seen:
                seen.add(event.event_id)
                once.append(event.event_id)
        assert once == [e.event_id for e in committed]  # each once, in order (one subject each)
        assert len(messages) == total
    finally:
        db.dispose()
