"""Answers of the proof-of-reserves endpoints (:mod:`sluice.api.routes.por`).

A root and a proof are the issue's documents field for field, exactly as ``sluice por roots`` and
``sluice por proof`` print them and ``sluice por verify`` reads them: hashes in lowercase hex,
units as decimal strings of integers (they may exceed 2^53), amounts as plain decimal strings,
times RFC 3339 UTC. The list of roots is itself a root file the verifier takes.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from sluice.api.schemas import Out

HEX = r"^[0-9a-f]{64}$"
UNITS = r"^(0|[1-9][0-9]*)$"


class RootOut(Out):
    snapshot_id: str
    instrument: str = Field(description="the instrument's key <id>@<admin>")
    root_hash: str = Field(pattern=HEX)
    total_units: str = Field(pattern=UNITS, description="customers' total, smallest units")
    total: str = Field(description="the same total as an amount")
    leaf_count: int = Field(ge=0, description="customers in the tree (padding not counted)")
    depth: int = Field(ge=0)
    taken_at: str


class SiblingOut(Out):
    hash: str = Field(pattern=HEX)
    units: str = Field(pattern=UNITS)


class ProofOut(Out):
    snapshot_id: str
    instrument: str
    customer_id: str
    nonce: str = Field(pattern=HEX)
    units: str = Field(pattern=UNITS)
    balance: str
    index: int = Field(ge=0, description="the leaf's position; its bits say left or right")
    siblings: list[SiblingOut] = Field(description="from the leaf upwards")


class SnapshotOut(Out):
    id: str
    taken_at: str
    instruments: list[str]
    report: dict[str, Any] = Field(
        description="liabilities (and, once stored, reserves) reports per instrument"
    )
    has_reserves: bool = Field(description="whether its reserves document is stored")


def root_out(document: dict[str, Any]) -> RootOut:
    return RootOut(**document)


def proof_out(document: dict[str, Any]) -> ProofOut:
    siblings = [SiblingOut(**sibling) for sibling in document["siblings"]]
    return ProofOut(**{**document, "siblings": siblings})


def snapshot_out(document: dict[str, Any]) -> SnapshotOut:
    return SnapshotOut(**document)
