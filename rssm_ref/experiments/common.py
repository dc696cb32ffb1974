"""The run plumbing shared by the experiments beyond the paper (docs/13): their options
(``ExperimentConfig``), grids and constants, planning, training or reusing a checkpoint,
evaluation on reproduce's streams, and writing results.json and the figure.
"""
import dataclasses
import json
import os
import time
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass

import numpy as onp
from rssm_ref.experiments.reproduce import (default_out, EVAL_STREAM, LENGTHS, model_config,
                                            prepare_out, read_run_config, ReproduceConfig,
                                            run_config, steps_text, train_config)
from rssm_ref.training.head import accuracy, ModelConfig, param_count
from rssm_ref.training.tasks import extended_method
from rssm_ref.training.train import load_checkpoint, train, TrainConfig
from rssm_ref.util.paths import atomic_savefig, atomic_write_text, check_outputs
from rssm_ref.util.progress import Progress
from rssm_ref.util.threads import one_thread_processes
from rssm_ref.util.version import versions


EXPERIMENTS = ("lengths", "nu_sweep", "window", "zoh_gate", "cost")


SCHEMA = "rssm-ref/experiment/1"


TASKS2 = ("induction", "extended")


LONG_LENGTHS = (2048, 4096, 16384, 65536)


NU_RS = (1, 2, 3, 4, 6, 8)


N_TRIGS = (1, 2, 3, 4, 6)


SWEEP_LENGTHS = (16, 1024)


WINDOWS = (1, 2, 4, 8)


SOLVED_PCT = 99.0          # "solves" / "lifted": mean accuracy >= this at L = 16


TARGET_PCT = 99.5          # the target for the long lengths (docs/13)


EVAL_N = 1000


LEAK_L, LEAK_N = 4096, 200
COST_STEPS, COST_REPEATS = 10, 3
LEAK_STREAM = 3            # the leak's measurement sequences (train: 1, evaluation: 2)


EVAL_BLOCK_TOKENS = 1 << 22


CURVE_LENGTHS = tuple(2 ** k for k in range(4, 17))


# smoke run: small grids, 20 sequences per length, seed 0 unless --seeds is given
QUICK = {"seeds": (0,), "eval_n": 20, "lengths": (2048, 16384), "sweep_lengths": (16, 64),
         "window_lengths": (16, 64), "nu_rs": (1, 4), "n_trigs": (1, 4), "windows": (1, 4),
         "leak_L": 1024, "leak_n": 20, "cost_steps": 2, "cost_repeats": 1}


SMOKE_NOTE = ("SMOKE RUN (--quick): tiny trainings, grids and evaluations check the "
              "pipeline; these numbers are not the experiment")


TITLES = {"lengths": "Lengths far beyond Table 1 (Residual SSM trained at L = 16)",
          "nu_sweep": "nu_r against the trigger length N_trig (extended task, Residual SSM)",
          "window": "Selective SSM with a causal window of w inputs (Table 2, extended)",
          "zoh_gate": "Remark 3.1's ZOH gate beside eq. (5) (Tables 1 and 2, Residual SSM)",
          "cost": "Cost beside accuracy: parameters and training time per step"}


