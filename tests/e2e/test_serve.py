"""``sluice serve`` as an operator runs it: no configuration at all, then the API keys made for it.

How: each test starts the virtualenv's ``sluice serve`` console script as a subprocess in an empty
temporary directory (``SLUICE_DATA_DIR`` there, every other ``SLUICE_*`` variable removed, a free
port), waits with bounded polls for ``/health`` and then ``/ready``, and talks HTTP to it with
httpx. API keys are made with ``sluice admin create-api-key`` in another subprocess against the same
data directory, exactly as the operator would. The server is stopped with SIGTERM and must exit 0,
saying it stopped cleanly; a second start on the same directory must reuse the ledger file and the
treasury party of the first. The PostgreSQL variant sets ``SLUICE_DATABASE_URL``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from sluice.store.async_reads import APPLICATION_NAME

pytestmark = pytest.mark.slow

START_S = 60.0
STOP_S = 30.0
COMMAND_TIMEOUT_S = 60.0


def sluice_script() -> str:
    script = Path(sys.executable).with_name("sluice")
    found = str(script) if script.exists() else shutil.which("sluice")
    assert found, "the sluice console script is not installed (pip install -e .)"
    return found


def environment(folder: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without its ``SLUICE_*`` settings; data under ``folder/data``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLUICE_")}
    env.update({"SLUICE_DATA_DIR": str(folder / "data"), "COLUMNS": "200"}, **extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Served:
    """A running ``sluice serve`` and where its output goes."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        headers = {"X-API-Key": key} if key is not None else {}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=10.0)

    def terminate(self) -> int:
        """SIGTERM; the exit code (SIGKILL and a failure if it does not stop in time)."""
        self.process.terminate()
        try:
            return self.process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"sluice serve did not stop within {STOP_S} s of SIGTERM:\n{self.output()}"
            ) from None


def start(folder: Path, env: dict[str, str], name: str) -> Served:
    """``sluice serve --port P`` in ``folder``, returned once ``/health`` answers 200."""
    port = free_port()
    log = folder / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sluice_script(), "serve", "--port", str(port)],
            cwd=folder,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    served = Served(process, f"http://127.0.0.1:{port}", log)
    wait_for(served, "/health")
    return served


def wait_for(served: Served, path: str) -> httpx.Response:
    """Poll ``path`` until it answers 200 (bounded; fails if the process exits)."""
    deadline = time.monotonic() + START_S
    last = "no answer"
    while True:
        try:
            answer = served.get(path)
            if answer.status_code == 200:
                return answer
            last = f"{answer.status_code} {answer.text}"
        except httpx.TransportError as exc:
            last = type(exc).__name__
        if served.process.poll() is not None:
            raise AssertionError(
                f"sluice serve exited {served.process.returncode}:\n{served.output()}"
            )
        if time.monotonic() > deadline:
            served.process.kill()
            served.process.wait()
            raise AssertionError(f"{path} not 200 within {START_S} s ({last}):\n{served.output()}")
        time.sleep(0.1)


