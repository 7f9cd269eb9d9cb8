"""The submitting side of a participant node's JSON Ledger API v2: :class:`CantonCommands`.

It implements :class:`sluice.ports.LedgerCommands`. Returning normally means the node confirmed the
command (it answered with the update id); anything else is :class:`sluice.ports.CommandError`,
``definite`` only when the command certainly did not commit:

* the node rejected it (a ``JsCantonError`` that :func:`sluice.ledger.wire.is_definite_rejection`
  calls definite), or refused the credentials (401 / 403: the message says authentication);
* a failure to *prepare* an external party's command: nothing was submitted yet;
* never for a timeout, a connection failure, a 5xx, a malformed answer, a duplicate command or a
  request still in flight: the command may have committed, and ingestion will tell.

Commands are never retried here (the transport does not retry writes); a retry is the caller's
decision, with the same command id.

Local parties (hosted by the node, no signer here) submit with ``/v2/commands/submit-and-wait``.
Its ``JsCommands`` has no ``maxRecordTime`` field. That bound is what makes a withdrawal retry
safe (an attempt is declared failed once ingestion has passed its ``max_record_time``), so for a
local party it comes from the node's own rule instead: a transaction's record time may exceed its
ledger time — taken when the node interprets the command — by at most the synchronizer's
ledger-time / record-time tolerance (60 s by default). Hence a local-party command with a
``max_record_time`` is submitted only while at least ``local_margin_s`` (≥ that tolerance plus the
node's submission delay) remain before it; later it is refused here, definitely (nothing was
sent), and the attempt is settled once its deadline has passed. A command sent late would
otherwise be able to commit after the worker had already retried with other inputs: a double
payment. An external treasury party does not depend on this: its ``maxRecordTime`` is enforced by
the node. External parties (a signer is configured) go through
``/v2/interactive-submission/prepare`` with ``maxRecordTime`` set, sign the prepared transaction's
hash with their Ed25519 key, and ``/v2/interactive-submission/executeAndWait`` with a fresh
``submissionId`` per attempt. The preparing node is trusted: the hash is signed as the node
computed it (the exchange's own node prepares the exchange's own transfers).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import Transfer
from sluice.ledger import wire
from sluice.ports import ChoiceContextData, CommandError, FactoryChoice, InstructionChoice

from .errors import (
    CantonAuthError,
    CantonError,
    CantonUnavailableError,
    MalformedResponseError,
)
from .transport import LedgerHttp, expect_object

SUBMIT_AND_WAIT_PATH = "/v2/commands/submit-and-wait"
PREPARE_PATH = "/v2/interactive-submission/prepare"
EXECUTE_AND_WAIT_PATH = "/v2/interactive-submission/executeAndWait"


class Ed25519Signer:
    """The Ed25519 key of an external party."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.fingerprint = wire.key_fingerprint(self.public_key_raw)

    @classmethod
    def from_seed(cls, seed: bytes) -> Ed25519Signer:
        if len(seed) != 32:
            raise InvalidInputError("an Ed25519 private key seed has 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_file(cls, path: str | Path) -> Ed25519Signer:
        """Load a private key: PEM (PKCS#8), DER (PKCS#8), a raw 32-byte seed, or the seed as
        64 hex digits. Errors name the file, never its contents."""
        data = Path(path).read_bytes()
        stripped = data.strip()
        try:
            if stripped.startswith(b"-----BEGIN"):
                key = serialization.load_pem_private_key(stripped, password=None)
            elif len(data) == 32:
                return cls.from_seed(data)
            elif len(stripped) == 64 and _is_hex(stripped):
                return cls.from_seed(bytes.fromhex(stripped.decode("ascii")))
            else:
                key = serialization.load_der_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"{path}: not a readable Ed25519 private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidInputError(f"{path}: the key is not an Ed25519 key")
        return cls(key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def _system_clock() -> datetime:
    return datetime.now(UTC)


def _is_hex(text: bytes) -> bool:
    try:
        bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


class CantonCommands:
    """:class:`sluice.ports.LedgerCommands` on one participant node."""

    def __init__(
        self,
        http: LedgerHttp,
        *,
        user_id: str | None = None,
        synchronizer_id: str | None = None,
        signers: Mapping[str, Ed25519Signer] | None = None,
        timeout_s: float = 60,
        clock: Callable[[], datetime] | None = None,
        local_margin_s: float = 90.0,
    ) -> None:
        if local_margin_s < 0:
            raise InvalidInputError("local_margin_s must not be negative")
        self.http = http
        self._clock = clock or _system_clock
        self.local_margin_s = local_margin_s
        self.user_id = user_id
        self.synchronizer_id = synchronizer_id
        self._signers = dict(signers or {})
        self.timeout_s = timeout_s

    def submit_transfer(
        self,
        transfer: Transfer,
        factory: FactoryChoice,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None,
    ) -> None:
        command = wire.transfer_command(transfer, factory.factory_id, factory.context.values)
        self._submit(
            command,
            factory.context.disclosed_contracts,
            act_as=act_as,
            command_id=command_id,
            max_record_time=max_record_time,
        )

    def exercise_instruction(
        self,
        choice: InstructionChoice,
        instruction_cid: str,
        context: ChoiceContextData,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None = None,
    ) -> None:
        command = wire.instruction_command(choice, instruction_cid, context.values)
        self._submit(
            command,
            context.disclosed_contracts,
            act_as=act_as,
            command_id=command_id,
            max_record_time=max_record_time,
        )

    # -- internals ----------------------------------------------------------------------------

    def _submit(
        self,
        command: wire.Json,
        disclosed: tuple[Mapping[str, Any], ...],
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None,
    ) -> None:
        what = f"command {command_id} acting as {act_as}"
        signer = self._signers.get(act_as)
        if signer is None:
            if max_record_time is not None:
                left_s = (max_record_time - self._clock()).total_seconds()
                if left_s < self.local_margin_s:
                    raise CommandError(
                        f"{what}: not submitted: {left_s:.0f} s before its max record time, less "
                        f"than the {self.local_margin_s:.0f} s a local party's command needs to "
                        "be sure not to commit after it (the node cannot enforce it)",
                        definite=True,
                        code="SUBMISSION_TOO_LATE",
                    )
            body = wire.js_commands(
                [command],
                command_id=command_id,
                act_as=[act_as],
                user_id=self.user_id,
                disclosed_contracts=disclosed,
                submission_id=str(uuid.uuid4()),
            )
            if self.synchronizer_id:
                body["synchronizerId"] = self.synchronizer_id
            self._execute(what, SUBMIT_AND_WAIT_PATH, body)
            return
        request = wire.prepare_request(
            [command],
            command_id=command_id,
            act_as=[act_as],
            user_id=self.user_id,
            disclosed_contracts=disclosed,
            synchronizer_id=self.synchronizer_id,
            max_record_time=max_record_time,
        )
        try:
            prepared = self._prepare(request)
            body = self._signed_execution(prepared, act_as, signer)
        except CantonError as exc:
            # Nothing was submitted: preparing only interprets the command.
            raise CommandError(
                f"{what}: preparing failed: {exc}", definite=True, code=exc.node_code
            ) from exc
        self._execute(what, EXECUTE_AND_WAIT_PATH, body)

    def _prepare(self, request: wire.Json) -> dict[str, Any]:
        # Preparing changes nothing on the ledger, so it is retried like a read.
        answer = self.http.post(PREPARE_PATH, request, read=True, timeout_s=self.timeout_s)
        return expect_object(answer, "POST", PREPARE_PATH, "JsPrepareSubmissionResponse")

    def _signed_execution(
        self, prepared: Mapping[str, Any], act_as: str, signer: Ed25519Signer
    ) -> wire.Json:
        transaction = prepared.get("preparedTransaction")
        hash_text = prepared.get("preparedTransactionHash")
        scheme = prepared.get("hashingSchemeVersion")
        if not isinstance(transaction, str) or not transaction:
            raise MalformedResponseError("POST", PREPARE_PATH, "no preparedTransaction")
        if not isinstance(scheme, str) or not scheme:
            raise MalformedResponseError("POST", PREPARE_PATH, "no hashingSchemeVersion")
        digest = b""
        if isinstance(hash_text, str):
            try:
                digest = base64.b64decode(hash_text, validate=True)
            except (binascii.Error, ValueError):
                digest = b""
        if not digest:
            raise MalformedResponseError(
                "POST", PREPARE_PATH, "preparedTransactionHash is missing or not base64"
            )
        signature = base64.b64encode(signer.sign(digest)).decode("ascii")
        body: wire.Json = {
            "preparedTransaction": transaction,
            "partySignatures": {
                "signatures": [
                    {
                        "party": act_as,
                        "signatures": [
                            {
                                "format": wire.SIGNATURE_FORMAT,
                                "signature": signature,
                                "signedBy": signer.fingerprint,
                                "signingAlgorithmSpec": wire.SIGNING_ALGORITHM,
                            }
                        ],
                    }
                ]
            },
            # A fresh id per attempt: the change id (user, parties, command id) stays the same.
            "submissionId": str(uuid.uuid4()),
            "hashingSchemeVersion": scheme,
        }
        if self.user_id:
            body["userId"] = self.user_id
        return body

    def _execute(self, what: str, path: str, body: wire.Json) -> None:
        try:
            answer = self.http.post(path, body, read=False, timeout_s=self.timeout_s)
            found = expect_object(answer, "POST", path, "a completion")
            if not isinstance(found.get("updateId"), str):
                raise MalformedResponseError("POST", path, "the answer has no updateId")
        except CantonAuthError as exc:
            raise CommandError(
                f"{what}: authentication failed: {exc}", definite=True, code=exc.node_code
            ) from exc
        except (CantonUnavailableError, MalformedResponseError) as exc:
            raise CommandError(
                f"{what}: no confirmation (the command may have committed): {exc}",
                definite=False,
                code=exc.node_code,
            ) from exc
        except CantonError as exc:
            server_failure = exc.status is not None and exc.status >= 500
            definite = exc.definite and not server_failure
            raise CommandError(
                f"{what}: {'rejected' if definite else 'not confirmed'}: {exc}",
                definite=definite,
                code=exc.node_code,
            ) from exc
