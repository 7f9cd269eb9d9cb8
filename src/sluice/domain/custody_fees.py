"""Bitcoin payouts' arithmetic: the fee rate from the node's estimate, coin selection over the
custody's own outputs, the network fee split over a batch's payouts, and a BIP 125 fee bump.

Everything here is whole satoshis (``int``) and fee rates in sat/vB (``Decimal``); nothing reads
a database or a node, so the rules can be tested on their own (property tests included).

The fee is the payouts' to pay: each payout's output is its amount minus its share of the network
fee, and the change is custody's money, returned whole. A change that would be dust is not made:
that leftover goes to the network fee and lowers what the payouts pay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

SATS_PER_COIN = 100_000_000
# BIP 125 (rule 4): a replacement pays for its own relay at least at the node's incremental relay
# fee, on top of the fee it replaces. Bitcoin Core's default is 1 sat/vB; raise it here if a node
# is configured to demand more.
INCREMENTAL_RELAY_SAT_VB = Decimal(1)


def dust_limit_sats(script_hex: str, dust_relay_fee_sat_per_kvb: int) -> int:
    """The smallest output to ``script_hex`` the network relays, by Bitcoin Core's dust rule: the
    output's size plus the size of the input that would spend it, at the dust relay fee. A
    witness program's spend counts its witness at a quarter (67 vbytes), any other 148 bytes."""
    script = bytes.fromhex(script_hex)
    output_bytes = 8 + 1 + len(script)
    witness_program = (
        len(script) >= 4
        and (script[0] == 0 or 0x51 <= script[0] <= 0x60)
        and script[1] == len(script) - 2
        and 2 <= script[1] <= 40
    )
    spend_bytes = 67 if witness_program else 148
    return (output_bytes + spend_bytes) * dust_relay_fee_sat_per_kvb // 1000


def fee_rate_from_estimate(
    answer: Mapping[str, object] | None, floor: Decimal, cap: Decimal
) -> Decimal:
    """``estimatesmartfee``'s answer (``feerate`` in coins per kvB) as sat/vB, clamped to
    ``[floor, cap]``. A young chain answers without a ``feerate``: that is the floor."""
    if floor > cap:
        raise ValueError(f"fee rate floor {floor} is above the cap {cap}")
    value = None if answer is None else answer.get("feerate")
    if value is None or isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        return floor
    rate = Decimal(value) * SATS_PER_COIN / 1000
    if not rate.is_finite() or rate <= 0:
        return floor
    return min(max(rate, floor), cap)


def fee_for(vsize: int, rate: Decimal) -> int:
    """The fee of ``vsize`` vbytes at ``rate`` sat/vB, rounded up to a whole satoshi (a fee a
    fraction short of the rate would miss it)."""
    return int((Decimal(vsize) * rate).to_integral_value(rounding=ROUND_CEILING))


def split_fee(fee: int, count: int) -> list[int]:
    """``fee`` shared over ``count`` payouts as evenly as whole satoshis allow: the first
    ``fee % count`` pay one satoshi more. The shares add up to ``fee`` exactly."""
    if count <= 0:
        raise ValueError("a fee is split over at least one payout")
    if fee < 0:
        raise ValueError("a fee is never negative")
    base, extra = divmod(fee, count)
    return [base + 1 if n < extra else base for n in range(count)]


@dataclass(frozen=True, slots=True)
class Coin:
    """A custody output that may be spent: ``key`` is its outpoint ("txid:vout")."""

    key: str
    amount_sats: int


def select_coins(coins: Sequence[Coin], target_sats: int, *, max_inputs: int) -> list[Coin] | None:
    """The fewest of the largest coins whose total reaches ``target_sats`` (largest first, ties
    by outpoint so that the choice is reproducible); ``None`` when all of them, or the
    ``max_inputs`` largest, are not enough."""
    if target_sats <= 0:
        raise ValueError("a selection target is positive")
    chosen: list[Coin] = []
    total = 0
    for coin in sorted(coins, key=lambda c: (-c.amount_sats, c.key)):
        if len(chosen) == max_inputs:
            break
        chosen.append(coin)
        total += coin.amount_sats
        if total >= target_sats:
            return chosen
    return None


@dataclass(frozen=True, slots=True)
class FeePlan:
    """How a batch's inputs are shared: each payout's fee (in the payouts' order), the change
    (0: no change output) and the network fee the transaction pays."""

    shares: tuple[int, ...]
    change_sats: int
    fee_sats: int
    vsize: int


