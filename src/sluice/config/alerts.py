"""The ``[alerts]`` section: alert rules and where notifications go."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from sluice.config.sections import _Section


class AlertsConfig(_Section):
    """``rules_file``: a TOML file of alert rules (``docs/alert-rules.example.toml`` shows the
    form); none: only the alerts the product raises itself. ``evaluate_interval_s``: how often
    ``sluice serve`` evaluates the rules and sends notifications."""

    rules_file: Path | None = None
    evaluate_interval_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
