"""The command line against a ledger served over HTTP, as an operator runs it.

Covers: ``sluice demo --via-http`` and ``sluice demo --ledger-url`` (a fresh served ledger, then a
used one, refused); an operator's day on a ``sluice ledger serve --create`` server (onboard an
instrument with its registry URL on that server, ingest a customer's deposit, request a
withdrawal, let the workers submit it with the sandbox clock, ingest its completion, see it in the
customer's wallet); the same ingestion driven by a TOML configuration (``--config`` /
``SLUICE_CONFIG``), ``sluice config check --connect`` (the resolved configuration as JSON, then
the ledger end) and a broken file whose every problem is listed;
OAuth2 client credentials and self-signed HS256 tokens against a server that requires them, and
the refusal without a token; and ingestion of real Canton updates
(``../shared/reference/canton/fixtures/mock-txs.json``) served by ``sluice ledger serve --replay``.

How: every ``sluice`` here is the virtualenv's console script run as a subprocess, with real
sockets between the processes. A server gets a free port (a socket bound to port 0), is ready when
``GET /v2/state/ledger-end`` answers at all (a fresh ``--create`` ledger has no node yet: 404; a
server requiring auth: 401), is polled for that within a bound, and is always stopped (SIGTERM,
then SIGKILL) when its test ends. The world on a served ledger is built through its sandbox
control API (:class:`~sluice.ledger.local.remote.RemoteLedger`); customers are registered in the
Integration DB in process (the command line has no command for it). Environment variables
``SLUICE_*`` of the caller are dropped; ``SLUICE_DATA_DIR`` points into ``tmp_path`` so that no
command reads the repository's ``./data``. Independent commands run side by side to keep the
module's runtime down (each ``sluice`` start costs about two seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice import bootstrap
from sluice.domain.ledger import InstrumentId, parse_timestamp
from sluice.ledger.file import UpdateFile
from sluice.ledger.local.remote import RemoteLedger
from sluice.ledger.local.server import ServerAuth
from sluice.services.books import check_invariant, customer_balances, treasury_view
from sluice.services.ingestion import Ingestion, connection_name
from sluice.services.reference import register_customer
from sluice.services.withdrawals import list_withdrawals
from tests.conftest import reference_path

pytestmark = pytest.mark.slow

COMMAND_TIMEOUT_S = 120.0
SERVER_READY_S = 30.0
SERVER_STOP_S = 15.0
NODE = "exchange"


# --- running sluice -------------------------------------------------------------------------------


def sluice_script() -> str:
    """The ``sluice`` console script of this virtualenv."""
    script = Path(sys.executable).with_name("sluice")
    found = str(script) if script.exists() else shutil.which("sluice")
    assert found, "the sluice console script is not installed (pip install -e .)"
    return found


def environment(data: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without its ``SLUICE_*`` settings, data under ``data``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLUICE_")}
    data.mkdir(parents=True, exist_ok=True)
    env.update({"SLUICE_DATA_DIR": str(data), "COLUMNS": "200"}, **extra)
    return env


@dataclass(frozen=True)
class Done:
    """A finished ``sluice`` run."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def explained(self) -> str:
        return (
            f"sluice {' '.join(self.args)} exited {self.code}\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )


@dataclass(frozen=True)
class Command:
    """``sluice ARGS`` in ``env``, expected to exit with ``code``."""

    args: tuple[str, ...]
    env: dict[str, str]
    code: int = 0


def command(*args: str, env: dict[str, str], code: int = 0) -> Command:
    return Command(tuple(args), env, code)


def run_together(*commands: Command) -> list[Done]:
    """Run the commands side by side; each must exit with its expected code."""
    processes = [
        subprocess.Popen(
            [sluice_script(), *c.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=c.env,
        )
        for c in commands
    ]
    results: list[Done] = []
    try:
        for c, process in zip(commands, processes, strict=True):
            stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT_S)
            results.append(Done(c.args, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for c, result in zip(commands, results, strict=True):
        assert result.code == c.code, f"expected exit code {c.code}: {result.explained()}"
    return results


def sluice(*args: str, env: dict[str, str], code: int = 0) -> Done:
    (result,) = run_together(command(*args, env=env, code=code))
    return result


# --- serving a ledger -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Served:
    """A ``sluice ledger serve`` process and its base URL."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    stopped_with: int | None = None

    def node_url(self, node: str = NODE) -> str:
        return f"{self.url}/nodes/{node}"

    def registry_url(self, admin: str) -> str:
        return f"{self.url}/registries/{admin}"

    def ledger_end(self, node: str = NODE) -> int:
        answer = httpx.get(f"{self.node_url(node)}/v2/state/ledger-end", timeout=5.0)
        assert answer.status_code == 200, answer.text
        offset: int = answer.json()["offset"]
        return offset

    def stop(self) -> int:
        """SIGTERM (the server stops gracefully), SIGKILL if it does not; the exit code."""
        if self.stopped_with is None:
            self.process.terminate()
            try:
                self.stopped_with = self.process.wait(SERVER_STOP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self.stopped_with = -9
        return self.stopped_with


def start_server(folder: Path, *options: str) -> Served:
    """``sluice ledger serve OPTIONS --port P``, returned once it answers HTTP."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / f"serve-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sluice_script(), "ledger", "serve", *options, "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment(folder / "server-data"),
        )
    served = Served(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + SERVER_READY_S
    try:
        while True:
            try:
                httpx.get(f"{served.url}/v2/state/ledger-end", timeout=1.0)
                return served  # any answer at all: the server is up
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise AssertionError(f"sluice ledger serve exited {process.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError(f"sluice ledger serve not answering in {SERVER_READY_S} s")
            time.sleep(0.05)
    except AssertionError as exc:
        served.stop()
        raise AssertionError(f"{exc}\n{log.read_text()}") from None


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(*options)`` starts ``sluice ledger serve``; every server is stopped afterwards."""
    started: list[Served] = []

    def start(*options: str) -> Served:
        served = start_server(tmp_path / f"server-{len(started)}", *options)
        started.append(served)
        return served

    try:
        yield start
    finally:
        for served in started:
            served.stop()


# --- the demo over the wire -----------------------------------------------------------------------


def test_demo_via_http_serves_its_ledger_over_http_and_all_checks_hold(tmp_path: Path) -> None:
    done = sluice("demo", "--via-http", "--data", str(tmp_path / "demo"), env=environment(tmp_path))
    assert "all checks hold" in done.stdout, done.explained()
    assert "(served over HTTP; every exchange call goes over the wire)" in done.stdout
    assert "http://127.0.0.1:" in done.stdout


def test_demo_runs_against_a_served_fresh_ledger_and_refuses_one_already_used(
    tmp_path: Path, serve: Any
) -> None:
    server = serve("--create", "--ledger", str(tmp_path / "served" / "x.db"))
    env = environment(tmp_path)

    first = sluice("demo", "--ledger-url", server.url, "--data", str(tmp_path / "d1"), env=env)
    assert "all checks hold" in first.stdout, first.explained()
    assert f"{server.url} (served over HTTP" in first.stdout
    assert server.ledger_end() > 0

    again = sluice(
        "demo", "--ledger-url", server.url, "--data", str(tmp_path / "d2"), env=env, code=1
    )
    assert "the demo needs a fresh ledger, this one already has nodes" in again.output
    assert "sluice ledger serve --create" in again.output
    assert "all checks hold" not in again.output
    assert server.stop() == 0, server.log.read_text()  # SIGTERM stops it cleanly


# --- an operator's day on a served ledger ---------------------------------------------------------


@dataclass(frozen=True)
class World:
    server: Served
    folder: Path
    dso: str
    treasury: str
    customer: str  # cust-0's wallet party
    coin: InstrumentId

    @property
    def participant_url(self) -> str:
        return self.server.node_url(NODE)

    def remote(self) -> RemoteLedger:
        return RemoteLedger(self.server.url)


TAPPED = Decimal(1_000)
DEPOSITED = Decimal(500)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A served ledger (nodes registry / exchange / wallets): the treasury and cust-0 pre-approve
    Amulet; cust-0 is given 1000 and deposits 500 with reason ``acct-0``, their deposit account."""
    folder = tmp_path_factory.mktemp("served-world")
    server = start_server(folder / "server", "--create", "--ledger", str(folder / "ledger.db"))
    try:
        with RemoteLedger(server.url) as ledger:
            for node in ("registry", NODE, "wallets"):
                ledger.add_node(node)
            dso = ledger.allocate_party("dso", "registry")
            treasury = ledger.allocate_party("treasury", NODE)
            customer = ledger.allocate_party("cust-0", "wallets")
            coin = ledger.create_instrument(dso, "Amulet")
            ledger.create_preapproval(treasury, coin)
            ledger.create_preapproval(customer, coin)
            ledger.tap(customer, coin, TAPPED)
            ledger.transfer(customer, treasury, coin, DEPOSITED, reason="acct-0")
            ledger.advance(40)
            ledger.checkpoint()
            ledger.flush()
        yield World(server, folder, dso, treasury, customer, coin)
    finally:
        server.stop()


def cursor_offset(db_url: str, party: str, participant_url: str) -> int | None:
    """Where ingestion's cursor for ``party`` read through ``participant_url`` stands."""
    database = bootstrap.database(db_url)
    try:
        with database.uow() as uow:
            cursor = uow.ingestion.load_cursor(
                connection_name(party, bootstrap.participant_node(participant_url))
            )
    finally:
        database.dispose()
    return None if cursor is None else cursor.offset


def register_cust_0(db_url: str) -> None:
    database = bootstrap.database(db_url)
    try:
        register_customer(database.uow, "cust-0", "Customer 0", ["acct-0"])
    finally:
        database.dispose()


def test_an_operator_onboards_ingests_and_pays_out_against_a_served_ledger(
    world: World, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'sluice.db'}"
    register_cust_0(db)
    env = environment(tmp_path / "data")
    treasury = ("--treasury", world.treasury)
    participant = ("--ledger-url", world.participant_url)

    added = sluice(
        *("instruments", "add", "--admin", world.dso, "--id", "Amulet"),
        *("--registry", world.server.registry_url(world.dso), "--trusted", "--db", db),
        env=env,
    )
    assert f"onboarded {world.coin.key()}" in added.stderr
    ingested = sluice(
        "ingest", "--once", *participant, "--party", world.treasury, "--db", db, env=env
    )
    assert "ingested 2 transactions, 1 checkpoints" in ingested.stderr

    database = bootstrap.database(db)
    try:
        assert customer_balances(database.uow)["customer:cust-0"] == {world.coin.key(): DEPOSITED}
        requested = sluice(
            *("withdraw", "--customer", "cust-0", "--to", world.customer, *treasury),
            *("--instrument", f"{world.dso}:Amulet", "--amount", "120", "--key", "k1"),
            *("--db", db, "--json", *participant, "--sandbox-clock"),
            env=env,
        )
        withdrawal = json.loads(requested.stdout)
        assert (withdrawal["status"], withdrawal["amount"]) == ("reserved", "120.0000000000")
        # The deadline is on the served ledger's clock, not the system's.
        deadline = parse_timestamp(withdrawal["trec_tgt"])
        with world.remote() as ledger:
            assert timedelta(0) < deadline - ledger.time() <= timedelta(seconds=120)

        ran = sluice(
            *("workers", "run", "--once", *participant, "--sandbox-clock", *treasury, "--db", db),
            env=env,
        )
        assert "submitted 1" in ran.stderr, ran.explained()
        sluice("ingest", "--once", *participant, "--party", world.treasury, "--db", db, env=env)

        (record,) = list_withdrawals(database.uow)
        assert (record.id, record.status) == (withdrawal["id"], "completed")
        assert customer_balances(database.uow)["customer:cust-0"] == {
            world.coin.key(): DEPOSITED - 120
        }
        assert check_invariant(database.uow).problems == []  # what `sluice check` checks
    finally:
        database.dispose()
    with world.remote() as ledger:
        held = sum(
            (h.amount for h in ledger.active_holdings(world.customer, world.coin)), Decimal(0)
        )
    assert held == TAPPED - DEPOSITED + 120


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_ingest_and_config_check_take_the_ledger_from_a_toml_config(
    world: World, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'configured.db'}"
    config = write_config(
        tmp_path / "sluice.toml",
        f'[database]\nurl = "{db}"\n\n'
        f'[ledger]\nparticipant_url = "{world.participant_url}"\n\n'
        f'[treasury]\nparty = "{world.treasury}"\n',
    )
    broken = write_config(
        tmp_path / "broken.toml",
        '[ledger]\nparticipant_url = "ftp//ledger.example"\ncolour = "blue"\n',
    )
    env = environment(tmp_path / "data")
    by_variable = {**env, "SLUICE_CONFIG": str(config)}
    # One `config check --connect` stands for both: it prints what `config check` prints first.
    ingested, checked, refused = run_together(
        command("--config", str(config), "ingest", "--once", env=env),
        command("config", "check", "--connect", env=by_variable),
        command("--config", str(broken), "config", "check", env=env, code=2),
    )

    end = world.server.ledger_end()
    assert cursor_offset(db, world.treasury, world.participant_url) == end, ingested.explained()
    resolved = json.loads(checked.stdout)
    assert resolved["ledger"]["participant_url"] == world.participant_url
    assert resolved["ledger"]["kind"] == "canton"
    assert resolved["treasury"]["party"] == world.treasury
    assert resolved["database"]["url"] == db
    assert f"Canton participant {world.participant_url}: ledger end {end}" in checked.stderr

    assert "has 2 problem(s)" in refused.stderr
    assert "ledger.participant_url: 'ftp//ledger.example' is not an http/https URL" in (
        refused.stderr
    )
    assert "ledger.colour: unknown key" in refused.stderr
    assert refused.stdout == ""


# --- auth -----------------------------------------------------------------------------------------

AUTH_SECRET = "an-hs256-secret-of-at-least-32-bytes"
CLIENT_ID = "sluice"
CLIENT_SECRET = "client-password"


def test_ingest_authenticates_with_oauth2_or_hs256_and_is_refused_without_a_token(
    tmp_path: Path, serve: Any
) -> None:
    server = serve(
        *("--create", "--ledger", str(tmp_path / "auth" / "x.db")),
        *("--auth-secret", AUTH_SECRET, "--oauth-client", f"{CLIENT_ID}:{CLIENT_SECRET}"),
    )
    setup_token = ServerAuth(AUTH_SECRET).issue_token("test-setup")
    with RemoteLedger(server.url, token=setup_token) as ledger:
        ledger.add_node("registry")
        ledger.add_node(NODE)
        dso = ledger.allocate_party("dso", "registry")
        treasury = ledger.allocate_party("treasury", NODE)
        coin = ledger.create_instrument(dso, "Amulet")
        ledger.create_preapproval(treasury, coin)
        ledger.tap(treasury, coin, Decimal(100))
        ledger.flush()
        end = ledger.ledger_end(NODE)
    participant = server.node_url(NODE)

    def config(name: str, auth: str) -> tuple[str, str]:
        db = f"sqlite:///{tmp_path / f'{name}.db'}"
        path = write_config(
            tmp_path / f"{name}.toml",
            f'[database]\nurl = "{db}"\n\n[ledger]\nparticipant_url = "{participant}"\n\n'
            f'[treasury]\nparty = "{treasury}"\n\n{auth}',
        )
        return str(path), db

    oauth2, oauth2_db = config(
        "oauth2",
        f'[ledger.auth]\nkind = "oauth2"\ntoken_url = "{server.url}/oauth/token"\n'
        f'client_id = "{CLIENT_ID}"\nclient_secret_env = "TEST_CLIENT_SECRET"\n',
    )
    hs256, hs256_db = config(
        "hs256",
        '[ledger.auth]\nkind = "hs256"\nsecret_env = "TEST_AUTH_SECRET"\nuser_id = "sluice"\n',
    )
    none, _ = config("none", "")
    env = environment(
        tmp_path / "data", TEST_CLIENT_SECRET=CLIENT_SECRET, TEST_AUTH_SECRET=AUTH_SECRET
    )
    wrong = {**env, "TEST_CLIENT_SECRET": "not-the-password"}
    by_oauth2, by_hs256, without, refused_client = run_together(
        command("--config", oauth2, "ingest", "--once", env=env),
        command("--config", hs256, "ingest", "--once", env=env),
        command("--config", none, "ingest", "--once", env=env, code=2),
        command("--config", oauth2, "ingest", "--once", env=wrong, code=2),
    )

    for done, db in ((by_oauth2, oauth2_db), (by_hs256, hs256_db)):
        assert cursor_offset(db, treasury, participant) == end > 0, done.explained()
    assert "HTTP 401 UNAUTHENTICATED" in without.stderr, without.explained()
    assert "the request carries no access token" in without.stderr
    assert "refused the client credentials" in refused_client.stderr, refused_client.explained()
    assert "Traceback" not in without.stderr + refused_client.stderr


# --- a recording of real Canton updates, served ---------------------------------------------------


def test_ingest_over_http_of_a_replayed_canton_recording_matches_reading_the_file(
    tmp_path: Path, serve: Any
) -> None:
    recording = reference_path("canton", "fixtures", "mock-txs.json")
    party = "alice::normalized"
    server = serve("--replay", str(recording))
    db = f"sqlite:///{tmp_path / 'wire.db'}"

    env = environment(tmp_path / "data")
    sluice("ingest", "--once", "--ledger-url", server.url, "--party", party, "--db", db, env=env)

    end = server.ledger_end()
    over_the_wire = bootstrap.database(db)
    from_file = bootstrap.database(f"sqlite:///{tmp_path / 'file.db'}")
    try:
        wire_view = treasury_view(
            over_the_wire.uow, party, connection_name(party, bootstrap.participant_node(server.url))
        )
        file_connection = connection_name(party, "file:mock-txs.json")
        Ingestion(from_file.uow, UpdateFile(recording), party, connection=file_connection).run()
        file_view = treasury_view(from_file.uow, party, file_connection)
    finally:
        over_the_wire.dispose()
        from_file.dispose()
    assert wire_view["cursor"]["offset"] == end
    assert wire_view["holdings"], "alice holds Amulet in the recording"
    assert wire_view == file_view
