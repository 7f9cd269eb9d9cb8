"""API keys: created for a role (and, for a user, a customer), shown once, revoked for good.

A key reads ``sk_<id>_<secret>``: ``id`` is 16 hex characters that name the key (safe to log and
to show in lists), ``secret`` 32 random bytes in URL-safe base64. Only the sha256 of the secret is
stored, so a copy of the database does not let anyone call the API; a lost key cannot be shown
again, only revoked and replaced.

:class:`ApiKeyVerifier` turns a presented key into a :class:`Principal`. It keeps successful
look-ups in memory for ``ttl_s`` seconds so a busy API does not read the database on every
request. The price is that **a revocation takes effect in a process within ``ttl_s``** of being
committed — immediately in the process that revoked the key, which calls :meth:`forget`.

Creating and revoking a key are audited; the secret never reaches the audit trail or a log.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sluice.domain.access import Principal, Role, check_role
from sluice.domain.audit import AuditEntry
from sluice.domain.errors import (
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
    UnauthorizedError,
)
from sluice.ports import ApiKeyRecord, UnitOfWork, UnitOfWorkFactory

KEY_PREFIX = "sk_"
KEY_ID_LENGTH = 16  # secrets.token_hex(8)
SECRET_BYTES = 32
KEY_LENGTH_MAX = 200  # anything longer is not one of ours; refused before any work
LABEL_LENGTH_MAX = 200
CUSTOMER_ID_LENGTH_MAX = 100
CACHE_ENTRIES_MAX = 10_000
_HEX = frozenset("0123456789abcdef")
_URLSAFE = frozenset(string.ascii_letters + string.digits + "-_")


def hash_secret(secret: str) -> str:
    """What is stored for a key's secret: its sha256, in hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(presented: str) -> tuple[str, str]:
    """(key id, secret) of a key string; :class:`UnauthorizedError` if it does not have the
    shape of one (the message never repeats what was presented)."""
    malformed = UnauthorizedError(
        f"malformed API key: expected {KEY_PREFIX}<16 hex characters>_<secret>"
    )
    if len(presented) > KEY_LENGTH_MAX or not presented.startswith(KEY_PREFIX):
        raise malformed
    body = presented[len(KEY_PREFIX) :]
    key_id = body[:KEY_ID_LENGTH]
    separator = body[KEY_ID_LENGTH : KEY_ID_LENGTH + 1]
    secret = body[KEY_ID_LENGTH + 1 :]
    if (
        len(key_id) != KEY_ID_LENGTH
        or not set(key_id) <= _HEX
        or separator != "_"
        or not secret
        or not set(secret) <= _URLSAFE
    ):
        raise malformed
    return key_id, secret


def _audit(
    uow: UnitOfWork,
    *,
    operation: str,
    record: ApiKeyRecord,
    actor: str,
    at: datetime,
    state_changes: list[dict[str, object]],
) -> None:
    uow.audit.append(
        [
            AuditEntry(
                operation_id=f"api_key:{record.id}:{operation.removeprefix('api_key_')}",
                operation=operation,
                actor=actor,
                recorded_at=at,
                customer_id=record.customer_id,
                parameters={
                    "key_id": record.id,
                    "role": record.role,
                    "customer_id": record.customer_id,
                    "label": record.label,
                },
                state_changes=state_changes,
            )
        ]
    )


def _require_actor(actor: str) -> str:
    if not actor.strip():
        raise InvalidInputError("the actor (who does this) must not be empty")
    return actor


def create_api_key(
    uow_factory: UnitOfWorkFactory,
    *,
    role: str,
    customer_id: str | None,
    label: str | None,
    actor: str,
    at: datetime,
) -> tuple[ApiKeyRecord, str]:
    """A new key for ``role`` (a user's key names their customer, which must exist): the stored
    record and the full key string, which is shown this once and never again."""
    _require_actor(actor)
    try:
        checked_role = check_role(role)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    if checked_role == "user":
        if not customer_id:
            raise InvalidInputError("a key with role 'user' needs the customer it acts for")
        if len(customer_id) > CUSTOMER_ID_LENGTH_MAX:
            raise InvalidInputError(
                f"customer id is {len(customer_id)} characters long "
                f"(at most {CUSTOMER_ID_LENGTH_MAX})"
            )
    elif customer_id is not None:
        raise InvalidInputError(
            f"only a key with role 'user' names a customer (role {checked_role!r} does not)"
        )
    if label is not None and len(label) > LABEL_LENGTH_MAX:
        raise InvalidInputError(
            f"label is {len(label)} characters long (at most {LABEL_LENGTH_MAX})"
        )
    key_id = secrets.token_hex(KEY_ID_LENGTH // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    record = ApiKeyRecord(
        id=key_id,
        secret_hash=hash_secret(secret),
        role=checked_role,
        customer_id=customer_id,
        label=label,
        created_by=actor,
        created_at=at,
    )
    with uow_factory() as uow:
        if customer_id is not None and not uow.withdrawals.customer_exists(customer_id):
            raise NotFoundError(f"unknown customer {customer_id!r}")
        uow.access.add_api_key(record)
        _audit(
            uow,
            operation="api_key_created",
            record=record,
            actor=actor,
            at=at,
            state_changes=[{"api_key": key_id, "status": "active"}],
        )
        uow.commit()
    return record, f"{KEY_PREFIX}{key_id}_{secret}"


