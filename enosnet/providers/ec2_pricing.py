"""Approximate EC2 costs: a small built-in price table, overridable in the provider config.

Prices are on-demand Linux list prices in US dollars per hour (us-east-1,
late 2024), rounded; other regions differ by up to ~30 %. Spot hosts are
counted at the on-demand price, an upper bound. Every figure enosnet shows
from this table is marked approximate.

>>> prices = PriceTable({"x1.tiny": 0.5})
>>> prices.hourly("x1.tiny"), prices.hourly("c5.large"), prices.hourly("no.such")
(0.5, 0.085, None)
>>> round(prices.accrued("x1.tiny", seconds=30), 4)  # billed for at least a minute
0.0083
"""

from __future__ import annotations

from collections.abc import Mapping

BUILTIN_PRICES: dict[str, float] = {
    "t3.micro": 0.0104, "t3.small": 0.0208, "t3.medium": 0.0416, "t3.large": 0.0832, "t3.xlarge": 0.1664,
    "m5.large": 0.096, "m5.xlarge": 0.192, "m5.2xlarge": 0.384, "m5.4xlarge": 0.768,
    "m6i.large": 0.096, "m6i.xlarge": 0.192, "m7i.large": 0.1008, "m7i.xlarge": 0.2016,
    "c5.large": 0.085, "c5.xlarge": 0.17, "c5.2xlarge": 0.34, "c5.4xlarge": 0.68, "c5.9xlarge": 1.53,
    "c5.18xlarge": 3.06,
    "c5n.large": 0.108, "c5n.xlarge": 0.216, "c5n.2xlarge": 0.432, "c5n.4xlarge": 0.864, "c5n.9xlarge": 1.944,
    "c5n.18xlarge": 3.888,
    "c6i.large": 0.085, "c6i.xlarge": 0.17, "c6i.4xlarge": 0.68,
    "c6in.large": 0.1134, "c6in.xlarge": 0.2268, "c6in.4xlarge": 0.9072, "c6in.8xlarge": 1.8144,
    "c6in.16xlarge": 3.6288, "c6in.32xlarge": 7.2576,
    "c6gn.large": 0.0864, "c6gn.xlarge": 0.1728, "c6gn.4xlarge": 0.6912, "c6gn.16xlarge": 2.7648,
    "c7i.large": 0.08925, "c7i.xlarge": 0.1785, "c7gn.large": 0.0999, "c7gn.xlarge": 0.1998,
    "c7gn.16xlarge": 3.9936,
    "r5.large": 0.126, "r5.xlarge": 0.252,
}

MINIMUM_BILLED_SECONDS = 60


class PriceTable:
    """Instance type → USD per hour: the built-in table with the config's ``prices`` on top."""

    def __init__(self, overrides: Mapping[str, float] | None = None) -> None:
        self._prices = {**BUILTIN_PRICES, **(overrides or {})}

    def hourly(self, instance_type: str) -> float | None:
        """USD per hour for one host of ``instance_type``, or None when the table does not know it."""
        return self._prices.get(instance_type)

    def accrued(self, instance_type: str, *, seconds: float) -> float | None:
        """USD for one host that has run ``seconds`` (per-second billing, one minute at least)."""
        price = self.hourly(instance_type)
        if price is None:
            return None
        return price * max(seconds, MINIMUM_BILLED_SECONDS) / 3600


def total(amounts: list[float | None]) -> tuple[float, int]:
    """The sum of the known amounts and how many were unknown.

    >>> total([0.5, None, 0.25])
    (0.75, 1)
    """
    known = [a for a in amounts if a is not None]
    return sum(known), len(amounts) - len(known)


def format_cost(amount: float, unknown: int = 0) -> str:
    """``~$1.23`` (approximate), noting hosts whose type has no price.

    >>> format_cost(1.234, 2)
    '~$1.23 (approx.; 2 hosts of unknown price not counted)'
    """
    text = f"~${amount:,.2f}"
    return f"{text} (approx.; {unknown} hosts of unknown price not counted)" if unknown else f"{text} (approx.)"
