"""The consumer example of docs/events.md, run as written against the real NATS JetStream server
(127.0.0.1:4222): it is taken from the page's code block, pointed at a stream of the test's own,
and fed what the relay published plus a copy of one event stored again (as a relay's republish
after the duplicate window would store it). It handles each event once, deduping on
``event_id``, and acknowledges every delivery, the copy included.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats

from sluice import bootstrap
from sluice.domain.events import Event
from sluice.services.breakers import Breakers
from sluice.services.events import emit
from sluice.services.relay import Relay
from tests.integration.nats_support import NatsTarget
from tests.integration.test_events_relay import jetstream

pytest_plugins = ["tests.integration.nats_support"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def consumer_example() -> str:
    """The Python block of the section "A consumer that dedupes on `event_id`"."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## A consumer that dedupes on `event_id`") :]
    section = section[: section.index("\n## ", 1)]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def committed(database_url: str) -> tuple[bootstrap.Database, list[Event]]:
    db = bootstrap.database(database_url)
    out: list[Event] = []
    with db.uow() as uow:
        for n in range(6):
            out.append(
                emit(
                    uow,
                    "withdrawal_requested",
                    f"wd-{n % 3}",
                    {"n": n},
                    at=T0 + timedelta(seconds=n),
                )
            )
        # Not on the example's subject (withdrawals only): never handled.
        emit(uow, "deposit_credited", "dep-1", {"n": 99}, at=T0)
        uow.commit()
    return db, out


async def store_again(target: NatsTarget, event: Event) -> None:
    """A copy of ``event`` stored in the stream again (another Nats-Msg-Id, the same body)."""
    nc = await nats.connect(target.url, connect_timeout=3)
    try:
        await nc.jetstream().publish(
            target.prefix + event.subject,
            event.encode(),
            stream=target.stream,
            headers={"Nats-Msg-Id": f"{event.event_id}:after-the-window"},
        )
    finally:
        await nc.close()


async def run_example(
    code: str, target: NatsTarget, durable: str, handled: list[tuple[Any, ...]], deliveries: int
) -> Any:
    """Run the example's ``main`` until the server says every delivery was acknowledged;
    answer the consumer's state then."""
    connections: list[Any] = []

    async def connect(*args: Any, **kwargs: Any) -> Any:
        nc = await nats.connect(*args, **kwargs)
        connections.append(nc)
        return nc

    namespace: dict[str, Any] = {"__name__": "docs_events_consumer"}
    exec(compile(code, str(DOC), "exec"), namespace)  # defines main; runs nothing
    namespace.update(
        NATS_URL=target.url,
        STREAM=target.stream,
        SUBJECT=target.prefix + "sluice.withdrawal.>",
        DURABLE=durable,
        print=lambda *args, **_kw: handled.append(args),
        nats=type("Nats", (), {"connect": staticmethod(connect)}),
    )
    task = asyncio.create_task(namespace["main"]())
    probe = await nats.connect(target.url, connect_timeout=3)
    try:
        js = probe.jetstream()
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            assert not task.done(), task.exception()
            try:
                info = await js.consumer_info(target.stream, durable)
            except Exception:
                info = None
            if (
                info is not None
                and info.delivered.consumer_seq >= deliveries
                and info.num_ack_pending == 0
                and info.num_pending == 0
            ):
                return info
            assert asyncio.get_running_loop().time() < deadline, (info, handled)
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for nc in connections:
            await nc.close()
        await probe.close()


def test_the_docs_consumer_dedupes_a_copy_on_event_id(
    sqlite_url: str, nats_target: NatsTarget
) -> None:
    code = consumer_example()
    assert "event_id" in code and "asyncio.run(main())" in code
    db, events = committed(sqlite_url)
    relay = Relay(db.uow, jetstream(nats_target), batch=100, breakers=Breakers())
    try:
        done = relay.run_round()
        assert (done.published, done.failed, done.pending) == (7, 0, 0)
    finally:
        relay.close()
        db.dispose()
    copied = events[2]
    asyncio.run(store_again(nats_target, copied))

    handled: list[tuple[Any, ...]] = []
    durable = f"docs-example-{uuid.uuid4().hex[:8]}"
    info = asyncio.run(run_example(code, nats_target, durable, handled, deliveries=7))
    # Seven deliveries on the withdrawal subjects (six events and the copy), all acknowledged…
    assert info.delivered.consumer_seq == 7 and info.num_ack_pending == 0
    # …and each event handled once, in order per subject: the copy was skipped.
    assert len(handled) == len(events) == 6
    assert sorted((args[1], args[2]["n"]) for args in handled) == sorted(
        (e.aggregate_id, e.payload["n"]) for e in events
    )
    assert [args[0] for args in handled] == ["withdrawal_requested"] * 6
    for subject in {e.aggregate_id for e in events}:
        mine = [args[2]["n"] for args in handled if args[1] == subject]
        assert mine == [e.payload["n"] for e in events if e.aggregate_id == subject]
