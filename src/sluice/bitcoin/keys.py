"""Custody signing keys: loaded from files or the environment, never shown, and sandbox key making.

A :class:`SigningKey` holds one extended private key (the root of one of the three custody keys,
or an account-level key whose public half is in the descriptor). Its ``repr`` and ``str`` show
only its fingerprint and where it came from, so a key cannot reach a log line or a traceback's
locals by accident.

Key files are refused when the group or others can read them (``chmod 600`` fixes that), the way
ssh refuses an exposed private key: a key readable by every account on the host is not custody.

:func:`create_sandbox_custody` makes three fresh keys for a sandbox or a test (``sluice btc custody
init``): random seeds from ``os.urandom``, one file per key (mode 0600, in a directory of mode
0700, never overwriting an existing file), and the descriptor of their account keys
(``m/48'/coin_type'/0'/2'``, the BIP 48 path of P2WSH multisig) with key origins, so the root keys
sign what the descriptor derives.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embit import bip32  # type: ignore[import-untyped]
from embit.descriptor.checksum import add_checksum  # type: ignore[import-untyped]

from sluice.domain.chains import Chain
from sluice.domain.errors import InvalidInputError

ENV_PREFIX = "env:"
CUSTODY_KEYS = 3
THRESHOLD = 2
_SEED_BYTES = 64
_HARDENED = 0x80000000


def account_path(chain: Chain) -> list[int]:
    """BIP 48's path of a P2WSH multisig account: ``m/48'/coin_type'/0'/2'``."""
    return [48 + _HARDENED, chain.coin_type + _HARDENED, _HARDENED, 2 + _HARDENED]


def path_text(path: list[int]) -> str:
    """A derivation path as descriptors write it (``48h/1h/0h/2h``), without the leading m."""
    parts = [f"{i - _HARDENED}h" if i >= _HARDENED else str(i) for i in path]
    return "/".join(parts)


class SigningKey:
    """One custody private key. Never printed: ``repr`` shows the fingerprint and source only."""

    __slots__ = ("_root", "fingerprint", "source")

    def __init__(self, root: Any, *, source: str) -> None:
        if not isinstance(root, bip32.HDKey) or not root.is_private:
            raise InvalidInputError(f"{source}: not an extended private key")
        self._root = root
        self.source = source
        self.fingerprint: str = root.my_fingerprint.hex()

    @property
    def hd_root(self) -> Any:
        """The embit ``HDKey`` (private). Only the wallet's signing code reads it."""
        return self._root

    @property
    def version(self) -> bytes:
        """The extended key's version bytes (``tprv`` or ``xprv``): which networks it is for."""
        return bytes(self._root.version)

    def __repr__(self) -> str:
        return f"SigningKey(fingerprint={self.fingerprint}, source={self.source!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling would write the key wherever the pickle goes (a cache, a queue, a crash dump).
        raise TypeError("a SigningKey is not picklable")


def parse_signing_key(text: str, *, source: str) -> SigningKey:
    """An extended private key from its base58 text; the error names ``source``, never the text."""
    text = text.strip()
    if not text:
        raise InvalidInputError(f"{source}: empty, expected an extended private key (tprv/xprv)")
    if text[1:4] == "pub":
        raise InvalidInputError(f"{source}: an extended public key; signing needs the private one")
    try:
        root = bip32.HDKey.from_base58(text)
    except Exception:
        # The parser's message may quote the key material: say what was wrong without it.
        raise InvalidInputError(
            f"{source}: not a valid extended private key (tprv/xprv, base58 with checksum)"
        ) from None
    return SigningKey(root, source=source)


