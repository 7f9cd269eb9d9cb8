"""``sluice por verify PROOF --root ROOT``: check a customer's inclusion proof against the
published root, with nothing else (no database, no configuration, no secret).

PROOF is the JSON of ``sluice por proof`` (``-`` reads it from stdin); ROOT is the published
root file: one root, a JSON array of roots, or JSON lines of roots (the one with the proof's
snapshot and instrument is used). Exit 0 when the proof is valid, 2 with the reason when not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from sluice.cli.common import fail, fail_with
from sluice.cli.por.wiring import por_app
from sluice.domain.errors import InvalidInputError


def _read(path: str, what: str) -> str:
    """The file's text; a file that cannot be read, or is not UTF-8, ends the command with one
    line on stderr (never a traceback)."""
    try:
        if path == "-":
            raw = getattr(sys.stdin, "buffer", None)
            return raw.read().decode("utf-8") if raw is not None else sys.stdin.read()
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read the {what} {path}: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        fail(f"the {what} {path} is not UTF-8 text: {exc.reason} at byte {exc.start}")


@por_app.command("verify")
def verify_command(
    proof_file: Annotated[
        str, typer.Argument(metavar="PROOF", help="The proof's JSON file (- for stdin).")
    ],
    root_file: Annotated[
        str,
        typer.Option(
            "--root", metavar="ROOT", help="The published root file (JSON or JSON lines)."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Check that a customer's balance is included in a published liabilities root."""
    from sluice.por.documents import parse_proof, parse_roots, root_for
    from sluice.por.verify import verify_proof

    if proof_file == "-" and root_file == "-":
        fail("only the proof can be read from stdin")
    try:
        proof = parse_proof(_read(proof_file, "proof"))
        roots = parse_roots(_read(root_file, "root file"))
        root = root_for(roots, proof.snapshot_id, proof.instrument)
    except InvalidInputError as exc:
        fail_with(exc)
    verdict = verify_proof(proof, root)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "valid": verdict.valid,
                    "reason": verdict.reason,
                    "snapshot_id": proof.snapshot_id,
                    "instrument": proof.instrument,
                    "customer_id": proof.customer_id,
                    "root_hash": root.root_hash.hex(),
                }
            )
            + "\n"
        )
    elif verdict.valid:
        sys.stdout.write(
            f"valid: {proof.customer_id}'s balance of {proof.balance} {proof.instrument} is "
            f"included in snapshot {root.snapshot_id} (root {root.root_hash.hex()}, total "
            f"{root.total}, taken at {root.taken_at})\n"
        )
    else:
        sys.stdout.write(f"INVALID: {verdict.reason}\n")
    if not verdict.valid:
        raise typer.Exit(2)
