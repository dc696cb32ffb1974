"""Reproduce Tables 1 and 2: train at L = 16, evaluate at L = 16 … 1024.

``reproduce(cfg)`` trains every requested model and seed on the task (Section 4.2 /
4.3), evaluates each on ``eval_n`` fresh sequences per length (an evaluation stream
seeded apart from the training stream), and writes into ``cfg.out``:

- ``results.json``  task, per run (model, seed) the lengths, accuracies, the paper's
  accuracies, parameter counts, steps, configuration, wall seconds, and package
  versions; written atomically. Same command and seed → bit-identical file apart from
  the keys ending in ``_seconds``.
- ``accuracy.png``  accuracy against length, measured (mean and min–max over seeds)
  beside the paper's numbers.
- ``<model>-seed<k>.npz`` the trained parameters (a resumable training checkpoint).

Glossary
--------
ReproduceConfig, reproduce(cfg, progress=None) -> dict, format_table(results) -> str,
PAPER_TABLES[task][model] -> list of 7 accuracies (%) at L = 2^4 … 2^10

>>> sorted(PAPER_TABLES["induction"])
['residual', 'selective']
"""
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as onp

from rssm_ref.models import ModelConfig, accuracy, param_count
from rssm_ref.tasks import TASKS, make_batch
from rssm_ref.train import TrainConfig, load_checkpoint, train

__all__ = ["ReproduceConfig", "reproduce", "format_table", "PAPER_TABLES", "LENGTHS"]

LENGTHS = (16, 32, 64, 128, 256, 512, 1024)
EVAL_STREAM = 2
# Table 1 (induction head) and Table 2 (extended induction head), accuracy in %.
PAPER_TABLES = {
    "induction": {"selective": [70, 60, 53, 34, 25, 21, 20], "residual": [100] * 7},
    "extended": {"selective": [69, 57, 22, 20, 17, 15, 13], "residual": [100] * 7},
}
# Training recipes (docs/recipe.md); steps are the defaults of a full run.
RECIPES = {
    ("residual", "induction"): dict(steps=24000, lr=0.02, warmup=200, batch=256, restarts=4, restart_steps=1000),
    ("residual", "extended"): dict(steps=24000, lr=0.02, warmup=200, batch=256, restarts=4, restart_steps=1000),
    ("selective", "induction"): dict(steps=3000, lr=5e-3, warmup=200, batch=64),
    ("selective", "extended"): dict(steps=3000, lr=5e-3, warmup=200, batch=64),
}
QUICK = {"residual": dict(steps=300, warmup=20, restarts=1), "selective": dict(steps=15, warmup=5),
         "eval_n": 100}


@dataclass(frozen=True)
class ReproduceConfig:
    """Options of ``python cli.py reproduce`` (see its --help)."""
    task: str = "induction"
    models: tuple = ("residual", "selective")
    seeds: tuple = (0,)
    steps: int = 0                 # 0: each model's recipe default
    quick: bool = False
    out: str = "results"
    gate: str = "euler"
    selective_discretization: str = "zoh"
    selective_output: str = "before"
    eval_n: int = 1000
    lengths: tuple = LENGTHS
    resume: bool = False
    backend: str = "numpy"         # array module of the evaluation (training: NumPy autograd)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task: {self.task!r} (expected 'induction' or 'extended')")
        for m in self.models:
            if m not in ("residual", "selective"):
                raise ValueError(f"model: {m!r} (expected 'residual', 'selective' or 'both')")
        if not self.seeds:
            raise ValueError("seeds: empty (expected e.g. 0,1,2)")
        if self.steps < 0 or self.eval_n < 1:
            raise ValueError("steps must be >= 0 and eval_n >= 1")
        from rssm_ref.backend import namespace
        namespace(self.backend)   # a clear error now, not after the training


def _versions():
    import autograd
    import scipy
    from rssm_ref import __version__
    try:
        from importlib.metadata import version
        ag = version("autograd")
    except Exception:
        ag = getattr(autograd, "__version__", "unknown")
    return {"rssm_ref": __version__, "numpy": onp.__version__, "scipy": scipy.__version__,
            "autograd": ag, "python": platform.python_version()}


