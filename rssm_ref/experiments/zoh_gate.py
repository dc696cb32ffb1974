"""Remark 3.1's exact ZOH gate, trained (docs/13): Tables 1 and 2 with gate = "zoh" beside
gate = "euler" (eq. (5)).
"""
import os
import time

import numpy as onp
from rssm_ref.experiments.common import (check_reproduce, finish, generator,
                                         model_cfg_from_run_config, run_entry, start, stats, TASKS2)
from rssm_ref.experiments.lengths import measure_leak
from rssm_ref.experiments.plots import plot_zoh
from rssm_ref.experiments.reproduce import read_run_config, reproduce
from rssm_ref.training.train import load_checkpoint


# ==================================================================== 4. zoh_gate
def zoh_gate(cfg, progress=None):
    """Tables 1 and 2 for the Residual SSM with gate = "zoh" (Remark 3.1) beside
    gate = "euler" (eq. (5)), each through ``reproduce`` (its recipe, seeds ``cfg.seeds``)
    into ``<out>/<task>-<gate>``, plus the leak per step and the fraction written at the
    answer (``measure_leak``). Returns the results dict."""
    t0 = time.perf_counter()
    subs = {(task, gate): os.path.join(cfg.out, f"{task}-{gate}")
            for task in TASKS2 for gate in ("euler", "zoh")}
    rcfgs = {key: cfg.reproduce_config(key[0], models=("residual",), seeds=cfg.seeds, out=sub,
                                       gate=key[1], resume=True, eval_n=cfg.eval_n)
             for key, sub in subs.items()}
    for rcfg in rcfgs.values():
        check_reproduce(rcfg)
    progress = start(cfg, progress, outputs=[("--out", os.path.join(d, f"residual-seed{s}.npz"))
                                              for d in subs.values() for s in cfg.seeds])
    runs, table = [], {"lengths": None}
    for (task, gate), sub in subs.items():
        progress.message(f"reproduce {task} with gate = {gate} into {sub}")
        res = reproduce(rcfgs[(task, gate)], progress)
        table["lengths"] = res["lengths"]
        rows, leaks = [], []
        for r in res["runs"]:
            path = os.path.join(sub, r["checkpoint"])
            mc = model_cfg_from_run_config(read_run_config(path), path, task)
            leak = measure_leak(mc, load_checkpoint(path)[0], cfg.leak_L, cfg.leak_n, r["seed"])
            gens = [generator(mc, L) for L in r["lengths"]]
            entry = run_entry(task, mc, r["seed"], r["lengths"], r["accuracy"], gens,
                               r["eval_sequences"], path, None, r.get("train_seconds"),
                               r.get("eval_seconds", 0.0))
            entry["total_steps"] = r.get("total_steps")
            entry["leak"] = leak
            runs.append(entry)
            rows.append(r["accuracy"])
            leaks.append(leak)
        table.setdefault(task, {})[gate] = {
            **stats(rows), "seeds": list(cfg.seeds),
            "leak_per_step": [lk["leak_per_step"] for lk in leaks],
            "store_fraction": [lk["store_fraction"] for lk in leaks]}
    diff = {task: (onp.array(table[task]["zoh"]["mean"]) - onp.array(table[task]["euler"]["mean"]))
            .round(4).tolist() for task in TASKS2}
    answer = {"question": "Does Remark 3.1's exact ZOH gate train as well as eq. (5)?",
              "zoh_max_write": float(-onp.expm1(-1.0)),
              "remark": "with s in (0, 1) one ZOH step keeps at least e^-1 = 36.8 % of y(t) "
                        "(writes at most 63.2 % of y_s(t)); eq. (5) can write all of it",
              "difference": diff}
    results = {"settings": {"lengths": table["lengths"], "eval_n": cfg.eval_n,
                            "leak_L": cfg.leak_L, "leak_n": cfg.leak_n,
                            "folders": {f"{t}-{g}": d for (t, g), d in subs.items()}},
               "runs": runs, "table": table, "answer": answer}
    return finish(cfg, results, t0, plot_zoh)