@dataclass(frozen=True)
class ExperimentConfig:
    """Options of ``python cli.py experiment NAME`` (see its --help); () and 0 mean the
    experiment's default (a smaller one with ``quick``)."""
    name: str
    seeds: tuple = ()                  # (): 0, 1, 2 (quick: 0)
    steps: int = 0                     # total steps per training; 0: the recipe
    quick: bool = False
    out: str = ""                      # "": results-<name>
    eval_n: int = 0                    # sequences per length; 0: 1000 (quick: 20)
    checkpoints: str = default_out("{task}")   # lengths, cost: reproduce's run folders
    results_from: str = "results-{name}"    # cost: the other experiments' folders
    paper_exact: bool = False          # the paper's model, none of the recipe's additions
    lengths: tuple = ()
    nu_rs: tuple = ()
    n_trigs: tuple = ()
    windows: tuple = ()
    leak_L: int = 0
    leak_n: int = 0
    cost_steps: int = 0
    cost_repeats: int = 0
    workers: int = 1                   # nu_sweep, window: trainings in this many processes

    def __post_init__(self):
        name = str(self.name).replace("-", "_")
        if name not in EXPERIMENTS:
            raise ValueError(f"NAME: {self.name!r} (expected one of {', '.join(EXPERIMENTS)})")
        q = self.quick
        default_lengths = {"lengths": QUICK["lengths"] if q else LONG_LENGTHS,
                           "nu_sweep": QUICK["sweep_lengths"] if q else SWEEP_LENGTHS,
                           "window": QUICK["window_lengths"] if q else table_lengths(),
                           "zoh_gate": table_lengths(), "cost": ()}
        sets = {"name": name, "seeds": tuple(self.seeds) or (QUICK["seeds"] if q else (0, 1, 2)),
                "out": self.out or f"results-{name}",
                "eval_n": self.eval_n or (QUICK["eval_n"] if q else EVAL_N),
                "lengths": tuple(self.lengths) or default_lengths[name],
                "nu_rs": tuple(self.nu_rs) or (QUICK["nu_rs"] if q else NU_RS),
                "n_trigs": tuple(self.n_trigs) or (QUICK["n_trigs"] if q else N_TRIGS),
                "windows": tuple(self.windows) or (QUICK["windows"] if q else WINDOWS),
                "leak_L": self.leak_L or (QUICK["leak_L"] if q else LEAK_L),
                "leak_n": self.leak_n or (QUICK["leak_n"] if q else LEAK_N),
                "cost_steps": self.cost_steps or (QUICK["cost_steps"] if q else COST_STEPS),
                "cost_repeats": self.cost_repeats or (QUICK["cost_repeats"] if q else COST_REPEATS)}
        for k, v in sets.items():
            object.__setattr__(self, k, v)
        for s in self.seeds:
            if int(s) != s or s < 0:
                raise ValueError(f"--seeds: {s!r} (expected non-negative integers, e.g. 0,1,2)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds: {','.join(map(str, self.seeds))} repeats a seed "
                             "(expected each seed once)")
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"--steps: {self.steps!r} (expected >= 0; 0: the recipe)")
        if int(self.workers) != self.workers or not 1 <= self.workers <= 64:
            raise ValueError(f"--workers: {self.workers!r} (expected an integer from 1 to 64)")
        if int(self.eval_n) != self.eval_n or self.eval_n < 1:
            raise ValueError(f"--eval-n: {self.eval_n!r} (expected a positive integer)")
        if "{task}" not in self.checkpoints:
            raise ValueError(f"--checkpoints: {self.checkpoints!r} has no {{task}} (expected a "
                             "folder template such as results-{task} or runs/{task})")
        if "{name}" not in self.results_from:
            raise ValueError(f"--results-from: {self.results_from!r} has no {{name}} (expected "
                             "a folder template such as results-{name})")
        for key, lo in (("nu_rs", 1), ("n_trigs", 1), ("windows", 1), ("lengths", 1),
                        ("leak_L", 3), ("leak_n", 1), ("cost_steps", 1), ("cost_repeats", 1)):
            vals = getattr(self, key)
            for v in (vals if isinstance(vals, tuple) else (vals,)):
                if int(v) != v or v < lo:
                    raise ValueError(f"{key}: {v!r} (expected an integer >= {lo})")
        if max(self.n_trigs) > 8:
            raise ValueError(f"n_trigs: {max(self.n_trigs)} (expected <= 8, the extended "
                             "task's tokens)")
        if self.name == "nu_sweep" and min(self.lengths) < 2 * max(self.n_trigs) + 1:
            raise ValueError(f"lengths: {min(self.lengths)} is too short for N_trig = "
                             f"{max(self.n_trigs)} (expected L >= 2 N_trig + 1)")

    def reproduce_config(self, task, **kw):
        """The ReproduceConfig whose recipe this experiment's trainings follow."""
        kw.setdefault("out", self.out)
        return ReproduceConfig(task=task, steps=self.steps, quick=self.quick,
                               paper_exact=self.paper_exact, **kw)


