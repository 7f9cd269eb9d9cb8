"""Checking a reserves document (``docs/proof-of-reserves.md``) with nothing but the document,
optionally the custody descriptor published elsewhere, and optionally a Bitcoin node.

What :func:`verify_reserves` guarantees when it answers ``valid``:

* the digest is SHA-256 of the canonical JSON of the document without ``digest`` and
  ``signatures`` (:func:`canonical_json`), recomputed here, never taken from the document;
* at least the descriptor's threshold (``m`` of its ``sortedmulti``) of distinct descriptor keys
  (distinct public keys, not only distinct xpubs) signed that digest: each signature is DER,
  low S, ECDSA over secp256k1 with the digest as the message hash, verified under the
  account-level public key the descriptor names;
* the descriptor carries a correct checksum, is ``wsh(sortedmulti(m,K1/0/*,…))`` over extended
  public keys of the document's chain, and equals the one given by the caller (when given);
* every address is the descriptor's address at its branch and index (so no one else's coins are
  counted), its balance is the sum of its outputs, and the total is the sum of the balances;
* the Canton part's totals are the sums of its contracts, every instrument with reserves has a
  report, and every report's reserves follow from the parts, its cover flag and ratio from
  those reserves against its liabilities plus the other obligations it states (the operator's
  own figures: see :mod:`sluice.services.por_reserves_report`) — ``null`` for a token whose
  holdings were read at another ledger offset than the journal's, which the verdict shows as
  ``undetermined`` (in ``coverage[].cover`` and a note), neither covered nor invalid;
* when the caller pins the Bitcoin-backed instrument (``istsi``), the Bitcoin part names it and
  its report counts the custody's satoshis (8 decimals), never Canton holdings;
* with the snapshot's published liabilities roots, every report's liabilities are its root's
  ``total_units`` (the figure each customer's inclusion proof is checked against).

With a node, the same branches and ranges are scanned again (``scantxoutset``) and every balance
is compared. A node whose tip moved since the document's block is said to have moved, and what
differs is reported as a difference since that block, not as a false document; a node at the
same block that answers other balances makes the document invalid.

No database and no configuration is read: this module needs embit, the chain parameters and
the canonical JSON of :mod:`sluice.services.por_reserves`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from embit import bech32, bip32, ec, script  # type: ignore[import-untyped]
from embit.descriptor import Descriptor  # type: ignore[import-untyped]
from embit.descriptor.checksum import checksum as descriptor_checksum  # type: ignore[import-untyped]
from embit.descriptor.miniscript import Sortedmulti  # type: ignore[import-untyped]

from sluice.domain.chains import CHAINS, Chain, to_sats
from sluice.por.documents import Root
from sluice.ports.bitcoin import BitcoinNode, BitcoinNodeError
from sluice.services.por_reserves import FORMAT, DocumentError, document_digest
from sluice.services.por_reserves_report import (
    Findings,
    check_canton,
    check_reports,
    check_roots,
    coverage,
    hex64,
    integer,
    items,
)

# --- the descriptor ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishedDescriptor:
    """A custody descriptor as a verifier reads it: its keys (account xpubs) and threshold."""

    text: str
    chain: Chain
    threshold: int
    xpubs: tuple[str, ...]
    keys: tuple[Any, ...] = field(repr=False, compare=False)  # embit HDKey (public), same order

    def script_of(self, branch: int, index: int) -> bytes:
        """The P2WSH output script of ``K/branch/index``: ``sortedmulti`` sorts the derived keys
        by their compressed encodings."""
        publics = sorted(key.derive([branch, index]).key.sec() for key in self.keys)
        witness_script = script.multisig(self.threshold, [ec.PublicKey.parse(p) for p in publics])
        return bytes(script.p2wsh(witness_script).data)

    def address_of(self, script_bytes: bytes) -> str:
        return str(bech32.encode(self.chain.bech32_hrp, script_bytes[0], script_bytes[2:]))

    def branch_text(self, branch: int) -> str:
        """The descriptor of ``branch`` (``K/branch/*`` for every key) with its checksum."""
        body = self.text.partition("#")[0].replace("/0/*", f"/{branch}/*")
        return f"{body}#{descriptor_checksum(body)}"


def read_descriptor(text: str, chain: Chain) -> PublishedDescriptor:
    """Parse a published custody descriptor; :class:`DocumentError` saying what is wrong."""
    body, hash_sign, given = text.partition("#")
    if not hash_sign:
        raise DocumentError("the descriptor has no #checksum")
    try:
        if descriptor_checksum(body) != given:
            raise DocumentError("the descriptor's checksum does not match it")
        parsed = Descriptor.from_string(body)
    except DocumentError:
        raise
    except Exception as exc:
        raise DocumentError(f"the descriptor cannot be parsed: {exc}") from None
    miniscript = parsed.miniscript
    if parsed.sh or parsed.taproot or not parsed.wsh or not isinstance(miniscript, Sortedmulti):
        raise DocumentError("the descriptor is not wsh(sortedmulti(m,K1/0/*,…))")
    threshold = int(miniscript.args[0].num)
    xpubs: list[str] = []
    keys: list[Any] = []
    for number, key in enumerate(parsed.keys, start=1):
        if not key.is_extended or key.key.is_private:
            raise DocumentError(f"descriptor key {number} is not an extended public key")
        if bytes(key.key.version) != chain.xpub_version:
            raise DocumentError(f"descriptor key {number} is not a key of {chain.name}")
        if str(key.allowed_derivation) != "/0/*":
            raise DocumentError(f"descriptor key {number} does not end with /0/*")
        xpubs.append(str(key.key.to_base58(version=chain.xpub_version)))
        keys.append(key.key)
    # Signatures verify under the public key alone: the same key under another chain code,
    # depth or fingerprint is another xpub but the same signer, so distinct means distinct keys.
    if len({key.key.sec() for key in keys}) != len(keys) or not 1 <= threshold <= len(keys):
        raise DocumentError(
            "the descriptor's public keys are not distinct, or its threshold is wrong"
        )
    return PublishedDescriptor(text, chain, threshold, tuple(xpubs), tuple(keys))


def signature_verifies(xpub: str, signature_hex: str, digest: bytes) -> bool:
    """Whether ``signature_hex`` (strict DER, low S) is the key of ``xpub``'s ECDSA signature
    over ``digest``, taken as the message hash."""
    try:
        public = bip32.HDKey.from_base58(xpub).key
        signature = ec.Signature.parse(bytes.fromhex(signature_hex))
        return bool(public.verify(signature, digest))
    except Exception:
        return False


# --- the result ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeCheck:
    """What a node answered for the document's branches and ranges."""

    height: int
    block_hash: str
    tip_moved: bool
    total_sats: int
    differences: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "block_hash": self.block_hash,
            "tip_moved": self.tip_moved,
            "total_sats": self.total_sats,
            "differences": list(self.differences),
        }


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """``valid`` with no ``reasons``, or not valid with every reason found. ``notes`` say what
    was not or could not be checked; ``node_error`` is set when a node was given and could not
    be asked (nothing was compared then)."""

    valid: bool
    reasons: tuple[str, ...]
    notes: tuple[str, ...]
    digest: str
    signatures_valid: int
    threshold: int | None
    signed_by: tuple[str, ...]
    descriptor_pinned: bool
    node: NodeCheck | None = None
    node_error: str | None = None
    istsi_pinned: bool = False
    # What the document reports per instrument (por_reserves_report.COVERAGE_FIELDS: instrument,
    # reserves_source, reserves_units, liabilities_units, other_obligations_units, owed_units,
    # reserves_cover_liabilities, ratio_bps, reason; and cover: covered, not_covered,
    # undetermined or not_read): checked when ``valid``.
    coverage: tuple[Mapping[str, Any], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "digest": self.digest,
            "signatures_valid": self.signatures_valid,
            "threshold": self.threshold,
            "signed_by": list(self.signed_by),
            "descriptor_pinned": self.descriptor_pinned,
            "istsi_pinned": self.istsi_pinned,
            "node": self.node.as_json() if self.node is not None else None,
            "node_error": self.node_error,
            "coverage": [dict(c) for c in self.coverage],
        }


# --- verification --------------------------------------------------------------------------------


def verify_reserves(
    document: Mapping[str, Any],
    *,
    descriptor: str | None = None,
    istsi: str | None = None,
    node: BitcoinNode | None = None,
    roots: Sequence[Root] | None = None,
) -> VerificationResult:
    """Check ``document`` (see the module docstring); ``descriptor`` pins the custody descriptor
    the document must carry, ``istsi`` (an instrument key, published with the descriptor) pins
    the instrument the custody's Bitcoin backs, ``node`` rechecks its balances, ``roots`` (the
    snapshot's published liabilities roots) must give every report's liabilities."""
    found = Findings()
    try:
        digest = document_digest(document)
    except (DocumentError, TypeError, ValueError) as exc:
        return _result(found, reason=f"the document cannot be put in canonical form: {exc}")
    if document.get("format") != FORMAT:
        found.reasons.append(f"format is {document.get('format')!r}, not {FORMAT!r}")
    if document.get("digest") != digest.hex():
        found.reasons.append(
            f"the digest {document.get('digest')!r} is not the content's SHA-256 {digest.hex()}"
        )
    bitcoin = document.get("bitcoin")
    canton = document.get("canton")
    published: PublishedDescriptor | None = None
    signers: tuple[str, ...] = ()
    totals: dict[str, int] = {}
    try:
        if not isinstance(bitcoin, Mapping) or not isinstance(canton, Mapping):
            raise DocumentError("the document needs a bitcoin and a canton object")
        published = _descriptor_of(bitcoin, descriptor, found)
        if published is not None:
            signers = _check_signatures(document.get("signatures"), published, digest, found)
            if bitcoin.get("read") is True:
                totals["bitcoin"] = _check_addresses(bitcoin, published, found)
            else:
                found.notes.append(f"custody not read: {bitcoin.get('reason') or 'not stated'}")
        elif document.get("signatures"):
            found.reasons.append("signatures are given but no descriptor to check them against")
        canton_totals = check_canton(canton, found)
        check_reports(
            document.get("reports"),
            bitcoin,
            totals.get("bitcoin"),
            canton_totals,
            found,
            istsi=istsi,
            canton=canton,
        )
        if roots is not None:
            check_roots(document, roots, found)
    except DocumentError as exc:
        found.reasons.append(str(exc))
    node_check: NodeCheck | None = None
    node_error: str | None = None
    if node is not None and published is not None and isinstance(bitcoin, Mapping):
        if bitcoin.get("read") is not True or "bitcoin" not in totals:
            found.notes.append("the node was not asked: the document states no custody balances")
        else:
            try:
                node_check = _recheck(node, bitcoin, published, found)
            except (BitcoinNodeError, KeyError, TypeError, ValueError) as exc:
                node_error = f"the node could not be asked: {exc}"
    elif node is not None:
        found.notes.append("the node was not asked: the document has no custody descriptor")
    if descriptor is None and published is not None:
        found.notes.append(
            "the descriptor was not pinned (--descriptor): the signatures prove only that the "
            "document's own descriptor's keys signed it"
        )
    return VerificationResult(
        valid=not found.reasons,
        reasons=tuple(found.reasons),
        notes=tuple(found.notes),
        digest=digest.hex(),
        signatures_valid=len(signers),
        threshold=published.threshold if published is not None else None,
        signed_by=signers,
        descriptor_pinned=descriptor is not None,
        node=node_check,
        node_error=node_error,
        istsi_pinned=istsi is not None,
        coverage=coverage(document.get("reports")),
    )


def _result(found: Findings, *, reason: str) -> VerificationResult:
    found.reasons.append(reason)
    return VerificationResult(False, tuple(found.reasons), (), "", 0, None, (), False)


def _descriptor_of(
    bitcoin: Mapping[str, Any], pinned: str | None, found: Findings
) -> PublishedDescriptor | None:
    text = bitcoin.get("descriptor")
    if text is None:
        if pinned is not None:
            found.reasons.append("the document carries no custody descriptor, one was pinned")
        else:
            found.notes.append(f"no custody: {bitcoin.get('reason') or 'not stated'}")
        return None
    if not isinstance(text, str):
        raise DocumentError("bitcoin.descriptor is not text")
    if pinned is not None and text != pinned.strip():
        found.reasons.append("the document's descriptor is not the pinned one")
    chain = CHAINS.get(str(bitcoin.get("chain")))
    if chain is None:
        raise DocumentError(f"bitcoin.chain {bitcoin.get('chain')!r} is not a known chain")
    published = read_descriptor(text, chain)
    if bitcoin.get("threshold") != published.threshold:
        found.reasons.append(
            f"bitcoin.threshold {bitcoin.get('threshold')!r} is not the descriptor's "
            f"{published.threshold}"
        )
    return published


def _check_signatures(
    signatures: Any, published: PublishedDescriptor, digest: bytes, found: Findings
) -> tuple[str, ...]:
    if not isinstance(signatures, list):
        raise DocumentError("signatures is not a list")
    valid: list[str] = []
    for number, item in enumerate(signatures):
        if not isinstance(item, Mapping) or set(item) != {"xpub", "signature"}:
            raise DocumentError(f"signatures[{number}] is not {{xpub, signature}}")
        xpub, signature = item["xpub"], item["signature"]
        if xpub not in published.xpubs:
            found.reasons.append(f"signatures[{number}]: {xpub} is not a key of the descriptor")
        elif not isinstance(signature, str) or not signature_verifies(xpub, signature, digest):
            found.reasons.append(f"signatures[{number}] ({xpub}) does not verify")
        elif xpub in valid:
            found.reasons.append(f"signatures[{number}]: {xpub} signed twice")
        else:
            valid.append(xpub)
    if len(valid) < published.threshold:
        found.reasons.append(
            f"signed by {len(valid)} of the descriptor's {len(published.xpubs)} keys; it "
            f"requires {published.threshold}"
        )
    return tuple(valid)


def document_ranges(bitcoin: Mapping[str, Any]) -> dict[int, int]:
    """The branches and the last index scanned on each, as the document states them."""
    ranges: dict[int, int] = {}
    for number, item in enumerate(items(bitcoin.get("ranges"), "bitcoin.ranges")):
        if not isinstance(item, Mapping):
            raise DocumentError(f"bitcoin.ranges[{number}] is not an object")
        branch = integer(item.get("branch"), f"bitcoin.ranges[{number}].branch")
        ranges[branch] = integer(item.get("last_index"), f"bitcoin.ranges[{number}].last_index")
    return ranges


def _check_addresses(
    bitcoin: Mapping[str, Any], published: PublishedDescriptor, found: Findings
) -> int:
    """The addresses' total after checking each against the descriptor and its outputs."""
    integer(bitcoin.get("height"), "bitcoin.height")
    hex64(bitcoin.get("block_hash"), "bitcoin.block_hash")
    ranges = document_ranges(bitcoin)
    total = 0
    seen: set[tuple[int, int]] = set()
    outpoints: set[tuple[str, int]] = set()
    for number, item in enumerate(items(bitcoin.get("addresses"), "bitcoin.addresses")):
        where = f"bitcoin.addresses[{number}]"
        if not isinstance(item, Mapping):
            raise DocumentError(f"{where} is not an object")
        branch = integer(item.get("branch"), f"{where}.branch")
        index = integer(item.get("index"), f"{where}.index")
        if (branch, index) in seen:
            found.reasons.append(f"{where}: branch {branch} index {index} is listed twice")
        seen.add((branch, index))
        if index > ranges.get(branch, -1):
            found.reasons.append(f"{where}: index {index} is outside the scanned range")
        expected = published.script_of(branch, index)
        if item.get("script_hex") != expected.hex():
            found.reasons.append(f"{where}: the script is not the descriptor's at {branch}/{index}")
        if item.get("address") != published.address_of(expected):
            found.reasons.append(
                f"{where}: {item.get('address')!r} is not the descriptor's address at "
                f"{branch}/{index}"
            )
        balance = integer(item.get("balance_sats"), f"{where}.balance_sats")
        outputs_sum = 0
        for position, output in enumerate(items(item.get("outputs"), f"{where}.outputs")):
            at = f"{where}.outputs[{position}]"
            if not isinstance(output, Mapping):
                raise DocumentError(f"{at} is not an object")
            outpoint = (hex64(output.get("txid"), f"{at}.txid"), integer(output.get("vout"), at))
            if outpoint in outpoints:
                found.reasons.append(f"{at}: output {outpoint[0]}:{outpoint[1]} listed twice")
            outpoints.add(outpoint)
            outputs_sum += integer(output.get("amount_sats"), f"{at}.amount_sats", minimum=1)
            if integer(output.get("height"), f"{at}.height") > bitcoin["height"]:
                found.reasons.append(f"{at}: mined above the document's block")
        if outputs_sum != balance:
            found.reasons.append(
                f"{where}: balance {balance} sats is not the sum of its outputs ({outputs_sum})"
            )
        total += balance
    if bitcoin.get("total_sats") != total:
        found.reasons.append(
            f"bitcoin.total_sats {bitcoin.get('total_sats')!r} is not the sum of the balances "
            f"({total})"
        )
    return total


def _recheck(
    node: BitcoinNode,
    bitcoin: Mapping[str, Any],
    published: PublishedDescriptor,
    found: Findings,
) -> NodeCheck:
    """Scan the document's branches and ranges on ``node`` and compare address by address."""
    ranges = document_ranges(bitcoin)
    if not ranges:
        raise DocumentError("bitcoin.ranges is empty: nothing to rescan")
    request: list[str | dict[str, Any]] = [
        {"desc": published.branch_text(branch), "range": [0, top]}
        for branch, top in sorted(ranges.items())
    ]
    answer = node.scantxoutset(request)
    if answer.get("success") is False:
        raise BitcoinNodeError("scantxoutset did not succeed")
    height, block_hash = int(answer["height"]), str(answer["bestblock"])
    on_node: dict[str, int] = {}
    for unspent in answer.get("unspents") or ():
        script_hex = str(unspent["scriptPubKey"])
        on_node[script_hex] = on_node.get(script_hex, 0) + to_sats(Decimal(str(unspent["amount"])))
    stated = {str(a["script_hex"]): int(a["balance_sats"]) for a in bitcoin["addresses"]}
    differences: list[str] = []
    address_of = {str(a["script_hex"]): str(a["address"]) for a in bitcoin["addresses"]}
    for script_hex in sorted(set(on_node) | set(stated)):
        here, there = stated.get(script_hex, 0), on_node.get(script_hex, 0)
        if here != there:
            name = address_of.get(script_hex) or published.address_of(bytes.fromhex(script_hex))
            differences.append(f"{name}: the document states {here} sats, the node {there}")
    doc_height, doc_hash = int(bitcoin["height"]), str(bitcoin["block_hash"])
    moved = (height, block_hash) != (doc_height, doc_hash)
    if moved:
        found.notes.append(
            f"the node's tip moved since the document's block ({doc_height} {doc_hash}) to "
            f"{height} {block_hash}: differences are what changed since, not proof of a false "
            "document"
        )
        _check_block_on_chain(node, doc_height, doc_hash, height, found)
    elif differences:
        found.reasons.extend(f"at the document's block, {d}" for d in differences)
    return NodeCheck(height, block_hash, moved, sum(on_node.values()), tuple(differences))


def _check_block_on_chain(
    node: BitcoinNode, doc_height: int, doc_hash: str, tip: int, found: Findings
) -> None:
    if doc_height > tip:
        found.notes.append(f"the node is behind the document (tip {tip} < {doc_height})")
        return
    on_chain = node.getblockhash(doc_height)
    if on_chain != doc_hash:
        found.reasons.append(
            f"the node's block at height {doc_height} is {on_chain}, not the document's "
            f"{doc_hash}: the document's block is not on this node's chain"
        )
