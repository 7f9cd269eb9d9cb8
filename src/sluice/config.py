"""Settings for the embedded defaults, overridable from the environment.

A newcomer needs none of them: everything lives under ``./data`` and uses the embedded ledger and
SQLite. (The configuration file of a real deployment comes with the Canton client.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    database_url: str
    ledger_path: Path
    treasury_party: str | None
    node: str

    @classmethod
    def from_environment(cls) -> Settings:
        data_dir = Path(os.environ.get("SLUICE_DATA_DIR", "data"))
        return cls(
            data_dir=data_dir,
            database_url=os.environ.get(
                "SLUICE_DATABASE_URL", f"sqlite:///{data_dir / 'sluice.db'}"
            ),
            ledger_path=Path(os.environ.get("SLUICE_LEDGER_PATH", str(data_dir / "ledger.db"))),
            treasury_party=os.environ.get("SLUICE_TREASURY_PARTY") or None,
            node=os.environ.get("SLUICE_LEDGER_NODE", "exchange"),
        )