def _train_config(cfg, model, seed):
    recipe = dict(RECIPES[(model, cfg.task)])
    if cfg.quick:
        recipe.update(QUICK[model])
    if cfg.steps:
        recipe["steps"] = cfg.steps
    recipe["warmup"] = min(recipe["warmup"], max(1, recipe["steps"] // 10))
    return TrainConfig(seed=seed, L=16, log_every=max(1, min(100, recipe["steps"] // 20)),
                       checkpoint_every=1000, **recipe)


def _evaluate(model_cfg, params, cfg, seed):
    n = QUICK["eval_n"] if cfg.quick else cfg.eval_n
    accs = []
    for L in cfg.lengths:
        rng = onp.random.default_rng([seed, EVAL_STREAM, L])
        tokens, targets = make_batch(cfg.task, rng, n, L, model_cfg.n_tokens)
        accs.append(100.0 * accuracy(model_cfg, params, tokens, targets, backend=cfg.backend))
    return accs, n


def _atomic_write_text(path, text):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def reproduce(cfg, progress=None):
    """Train and evaluate every (model, seed); write results.json and accuracy.png.

    ``progress(event, info)``: event "start" (info: model, seed, steps), "step" (info:
    step, loss, acc, steps_per_s) and "eval" (info: model, seed, accuracies).
    Returns the results dictionary (as written to results.json).
    """
    os.makedirs(cfg.out, exist_ok=True)
    t_all = time.perf_counter()
    runs = []
    for model in cfg.models:
        model_cfg = ModelConfig(model, cfg.task, gate=cfg.gate,
                                discretization=cfg.selective_discretization,
                                output=cfg.selective_output)
        for seed in cfg.seeds:
            tcfg = _train_config(cfg, model, seed)
            ckpt = os.path.join(cfg.out, f"{model}-seed{seed}.npz")
            if progress:
                progress("start", {"model": model, "seed": seed, "steps": tcfg.total_steps})
            t0 = time.perf_counter()
            if cfg.resume and os.path.exists(ckpt) and load_checkpoint(ckpt)[3] >= tcfg.steps:
                params = load_checkpoint(ckpt)[0]
            else:
                params, _ = train(model_cfg, tcfg, checkpoint=ckpt, resume=cfg.resume,
                                  progress=(lambda k, info: progress("step", dict(info, step=k)))
                                  if progress else None)
            train_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            accs, n = _evaluate(model_cfg, params, cfg, seed)
            eval_s = time.perf_counter() - t1
            if progress:
                progress("eval", {"model": model, "seed": seed, "accuracy": accs})
            runs.append({
                "model": model, "seed": seed, "lengths": list(cfg.lengths), "accuracy": accs,
                "paper_accuracy": PAPER_TABLES[cfg.task][model], "eval_sequences": n,
                "param_count": param_count(model_cfg), "steps": tcfg.steps,
                "train_config": asdict(tcfg), "model_config": asdict(model_cfg),
                "checkpoint": os.path.basename(ckpt), "eval_backend": cfg.backend,
                "train_seconds": round(train_s, 3), "eval_seconds": round(eval_s, 3),
            })
    results = {"task": cfg.task, "quick": cfg.quick, "lengths": list(cfg.lengths),
               "runs": runs, "summary": _summary(runs), "versions": _versions(),
               "wall_seconds": round(time.perf_counter() - t_all, 3)}
    _atomic_write_text(os.path.join(cfg.out, "results.json"), json.dumps(results, indent=2) + "\n")
    _plot(results, os.path.join(cfg.out, "accuracy.png"))
    return results


def _summary(runs):
    out = {}
    for model in sorted({r["model"] for r in runs}):
        accs = onp.array([r["accuracy"] for r in runs if r["model"] == model])
        out[model] = {"mean": accs.mean(0).round(4).tolist(), "min": accs.min(0).tolist(),
                      "max": accs.max(0).tolist(), "seeds": [r["seed"] for r in runs if r["model"] == model]}
    return out


def format_table(results):
    """The paper's table with the measured rows beside the published ones.

    >>> r = {"task": "induction", "lengths": [16], "runs": [], "summary": {"residual":
    ...      {"mean": [100.0], "min": [100.0], "max": [100.0], "seeds": [0]}}}
    >>> print(format_table(r).splitlines()[2])
    Residual SSM   paper           100%
    """
    table = "Table 1 (induction head)" if results["task"] == "induction" else "Table 2 (extended induction head)"
    lengths = results["lengths"]
    head = f"{'model':<14} {'':<10}" + "".join(f"{'2^%d' % int(onp.log2(L)):>8}" for L in lengths)
    lines = [f"{table}: accuracy (%) by sequence length, trained at L = 16", head]
    for model, s in results["summary"].items():
        name = "Residual SSM" if model == "residual" else "Selective SSM"
        paper = PAPER_TABLES[results["task"]][model][: len(lengths)]
        lines.append(f"{name:<14} {'paper':<10}" + "".join(f"{p:>7}%" for p in paper))
        seeds = ",".join(map(str, s["seeds"]))
        lines.append(f"{'':<14} {'measured':<10}" + "".join(f"{v:>7.1f}%" if v < 100 else f"{v:>7.0f}%" for v in s["mean"]))
        if len(s["seeds"]) > 1:
            lines.append(f"{'':<14} {'min..max':<10}" + "".join(f"{a:>4.0f}..{b:<3.0f}" for a, b in zip(s["min"], s["max"])))
        lines.append(f"{'':<14} (seeds {seeds})")
    return "\n".join(lines)


def _plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional: pip install .[plot]
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {"residual": "tab:blue", "selective": "tab:orange"}
    L = results["lengths"]
    for model, s in results["summary"].items():
        c = colors[model]
        ax.plot(L, s["mean"], "o-", color=c, label=f"{model} (measured, seeds {s['seeds']})")
        ax.fill_between(L, s["min"], s["max"], color=c, alpha=0.2)
        ax.plot(L, PAPER_TABLES[results["task"]][model][: len(L)], "s--", color=c, alpha=0.6,
                label=f"{model} (paper)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length L (trained at L = 16)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{results['task']} head: accuracy vs length")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=d)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
