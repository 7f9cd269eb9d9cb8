"""The ``[bitcoin]`` section of the configuration and what bootstrap makes of it.

Covers: a complete section mapping key by key to ``BitcoinSettings``; every problem of a bad
section listed at once, each under its key (an unknown network, a bound out of range, fee rates
the wrong way round, missing key files and unset key variables, a descriptor without or with a
wrong checksum, or of another network); the node's password given in exactly one way (inline,
file or cookie), with a user where one is needed and never inside the URL; the password never
printed (``redacted()``, which ``sluice config check`` prints, and the error messages); the
environment's overrides; no section meaning the sandbox custody on the embedded regtest chain;
custody with fewer than two signing keys watching but refusing to sign; and a node of another
network (or one that does not answer) never watched by the server's watcher part.

How: TOML files written to a temporary directory and read with :func:`load_config`; the custody
keys are made with :func:`create_sandbox_custody`, so descriptors carry real checksums.
"""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path

import pytest

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import SandboxCustody, create_sandbox_custody
from sluice.config import ConfigError, DeploymentConfig, load_config
from sluice.domain.chains import CHAINS
from sluice.server.bitcoin import BitcoinRoundError, watcher_part
from sluice.services.btc_watcher import WatchTick

SECRET = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def custody(tmp_path_factory: pytest.TempPathFactory) -> SandboxCustody:
    return create_sandbox_custody(tmp_path_factory.mktemp("custody") / "keys", CHAINS["regtest"])


def toml_list(paths: list[Path] | list[str]) -> str:
    return "[" + ", ".join(json.dumps(str(p)) for p in paths) + "]"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return path


def problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ or {})
    return caught.value.problems


def test_a_complete_section_becomes_the_services_settings(
    tmp_path: Path, custody: SandboxCustody
) -> None:
    path = write(
        tmp_path,
        f"""
[bitcoin]
network = "regtest"
rpc_url = "http://127.0.0.1:18443/"
rpc_user = "sluice"
rpc_password = "{SECRET}"
descriptor = {json.dumps(custody.descriptor)}
key_files = {toml_list(custody.key_files[:2])}
confirmations_min = 3
fee_target_blocks = 2
fee_rate_min_sat_vb = 1.5
fee_rate_max_sat_vb = 80
payout_fee_max_sats = 12000
payout_batch_max = 7
payout_batch_window_s = 30
payout_bump_after_blocks = 4
watch_start_height = 100
""",
    )
    config = load_config(path, environ={})
    section = config.bitcoin
    assert section is not None
    assert section.rpc_url == "http://127.0.0.1:18443"
    assert not section.embedded
    assert section.rpc_password_value() == SECRET
    settings = bootstrap.bitcoin_settings(section)
    assert settings.chain is CHAINS["regtest"]
    assert settings.confirmations_min == 3
    assert settings.fee_target_blocks == 2
    assert settings.fee_rate_min_sat_vb == Decimal("1.5")
    assert settings.fee_rate_max_sat_vb == Decimal(80)
    assert settings.payout_fee_max_sats == 12000
    assert settings.payout_batch_max == 7
    assert settings.payout_batch_window_s == 30.0
    assert settings.payout_bump_after_blocks == 4
    assert settings.watch_start_height == 100


def test_the_defaults_of_a_minimal_section(tmp_path: Path, custody: SandboxCustody) -> None:
    path = write(tmp_path, f"[bitcoin]\ndescriptor = {json.dumps(custody.descriptor)}\n")
    section = load_config(path, environ={}).bitcoin
    assert section is not None and section.embedded and section.network == "regtest"
    settings = bootstrap.bitcoin_settings(section)
    assert settings.confirmations_min == 6
    assert settings.payout_batch_window_s == 60.0


