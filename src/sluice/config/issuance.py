"""The ``[issuance]`` section of the deployment file: iSTSi issuance's issuer party, instrument,
where the issuer's commands go, and the router's retry and lease settings
(:class:`~sluice.services.issuance_settings.IssuanceSettings`, whose defaults these are)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from sluice.config.sections import _check_url, _Section
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import check_party_id
from sluice.services.issuance_settings import ISTSI_ID, IssuanceSettings

_DEFAULTS = IssuanceSettings()


class IssuanceConfig(_Section):
    """iSTSi issuance.

    ``issuer_party``: the instrument's admin (the exchange's issuer party); absent, on an embedded
    ledger the sandbox allocates a party ``issuer::…`` (once; found again afterwards) and creates
    iSTSi there. ``control_url``: a served embedded ledger's base URL (``sluice ledger serve``),
    whose sandbox control endpoint takes the issuer's commands; absent, the embedded ledger file
    is opened in this process. Against a Canton participant, neither applies: a real token
    implementation has to be plugged in, and issuance stays off."""

    issuer_party: str | None = None
    instrument_id: Annotated[str, Field(min_length=1, max_length=100)] = ISTSI_ID
    control_url: str | None = None
    attempts_max: Annotated[int, Field(ge=1, le=1000)] = _DEFAULTS.attempts_max
    backoff_base_s: Annotated[float, Field(gt=0, le=3600)] = _DEFAULTS.backoff_base_s
    backoff_cap_s: Annotated[float, Field(gt=0, le=86_400)] = _DEFAULTS.backoff_cap_s
    poll_s: Annotated[float, Field(gt=0, le=3600)] = _DEFAULTS.poll_s
    lease_s: Annotated[float, Field(gt=0, le=86_400)] = _DEFAULTS.lease_s
    resend_window_s: Annotated[float, Field(gt=0, lt=86_400)] = _DEFAULTS.resend_window_s

    _check_control_url = field_validator("control_url")(_check_url)

    @field_validator("issuer_party")
    @classmethod
    def _party(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_party_id(value)
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("instrument_id")
    @classmethod
    def _instrument(cls, value: str) -> str:
        if value != value.strip() or any(c.isspace() for c in value) or ":" in value:
            raise ValueError(f"{value!r}: an instrument id has no spaces and no ':'")
        return value

    @model_validator(mode="after")
    def _backoff(self) -> IssuanceConfig:
        if self.backoff_base_s > self.backoff_cap_s:
            raise ValueError(
                f"backoff_base_s ({self.backoff_base_s:g}) must not exceed backoff_cap_s "
                f"({self.backoff_cap_s:g})"
            )
        return self

    def settings(self) -> IssuanceSettings:
        """The section as the router takes it."""
        return IssuanceSettings(
            instrument_id=self.instrument_id,
            attempts_max=self.attempts_max,
            backoff_base_s=self.backoff_base_s,
            backoff_cap_s=self.backoff_cap_s,
            poll_s=self.poll_s,
            lease_s=self.lease_s,
            resend_window_s=self.resend_window_s,
        )
