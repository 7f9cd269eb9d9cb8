"""The domain's errors, each with a stable code (DESIGN §10) so every layer can map them.

Input errors also subclass :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SluiceError(Exception):
    """Root of every error sluice raises on purpose."""

    code: int = 0
    error: str = "error"


class InvalidInputError(SluiceError, ValueError):
    code = 60
    error = "invalid_input"


class InvalidAmountError(InvalidInputError):
    code = 61
    error = "invalid_amount"


class MalformedUpdateError(InvalidInputError):
    """An update from the ledger does not have the shape the parser relies on.

    Carries the update id (when it could be read) so an operator can find and quarantine it.
    """

    code = 12
    error = "invalid_component_response"

    def __init__(self, update_id: str | None, problem: str, *, offset: int | None = None) -> None:
        self.update_id = update_id
        self.problem = problem
        self.offset = offset
        if update_id:
            where = f"malformed update {update_id!r}"
        elif offset is None:
            where = "a malformed update without a readable update id or offset"
        else:
            where = "a malformed update without a readable update id"
        if offset is not None:
            where += f" at offset {offset}"
        super().__init__(f"{where}: {problem}")


class ComponentCallFailedError(SluiceError):
    code = 11
    error = "component_call_failed"


class InvalidOperationStateError(SluiceError):
    code = 41
    error = "invalid_operation_state"


class DuplicateOperationError(SluiceError):
    """The operation id was used before. ``first_operation`` (JSON, from ``first``) is the first
    operation's result, when the flow answers it with the error."""

    code = 42
    error = "duplicate_operation"

    def __init__(self, message: str, *, first: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.first_operation = first


class NotFoundError(SluiceError, LookupError):
    code = 10
    error = "not_found"


class InsufficientBalanceError(InvalidInputError):
    code = 62
    error = "insufficient_balance"


class InstrumentNotOnboardedError(InvalidInputError):
    code = 63
    error = "instrument_not_onboarded"


class ComplianceError(SluiceError):
    """An operation the KYC registry refused; ``checks`` say which check failed and why."""

    code = 20
    error = "compliance_check_failed"

    def __init__(self, message: str, *, checks: tuple[tuple[str, bool, str], ...] = ()) -> None:
        super().__init__(message)
        self.checks = checks


class InsufficientKycTierError(ComplianceError):
    """Over a limit of the customer's tier, or below the tier the operation needs: the customer
    must complete enhanced verification to reach ``required_tier`` (None: no tier allows it)."""

    code = 21
    error = "insufficient_kyc_tier"

    def __init__(
        self,
        message: str,
        *,
        required_tier: int | None,
        checks: tuple[tuple[str, bool, str], ...] = (),
    ) -> None:
        super().__init__(message, checks=checks)
        self.required_tier = required_tier


class AddressBlacklistedError(ComplianceError):
    code = 22
    error = "address_blacklisted"


class UnauthorizedError(SluiceError):
    """No credentials, or credentials that do not name a valid principal."""

    code = 1
    error = "unauthorized"


class PermissionDeniedError(SluiceError):
    """A valid principal whose role does not allow the operation."""

    code = 2
    error = "insufficient_permissions"


class OperationTimeoutError(SluiceError):
    code = 40
    error = "operation_timeout"


class ApprovalRequiredError(SluiceError):
    """A critical operation was recorded as a proposal; it runs once enough distinct principals
    have approved it (``approval_id`` names the proposal)."""

    code = 43
    error = "approval_required"

    def __init__(self, message: str, *, approval_id: str) -> None:
        super().__init__(message)
        self.approval_id = approval_id


class SystemPausedError(SluiceError):
    """Value-moving operations are stopped until an operator resumes them."""

    code = 50
    error = "system_paused"


class EmergencyModeError(SystemPausedError):
    code = 51
    error = "emergency_mode"


class MaintenanceModeError(SystemPausedError):
    code = 52
    error = "maintenance_mode"


class RateLimitedError(SluiceError):
    """Too many requests; ``retry_after_s`` says when the next one would be admitted."""

    code = 53
    error = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BitcoinTransactionError(SluiceError):
    """A Bitcoin transaction could not be built, signed or broadcast (DESIGN §10, code 32)."""

    code = 32
    error = "bitcoin_transaction_failed"


class InvalidAddressError(InvalidInputError):
    """A Bitcoin address that is malformed or belongs to another network than the custody's."""

    code = 64
    error = "invalid_address"


class MintGuardError(SluiceError):
    """A mint would take iSTSi supply above confirmed reserves minus pending outflows (the mint
    guard): refused, and minting halts. A custody payout that would spend the Bitcoin backing
    iSTSi is refused with it too (minting does not halt for that)."""

    code = 30
    error = "mint_guard_breach"


class MintingHaltedError(SluiceError):
    """Minting is halted (a guard breach, or a minted deposit a reorg removed) until an
    officer's approved action resumes it."""

    code = 31
    error = "minting_halted"


class OracleOfflineError(SluiceError):
    """No price of the pair can be used: its primary failed and its secondary (if it has one)
    failed too, or a leg of a composed pair is offline (DESIGN §9: the exchange is refused,
    never priced on a bad or stale price). Code 80 opens the exchange's range (80–89). 503:
    the caller may retry once the feed recovers; ``rules`` names the rules that failed."""

    code = 80
    error = "oracle_offline"
    http_status = 503

    def __init__(self, pair: str, rules: tuple[str, ...] = ()) -> None:
        why = f" (failed: {', '.join(rules)})" if rules else ""
        super().__init__(f"no usable price for {pair}: the price oracle is offline{why}")
        self.pair = pair
        self.rules = rules


class QuoteExpiredError(SluiceError):
    """The quote's lifetime is over (DESIGN §9): a swap needs a fresh quote. Nothing moved."""

    code = 81
    error = "quote_expired"
    http_status = 409


class SlippageExceededError(SluiceError):
    """The price moved since the quote: what the swap would receive now, priced again from the
    oracle, is below the minimum received (the quote's, or the caller's if higher). Nothing
    moved; ``received`` and ``minimum`` are decimal text."""

    code = 82
    error = "slippage_exceeded"
    http_status = 409

    def __init__(self, message: str, *, received: str, minimum: str) -> None:
        super().__init__(message)
        self.received = received
        self.minimum = minimum


class InsufficientInventoryError(SluiceError):
    """The exchange's free inventory of the bought instrument cannot pay the swap (what the
    customer receives plus the fee). Nothing moved."""

    code = 83
    error = "insufficient_inventory"
    http_status = 409


class ExchangePairNotConfiguredError(InvalidInputError):
    """No ``[[exchange.pairs]]`` entry prices the two instruments against each other (in either
    direction), or the two are the same instrument."""

    code = 84
    error = "exchange_pair_not_configured"
