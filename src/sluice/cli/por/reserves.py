"""``sluice por reserves`` prints the signed reserves document of a snapshot (the latest by
default); ``sluice por verify-reserves FILE`` checks one with nothing else: no database, no
configuration (``--roots`` adds the snapshot's published liabilities roots, ``--node`` a node to
recheck the balances on). The document's shape, canonical JSON, digest and signatures are in
``docs/proof-of-reserves.md``.

``verify-reserves --descriptor D --istsi KEY`` pins the custody descriptor and the instrument
its Bitcoin backs, both as published together; the verdict's first line says which of them was
NOT pinned (the document then vouches for that part itself).

``verify-reserves`` exits 0 when the document is valid, 2 with every reason when it is not, and 1
when ``--node`` was given and the node could not be asked (nothing was compared then).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sluice.cli.common import (
    DbOption,
    JsonOption,
    deployment,
    fail,
    fail_with,
    note,
    open_database,
)
from sluice.cli.por.wiring import por_app
from sluice.domain.errors import InvalidInputError
from sluice.por.documents import Root
from sluice.ports.bitcoin import BitcoinNode

NODE_EXIT = 1  # the node could not be asked


def _document_text(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@por_app.command("reserves")
def reserves_command(
    snapshot: Annotated[
        str | None, typer.Option("--snapshot", help="The snapshot's id (default: the latest).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the document to this file.")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print or write the reserves document of a snapshot.

    Custody addresses and balances at a block, signed by the custody keys; the treasury's
    holdings at a ledger offset; reserves against liabilities per instrument."""
    database = open_database(db or deployment().database_url)
    try:
        with database.uow() as uow:
            found = (
                uow.reserves.snapshot(snapshot)
                if snapshot is not None
                else uow.reserves.latest_snapshot()
            )
    finally:
        database.dispose()
    if found is None:
        fail(f"no snapshot {snapshot!r}" if snapshot is not None else "no snapshot taken yet")
    if found.reserves is None:
        fail(f"snapshot {found.id} has no reserves document")
    document = dict(found.reserves)
    if out is not None:
        try:
            out.write_text(_document_text(document), encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror or exc}")
        note(f"wrote the reserves document of snapshot {found.id} to {out}")
        if not as_json:
            return
    if as_json:
        sys.stdout.write(_document_text(document))
        return
    sys.stdout.write(_summary(document))


def _summary(document: dict[str, Any]) -> str:
    lines = [f"snapshot {document.get('snapshot_id')} taken at {document.get('taken_at')}"]
    bitcoin = document.get("bitcoin") or {}
    if bitcoin.get("read"):
        lines.append(
            f"bitcoin: {bitcoin['total_sats']} sats in {len(bitcoin['addresses'])} addresses at "
            f"block {bitcoin['height']} {bitcoin['block_hash']}"
        )
    else:
        lines.append(f"bitcoin: not read ({bitcoin.get('reason')})")
    signatures = document.get("signatures") or []
    lines.append(f"signatures: {len(signatures)} (threshold {bitcoin.get('threshold')})")
    canton = document.get("canton") or {}
    if canton.get("read"):
        lines.append(
            f"canton: {canton['party']}'s holdings at offset {canton['offset']} (journal at "
            f"{canton.get('journal_offset')}, {canton.get('read_mode')})"
        )
    else:
        lines.append(f"canton: not read ({canton.get('reason')})")
    for report in document.get("reports") or []:
        owed = (
            f"liabilities {report['liabilities']} + other obligations "
            f"{report.get('other_obligations_units', '0')} units = owed {report.get('owed')}"
        )
        source = report.get("reserves_source")
        if report.get("reserves_read"):
            covered = report["reserves_cover_liabilities"]
            cover = (
                f"undetermined: {report.get('reason')}"
                if covered is None
                else ("covered" if covered else "NOT COVERED")
            )
            lines.append(
                f"  {report['instrument']}: reserves {report['reserves']} ({source}), {owed}, "
                f"ratio {report['ratio_bps'] or '-'} bps, {cover}"
            )
        else:
            lines.append(
                f"  {report['instrument']}: {owed}, reserves ({source}) not read "
                f"({report.get('reason')})"
            )
    lines.append(f"digest: {document.get('digest')}")
    return "\n".join(lines) + "\n"


def _node(
    url: str,
    document: dict[str, Any],
    cookie_file: Path | None,
    user: str | None,
    password: str | None,
) -> BitcoinNode:
    """The node ``--node`` names: an http(s) URL of Bitcoin Core's JSON-RPC, or ``file:PATH`` for
    a sandbox's embedded chain file."""
    if url.startswith("file:"):
        from sluice.bitcoin.chainfile import ChainFile, FileNode
        from sluice.domain.chains import CHAINS

        chain = CHAINS.get(str((document.get("bitcoin") or {}).get("chain")))
        if chain is None:
            fail("the document names no known chain, so its chain file cannot be read")
        return FileNode(ChainFile(Path(url.removeprefix("file:")), chain))
    from sluice.bitcoin.rpc import BitcoinRpc

    if cookie_file is not None and (user is not None or password is not None):
        fail("give either --rpc-cookie-file or --rpc-user and --rpc-password, not both")
    try:
        return BitcoinRpc(url, user=user, password=password, cookie_file=cookie_file)
    except ValueError as exc:
        fail(f"--node: {exc}")


