"""Results of a sweep (one metric as a function of one setting, per dataset): CSV, Markdown and a PNG.

``write_sweep(rows, out, x=..., y=...)`` writes into ``out``:

* ``results.csv`` -- every row with every key (the columns of the first rows first);
* ``results.md``  -- a table: one line per (series, x) with the chosen metric columns, then notes;
* ``results.png`` -- ``y`` against ``x``, one line per series (matplotlib, Agg backend; a symmetric-log
  x axis when x spans more than a factor of 8, so that 0 and 256 fit on one axis).

Used by ``bioseq soft-prompt`` (accuracy vs prompt tokens K), ``bioseq icl kshot`` (accuracy vs shots k)
and ``bioseq icl homology`` / ``smiles`` (perplexity vs number of context sequences).
"""

from __future__ import annotations

import csv
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def write_sweep(rows: Sequence[dict], out: str | os.PathLike, *, x: str, y: str, series: str = "dataset",
                columns: Sequence[str] = (), title: str = "Sweep", xlabel: str | None = None,
                ylabel: str | None = None, notes: Sequence[str] = ()) -> Path:
    """Write ``results.csv``, ``results.md`` and ``results.png`` (module docstring); returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})
    head = [series, x, y] + [c for c in columns if c not in (series, x, y)]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in head) + " |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot_sweep(rows, out / "results.png", x=x, y=y, series=series, title=title, xlabel=xlabel or x,
               ylabel=ylabel or y)
    return out


def wrap_title(title: str, width: int = 80) -> str:
    """The plot title in lines of at most ``width`` characters (a long checkpoint path is broken too), so
    that it fits the 6-inch figure instead of running off both edges."""
    return "\n".join(textwrap.wrap(title, width, break_long_words=True, break_on_hyphens=False)) or title


def plot_sweep(rows: Sequence[dict], path: Path, *, x: str, y: str, series: str, title: str, xlabel: str,
               ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        groups.setdefault(str(r.get(series, "")), []).append((float(r[x]), float(r[y])))
    fig, ax = plt.subplots(figsize=(6, 4))
    xs_all = []
    for name, pts in groups.items():
        pts.sort()
        xs_all += [p[0] for p in pts]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    positive = [v for v in xs_all if v > 0]
    if positive and max(positive) / min(positive) > 8:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(wrap_title(title), fontsize=9)
    ax.grid(alpha=0.3)
    if len(groups) > 1 or any(groups):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
