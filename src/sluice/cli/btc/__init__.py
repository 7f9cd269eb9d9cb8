"""``sluice btc``: Bitcoin custody — its keys, deposit addresses, deposits, payouts, the watcher,
and the embedded chain's sandbox controls.

Custody is the ``[bitcoin]`` section of the configuration. Without one, every command works on
the *sandbox custody*: three keys made in the data directory on first use, on an embedded
in-memory regtest chain kept in a file there (``sluice btc sandbox …`` funds, mines and reorgs
it). That is for trying things, never for real funds, and the commands say so on stderr.

Every listing has ``--json``; its keys are a contract that scripts rely on.
"""

from __future__ import annotations

import typer

# Each module adds its commands to the groups in ``wiring`` when it is imported; the import order
# is the order `sluice btc --help` lists them in.
from sluice.cli.btc import custody, payouts, sandbox, watch
from sluice.cli.btc.wiring import btc_app

__all__ = ["btc_app", "custody", "payouts", "register", "sandbox", "watch"]


def register(app: typer.Typer) -> None:
    app.add_typer(btc_app, name="btc")
