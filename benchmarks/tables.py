"""Markdown tables (mean ± std over seeds, and per seed) from benchmarks/sweep.py's JSON
lines: the measured tables of docs/recipe.md are pasted from this script's output.

    python benchmarks/tables.py RUNS.jsonl [RUNS2.jsonl ...] [--per-seed]
"""
import json
import sys
from collections import defaultdict

import numpy as onp


def load(paths):
    runs = []
    for p in paths:
        with open(p) as fh:
            runs += [json.loads(line) for line in fh if line.strip()]
    return runs


def summary(runs, per_seed=False):
    groups = defaultdict(list)
    for r in runs:
        groups[(r["task"], r["name"])].append(r)
    lines = ["| task | variant | seeds | " + " | ".join(f"L={L}" for L in runs[0]["lengths"])
             + " | min at 1024 | s/step |", "|---" * (len(runs[0]["lengths"]) + 5) + "|"]
    for (task, name), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        acc = onp.array([r["accuracy"] for r in rs])
        cells = [f"{m:.1f} ± {s:.1f}" for m, s in zip(acc.mean(0), acc.std(0))]
        seeds = ",".join(str(r["seed"]) for r in rs)
        sps = onp.mean([r["seconds_per_step"] for r in rs]) * 1e3
        lines.append(f"| {task} | {name} | {seeds} | " + " | ".join(cells)
                     + f" | {acc[:, -1].min():.1f} | {sps:.1f} ms |")
        if per_seed:
            for r in rs:
                lines.append(f"| | seed {r['seed']} | | " + " | ".join(f"{a:.1f}" for a in r["accuracy"])
                             + f" | | final loss {r['final_loss_mean_last500']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print(summary(load(args), per_seed="--per-seed" in sys.argv))
