"""Cost beside accuracy (docs/13): every model of the tables, its parameter count and
measured seconds per training step, joined with the other experiments' accuracies.
"""
import json
import os
import time

import numpy as onp
from rssm_ref.experiments.common import finish, SCHEMA, start, TASKS2
from rssm_ref.experiments.plots import plot_cost
from rssm_ref.experiments.reproduce import model_config, train_config
from rssm_ref.training.head import param_count
from rssm_ref.training.train import train
from dataclasses import asdict
import dataclasses


# ==================================================================== 5. cost
def cost_configs(cfg):
    """Every model of the other experiments' tables: [(label, experiments, task,
    ModelConfig)], one entry per distinct ModelConfig (first label kept)."""
    items = []
    for task in TASKS2:
        for gate in ("euler", "zoh"):
            mc = model_config(cfg.reproduce_config(task, gate=gate), "residual")
            items.append((f"residual {task} gate={gate}", "zoh_gate", task, mc))
        items.append((f"selective {task} (paper's)", "tables", task,
                      model_config(cfg.reproduce_config(task), "selective")))
    res_ext = model_config(cfg.reproduce_config("extended"), "residual")
    for N in cfg.n_trigs:
        for nu in cfg.nu_rs:
            items.append((f"residual nu_r={nu} N_trig={N}", "nu_sweep", "extended",
                          dataclasses.replace(res_ext, nu_r=nu, n_trig=N)))
    sel_ext = model_config(cfg.reproduce_config("extended"), "selective")
    for w in cfg.windows:
        items.append((f"selective window={w}", "window", "extended",
                      dataclasses.replace(sel_ext, window=w)))
    out, seen = [], {}
    for label, exp, task, mc in items:
        if mc not in seen:
            seen[mc] = (label, [], task, mc)
            out.append(seen[mc])
        if exp not in seen[mc][1]:
            seen[mc][1].append(exp)
    return out


def joined_accuracy(cfg, mc):
    """Mean accuracy per length over the runs of ``mc`` in the other experiments' results."""
    want = json.loads(json.dumps(asdict(mc)))
    per_L, sources, quick, steps = {}, [], False, set()
    for name in ("lengths", "nu_sweep", "window", "zoh_gate"):
        path = os.path.join(cfg.results_from.format(name=name), "results.json")
        if not os.path.isfile(path):
            continue
        data = read_results(path)
        hit = False
        for r in data.get("runs", []):
            if r.get("model_config") == want:
                for L, a in zip(r.get("lengths", []), r.get("accuracy", [])):
                    per_L.setdefault(int(L), []).append(float(a))
                steps.add(r.get("total_steps"))
                hit = True
        if hit:
            sources.append(path)
            quick = quick or bool(data.get("quick"))
    if not per_L:
        return None, [], False, []
    return ({str(L): round(float(onp.mean(v)), 4) for L, v in sorted(per_L.items())}, sources,
            quick, sorted(steps, key=lambda v: (v is None, v or 0)))


def read_results(path):
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"--results-from: {path}: not readable JSON ({type(exc).__name__}) "
                         "(expected an experiment's results.json)") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"--results-from: {path}: key 'schema' is not {SCHEMA!r} (expected "
                         "an experiment's results.json)")
    return data


def cost(cfg, progress=None):
    """Parameter count and measured training seconds per step (the median of
    ``cost_repeats`` timings of ``cost_steps`` steps of ``train()`` with the recipe's batch,
    after 2 warm-up steps; the data stream of seed ``cfg.seeds[0]``) of every model of
    ``cost_configs``; the recipe's total steps (``--steps`` overrides) give the estimated
    seconds per training; accuracies joined from ``cfg.results_from``. Returns the results
    dict."""
    t0 = time.perf_counter()
    items = cost_configs(cfg)
    inputs = [("--results-from", os.path.join(cfg.results_from.format(name=n), "results.json"))
              for n in ("lengths", "nu_sweep", "window", "zoh_gate")]
    progress = start(cfg, progress, inputs=inputs)
    seed = cfg.seeds[0]
    task_p = progress.task("time training steps", len(items), unit="model")
    rows = []
    for i, (label, exps, task, mc) in enumerate(items):
        recipe = train_config(cfg.reproduce_config(task), mc.model, seed)
        timing = dataclasses.replace(recipe, steps=cfg.cost_steps, restarts=1, warmup=1,
                                     log_every=10 ** 9, checkpoint_every=10 ** 9)
        train(mc, dataclasses.replace(timing, steps=2))              # warm-up
        times = []
        for _ in range(cfg.cost_repeats):
            t1 = time.perf_counter()
            train(mc, timing)
            times.append((time.perf_counter() - t1) / cfg.cost_steps)
        per_step = float(onp.median(times))
        acc, sources, quick, acc_steps = joined_accuracy(cfg, mc)
        rows.append({"label": label, "experiments": exps, "task": task, "model": mc.model,
                     "model_config": json.loads(json.dumps(asdict(mc))),
                     "param_count": param_count(mc), "batch": recipe.batch,
                     "recipe_total_steps": recipe.total_steps,
                     "per_step_seconds": round(per_step, 6),
                     "train_estimate_seconds": round(per_step * recipe.total_steps, 1),
                     "accuracy": acc, "accuracy_from": sources, "accuracy_quick": quick,
                     "accuracy_total_steps": acc_steps})
        task_p.update(i + 1)
    task_p.close()
    results = {"settings": {"cost_steps": cfg.cost_steps, "cost_repeats": cfg.cost_repeats,
                            "results_from": cfg.results_from, "timing_seed": seed},
               "runs": [], "table": {"rows": rows}}
    return finish(cfg, results, t0, plot_cost)