def sluice(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sluice_script(), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def create_key(env: dict[str, str], cwd: Path, *options: str) -> tuple[str, str]:
    """(key id, key) of a new key, from the command's plain output."""
    done = sluice("admin", "create-api-key", *options, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert fields["key"].startswith("sk_")
    assert "will not be shown again" in done.stderr
    assert fields["key"] not in done.stderr
    return fields["id"], fields["key"]


def stop_cleanly(served: Served) -> None:
    code = served.terminate()
    output = served.output()
    assert code == 0, output
    assert "sluice stopped cleanly" in output
    assert "Traceback" not in output


def serve_twice(
    folder: Path,
    env: dict[str, str],
    while_serving: Callable[[Served, str], None] | None = None,
) -> None:
    """First start on nothing, a key, authenticated reads, SIGTERM; then a second start that must
    find the same ledger, treasury and key. ``while_serving(served, key)`` runs during the
    first."""
    served = start(folder, env, "first")
    try:
        ready = wait_for(served, "/ready").json()
        assert ready["ready"] is True
        assert ready["checks"]["service_loop"]["ready"] is True
        assert ready["checks"]["database"]["ready"] is True

        spec = served.get("/openapi.json")
        assert spec.status_code == 200
        document = json.loads(spec.text)
        assert document["openapi"].startswith("3.")
        assert {"/health", "/ready", "/v1/instruments"} <= set(document["paths"])

        assert served.get("/v1/instruments").status_code == 401  # no credentials
        key_id, key = create_key(env, folder, "--role", "super_admin", "--label", "ops")
        instruments = served.get("/v1/instruments", key)
        assert instruments.status_code == 200, instruments.text
        assert {item["id"] for item in instruments.json()} == {"Amulet", "USDX"}
        status = served.get("/v1/system/status", key)
        assert status.status_code == 200, status.text
        treasury = status.json()["treasury"]
        assert treasury.startswith("treasury::")
        assert "embedded world created" in served.output()
        assert "sluice admin create-api-key --role super_admin" in served.output()
        if while_serving is not None:
            while_serving(served, key)
    finally:
        if served.process.poll() is None:
            stop_cleanly(served)
    ledger = folder / "data" / "ledger.db"
    assert ledger.is_file()

    again = start(folder, env, "second")
    try:
        wait_for(again, "/ready")
        status = again.get("/v1/system/status", key)
        assert status.status_code == 200, status.text
        assert status.json()["treasury"] == treasury
        instruments = again.get("/v1/instruments", key)
        assert {item["id"] for item in instruments.json()} == {"Amulet", "USDX"}
        assert "embedded world created" not in again.output()
        assert "no API keys yet" not in again.output()
    finally:
        if again.process.poll() is None:
            stop_cleanly(again)
    listed = sluice("admin", "list-api-keys", "--json", env=env, cwd=folder)
    assert listed.returncode == 0, listed.stderr
    assert [(k["id"], k["role"], k["label"]) for k in json.loads(listed.stdout)] == [
        (key_id, "super_admin", "ops")
    ]


def test_serve_with_no_configuration_answers_with_keys_and_restarts_on_the_same_world(
    tmp_path: Path,
) -> None:
    serve_twice(tmp_path, environment(tmp_path))
    assert (tmp_path / "data" / "sluice.db").is_file()


@pytest.mark.postgres
def test_serve_on_postgresql_answers_with_keys_and_restarts_on_the_same_world(
    tmp_path: Path, postgres_url: str
) -> None:
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")

    def read_pool_connections() -> int:
        with admin.connect() as connection:
            return int(
                connection.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = :name"
                    ),
                    {"name": APPLICATION_NAME},
                ).scalar_one()
            )

    def balances_on_the_event_loop(served: Served, key: str) -> None:
        # The application's lifespan opened the asyncio read pool in the serving process.
        assert read_pool_connections() >= 1
        created = httpx.post(
            f"{served.url}/v1/customers",
            json={"id": "cust-e2e", "name": "E2E", "deposit_accounts": ["acct-e2e"]},
            headers={"X-API-Key": key},
            timeout=10.0,
        )
        assert created.status_code == 201, created.text
        empty = served.get("/v1/customers/cust-e2e/balances", key)
        assert empty.status_code == 200 and empty.json()["balances"] == []
        assert served.get("/v1/customers/nobody/balances", key).status_code == 404

    try:
        serve_twice(
            tmp_path,
            environment(tmp_path, SLUICE_DATABASE_URL=postgres_url),
            while_serving=balances_on_the_event_loop,
        )
        assert read_pool_connections() == 0  # closed with the lifespan at shutdown
    finally:
        admin.dispose()
    assert not (tmp_path / "data" / "sluice.db").exists()


def test_a_revoked_key_is_refused_by_the_running_server(tmp_path: Path) -> None:
    env = environment(tmp_path)
    served = start(tmp_path, env, "serve")
    try:
        wait_for(served, "/ready")
        key_id, key = create_key(env, tmp_path, "--role", "operator")
        assert served.get("/v1/instruments", key).status_code == 200
        done = sluice("admin", "revoke-api-key", key_id, "--actor", "ops", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 20.0  # the server caches a verified key for seconds
        while served.get("/v1/instruments", key).status_code != 401:
            assert time.monotonic() < deadline, "the revoked key is still accepted"
            time.sleep(0.2)
        listed = sluice("admin", "list-api-keys", "--json", env=env, cwd=tmp_path)
        (record,) = json.loads(listed.stdout)
        assert (record["id"], record["revoked_by"]) == (key_id, "ops")
    finally:
        if served.process.poll() is None:
            stop_cleanly(served)


def test_admin_commands_refuse_bad_input_with_one_line(tmp_path: Path) -> None:
    env = environment(tmp_path)
    bad_role = sluice("admin", "create-api-key", "--role", "root", env=env, cwd=tmp_path)
    assert bad_role.returncode == 2
    assert "unknown role 'root'" in bad_role.stderr
    assert bad_role.stdout == ""
    no_customer = sluice("admin", "create-api-key", "--role", "user", env=env, cwd=tmp_path)
    assert no_customer.returncode == 2
    assert "needs the customer" in no_customer.stderr
    unknown = sluice("admin", "revoke-api-key", "0123456789abcdef", env=env, cwd=tmp_path)
    assert unknown.returncode == 2
    assert "error 10 not_found" in unknown.stderr


def test_serve_on_a_port_in_use_fails_at_once_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sluice_script(), "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            env=environment(tmp_path),
            cwd=tmp_path,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "data" / "ledger.db").exists()
