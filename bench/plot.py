"""The failover distributions as one picture (``bench/failover.png``), and the
cost of the scale tier against its group count (``bench/scale.png``).

One row per series on a logarithmic time axis, every trial a dot and the
median a bar, so milliseconds and tens of seconds fit together. Published
peers that were not measured are drawn as hatched ranges and say so.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display here

import matplotlib.pyplot as plt

from bench.stats import Distribution

__all__ = ["Range", "Series", "plot_failovers"]

_COLORS = {"floor": "#7f7f7f", "ours": "#1f77b4", "peer": "#ff7f0e", "published": "#bbbbbb"}


@dataclass(frozen=True)
class Series:
    label: str
    kind: str  # "floor", "ours" or "peer"
    distribution: Distribution


@dataclass(frozen=True)
class Range:
    """A published peer's analytic window, in seconds: drawn, never passed off as measured."""

    label: str
    low: float
    high: float


def plot_failovers(
    series: Sequence[Series], ranges: Sequence[Range], ttl: float, title: str, path: Path
) -> None:
    rows = len(series) + len(ranges)
    figure, axes = plt.subplots(figsize=(11, 0.42 * rows + 1.8), dpi=110)
    jitter = random.Random(0)
    labels = []
    for row, item in enumerate(series):
        y = rows - 1 - row
        samples = item.distribution.samples
        axes.scatter(
            samples,
            [y + jitter.uniform(-0.18, 0.18) for _ in samples],
            s=9,
            alpha=0.55,
            color=_COLORS[item.kind],
            linewidths=0,
        )
        axes.plot([item.distribution.median] * 2, [y - 0.32, y + 0.32], color="black", lw=1.6)
        labels.append((y, item.label))
    for row, peer in enumerate(ranges, start=len(series)):
        y = rows - 1 - row
        axes.barh(
            y,
            peer.high - max(peer.low, 1e-4),
            left=max(peer.low, 1e-4),
            height=0.5,
            color=_COLORS["published"],
            hatch="//",
            edgecolor="#666666",
        )
        labels.append((y, f"{peer.label} (published defaults, not measured)"))
    axes.axvline(ttl, color="#2ca02c", ls="--", lw=1)
    axes.text(ttl, rows - 0.4, f" ttl {ttl:g} s (hang, partition)", color="#2ca02c", fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("seconds from the fault until the new leader's code runs (log scale)")
    axes.set_yticks([y for y, _ in labels], [label for _, label in labels], fontsize=8)
    axes.set_ylim(-0.7, rows - 0.2)
    axes.grid(axis="x", which="both", alpha=0.25)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_costs(rows: Sequence[dict[str, float]], path: Path) -> None:
    """The tier's cost at rest against the group count: in all, and per 1,000 groups."""
    groups = [row["groups"] for row in rows]
    figure, (total, per) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for axes, scale, unit in ((total, 1.0, "in all"), (per, 1000.0, "per 1,000 groups")):
        cpu = [row["db_cpu"] * 100 * scale / (row["groups"] if scale > 1 else 1) for row in rows]
        xacts = [row["xacts_per_s"] * scale / (row["groups"] if scale > 1 else 1) for row in rows]
        axes.plot(groups, cpu, "o-", color=_COLORS["ours"], label="database CPU, % of a core")
        axes.plot(groups, xacts, "s--", color=_COLORS["peer"], label="transactions/s")
        axes.set_xscale("log")
        axes.set_yscale("log")
        for x, y, row in zip(groups, cpu, rows, strict=True):
            axes.annotate(f"{row['processes']:.0f} x {row['groups']:,.0f}", (x, y), fontsize=7)
        axes.set_xlabel("groups (processes x groups at each point; fair spreading on)")
        axes.set_title(f"cost at rest, {unit}", fontsize=10)
        axes.grid(which="both", alpha=0.25)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
