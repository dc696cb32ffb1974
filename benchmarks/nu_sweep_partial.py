"""The nu_sweep cells whose trainings have finished, while the sweep still runs (or after it
was stopped): each finished checkpoint of DIR evaluated exactly as
``python cli.py experiment nu_sweep`` does (same lengths, sequences and streams), the
unfinished cells named. The full results.json comes from the experiment itself, which
resumes from the same checkpoints.

    python benchmarks/nu_sweep_partial.py DIR OUT.json
"""
import json
import os
import sys
import time

import numpy as onp

from rssm_ref.experiments.common import evaluate, ExperimentConfig, needs_training
from rssm_ref.experiments.nu_sweep import nu_plan
from rssm_ref.training.train import load_checkpoint
from rssm_ref.util.paths import atomic_write_text
from rssm_ref.util.progress import Progress


def main(folder, out):
    cfg = ExperimentConfig("nu_sweep", out=folder)
    plan = nu_plan(cfg)
    progress = Progress.to_stderr()
    cells, missing = [], []
    for run in plan:
        mc = run["model_cfg"]
        key = {"nu_r": mc.nu_r, "n_trig": mc.n_trig, "seed": run["seed"]}
        if not os.path.exists(run["ckpt"]) or needs_training(run):
            missing.append(key)
            continue
        accs, _, _ = evaluate(mc, load_checkpoint(run["ckpt"])[0], cfg.lengths, cfg.eval_n,
                              run["seed"], progress, f"nu_r {mc.nu_r}, N_trig {mc.n_trig}, "
                              f"seed {run['seed']}")
        cells.append({**key, "accuracy": accs,
                      "checkpoint_mtime": time.strftime("%Y-%m-%d %H:%M:%S",
                                                        time.gmtime(os.path.getmtime(run["ckpt"])))})
    doc = {"folder": folder, "lengths": list(cfg.lengths), "eval_n": cfg.eval_n,
           "finished": len(cells), "planned": len(plan), "cells": cells, "unfinished": missing}
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
    print("| N_trig \\ nu_r | " + " | ".join(map(str, cfg.nu_rs)) + " |")
    print("|---" * (len(cfg.nu_rs) + 1) + "|")
    for N in cfg.n_trigs:
        row = []
        for nu in cfg.nu_rs:
            got = [c["accuracy"] for c in cells if c["n_trig"] == N and c["nu_r"] == nu]
            if not got:
                row.append("not yet")
                continue
            a = onp.array(got)
            seeds = ", ".join(f"{x[0]:.1f}/{x[1]:.1f}" for x in got)
            row.append(f"{a[:, 0].mean():.1f} / {a[:, 1].mean():.1f} ({seeds})")
        print(f"| {N} | " + " | ".join(row) + " |")
    print(f"{len(cells)} of {len(plan)} trainings finished")


if __name__ == "__main__":
    main(*sys.argv[1:3])
