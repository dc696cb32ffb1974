"""Cost beside accuracy (docs/13): every model of the tables, its parameter count and
measured seconds per training step, joined with the accuracies of reproduce's run
folders (where ``reproduce`` writes by default, results-<task>) and of the other
experiments.
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

# the experiments whose results.json cost joins (reproduce's run folders come first)
JOINED = ("lengths", "nu_sweep", "window", "zoh_gate")


# ==================================================================== 5. cost
def cost_configs(cfg):
    """Every model of the other experiments' tables: [(label, experiments, task,
    ModelConfig)], one entry per distinct ModelConfig (first label kept)."""
    items = []
    for task in TASKS2:
        for gate in ("euler", "zoh"):
            mc = model_config(cfg.reproduce_config(task, gate=gate), "residual")
            if gate == "euler":          # reproduce's Residual SSM: the tables' model too
                items.append((f"residual {task} gate={gate}", "tables", task, mc))
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


def accuracy_files(cfg):
    """Where ``cost`` looks for accuracies, in order: [(path of a results.json, kind)],
    kind "reproduce" (reproduce's run folders, ``cfg.checkpoints`` with {task} filled in,
    by default where reproduce writes) or the experiment's name (``cfg.results_from``).

    >>> from rssm_ref.experiments.common import ExperimentConfig
    >>> [p for p, _ in accuracy_files(ExperimentConfig("cost"))][:3]
    ['results-induction/results.json', 'results-extended/results.json', 'results-lengths/results.json']
    """
    out = [(os.path.join(cfg.checkpoints.format(task=task), "results.json"), "reproduce")
           for task in TASKS2]
    out += [(os.path.join(cfg.results_from.format(name=name), "results.json"), name)
            for name in JOINED]
    return out


def read_accuracy_files(cfg):
    """[(path, runs)] of the accuracy files that exist (``accuracy_files``); a file there
    that is not a results.json of its kind is refused (ValueError naming the flag)."""
    found = []
    for path, kind in accuracy_files(cfg):
        if os.path.isfile(path):
            data = read_reproduce(path) if kind == "reproduce" else read_results(path)
            found.append((path, data))
    return found


def joined_accuracy(found, mc):
    """Mean accuracy per length over the runs of ``mc`` in the results ``found``
    (``read_accuracy_files``)."""
    want = json.loads(json.dumps(asdict(mc)))
    per_L, sources, quick, steps = {}, [], False, set()
    for path, data in found:
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


def read_reproduce(path):
    """A results.json written by ``reproduce`` (its task and runs), else ValueError."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"--checkpoints: {path}: not readable JSON ({type(exc).__name__}) "
                         "(expected reproduce's results.json)") from None
    if not isinstance(data, dict) or data.get("task") not in TASKS2 or not isinstance(
            data.get("runs"), list):
        raise ValueError(f"--checkpoints: {path}: keys 'task' and 'runs' missing (expected "
                         "reproduce's results.json)")
    return data


def sources_text(looked):
    """One line: which results.json files cost looked in, found or not, and the flags that
    point it elsewhere. ``looked``: [{"path", "found"}].

    >>> print(sources_text([{"path": "a/results.json", "found": True},
    ...                     {"path": "b/results.json", "found": False}]))
    accuracies from a/results.json (found), b/results.json (absent); elsewhere: --checkpoints 'DIR-{task}' (reproduce's folders), --results-from 'DIR-{name}' (the experiments')
    """
    files = ", ".join(f"{d['path']} ({'found' if d['found'] else 'absent'})" for d in looked)
    return (f"accuracies from {files}; elsewhere: --checkpoints 'DIR-{{task}}' (reproduce's "
            "folders), --results-from 'DIR-{name}' (the experiments')")


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
    seconds per training; accuracies joined from reproduce's run folders
    (``cfg.checkpoints``) and the other experiments' (``cfg.results_from``),
    ``accuracy_files``. Returns the results dict."""
    t0 = time.perf_counter()
    items = cost_configs(cfg)
    files = accuracy_files(cfg)
    inputs = [("--checkpoints" if kind == "reproduce" else "--results-from", path)
              for path, kind in files]
    found = read_accuracy_files(cfg)        # a wrong file refused before any timing
    progress = start(cfg, progress, inputs=inputs)
    have = {path for path, _ in found}
    looked = [{"path": path, "found": path in have} for path, _ in files]
    progress.message(sources_text(looked))
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
        acc, sources, quick, acc_steps = joined_accuracy(found, mc)
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
                            "results_from": cfg.results_from, "checkpoints": cfg.checkpoints,
                            "accuracy_files": looked, "timing_seed": seed},
               "runs": [], "table": {"rows": rows}}
    return finish(cfg, results, t0, plot_cost)