def table_lengths():
    return tuple(LENGTHS)


# ==================================================================== shared machinery
def plan_run(cfg, task, model_cfg, seed, name):
    """One training of nu_sweep/window: its TrainConfig, checkpoint path and run config
    (stored in the checkpoint, as reproduce's)."""
    rcfg = cfg.reproduce_config(task)
    tcfg = train_config(rcfg, model_cfg.model, seed)
    path = os.path.join(cfg.out, name + ".npz")
    return {"task": task, "model_cfg": model_cfg, "seed": seed, "tcfg": tcfg,
            "ckpt": path, "run_config": run_config(rcfg, model_cfg, tcfg)}


def check_existing(run):
    """A checkpoint already at the run's path must be of this very run config."""
    path, want = run["ckpt"], run["run_config"]
    if not os.path.exists(path):
        return
    try:
        load_checkpoint(path)                    # a ValueError naming the file if unreadable
    except ValueError as exc:
        raise ValueError(f"--out: {exc}") from None
    have = read_run_config(path)
    if have is None:
        raise ValueError(f"--out: {path} exists and holds no run config (expected a "
                         "checkpoint of this experiment, or another --out)")
    for key in sorted(set(have) | set(want)):
        if have.get(key) != want.get(key):
            raise ValueError(f"--out: {path} was trained with {key} = {have.get(key)!r}, this "
                             f"run asks for {key} = {want.get(key)!r} (expected the same run "
                             "config to reuse it: use another --out)")


def check_reproduce(rcfg):
    """Before any training: a checkpoint already in a reproduce sub-folder must be of the
    run config reproduce will ask for (else refused here, naming the field)."""
    for model in rcfg.models:
        mc = model_config(rcfg, model)
        for seed in rcfg.seeds:
            tcfg = train_config(rcfg, model, seed)
            path = os.path.join(rcfg.out, f"{model}-seed{seed}.npz")
            check_existing({"ckpt": path, "run_config": run_config(rcfg, mc, tcfg)})


def train_run(run, progress):
    """Train (or reuse / continue the checkpoint of) one run; returns (params, seconds or
    None when reused)."""
    mc, tcfg, ckpt = run["model_cfg"], run["tcfg"], run["ckpt"]
    label = os.path.splitext(os.path.basename(ckpt))[0]
    if not needs_training(run):
        progress.message(f"{label}: {ckpt} already trained to step {tcfg.steps}; not trained again")
        return load_checkpoint(ckpt)[0], None
    resume = os.path.exists(ckpt)
    progress.message(f"train {label} ({mc.model}, {run['task']} task) at L = {tcfg.L}: "
                     f"{steps_text(tcfg)}, batch {tcfg.batch}"
                     + (f" (continuing {ckpt})" if resume else ""))
    t0 = time.perf_counter()
    task = progress.task(f"train {label}", tcfg.total_steps)
    params, _ = train(mc, tcfg, checkpoint=ckpt, resume=resume, run_config=run["run_config"],
                      progress=lambda k, info: task.update(k, rate=info.get("steps_per_s"),
                                                           loss=info.get("loss"), acc=info.get("acc")))
    task.close()
    return params, time.perf_counter() - t0


def generator(model_cfg, L):
    if model_cfg.task == "induction":
        return "construct"
    return extended_method(L, model_cfg.n_tokens, model_cfg.n_trig)