def _roots(path: Path) -> list[Root]:
    from sluice.por.documents import parse_roots

    try:
        return parse_roots(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    except InvalidInputError as exc:
        fail_with(exc)


@por_app.command("verify-reserves")
def verify_reserves_command(
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="The reserves document (- for stdin).")
    ],
    descriptor: Annotated[
        str | None,
        typer.Option("--descriptor", help="The custody descriptor as published (with #checksum)."),
    ] = None,
    istsi: Annotated[
        str | None,
        typer.Option(
            "--istsi",
            metavar="KEY",
            help="The instrument the custody's Bitcoin backs (<id>@<admin>), as published with "
            "the descriptor: the document must say so and count it in satoshis.",
        ),
    ] = None,
    node_url: Annotated[
        str | None,
        typer.Option(
            "--node",
            help="Recheck the balances on this node: its JSON-RPC URL, or file:PATH for a "
            "sandbox's embedded chain file.",
        ),
    ] = None,
    cookie_file: Annotated[
        Path | None, typer.Option("--rpc-cookie-file", help="The node's cookie file.")
    ] = None,
    user: Annotated[str | None, typer.Option("--rpc-user", help="The node's RPC user.")] = None,
    password: Annotated[
        str | None, typer.Option("--rpc-password", help="The node's RPC password.")
    ] = None,
    roots_file: Annotated[
        Path | None,
        typer.Option(
            "--roots",
            help="The snapshot's published liabilities roots (JSON or JSON lines): every "
            "report's liabilities must be its root's total.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Check a reserves document, with no database and no configuration.

    Its digest, the custody keys' signatures against the descriptor's keys (at least its
    threshold), every address against the descriptor, every sum and ratio; with --istsi, that
    the custody backs that instrument; with --node, the balances against a node. Give both
    --descriptor and --istsi as published: without them the document vouches for itself."""
    from sluice.domain.errors import InvalidInputError
    from sluice.por.documents import load_strict_json
    from sluice.ports.bitcoin import BitcoinNodeError
    from sluice.services.por_reserves_verify import verify_reserves

    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        fail(f"{file} is not UTF-8 text: {exc}")
    try:
        # Read as a published document must be: a key twice, NaN or a 40-digit number refused.
        document = load_strict_json(text)
    except InvalidInputError as exc:
        fail(f"{file}: {exc}")
    except ValueError as exc:
        fail(f"{file} is not JSON: {exc}")
    if not isinstance(document, dict):
        fail(f"{file} is not a JSON object")
    if istsi is not None and "@" not in istsi:
        fail(f"--istsi {istsi!r}: give the instrument's key, <id>@<admin>, as published")
    roots = _roots(roots_file) if roots_file is not None else None
    node = _node(node_url, document, cookie_file, user, password) if node_url else None
    try:
        result = verify_reserves(
            document, descriptor=descriptor, istsi=istsi, node=node, roots=roots
        )
    except BitcoinNodeError as exc:
        fail(f"the node could not be asked: {exc}", NODE_EXIT)
    finally:
        close = getattr(node, "close", None)
        if close is not None:
            close()
    if as_json:
        sys.stdout.write(json.dumps(result.as_json(), indent=2) + "\n")
    else:
        sys.stdout.write(_verdict_text(result.as_json()))
    if result.node_error is not None:
        raise typer.Exit(NODE_EXIT)
    if not result.valid:
        raise typer.Exit(2)


def _verdict_text(verdict: dict[str, Any]) -> str:
    unpinned = [
        what
        for what, pinned in (
            ("descriptor", verdict["descriptor_pinned"]),
            ("Bitcoin-backed instrument", verdict["istsi_pinned"]),
        )
        if not pinned
    ]
    head = "valid" if verdict["valid"] else "INVALID"
    if unpinned:
        head += " (" + ", ".join(f"{what} NOT pinned" for what in unpinned) + ")"
    lines = [head]
    lines += [f"  reason: {reason}" for reason in verdict["reasons"]]
    lines.append(
        f"signatures: {verdict['signatures_valid']} valid of threshold {verdict['threshold']}"
    )
    lines += [f"  signed by {xpub}" for xpub in verdict["signed_by"]]
    for report in verdict["coverage"]:
        state = {
            "covered": "covered",
            "not_covered": "NOT COVERED",
            "undetermined": f"undetermined ({report.get('reason')})",
            "not_read": f"not read ({report.get('reason')})",
        }[report["cover"]]
        lines.append(
            f"  {report['instrument']}: reserves {report['reserves_units']} units "
            f"({report['reserves_source']}), liabilities {report['liabilities_units']} + other "
            f"obligations {report['other_obligations_units']} = owed {report['owed_units']}, "
            f"ratio {report['ratio_bps'] or '-'} bps, {state}"
        )
    node = verdict["node"]
    if node is not None:
        state = "moved since the document's block" if node["tip_moved"] else "at its block"
        lines.append(f"node: {node['total_sats']} sats at {node['height']} ({state})")
        lines += [f"  difference: {difference}" for difference in node["differences"]]
    if verdict["node_error"]:
        lines.append(f"node: {verdict['node_error']}")
    lines += [f"note: {n}" for n in verdict["notes"]]
    lines.append(f"digest: {verdict['digest']}")
    return "\n".join(lines) + "\n"
