"""Validation accuracy against training minutes (or epochs) for a folder of runs, one line per
run, drawn from each run's ``history.csv``: ``benchmarks/trunk_compare.sh`` (issue 12, part 3)
and ``benchmarks/distill_temperature.sh`` (issue 25).

    python benchmarks/plot_trunk_compare.py runs/trunk_compare --out benchmarks/trunk_compare.png
    python benchmarks/plot_trunk_compare.py runs/distill_T --x epochs --out benchmarks/distill_temperature.png \
        --title "Distillation temperature: 8-epoch cosine schedules of the fast model's recipe"
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", type=Path, help="folder holding one trained variant folder per candidate")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--x", choices=("minutes", "epochs"), default="minutes",
                   help="horizontal axis: training minutes (default) or epochs (runs timed under unequal load)")
    p.add_argument("--title", default="Trunks and input sides: complete cosine schedules of ~35-45 minutes")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for history in sorted(args.runs.glob("*/history.csv")):
        rows = list(csv.DictReader(history.open()))
        minutes, total = [], 0.0
        for row in rows:
            total += float(row["seconds"]) / 60 if args.x == "minutes" else 1
            minutes.append(total)
        accuracy = [100 * float(row["val_accuracy"]) for row in rows]
        # the last figure in the legend: end labels of close runs would overlap
        ax.plot(minutes, accuracy, marker="o", label=f"{history.parent.name} ({len(rows)} epochs): {accuracy[-1]:.2f}%")
    ax.set_xlabel("training minutes (one core of the 2-core Xeon, the other core busy)" if args.x == "minutes"
                  else "epoch")
    ax.set_ylabel("PublicTest accuracy after the epoch, %")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
