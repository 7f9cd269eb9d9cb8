"""The JSON Ledger API v2 commands of the embedded ledger's server: ``submit-and-wait``, the
interactive submission of external parties (``prepare``, then ``execute`` or
``executeAndWait`` with an Ed25519 signature of the prepared transaction's hash), and
completions (list and WebSocket).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from sluice.domain.errors import InvalidInputError, SluiceError
from sluice.domain.ledger import format_timestamp, parse_timestamp
from sluice.ledger import wire
from sluice.ledger.wire import Json

from .engine import CommandResult, Completion
from .server_api import JsonApi
from .server_problems import (
    CATEGORY_INVALID,
    Problem,
    bad_body,
    canton_problem,
    command_problem,
    completion_status,
    invalid_argument,
)
from .server_requests import body_field, body_object, body_offset, query_limit
from .server_streams import (
    POLL_INTERVAL_S,
    accept_websocket,
    collect_list,
    first_message,
    send_problem,
    watch_disconnect,
)


def load_public_key(path: Path) -> bytes:
    """An external party's Ed25519 public key from a file: the raw 32 bytes, their hex (64
    digits) or base64, or a PEM ``PUBLIC KEY``. ``ValueError`` if it is none of these."""
    data = Path(path).read_bytes()
    if len(data) == 32:
        return data
    text = data.decode("ascii", errors="replace").strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: the PEM key is not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    with contextlib.suppress(ValueError):
        raw = bytes.fromhex(text)
        if len(raw) == 32:
            return raw
    with contextlib.suppress(ValueError):
        raw = base64.b64decode(text, validate=True)
        if len(raw) == 32:
            return raw
    raise ValueError(f"{path}: not an Ed25519 public key (raw 32 bytes, hex, base64 or PEM)")


class CommandApi(JsonApi):
    """``/v2/commands/...`` and ``/v2/interactive-submission/...``."""

    # --- submit and wait ------------------------------------------------------------------------

    def _command_request(
        self, node: str, body: Json
    ) -> tuple[str, str, wire.TransferCommand | wire.InstructionCommand]:
        commands = body_field(body, "commands", list, required=True)
        command_id = body_field(body, "commandId", str, required=True)
        act_as = body_field(body, "actAs", list, required=True)
        assert commands is not None
        assert command_id is not None
        assert act_as is not None
        if len(commands) != 1:
            raise invalid_argument(f"exactly one command is supported here, got {len(commands)}")
        if len(act_as) != 1 or not isinstance(act_as[0], str):
            raise invalid_argument("actAs must name exactly one party here")
        if not command_id:
            raise invalid_argument("commandId must not be empty")
        party: str = act_as[0]
        try:
            command = wire.decode_command(commands[0])
        except InvalidInputError as exc:
            raise invalid_argument(str(exc)) from None
        self.source.check_party(node, party)
        return party, command_id, command

    def _run_command(
        self,
        party: str,
        command_id: str,
        command: wire.TransferCommand | wire.InstructionCommand,
        max_record_time: datetime | None,
    ) -> CommandResult:
        ledger = self.ledger
        try:
            if isinstance(command, wire.TransferCommand):
                return ledger.submit_transfer(
                    command.transfer,
                    factory_id=command.factory_id,
                    context=command.context,
                    command_id=command_id,
                    act_as=[party],
                    max_record_time=max_record_time,
                )
            run = {"accept": ledger.accept, "reject": ledger.reject, "withdraw": ledger.withdraw}[
                command.choice
            ]
            return run(
                command.instruction_cid,
                party,
                command_id=command_id,
                max_record_time=max_record_time,
                context=command.context,
                extra_meta=command.meta,
            )
        except (SluiceError, ValueError) as exc:
            raise command_problem(exc, ledger, party) from exc

    def _submitted(self, party: str, result: CommandResult) -> Json:
        offset = self.ledger.update_offset(result.update_id, party)
        return {"updateId": result.update_id, "completionOffset": offset or 0}

    async def submit_and_wait(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            party, command_id, command = self._command_request(node, body)
            result = self._run_command(party, command_id, command, None)
            return self._submitted(party, result)

        return await self._answer(work)

    # --- external parties -------------------------------------------------------------------------

    async def prepare(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            party, command_id, _ = self._command_request(node, body)
            max_record_time = body.get("maxRecordTime")
            if max_record_time is not None:
                try:
                    parse_timestamp(max_record_time, field="maxRecordTime")
                except InvalidInputError as exc:
                    raise invalid_argument(str(exc)) from None
            prepared = {
                "format": "sluice-embedded-prepared-v1",
                "node": node,
                "synchronizerId": self.ledger.synchronizer_id,
                "commandId": command_id,
                "actAs": [party],
                "commands": body["commands"],
                "userId": body.get("userId") or "",
                "maxRecordTime": max_record_time,
            }
            encoded = orjson.dumps(prepared, option=orjson.OPT_SORT_KEYS)
            return {
                "preparedTransaction": base64.b64encode(encoded).decode(),
                "preparedTransactionHash": base64.b64encode(
                    hashlib.sha256(encoded).digest()
                ).decode(),
                "hashingSchemeVersion": wire.HASHING_SCHEME_VERSION,
            }

        return await self._answer(work)

    def _verified(
        self, node: str, body: Json
    ) -> tuple[str, str, wire.TransferCommand | wire.InstructionCommand, datetime | None]:
        """The command of a signed prepared transaction, once its signature is checked."""
        prepared_text = body_field(body, "preparedTransaction", str, required=True)
        signatures = body_field(body, "partySignatures", dict, required=True)
        body_field(body, "submissionId", str, required=True)
        scheme = body_field(body, "hashingSchemeVersion", str, required=True)
        assert prepared_text is not None
        assert signatures is not None
        if scheme != wire.HASHING_SCHEME_VERSION:
            raise invalid_argument(f"hashingSchemeVersion must be {wire.HASHING_SCHEME_VERSION}")
        try:
            encoded = base64.b64decode(prepared_text, validate=True)
            prepared = orjson.loads(encoded)
        except (ValueError, orjson.JSONDecodeError):
            raise invalid_argument("preparedTransaction is not one this server prepared") from None
        if (
            not isinstance(prepared, dict)
            or prepared.get("format") != "sluice-embedded-prepared-v1"
        ):
            raise invalid_argument("preparedTransaction is not one this server prepared")
        if prepared.get("node") != node:
            raise invalid_argument(
                f"the transaction was prepared on node {prepared.get('node')}, not {node}"
            )
        party, command_id, command = self._command_request(node, prepared)
        self._check_signature(party, hashlib.sha256(encoded).digest(), signatures)
        max_record_time = None
        if prepared.get("maxRecordTime") is not None:
            max_record_time = parse_timestamp(prepared["maxRecordTime"], field="maxRecordTime")
        return party, command_id, command, max_record_time

    def _check_signature(self, party: str, digest: bytes, signatures: Mapping[str, Any]) -> None:
        def refuse(cause: str) -> Problem:
            return canton_problem("INVALID_SIGNATURE", cause, CATEGORY_INVALID, definite=True)

        key = self.external_keys.get(party)
        if key is None:
            raise refuse(f"no external signing key is registered for party {party}")
        fingerprint = wire.key_fingerprint(key)
        entries = signatures.get("signatures")
        if not isinstance(entries, list):
            raise bad_body("partySignatures.signatures must be a list")
        offered = [
            s
            for entry in entries
            if isinstance(entry, Mapping) and entry.get("party") == party
            for s in entry.get("signatures") or ()
            if isinstance(s, Mapping)
        ]
        if not offered:
            raise refuse(f"the submission carries no signature of {party}")
        public_key = Ed25519PublicKey.from_public_bytes(key)
        for signature in offered:
            if signature.get("signedBy") != fingerprint:
                continue
            if signature.get("signingAlgorithmSpec") != wire.SIGNING_ALGORITHM:
                continue
            try:
                public_key.verify(
                    base64.b64decode(str(signature.get("signature")), validate=True), digest
                )
            except (InvalidSignature, ValueError):
                continue
            return
        raise refuse(
            f"no valid {wire.SIGNING_ALGORITHM} signature of the prepared transaction hash by "
            f"{party}'s key {fingerprint}"
        )

    async def execute(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            party, command_id, command, max_record_time = self._verified(node, body)
            # Asynchronous in Canton: the outcome (success or rejection) is in the completions.
            with contextlib.suppress(Problem):
                self._run_command(party, command_id, command, max_record_time)
            return {}

        return await self._answer(work)

    async def execute_and_wait(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            party, command_id, command, max_record_time = self._verified(node, body)
            result = self._run_command(party, command_id, command, max_record_time)
            return self._submitted(party, result)

        return await self._answer(work)

    # --- completions ------------------------------------------------------------------------------

    def _completions_request(self, node: str, body: Json) -> tuple[list[str], int, str]:
        parties = body_field(body, "parties", list, required=True)
        assert parties is not None
        if not parties or not all(isinstance(p, str) for p in parties):
            raise invalid_argument("parties must name at least one party")
        for party in parties:
            self.source.check_party(node, party)
        begin = body_offset(body, "beginExclusive") or 0
        user_id = body_field(body, "userId", str) or ""
        return list(dict.fromkeys(parties)), begin, user_id

    def _completion_items(
        self, node: str, parties: Sequence[str], begin: int, user_id: str, after_sequence: int
    ) -> tuple[list[Json], int]:
        """Completions of ``parties`` after ``after_sequence`` whose offset is after ``begin``,
        and the last sequence number looked at."""
        self._refresh()
        ledger = self.ledger
        found: dict[int, Completion] = {}
        for party in parties:
            for completion in ledger.completions(party, after_sequence):
                found[completion.sequence] = completion
        items: list[Json] = []
        last = after_sequence
        for sequence in sorted(found):
            completion = found[sequence]
            last = sequence
            offset = completion.offset
            if offset is None:
                # A rejection has no offset of its own here (Canton gives it one): it is placed
                # at the node's last offset before it and still served to a reader resuming from
                # that offset, who may see it twice but never misses it.
                offset = ledger.offset_at_record_time(node, completion.record_time)
                if offset < begin:
                    continue
            elif offset <= begin:
                continue
            value: Json = {
                "commandId": completion.command_id,
                "userId": user_id,
                "actAs": [p for p in completion.act_as if p in parties],
                "offset": offset,
                "synchronizerTime": {
                    "synchronizerId": ledger.synchronizer_id,
                    "recordTime": format_timestamp(completion.record_time),
                },
                "status": completion_status(completion),
            }
            if completion.update_id is not None:
                value["updateId"] = completion.update_id
            items.append({"completionResponse": {"Completion": {"value": value}}})
        return items, last

    async def completions(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            limit = query_limit(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> bytes:
            parties, begin, user_id = self._completions_request(node, body)
            items, _ = self._completion_items(node, parties, begin, user_id, 0)
            return collect_list(iter(items), None, limit, self.list_limit)

        return await self._answer(work)

    async def completions_ws(self, websocket: WebSocket) -> None:
        await accept_websocket(websocket)
        text = await first_message(websocket)
        if text is None:
            return
        try:
            node = self._node(websocket.path_params)
            body = body_object(text)
            parties, begin, user_id = await run_in_threadpool(self._completions_request, node, body)
        except Problem as problem:
            await send_problem(websocket, problem)
            return
        closed = asyncio.Event()
        watcher = asyncio.create_task(watch_disconnect(websocket, closed))
        ledger = self.ledger
        sequence = 0
        seen = -1
        try:
            while not closed.is_set():
                current = await run_in_threadpool(ledger.completion_sequence)
                if current != seen:
                    seen = current
                    items, sequence = await run_in_threadpool(
                        self._completion_items, node, parties, begin, user_id, sequence
                    )
                    for item in items:
                        await websocket.send_text(orjson.dumps(item).decode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), POLL_INTERVAL_S)
        except WebSocketDisconnect:
            return
        finally:
            watcher.cancel()