def _check_private_file(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise InvalidInputError(
            f"key file {path} is readable by group or others (mode {mode:04o}): "
            f"run `chmod 600 {path}`"
        )


def load_signing_keys(
    specs: Sequence[str | Path], *, chain: Chain | None = None
) -> list[SigningKey]:
    """The keys named by ``specs``: each a path to a file holding one extended private key, or
    ``env:NAME`` for an environment variable holding it. With ``chain``, a key of another network
    (an ``xprv`` on a ``tprv`` chain) is refused."""
    keys: list[SigningKey] = []
    for spec in specs:
        text_spec = str(spec)
        if isinstance(spec, str) and text_spec.startswith(ENV_PREFIX):
            name = text_spec[len(ENV_PREFIX) :]
            value = os.environ.get(name)
            if not name or value is None:
                raise InvalidInputError(f"signing key {text_spec}: environment variable not set")
            key = parse_signing_key(value, source=text_spec)
        else:
            path = Path(spec)
            try:
                _check_private_file(path)
                value = path.read_text(encoding="ascii")
            except FileNotFoundError:
                raise InvalidInputError(f"key file {path} does not exist") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidInputError(f"key file {path} cannot be read: {exc}") from None
            key = parse_signing_key(value, source=str(path))
        if chain is not None and key.version != chain.xprv_version:
            raise InvalidInputError(
                f"{key.source}: an extended key of another network; {chain.name} keys start "
                f"with {_prefix_name(chain.xprv_version)}"
            )
        keys.append(key)
    return keys


def _prefix_name(version: bytes) -> str:
    return {"0488ade4": "xprv", "04358394": "tprv", "0488b21e": "xpub", "043587cf": "tpub"}.get(
        version.hex(), f"version {version.hex()}"
    )


@dataclass(frozen=True, slots=True)
class SandboxCustody:
    """What :func:`create_sandbox_custody` made: the descriptor (with its checksum), the key files
    that sign, and the three account xpubs in the descriptor's order."""

    descriptor: str
    key_files: list[Path]
    xpubs: list[str]


def _prepare_keys_dir(keys_dir: Path) -> None:
    if keys_dir.exists():
        if not keys_dir.is_dir():
            raise InvalidInputError(f"{keys_dir} exists and is not a directory")
        mode = stat.S_IMODE(keys_dir.stat().st_mode)
        if mode & 0o077:
            raise InvalidInputError(
                f"keys directory {keys_dir} is open to group or others (mode {mode:04o}): "
                f"run `chmod 700 {keys_dir}` or choose a new directory"
            )
        return
    keys_dir.mkdir(mode=0o700, parents=True)
    # mkdir's mode is filtered by the umask; set it exactly.
    keys_dir.chmod(0o700)


def _write_new_private_file(path: Path, text: str) -> None:
    # O_EXCL: a key file is never overwritten, even by a concurrent init.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, text.encode("ascii"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def create_sandbox_custody(keys_dir: Path, chain: Chain) -> SandboxCustody:
    """Three new random custody keys in ``keys_dir`` and the 2-of-3 descriptor over them."""
    prefix = _prefix_name(chain.xprv_version)
    key_files = [keys_dir / f"custody-key-{n}.{prefix}" for n in range(1, CUSTODY_KEYS + 1)]
    existing = [str(path) for path in key_files if path.exists()]
    if existing:
        raise InvalidInputError(
            f"refusing to overwrite existing key files: {', '.join(existing)}; "
            "choose another --keys-dir"
        )
    _prepare_keys_dir(keys_dir)
    path = account_path(chain)
    xpubs: list[str] = []
    parts: list[str] = []
    roots = [
        bip32.HDKey.from_seed(os.urandom(_SEED_BYTES), version=chain.xprv_version)
        for _ in range(CUSTODY_KEYS)
    ]
    for root in roots:
        account = root.derive(path).to_public()
        xpub = account.to_base58(version=chain.xpub_version)
        xpubs.append(xpub)
        parts.append(f"[{root.my_fingerprint.hex()}/{path_text(path)}]{xpub}/0/*")
    descriptor = add_checksum(f"wsh(sortedmulti({THRESHOLD},{','.join(parts)}))")
    for root, key_file in zip(roots, key_files, strict=True):
        _write_new_private_file(key_file, root.to_base58(version=chain.xprv_version) + "\n")
    return SandboxCustody(descriptor=str(descriptor), key_files=key_files, xpubs=xpubs)
