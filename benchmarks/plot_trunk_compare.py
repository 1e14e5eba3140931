"""Validation accuracy against training minutes for the runs of ``benchmarks/trunk_compare.sh``
(issue 12, part 3), one line per run, drawn from each run's ``history.csv``.

    python benchmarks/plot_trunk_compare.py runs/trunk_compare --out benchmarks/trunk_compare.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", type=Path, help="folder holding one trained variant folder per candidate")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for history in sorted(args.runs.glob("*/history.csv")):
        rows = list(csv.DictReader(history.open()))
        minutes, total = [], 0.0
        for row in rows:
            total += float(row["seconds"]) / 60
            minutes.append(total)
        accuracy = [100 * float(row["val_accuracy"]) for row in rows]
        line, = ax.plot(minutes, accuracy, marker="o", label=f"{history.parent.name} ({len(rows)} epochs)")
        ax.annotate(f"{accuracy[-1]:.1f}%", (minutes[-1], accuracy[-1]), textcoords="offset points",
                    xytext=(4, -10), color=line.get_color())
    ax.set_xlabel("training minutes (one core of the 2-core Xeon, the other core busy)")
    ax.set_ylabel("PublicTest accuracy after the epoch, %")
    ax.set_title("Trunks and input sides: complete cosine schedules of ~35-45 minutes")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