def test_every_problem_is_listed_at_once_under_its_key(
    tmp_path: Path, custody: SandboxCustody, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLUICE_TEST_NO_SUCH_KEY", raising=False)
    path = write(
        tmp_path,
        f"""
[bitcoin]
network = "dogecoin"
confirmations_min = 0
payout_batch_max = 0
fee_rate_min_sat_vb = 20
fee_rate_max_sat_vb = 10
descriptor = {json.dumps(custody.descriptor)}
key_files = ["{tmp_path / "missing.tprv"}", "env:SLUICE_TEST_NO_SUCH_KEY"]
rpc_user = "sluice"
""",
    )
    found = problems(path)
    assert found[0].startswith("bitcoin.network: unknown network 'dogecoin'")
    assert "regtest" in found[0] and "litecoin-regtest" in found[0]
    assert found[1].startswith("bitcoin.confirmations_min: ")
    assert found[2].startswith("bitcoin.payout_batch_max: ")
    rest = found[3:]
    assert "bitcoin.rpc_url: required with rpc_user (no node to authenticate to)" in rest
    assert f"bitcoin.key_files: no such file {tmp_path / 'missing.tprv'}" in rest
    assert (
        "bitcoin.key_files: the environment variable 'SLUICE_TEST_NO_SUCH_KEY' is not set" in rest
    )
    assert "bitcoin.fee_rate_min_sat_vb: 20 must not exceed fee_rate_max_sat_vb (10)" in rest
    assert len(found) == 7  # the descriptor is not checked against an unknown network


def test_cross_key_problems_alone_are_each_listed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[bitcoin]
descriptor = "wsh(sortedmulti(2,tpubA/0/*,tpubB/0/*,tpubC/0/*))"
fee_rate_min_sat_vb = 5
fee_rate_max_sat_vb = 4
rpc_cookie_file = "/var/lib/bitcoind/.cookie"
""",
    )
    found = problems(path)
    assert found[0] == "bitcoin.rpc_url: required with rpc_cookie_file (no node to authenticate to)"
    assert found[1] == "bitcoin.fee_rate_min_sat_vb: 5 must not exceed fee_rate_max_sat_vb (4)"
    assert found[2].startswith("bitcoin.descriptor: ") and "checksum" in found[2]
    assert len(found) == 3


def test_a_descriptor_with_a_wrong_checksum_is_refused(
    tmp_path: Path, custody: SandboxCustody
) -> None:
    text, checksum = custody.descriptor.split("#")
    wrong = "q" if checksum[0] != "q" else "p"
    path = write(tmp_path, f"[bitcoin]\ndescriptor = {json.dumps(f'{text}#{wrong}{checksum[1:]}')}")
    (problem,) = problems(path)
    assert problem.startswith("bitcoin.descriptor: ") and "checksum" in problem


def test_a_descriptor_of_another_network_is_refused(
    tmp_path: Path, custody: SandboxCustody
) -> None:
    path = write(
        tmp_path,
        f'[bitcoin]\nnetwork = "bitcoin"\ndescriptor = {json.dumps(custody.descriptor)}\n',
    )
    (problem,) = problems(path)
    assert problem.startswith("bitcoin.descriptor: ")


def test_a_missing_descriptor_is_named(tmp_path: Path) -> None:
    (problem,) = problems(write(tmp_path, "[bitcoin]\n"))
    assert problem.startswith("bitcoin.descriptor: ")


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (
            'rpc_url = "http://127.0.0.1:8332"',
            "bitcoin.rpc_url: needs one of rpc_password, rpc_password_file, rpc_cookie_file",
        ),
        (
            f'rpc_url = "http://127.0.0.1:8332"\nrpc_user = "u"\nrpc_password = "{SECRET}"\n'
            'rpc_cookie_file = "/c"',
            "bitcoin: give one of rpc_password, rpc_cookie_file, not several",
        ),
        (
            f'rpc_url = "http://127.0.0.1:8332"\nrpc_password = "{SECRET}"',
            "bitcoin.rpc_user: required with rpc_password",
        ),
        (
            'rpc_url = "http://127.0.0.1:8332"\nrpc_user = "u"\nrpc_cookie_file = "/c"',
            "bitcoin.rpc_user: not used with rpc_cookie_file (the cookie names it)",
        ),
        (
            f'rpc_url = "http://u:{SECRET}@127.0.0.1:8332"\nrpc_cookie_file = "/c"',
            "bitcoin.rpc_url: holds a password; give it as rpc_password_file instead",
        ),
        (
            'rpc_url = "http://127.0.0.1:8332"\nrpc_user = "u"\n'
            'rpc_password_file = "/no/such/password"',
            "bitcoin.rpc_password_file: no such file /no/such/password",
        ),
        (
            'rpc_url = "ftp://127.0.0.1"',
            "bitcoin.rpc_url: 'ftp://127.0.0.1' is not an http/https URL",
        ),
    ],
)
def test_the_node_password_is_given_in_exactly_one_way(
    tmp_path: Path, custody: SandboxCustody, node: str, expected: str
) -> None:
    path = write(tmp_path, f"[bitcoin]\ndescriptor = {json.dumps(custody.descriptor)}\n{node}\n")
    found = problems(path)
    assert found == [expected]
    assert all(SECRET not in problem for problem in found)


def test_a_password_file_and_a_cookie_file_are_accepted(
    tmp_path: Path, custody: SandboxCustody
) -> None:
    secret_file = tmp_path / "rpc-password"
    secret_file.write_text(SECRET + "\n")
    descriptor = json.dumps(custody.descriptor)
    path = write(
        tmp_path,
        f'[bitcoin]\ndescriptor = {descriptor}\nrpc_url = "http://127.0.0.1:8332"\n'
        f'rpc_user = "u"\nrpc_password_file = "{secret_file}"\n',
    )
    section = load_config(path, environ={}).bitcoin
    assert section is not None and section.rpc_password_value() == SECRET
    # The cookie is rewritten at every start of the node: it need not exist yet.
    path = write(
        tmp_path,
        f'[bitcoin]\ndescriptor = {descriptor}\nrpc_url = "http://127.0.0.1:8332"\n'
        f'rpc_cookie_file = "{tmp_path / "not-yet" / ".cookie"}"\n',
    )
    section = load_config(path, environ={}).bitcoin
    assert section is not None and section.rpc_password_value() is None


def test_the_password_is_never_printed(tmp_path: Path, custody: SandboxCustody) -> None:
    path = write(
        tmp_path,
        f"[bitcoin]\ndescriptor = {json.dumps(custody.descriptor)}\n"
        f'rpc_url = "http://127.0.0.1:8332"\nrpc_user = "u"\nrpc_password = "{SECRET}"\n',
    )
    config = load_config(path, environ={})
    shown = json.dumps(config.redacted())
    assert SECRET not in shown
    assert config.redacted()["bitcoin"]["rpc_password"] == "**********"
    assert SECRET not in repr(config) and SECRET not in str(config.bitcoin)
    # From the environment too, and not in the problems of a configuration that is refused.
    environ = {"SLUICE_BITCOIN_RPC_PASSWORD": SECRET, "SLUICE_BITCOIN_RPC_COOKIE_FILE": "/c"}
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ)
    assert SECRET not in str(caught.value)


def test_the_environment_overrides_single_values(tmp_path: Path, custody: SandboxCustody) -> None:
    path = write(tmp_path, f"[bitcoin]\ndescriptor = {json.dumps(custody.descriptor)}\n")
    environ = {
        "SLUICE_BITCOIN_RPC_URL": "http://node:18443",
        "SLUICE_BITCOIN_RPC_USER": "sluice",
        "SLUICE_BITCOIN_RPC_PASSWORD": SECRET,
    }
    section = load_config(path, environ=environ).bitcoin
    assert section is not None
    assert (section.rpc_url, section.rpc_user) == ("http://node:18443", "sluice")
    assert section.rpc_password_value() == SECRET
    (problem,) = problems(path, {"SLUICE_BITCOIN_NETWORK": "mainnet"})
    assert problem.startswith("bitcoin.network: unknown network 'mainnet'")
    assert problem.endswith("(from SLUICE_BITCOIN_NETWORK)")


def test_key_files_may_name_environment_variables(
    tmp_path: Path, custody: SandboxCustody, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_TEST_CUSTODY_KEY", custody.key_files[0].read_text().strip())
    path = write(
        tmp_path,
        f"[bitcoin]\ndescriptor = {json.dumps(custody.descriptor)}\n"
        f'key_files = ["env:SLUICE_TEST_CUSTODY_KEY", "{custody.key_files[1]}"]\n',
    )
    section = load_config(path, environ={}).bitcoin
    assert section is not None
    assert section.key_files == ["env:SLUICE_TEST_CUSTODY_KEY", str(custody.key_files[1])]
    twice = write(
        tmp_path,
        f"[bitcoin]\ndescriptor = {json.dumps(custody.descriptor)}\n"
        f"key_files = {toml_list([custody.key_files[1], custody.key_files[1]])}\n",
    )
    assert problems(twice) == ["bitcoin.key_files: the same key is named twice"]


def test_no_section_means_the_sandbox_custody_on_the_embedded_regtest_chain(
    tmp_path: Path,
) -> None:
    config = DeploymentConfig(data_dir=tmp_path / "data")
    assert config.bitcoin is None
    assert "bitcoin" in config.redacted() and config.redacted()["bitcoin"] is None
    custody = bootstrap.bitcoin_custody(config)
    assert not custody.configured
    assert custody.chain is CHAINS["regtest"]
    assert custody.sandbox is not None
    assert custody.sandbox.path.parent == tmp_path / "data" / "bitcoin"
    assert "sandbox custody" in custody.description and "no real node" in custody.description
    assert custody.can_sign and custody.signing_problem() is None
    assert custody.settings.payout_batch_window_s == 0.0
    # The same custody on the next start: the keys and descriptor are made once.
    again = bootstrap.bitcoin_custody(config)
    assert again.wallet.descriptor == custody.wallet.descriptor


def test_custody_with_one_key_watches_but_does_not_sign(
    tmp_path: Path, custody: SandboxCustody
) -> None:
    path = write(
        tmp_path,
        f"data_dir = {json.dumps(str(tmp_path / 'data'))}\n[bitcoin]\n"
        f"descriptor = {json.dumps(custody.descriptor)}\n"
        f"key_files = {toml_list(custody.key_files[:1])}\n",
    )
    wired = bootstrap.bitcoin_custody(load_config(path, environ={}))
    assert wired.configured and wired.signers == 1 and not wired.can_sign
    problem = wired.signing_problem()
    assert problem is not None and "2 of the custody's 3 keys" in problem and "holds 1" in problem
    address = wired.wallet.derive(0, 0)
    assert wired.wallet.validate_address(address.address) == address.script_hex


def test_a_node_of_another_network_is_never_watched(tmp_path: Path) -> None:
    wired = bootstrap.bitcoin_custody(DeploymentConfig(data_dir=tmp_path / "data"))
    assert wired.network_problem() is None
    elsewhere = dataclasses.replace(wired, node=FakeChain(CHAINS["bitcoin"]))
    problem = elsewhere.network_problem()
    assert problem is not None
    assert "follows the chain 'main'" in problem and "on regtest (chain 'regtest')" in problem
    rounds: list[int] = []

    def run_once() -> WatchTick:
        rounds.append(1)
        return WatchTick()

    refused = watcher_part(run_once, elsewhere.network_problem)
    with pytest.raises(BitcoinRoundError, match="follows the chain 'main'"):
        refused.run()
    assert rounds == []
    down = FakeChain(CHAINS["regtest"])
    down.down = True
    unreachable = watcher_part(run_once, dataclasses.replace(wired, node=down).network_problem)
    with pytest.raises(BitcoinRoundError, match="did not answer"):
        unreachable.run()
    assert rounds == []
    # Checked until the node once answers with custody's chain, then not asked again.
    down.down = False
    assert unreachable.run() is not None and rounds == [1]
    down.down = True
    unreachable.run()
    assert rounds == [1, 1]