def evaluate(model_cfg, params, lengths, n, seed, progress, label):
    """Accuracy (%) per length on ``n`` fresh sequences each (module docstring: streams
    and blocks); returns (accuracies, generators, seconds)."""
    t0 = time.perf_counter()
    task = progress.task(f"evaluate {label}", n * sum(lengths), unit="token")
    accs, done = [], 0
    for L in lengths:
        if n * L <= EVAL_BLOCK_TOKENS:
            blocks = [(onp.random.default_rng([seed, eval_stream(), L]), n)]
        else:
            rows = max(1, EVAL_BLOCK_TOKENS // L)
            blocks = [(onp.random.default_rng([seed, eval_stream(), L, c]), min(rows, n - lo))
                      for c, lo in enumerate(range(0, n, rows))]
        hits = 0
        for rng, rows in blocks:
            tok, tgt = model_cfg.batch(rng, rows, L)
            hits += int(round(accuracy(model_cfg, params, tok, tgt) * rows))
            done += rows * L
            task.update(done, L=L)
        accs.append(100.0 * hits / n)
    task.close()
    return accs, [generator(model_cfg, L) for L in lengths], time.perf_counter() - t0


def eval_stream():
    return EVAL_STREAM


def run_entry(task, model_cfg, seed, lens, accs, gens, n, ckpt, tcfg, train_s, eval_s):
    return {"task": task, "model": model_cfg.model, "seed": int(seed),
            "model_config": json.loads(json.dumps(asdict(model_cfg))),
            "lengths": list(lens), "accuracy": accs, "eval_sequences": int(n), "generator": gens,
            "param_count": param_count(model_cfg),
            "total_steps": None if tcfg is None else int(tcfg.total_steps),
            "checkpoint": os.fspath(ckpt),
            "train_seconds": None if train_s is None else round(train_s, 3),
            "eval_seconds": round(eval_s, 3)}


def stats(rows):
    a = onp.asarray(rows, float)
    return {"mean": a.mean(0).round(4).tolist(), "min": a.min(0).tolist(), "max": a.max(0).tolist()}


def start(cfg, progress, outputs=(), inputs=()):
    """Check every output path (none overwrites an input), create --out, open the log."""
    names = ["results.json", f"{cfg.name}.png", "progress.log"]
    check_outputs([("--out", os.path.join(cfg.out, n)) for n in names] + list(outputs),
                  inputs=list(inputs), folders=[("--out", cfg.out)])
    prepare_out(cfg.out)
    log = os.path.join(cfg.out, "progress.log")
    progress = progress.with_log(log) if progress is not None else Progress(log_path=log)
    progress.message(f"experiment {cfg.name}: {TITLES[cfg.name]}")
    if cfg.quick:
        progress.message(SMOKE_NOTE)
    return progress


def finish(cfg, results, t0, plot):
    head = {"schema": SCHEMA, "experiment": cfg.name, "title": TITLES[cfg.name],
            "quick": cfg.quick,
            "note": SMOKE_NOTE if cfg.quick else (
                f"--steps {cfg.steps}: shorter or longer than the recipe" if cfg.steps
                else "the recipe (docs/recipe.md)"),
            "seeds": list(cfg.seeds), "steps": int(cfg.steps), "paper_exact": cfg.paper_exact}
    results = {**head, **results, "figure": f"{cfg.name}.png", "versions": versions(),
               "wall_seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_text(os.path.join(cfg.out, "results.json"),
                       json.dumps(results, indent=2, default=jsonable) + "\n")
    plt = pyplot_or_none()
    if plt is not None:
        fig = plot(plt, results)
        savefig(plt, fig, os.path.join(cfg.out, f"{cfg.name}.png"))
    return results


def jsonable(x):
    if isinstance(x, onp.generic):
        return x.item()
    if isinstance(x, onp.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON: {type(x).__name__}")


def total_steps(rc):
    """Steps a checkpoint's run ran in all (restart candidates included), from its run config."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return int(TrainConfig(**{k: v for k, v in rc.items() if k in fields}).total_steps)
    except (TypeError, ValueError):
        return None


def model_cfg_from_run_config(rc, path, task):
    """The ModelConfig stored in a reproduce checkpoint's run config."""
    if rc is None:
        raise ValueError(f"--checkpoints: {path} holds no run config (written by an older "
                         "rssm-ref: its task and options are unknown); expected a checkpoint "
                         "written by reproduce")
    if rc.get("task") != task or rc.get("model") != "residual":
        raise ValueError(f"--checkpoints: {path} is a {rc.get('model')} model of the "
                         f"{rc.get('task')} task (expected a residual model of the {task} task)")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                          for k, v in rc.items() if k in fields})


