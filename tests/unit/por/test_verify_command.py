"""`sluice por verify` on files written by another process: one subprocess builds a tree and
writes a customer's proof and the published roots (JSON lines of two instruments), another runs
the command, with no database and no configuration (a fresh working directory, no SLUICE_*
environment). Also the strict parsing of the two documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from sluice.cli import app
from sluice.domain.errors import InvalidInputError
from sluice.por.documents import Proof, Root, decimals_of, format_units, parse_roots

SLUICE = Path(sys.executable).with_name("sluice")
WRITER = """
import json, sys
from datetime import UTC, datetime
from sluice.por import build_tree
roots = []
for instrument, units in (("Amulet@DSO::1220aa", [125, 30, 1, 9]), ("USDC@issuer::1220bb", [7, 8])):
    ids = ["alice", "bob", "carol", "dave"][: len(units)]
    tree = build_tree(b"a secret", "snap-7", instrument, ids, units, decimals=1)
    roots.append(json.dumps(tree.root(datetime(2026, 12, 5, tzinfo=UTC)).as_json()))
    if instrument.startswith("USDC"):
        open(sys.argv[1], "w").write(json.dumps(tree.proof("bob").as_json()))
open(sys.argv[2], "w").write("\\n".join(roots) + "\\n")
"""


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("SLUICE_")}


def _verify(
    *arguments: str, cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SLUICE), "por", "verify", *arguments],
        cwd=cwd,
        env=_environment(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp_path = tmp_path_factory.mktemp("por")
    proof, roots = tmp_path / "proof.json", tmp_path / "roots.jsonl"
    subprocess.run(
        [sys.executable, "-c", WRITER, str(proof), str(roots)],
        cwd=tmp_path,
        env=_environment(),
        check=True,
        timeout=120,
    )
    return proof, roots


def test_a_proof_written_by_another_process_verifies(
    written: tuple[Path, Path], tmp_path: Path
) -> None:
    proof, roots = written
    completed = _verify(str(proof), "--root", str(roots), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("valid: bob's balance of 0.8 USDC@issuer::1220bb")


def test_a_changed_proof_from_stdin_exits_2_with_the_reason(
    written: tuple[Path, Path], tmp_path: Path
) -> None:
    proof, roots = written
    document = json.loads(proof.read_text())
    document["siblings"][0]["units"] = "6"
    completed = _verify(
        "-", "--root", str(roots), "--json", cwd=tmp_path, stdin=json.dumps(document)
    )
    assert completed.returncode == 2
    verdict = json.loads(completed.stdout)
    assert verdict["valid"] is False
    assert verdict["reason"].startswith("the path adds up to")
    assert verdict["instrument"] == "USDC@issuer::1220bb"


def _invoke(*arguments: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, ["por", "verify", *arguments], input=stdin)


def test_a_proof_of_an_instrument_not_in_the_root_file_exits_2(
    written: tuple[Path, Path],
) -> None:
    proof, roots = written
    document = json.loads(proof.read_text())
    document["instrument"] = "Gold@issuer::1220cc"
    result = _invoke("-", "--root", str(roots), stdin=json.dumps(document))
    assert result.exit_code == 2
    assert "no published root for snapshot 'snap-7' and instrument 'Gold" in result.output


def test_unreadable_or_malformed_files_exit_2(written: tuple[Path, Path], tmp_path: Path) -> None:
    proof, roots = written
    result = _invoke(str(tmp_path / "missing.json"), "--root", str(roots))
    assert result.exit_code == 2
    assert "cannot read the proof" in result.output
    result = _invoke("-", "--root", str(roots), stdin="{not json")
    assert result.exit_code == 2
    assert "the proof is not JSON" in result.output
    result = _invoke(str(proof), "--root", str(proof))
    assert result.exit_code == 2
    assert "root: missing" in result.output


def _root_json() -> dict[str, object]:
    return {
        "snapshot_id": "s",
        "instrument": "I",
        "root_hash": "ab" * 32,
        "total_units": "125",
        "total": "12.5",
        "leaf_count": 3,
        "depth": 2,
        "taken_at": "2026-12-05T12:00:00Z",
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("root_hash", "AB" * 32),
        ("root_hash", "ab" * 31),
        ("total_units", "0125"),
        ("total_units", "-1"),
        ("total_units", 125),
        ("depth", True),
        ("leaf_count", -1),
    ],
)
def test_roots_are_parsed_strictly(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError):
        Root.from_json({**_root_json(), field: value})


def test_root_files_hold_one_root_an_array_or_json_lines() -> None:
    one = json.dumps(_root_json())
    other = json.dumps({**_root_json(), "instrument": "J"})
    assert [r.instrument for r in parse_roots(one)] == ["I"]
    assert [r.instrument for r in parse_roots(f"[{one}, {other}]")] == ["I", "J"]
    assert [r.instrument for r in parse_roots(f"{one}\n\n{other}\n")] == ["I", "J"]
    with pytest.raises(InvalidInputError):
        parse_roots("")


def test_proofs_round_trip_through_json() -> None:
    proof = Proof("s", "I", "bob", bytes(range(32)), 2**100, "1", 5, ())
    assert Proof.from_json(json.loads(json.dumps(proof.as_json()))) == proof
    with pytest.raises(InvalidInputError, match="sibling 0"):
        Proof.from_json({**proof.as_json(), "siblings": [{"hash": "00" * 32}]})


@pytest.mark.parametrize(
    ("units", "decimals", "text"),
    [(125, 1, "12.5"), (1250, 2, "12.5"), (0, 10, "0"), (1, 10, "0.0000000001"), (300, 2, "3")],
)
def test_amounts_are_written_without_trailing_zeros(units: int, decimals: int, text: str) -> None:
    assert format_units(units, decimals) == text
    assert decimals_of(text, units) == (-1 if units == 0 else decimals)
    assert decimals_of(text + "1", units) is None
