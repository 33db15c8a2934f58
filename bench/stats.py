"""Distributions of measured durations, and how they are printed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Distribution", "format_range", "format_seconds"]


@dataclass(frozen=True)
class Distribution:
    """Samples in seconds, with the order statistics the results quote."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Distribution:
        if not samples:
            raise ValueError("a distribution needs at least one sample")
        return cls(tuple(samples))

    @property
    def n(self) -> int:
        return len(self.samples)

    def quantile(self, q: float) -> float:
        """Linear interpolation between the closest ranks (numpy's default method)."""
        ordered = sorted(self.samples)
        position = q * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    @property
    def p90(self) -> float:
        return self.quantile(0.9)

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    def summary(self) -> str:
        return (
            f"n={self.n:<4} median {format_seconds(self.median):>9}  "
            f"p90 {format_seconds(self.p90):>9}  p99 {format_seconds(self.p99):>9}  "
            f"max {format_seconds(self.max):>9}"
        )


def format_seconds(seconds: float) -> str:
    """Milliseconds below one second, seconds above: the unit a reader compares in."""
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def format_range(low: float, high: float) -> str:
    """``13-23.8 s``, ``0-50 ms``, or ``immediate`` for a window of zero."""
    if high == 0:
        return "immediate"
    if high < 1:
        return f"{low * 1000:g}-{high * 1000:g} ms"
    return f"{low:g}-{high:g} s"