# ==================================================================== 2. nu_sweep
def train_and_evaluate(cfg, plan, progress, label):
    """Check, train (or reuse) and evaluate every planned run of the extended task, in
    order; ``label(model_cfg)`` names a run in the progress lines. With ``cfg.workers`` > 1
    the trainings not yet done run first in that many processes of one thread each (the
    same numbers: training is bit-identical across thread counts). Returns the run entries."""
    for run in plan:
        check_existing(run)
    progress = start(cfg, progress, outputs=[("--out", r["ckpt"]) for r in plan])
    trained = train_in_processes(plan, cfg.workers, progress) if cfg.workers > 1 else {}
    runs = []
    for run in plan:
        if run["ckpt"] in trained:
            params, train_s = load_checkpoint(run["ckpt"])[0], trained[run["ckpt"]]
        else:
            params, train_s = train_run(run, progress)
        mc = run["model_cfg"]
        name = f"{label(mc)}, seed {run['seed']}"
        accs, gens, ev_s = evaluate(mc, params, cfg.lengths, cfg.eval_n, run["seed"], progress,
                                     name)
        progress.message(f"  {name}: accuracy (%) at L = {', '.join(map(str, cfg.lengths))}: "
                         + " ".join(f"{a:.1f}" for a in accs))
        runs.append(run_entry("extended", mc, run["seed"], cfg.lengths, accs, gens, cfg.eval_n,
                               run["ckpt"], run["tcfg"], train_s, ev_s))
    return runs


def needs_training(run):
    """False when the run's checkpoint is already trained to its recipe's steps."""
    ckpt = run["ckpt"]
    return not (os.path.exists(ckpt) and load_checkpoint(ckpt)[3] >= run["tcfg"].steps)


def _train_quietly(run):
    """One training in a worker process (one thread); its checkpoint is written as it goes,
    so a killed sweep continues from it. Returns (checkpoint, seconds)."""
    t0 = time.perf_counter()
    train(run["model_cfg"], run["tcfg"], checkpoint=run["ckpt"],
          resume=os.path.exists(run["ckpt"]), run_config=run["run_config"])
    return run["ckpt"], time.perf_counter() - t0


def train_in_processes(plan, workers, progress):
    """Train the runs of ``plan`` not yet trained in ``workers`` processes, the first seed's
    of every cell first; returns {checkpoint: seconds}. Progress: one line per finished
    training, and a count."""
    # one seed across the whole grid first: a stopped sweep has every cell on seed 0
    # before any on seed 1 (the order does not change any number)
    seeds = list(dict.fromkeys(r["seed"] for r in plan))
    todo = sorted((r for r in plan if needs_training(r)), key=lambda r: seeds.index(r["seed"]))
    if not todo:
        return {}
    progress.message(f"train {len(todo)} of {len(plan)} runs in {workers} processes "
                     f"({len(plan) - len(todo)} already trained)")
    task = progress.task("trainings", len(todo), unit="run")
    seconds = {}
    with one_thread_processes(workers) as pool:
        futures = {pool.submit(_train_quietly, r): r for r in todo}
        for fut in as_completed(futures):
            ckpt, secs = fut.result()
            seconds[ckpt] = secs
            task.update(len(seconds))
            progress.message(f"trained {os.path.basename(ckpt)} in {secs:.0f} s "
                             f"({len(seconds)} of {len(todo)})")
    task.close()
    return seconds


# ==================================================================== figures
def pyplot_or_none():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:          # plotting is optional: pip install .[plot]
        return None
    return plt


def savefig(plt, fig, path):
    try:
        fig.tight_layout()
        atomic_savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)