def revoke_api_key(
    uow_factory: UnitOfWorkFactory, key_id: str, *, actor: str, at: datetime
) -> ApiKeyRecord:
    """Revoke a key for good (:class:`NotFoundError` if unknown, 41 if already revoked), and
    every web session signed in with it. The caller holding an :class:`ApiKeyVerifier` should
    also ``forget`` it."""
    _require_actor(actor)
    with uow_factory() as uow:
        record = uow.access.api_key(key_id)
        if record is None:
            raise NotFoundError(f"unknown API key {key_id!r}")
        if record.revoked_at is not None or not uow.access.revoke_api_key(key_id, actor, at):
            raise InvalidOperationStateError(f"API key {key_id} is already revoked")
        revoked = uow.access.api_key(key_id)
        assert revoked is not None
        # The web pages' sessions signed in with this key end with it.
        uow.web_sessions.revoke_principal(f"key:{key_id}", at)
        _audit(
            uow,
            operation="api_key_revoked",
            record=revoked,
            actor=actor,
            at=at,
            state_changes=[{"api_key": key_id, "status": "revoked", "was": "active"}],
        )
        uow.commit()
    return revoked


def list_api_keys(
    uow_factory: UnitOfWorkFactory, *, offset: int = 0, limit: int = 100
) -> list[ApiKeyRecord]:
    """Keys oldest first, revoked ones included (their hashes are not secrets, but neither are
    they any use to a reader: the API shows the rest)."""
    with uow_factory() as uow:
        return uow.access.api_keys(offset=offset, limit=limit)


@dataclass(frozen=True, slots=True)
class _Cached:
    secret_hash: str
    principal: Principal
    expires_at: float


class ApiKeyVerifier:
    """Authenticates presented API keys, keeping successful look-ups for ``ttl_s`` seconds.

    Thread-safe. At most :data:`CACHE_ENTRIES_MAX` keys are kept (the least recently used go
    first). Failed look-ups are never cached, so a key created a moment ago works at once.
    A revocation committed elsewhere takes effect here within ``ttl_s``; :meth:`forget` makes it
    immediate. Each entry is kept for a random part of ``ttl_s`` between ``1 - jitter`` and 1,
    so that keys first used at the same moment are looked up again at different moments.
    """

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        *,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        entries_max: int = CACHE_ENTRIES_MAX,
        jitter: float = 0.5,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        if not ttl_s >= 0:
            raise InvalidInputError(f"ttl_s must be ≥ 0, got {ttl_s!r}")
        if entries_max < 1:
            raise InvalidInputError(f"entries_max must be ≥ 1, got {entries_max!r}")
        if not 0 <= jitter < 1:
            raise InvalidInputError(f"jitter must be in [0, 1), got {jitter!r}")
        self._jitter = jitter
        self._uniform = uniform
        self._uow_factory = uow_factory
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries_max = entries_max
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def authenticate(self, presented: str) -> Principal:
        """The principal a key names; :class:`UnauthorizedError` for a malformed, unknown,
        wrong or revoked key."""
        key_id, secret = parse_key(presented)
        presented_hash = hash_secret(secret)
        cached = self._cached(key_id)
        if cached is None:
            cached = self._load(key_id)
        if not hmac.compare_digest(presented_hash, cached.secret_hash):
            raise UnauthorizedError(f"API key {key_id}: the secret does not match")
        return cached.principal

    def is_cached(self, presented: str) -> bool:
        """True when authenticating ``presented`` now needs no database look-up (its key id is
        cached, or it is malformed and refused without one)."""
        try:
            key_id, _secret = parse_key(presented)
        except UnauthorizedError:
            return True
        return self._cached(key_id) is not None

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (after revoking it), so it is looked up again."""
        with self._lock:
            self._cache.pop(key_id, None)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def _cached(self, key_id: str) -> _Cached | None:
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key_id)
            if entry is None:
                return None
            if entry.expires_at <= now:
                del self._cache[key_id]
                return None
            self._cache.move_to_end(key_id)
            return entry

    def _load(self, key_id: str) -> _Cached:
        with self._uow_factory() as uow:
            record = uow.access.api_key(key_id)
        if record is None:
            raise UnauthorizedError(f"unknown API key {key_id}")
        if record.revoked_at is not None:
            raise UnauthorizedError(f"API key {key_id} was revoked")
        try:
            role: Role = check_role(record.role)
            principal = Principal(id=f"key:{record.id}", role=role, customer_id=record.customer_id)
        except ValueError as exc:
            # A row that no longer names a valid role or customer admits no one.
            raise UnauthorizedError(f"API key {key_id} is not usable: {exc}") from None
        # Each entry lives between (1 - jitter) × ttl and ttl: keys first used together (a
        # fleet of clients starting at once) do not all expire, and go to the database, together.
        lifetime = self._ttl_s * (1.0 - self._jitter * self._uniform())
        entry = _Cached(record.secret_hash, principal, self._clock() + lifetime)
        if self._ttl_s > 0:
            with self._lock:
                self._cache[key_id] = entry
                self._cache.move_to_end(key_id)
                while len(self._cache) > self._entries_max:
                    self._cache.popitem(last=False)
        return entry
