"""Custody signing keys (``sluice.bitcoin.keys``): loading, secrecy and sandbox key making.

Real key files in a temporary directory: a key loads from a file and from ``env:NAME``; a file
readable by group or others, a missing file or variable, a public key, garbage and a key of
another network are refused with messages that name the source and never the key; a
``SigningKey`` never shows its key (``repr``, ``str``, pickling). ``create_sandbox_custody`` writes
three distinct keys with mode 0600 in a 0700 directory, refuses to overwrite them or to use an
exposed directory, and its descriptor verifies and signs with the files it wrote.
"""

from __future__ import annotations

import pickle
import stat
from pathlib import Path

import pytest
from embit import bip32  # type: ignore[import-untyped]

from sluice.bitcoin.keys import (
    SigningKey,
    account_path,
    create_sandbox_custody,
    load_signing_keys,
)
from sluice.bitcoin.wallet import EmbitCustodyWallet, parse_descriptor
from sluice.domain.chains import CHAINS
from sluice.domain.errors import InvalidInputError

CHAIN = CHAINS["litecoin-regtest"]
SEED = bytes(range(64))
ROOT_TPRV = bip32.HDKey.from_seed(SEED, version=CHAIN.xprv_version).to_base58()


def _key_file(directory: Path, text: str, mode: int = 0o600) -> Path:
    path = directory / "key.tprv"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_key_loads_from_a_private_file(tmp_path: Path) -> None:
    path = _key_file(tmp_path, ROOT_TPRV)
    [key] = load_signing_keys([path], chain=CHAIN)
    assert key.hd_root.to_base58() == ROOT_TPRV
    assert key.source == str(path)
    assert key.fingerprint == bip32.HDKey.from_seed(SEED).my_fingerprint.hex()


def test_key_loads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_TEST_KEY", ROOT_TPRV)
    [key] = load_signing_keys(["env:SLUICE_TEST_KEY"])
    assert key.hd_root.to_base58() == ROOT_TPRV
    assert key.source == "env:SLUICE_TEST_KEY"


def test_a_signing_key_never_shows_its_key(tmp_path: Path) -> None:
    [key] = load_signing_keys([_key_file(tmp_path, ROOT_TPRV)])
    secret_hex = key.hd_root.key.serialize().hex()
    for shown in (repr(key), str(key), f"{key}", repr([key])):
        assert ROOT_TPRV not in shown
        assert secret_hex not in shown
        assert key.fingerprint in shown
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, ROOT_TPRV, mode)
    with pytest.raises(InvalidInputError, match=rf"mode 0{mode:o}.*chmod 600 {path}"):
        load_signing_keys([path])


def test_missing_file_and_missing_variable_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidInputError, match=r"nope\.tprv does not exist"):
        load_signing_keys([tmp_path / "nope.tprv"])
    monkeypatch.delenv("SLUICE_NO_SUCH_KEY", raising=False)
    with pytest.raises(InvalidInputError, match="env:SLUICE_NO_SUCH_KEY: environment variable"):
        load_signing_keys(["env:SLUICE_NO_SUCH_KEY"])


def test_public_key_garbage_and_empty_file_are_refused_without_echoing(tmp_path: Path) -> None:
    public = bip32.HDKey.from_base58(ROOT_TPRV).to_public().to_base58()
    with pytest.raises(InvalidInputError, match="extended public key"):
        load_signing_keys([_key_file(tmp_path, public)])
    damaged = ROOT_TPRV[:-3] + ("zzz" if not ROOT_TPRV.endswith("zzz") else "yyy")
    with pytest.raises(InvalidInputError, match="not a valid extended private key") as caught:
        load_signing_keys([_key_file(tmp_path, damaged)])
    assert damaged not in str(caught.value)
    with pytest.raises(InvalidInputError, match="empty"):
        load_signing_keys([_key_file(tmp_path, "")])


def test_key_of_another_network_is_refused(tmp_path: Path) -> None:
    mainnet = bip32.HDKey.from_seed(SEED).to_base58()  # an xprv
    with pytest.raises(InvalidInputError, match=r"another network.*tprv"):
        load_signing_keys([_key_file(tmp_path, mainnet)], chain=CHAIN)


def test_sandbox_custody_writes_three_private_keys_and_a_verified_descriptor(
    tmp_path: Path,
) -> None:
    keys_dir = tmp_path / "custody" / "keys"
    custody = create_sandbox_custody(keys_dir, CHAIN)
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    assert len(custody.key_files) == 3
    for path in custody.key_files:
        assert path.parent == keys_dir
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = load_signing_keys(custody.key_files, chain=CHAIN)
    assert len({key.fingerprint for key in keys}) == 3
    parsed = parse_descriptor(custody.descriptor, CHAIN)
    assert [key.xpub for key in parsed.keys] == custody.xpubs
    for key, custody_key in zip(keys, parsed.keys, strict=True):
        # Origins name the root key and BIP 48's account path, so the root keys sign.
        assert custody_key.fingerprint == key.fingerprint
        assert list(custody_key.origin_path) == account_path(CHAIN)
        account = key.hd_root.derive(account_path(CHAIN)).to_public()
        assert account.to_base58(version=CHAIN.xpub_version) == custody_key.xpub
    wallet = EmbitCustodyWallet(custody.descriptor, CHAIN, keys)
    assert wallet.signing_keys_held == 3


def test_sandbox_custody_makes_different_keys_each_time(tmp_path: Path) -> None:
    first = create_sandbox_custody(tmp_path / "a", CHAIN)
    second = create_sandbox_custody(tmp_path / "b", CHAIN)
    assert not set(first.xpubs) & set(second.xpubs)


def test_sandbox_custody_never_overwrites_keys(tmp_path: Path) -> None:
    custody = create_sandbox_custody(tmp_path / "keys", CHAIN)
    before = [path.read_bytes() for path in custody.key_files]
    with pytest.raises(InvalidInputError, match="refusing to overwrite existing key files"):
        create_sandbox_custody(tmp_path / "keys", CHAIN)
    assert [path.read_bytes() for path in custody.key_files] == before


def test_sandbox_custody_refuses_a_directory_open_to_others(tmp_path: Path) -> None:
    exposed = tmp_path / "exposed"
    exposed.mkdir()
    exposed.chmod(0o755)
    with pytest.raises(InvalidInputError, match="chmod 700"):
        create_sandbox_custody(exposed, CHAIN)
    assert list(exposed.iterdir()) == []


def test_signing_key_requires_a_private_extended_key() -> None:
    public = bip32.HDKey.from_base58(ROOT_TPRV).to_public()
    with pytest.raises(InvalidInputError, match="not an extended private key"):
        SigningKey(public, source="test")
