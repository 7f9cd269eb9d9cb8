"""The published documents are read one way only: units longer than 39 digits, a JSON key given
twice, a JSON number too long to be a count, and a root file with two roots for one snapshot and
instrument are refused with InvalidInputError (and by `sluice por verify` with exit 2 and one
line on stderr), never taken as the last (or the first) one, nor left to a bare ValueError."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from sluice.cli import app
from sluice.domain.errors import InvalidInputError
from sluice.por import build_tree
from sluice.por.documents import (
    Root,
    format_units,
    load_strict_json,
    parse_proof,
    parse_roots,
    root_for,
)
from sluice.por.hashing import SUM_LIMIT
from sluice.por.verify import verify_proof

TAKEN_AT = datetime(2026, 12, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def published() -> tuple[dict[str, object], dict[str, object]]:
    """A customer's proof and its root, as JSON objects."""
    ids = ["alice", "bob", "carol"]
    tree = build_tree(b"a secret", "snap-7", "USDC@issuer::1", ids, [7, 8, 9], decimals=1)
    return tree.proof("bob").as_json(), tree.root(TAKEN_AT).as_json()


def _text(document: object) -> str:
    return json.dumps(document)


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# --- units ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("digits", [40, 5000])
def test_units_longer_than_39_digits_are_refused(
    published: tuple[dict[str, object], dict[str, object]], digits: int
) -> None:
    proof, root = published
    long = "9" * digits
    with pytest.raises(InvalidInputError, match="units"):
        parse_proof(_text({**proof, "units": long}))
    siblings = [{"hash": "00" * 32, "units": long}]
    with pytest.raises(InvalidInputError, match="sibling 0 units"):
        parse_proof(_text({**proof, "siblings": siblings}))
    with pytest.raises(InvalidInputError, match="total_units"):
        parse_roots(_text({**root, "total_units": long}))


def test_units_of_39_digits_are_read_and_left_to_the_verifier(
    published: tuple[dict[str, object], dict[str, object]],
) -> None:
    proof, root = published
    balance = format_units(SUM_LIMIT, 1)
    parsed = parse_proof(_text({**proof, "units": str(SUM_LIMIT), "balance": balance}))
    assert parsed.units == SUM_LIMIT and len(str(SUM_LIMIT)) == 39
    verdict = verify_proof(parsed, Root.from_json(root), native=False)
    assert not verdict and "2^127" in verdict.reason


@pytest.mark.parametrize("number", ["1" * 40, "1" * 5000, "-" + "1" * 40])
def test_json_numbers_too_long_to_be_a_count_are_refused(
    published: tuple[dict[str, object], dict[str, object]], number: str
) -> None:
    proof, root = published
    with pytest.raises(InvalidInputError, match="more than 39 digits"):
        parse_proof(_text(proof).replace(f'"index": {proof["index"]}', f'"index": {number}'))
    with pytest.raises(InvalidInputError, match="more than 39 digits"):
        parse_roots(_replace_once(_text(root), '"leaf_count": 3', f'"leaf_count": {number}'))


def test_json_nested_too_deeply_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="nested too deeply"):
        parse_proof("[" * 200_000 + "]" * 200_000)


# --- keys given twice -----------------------------------------------------------------------------


def test_a_root_with_a_key_twice_is_refused(
    published: tuple[dict[str, object], dict[str, object]],
) -> None:
    _, root = published
    text = _text(root)
    twice = _replace_once(text, '"total": ', '"total_units": "5", "total": ')
    with pytest.raises(InvalidInputError, match="'total_units' appears twice"):
        parse_roots(twice)
    with pytest.raises(InvalidInputError, match="appears twice"):
        parse_roots(f"{text}\n{twice}\n")  # JSON lines
    with pytest.raises(InvalidInputError, match="appears twice"):
        parse_roots(f"[{twice}]")


def test_a_proof_with_a_key_twice_is_refused_at_any_depth(
    published: tuple[dict[str, object], dict[str, object]],
) -> None:
    proof, _ = published
    text = _text(proof)
    with pytest.raises(InvalidInputError, match="'units' appears twice"):
        parse_proof(_replace_once(text, '"balance": ', '"units": "1", "balance": '))
    nested = _replace_once(text, '"siblings": [{', '"siblings": [{"units": "0", ')
    with pytest.raises(InvalidInputError, match="'units' appears twice"):
        parse_proof(nested)


def test_strict_json_reads_ordinary_documents_as_json_does() -> None:
    text = '{"a": [1, -2, {"b": "c"}], "d": null, "e": true, "f": 1.5}'
    assert load_strict_json(text) == json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        load_strict_json("{not json")
    with pytest.raises(InvalidInputError, match="NaN"):
        load_strict_json('{"a": NaN}')


# --- two roots for one snapshot and instrument ----------------------------------------------------


def test_a_root_file_with_two_roots_for_one_snapshot_and_instrument_is_refused(
    published: tuple[dict[str, object], dict[str, object]],
) -> None:
    _, root = published
    forged = {**root, "total_units": "1", "total": "1"}
    other = {**root, "instrument": "Gold@issuer::1"}
    assert len(parse_roots(f"{_text(root)}\n{_text(other)}\n")) == 2
    for text in (f"{_text(root)}\n{_text(forged)}\n", f"[{_text(forged)}, {_text(root)}]"):
        with pytest.raises(InvalidInputError, match="2 roots for snapshot 'snap-7'"):
            parse_roots(text)
    roots = [Root.from_json(root), Root.from_json(forged), Root.from_json(other)]
    with pytest.raises(InvalidInputError, match="2 roots"):
        root_for(roots, "snap-7", "USDC@issuer::1")
    assert root_for(roots, "snap-7", "Gold@issuer::1").instrument == "Gold@issuer::1"


# --- sluice por verify ----------------------------------------------------------------------------


def _invoke(*arguments: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, ["por", "verify", *arguments], input=stdin)


def _refused(result: Result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output


def test_the_verify_command_refuses_malformed_documents_with_exit_2(
    published: tuple[dict[str, object], dict[str, object]], tmp_path: Path
) -> None:
    proof, root = published
    roots = tmp_path / "roots.jsonl"
    roots.write_text(_text(root) + "\n")
    assert _invoke("-", "--root", str(roots), stdin=_text(proof)).exit_code == 0
    huge = _text({**proof, "units": "1" * 5000})
    _refused(_invoke("-", "--root", str(roots), stdin=huge), "units")
    twice = _replace_once(_text(proof), '"balance": ', '"units": "1", "balance": ')
    _refused(_invoke("-", "--root", str(roots), stdin=twice), "appears twice")
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_text(_text(root) + "\n" + _text({**root, "total_units": "1", "total": "1"}))
    _refused(_invoke("-", "--root", str(doubled), stdin=_text(proof)), "2 roots")
    binary = tmp_path / "proof.bin"
    binary.write_bytes(b'{"units": "\xff"}')
    _refused(_invoke(str(binary), "--root", str(roots)), "not UTF-8")