def plan_fees(
    amounts: Sequence[int],
    inputs_sats: int,
    *,
    rate: Decimal,
    vsize: Callable[[bool], int],
    dust_limit: int,
) -> FeePlan:
    """The fee plan of paying ``amounts`` from inputs worth ``inputs_sats`` (at least their sum)
    at ``rate``; ``vsize(with_change)`` is the transaction's size with or without a change
    output. The leftover becomes change unless it would be dust; then it pays the fee first."""
    if not amounts:
        raise ValueError("a batch pays at least one payout")
    leftover = inputs_sats - sum(amounts)
    if leftover < 0:
        raise ValueError(f"inputs of {inputs_sats} sats cannot pay {sum(amounts)} sats")
    if leftover >= dust_limit:
        size = vsize(True)
        fee = fee_for(size, rate)
        return FeePlan(tuple(split_fee(fee, len(amounts))), leftover, fee, size)
    size = vsize(False)
    payable = max(0, fee_for(size, rate) - leftover)
    return FeePlan(tuple(split_fee(payable, len(amounts))), 0, payable + leftover, size)


@dataclass(frozen=True, slots=True)
class BumpPlan:
    """A replacement's shares (each payout's whole fee so far), change and network fee."""

    shares: tuple[int, ...]
    change_sats: int
    fee_sats: int
    vsize: int
    rate: Decimal


def bump_fee_required(
    old_fee: int,
    old_rate: Decimal,
    vsize: int,
    factor: Decimal,
    market_rate: Decimal = Decimal(0),
) -> int:
    """The least fee a replacement of ``vsize`` vbytes pays: its rate at least ``factor`` times
    the old one and at least ``market_rate``, and BIP 125's increment over the old fee."""
    by_rate = fee_for(vsize, max(old_rate * factor, market_rate))
    by_increment = old_fee + fee_for(vsize, INCREMENTAL_RELAY_SAT_VB)
    return max(by_rate, by_increment)


@dataclass(frozen=True, slots=True)
class BumpRefused:
    """Why no replacement is made: ``rate_max`` (its fee rate would go over the cap), or
    ``payout_share`` (a payout's share would go over its limit: ``fee_max``, or what keeps its
    output above its destination's dust limit)."""

    reason: str


def _floor(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def plan_bump(
    *,
    old_fee: int,
    old_rate: Decimal,
    shares: Sequence[int],
    change_sats: int,
    vsize: Callable[[bool], int],
    factor: Decimal,
    fee_max: int,
    dust_limit: int,
    market_rate: Decimal = Decimal(0),
    rate_max: Decimal | None = None,
    share_max: Sequence[int] | None = None,
) -> BumpPlan | BumpRefused:
    """A replacement of the same inputs and payouts paying more (at least ``factor`` times the
    old rate, and at least ``market_rate``, but never above ``rate_max``): the extra fee comes
    from the change first (kept while it stays above dust), then from the payouts, each up to
    ``fee_max`` in all and up to its ``share_max`` (what leaves its output above dust).
    :class:`BumpRefused` when BIP 125's least increment would already go over ``rate_max``, or
    a payout over its limit (the batch then waits as it is)."""
    limits = [fee_max] * len(shares) if share_max is None else [min(fee_max, m) for m in share_max]
    if len(limits) != len(shares):
        raise ValueError("one share limit per payout")
    wanted = max(old_rate * factor, market_rate)

    def required(size: int) -> tuple[int, int | None]:
        """The replacement's fee at ``size`` vbytes, and the most the cap allows."""
        by_rate = fee_for(size, wanted)
        cap = None if rate_max is None else _floor(Decimal(size) * rate_max)
        if cap is not None:
            by_rate = min(by_rate, cap)
        return max(by_rate, old_fee + fee_for(size, INCREMENTAL_RELAY_SAT_VB)), cap

    if change_sats > 0:
        size = vsize(True)
        fee, cap = required(size)
        change = change_sats - (fee - old_fee)
        if change >= dust_limit:
            if cap is not None and fee > cap:
                return BumpRefused("rate_max")
            return BumpPlan(tuple(shares), change, fee, size, Decimal(fee) / size)
    # No change output: all of it goes to the fee, and the payouts pay what is still missing.
    size = vsize(False)
    fee, cap = required(size)
    missing = fee - old_fee - change_sats
    if missing <= 0:
        paid = old_fee + change_sats
        if cap is not None and paid > cap:
            return BumpRefused("rate_max")
        return BumpPlan(tuple(shares), 0, paid, size, Decimal(paid) / size)
    if cap is not None and fee > cap:
        return BumpRefused("rate_max")
    extra = split_fee(missing, len(shares))
    # The payout that paid the least so far takes the largest part of the extra.
    order = sorted(range(len(shares)), key=lambda n: (shares[n], n))
    new_shares = list(shares)
    for n, part in zip(order, extra, strict=True):
        new_shares[n] += part
    if any(share > limit for share, limit in zip(new_shares, limits, strict=True)):
        return BumpRefused("payout_share")
    return BumpPlan(tuple(new_shares), 0, fee, size, Decimal(fee) / size)
