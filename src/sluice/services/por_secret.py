"""The operator's proof-of-liabilities secret (``[reserves] por_secret_file``): 32 random bytes
that key every leaf's nonce and so the order of a snapshot's leaves
(:mod:`sluice.services.por_snapshots`). It is made once (mode 0600, written whole or not at all)
and must be backed up: without it no proof of a past snapshot can be given again, and a leaked
one links every customer to their leaf.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import structlog

from sluice.domain.errors import InvalidOperationStateError

__all__ = ["SECRET_SIZE", "PorSecretError", "load_or_create_secret", "load_secret"]

log = structlog.get_logger("sluice.por")

SECRET_SIZE = 32


class PorSecretError(InvalidOperationStateError):
    """The proof-of-liabilities secret cannot be used (wrong size, readable by others, or not
    the one the published roots were built with)."""


def load_or_create_secret(path: Path) -> bytes:
    """The operator's secret: 32 bytes read from ``path``, made there on first use (random,
    mode 0600, written whole or not at all). Refused when the file has another size or is
    readable or writable by anyone but its owner: a leaked secret links every customer to
    their leaf, a changed one can no longer rebuild any published tree."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    try:
        _create_secret(path)
    except OSError as exc:
        raise PorSecretError(
            f"cannot make the proof-of-liabilities secret {path}: {exc.strerror or exc}"
        ) from exc
    return _read_secret(path)


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(descriptor, secrets.token_bytes(SECRET_SIZE))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            # A hard link, not a rename: it never replaces a secret another process made
            # meanwhile (that one is then read and used).
            os.link(temporary, path)
        except FileExistsError:
            pass
        else:
            _sync_directory(path.parent)
            log.info("por: made the proof-of-liabilities secret; back it up", path=str(path))
    finally:
        temporary.unlink(missing_ok=True)


def load_secret(path: Path) -> bytes:
    """The secret of past snapshots, never made here: without the file no proof of them can be
    given, and a new secret would not rebuild their roots."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        raise PorSecretError(
            f"the proof-of-liabilities secret {path} is missing: restore it from the backup "
            "(no proof of a snapshot can be made without the secret it was taken with)"
        ) from None


def _read_secret(path: Path) -> bytes:
    """The secret's 32 bytes; FileNotFoundError when there is no file, PorSecretError for
    anything else wrong with it."""
    try:
        return _checked_secret(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PorSecretError(
            f"cannot read the proof-of-liabilities secret {path}: {exc.strerror or exc}"
        ) from exc


def _checked_secret(path: Path) -> bytes:
    with path.open("rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise PorSecretError(f"the proof-of-liabilities secret {path} is not a file")
        if status.st_mode & 0o077:
            raise PorSecretError(
                f"the proof-of-liabilities secret {path} is open to others (mode "
                f"{stat.S_IMODE(status.st_mode):04o}); make it 0600 (chmod 600 {path})"
            )
        data = handle.read(SECRET_SIZE + 1)
    if len(data) != SECRET_SIZE:
        raise PorSecretError(
            f"the proof-of-liabilities secret {path} holds {len(data)}"
            f"{'+' if len(data) > SECRET_SIZE else ''} bytes, not {SECRET_SIZE}: it is not one "
            "sluice made; restore it from the backup"
        )
    return data


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
