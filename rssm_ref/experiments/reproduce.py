"""Reproduce Tables 1 and 2: train at L = 16, evaluate at L = 16 … 1024.

``reproduce(cfg)`` trains every requested model and seed on the task (Section 4.2 /
4.3), evaluates each on ``eval_n`` fresh sequences per length (an evaluation stream
seeded apart from the training stream), and writes into ``cfg.out``:

- ``results.json``  task, ``quick`` (true: a smoke run, see below), per run (model,
  seed) the lengths, accuracies, the paper's accuracies, parameter counts, steps,
  configuration, wall seconds, and package versions; written atomically. Same command
  and seed → bit-identical file apart from the keys ending in ``_seconds``.
- ``accuracy.png``  accuracy against length, measured (one seed: its accuracies;
  several: the mean, ± std and min–max) drawn over the paper's numbers, and the chance
  level 1/N (``accuracy_figure``).
- ``<model>-seed<k>.npz`` the trained parameters (a resumable training checkpoint).
- ``progress.log``  the progress lines of every training and evaluation, appended.

Steps. ``steps`` (``--steps N``) is the number of gradient steps each (model, seed)
runs in all, the seeded restarts included: a recipe with R restart candidates of S
steps each runs (R − 1)·S steps on the discarded candidates and the rest on the
winner's schedule. ``steps = 0`` takes the recipe (residual: 3 × 1000 + 24000 = 27000,
selective: 10000); ``--steps 27000`` is the residual recipe exactly, and a smaller N
shrinks S to at most N / (R + 1) (``split_steps``).

Smoke run. ``quick`` trains a few hundred steps and evaluates 100 sequences per length:
it checks the pipeline in about a minute and its accuracies are not the paper's
experiment. Every output says so: the table's first line, ``results.json``'s
``quick`` and ``note``, and the figure's title.

Glossary
--------
ReproduceConfig, reproduce(cfg, progress=None) -> dict, format_table(results) -> str,
PAPER_TABLES[task][model] -> list of 7 accuracies (%) at L = 2^4 … 2^10,
split_steps(total, restarts, restart_steps) -> dict(steps, restarts, restart_steps),
chance(task) = 100 / (possible answers): induction 7 (the paper's N = 8 with the trigger),
extended 8

>>> sorted(PAPER_TABLES["induction"])
['residual', 'selective']
"""
import json
import os
import queue as queue_mod
import time
from concurrent.futures import wait
from dataclasses import asdict, dataclass

import numpy as onp

from rssm_ref.training.head import accuracy, ModelConfig, param_count
from rssm_ref.training.tasks import DEFAULT_TOKENS, TASKS
from rssm_ref.training.train import load_checkpoint, train, TrainConfig
from rssm_ref.util.paths import atomic_savefig, atomic_write_text, check_outputs
from rssm_ref.util.progress import Progress
from rssm_ref.util.threads import one_thread_processes, SPAWN, workers as thread_workers
from rssm_ref.util.version import versions
from rssm_ref.xp.backend import namespace

__all__ = ["ReproduceConfig", "reproduce", "format_table", "split_steps", "PAPER_TABLES",
           "LENGTHS", "TASK_NAMES"]

LENGTHS = (16, 32, 64, 128, 256, 512, 1024)
EVAL_STREAM = 2
# Table 1 (induction head) and Table 2 (extended induction head), accuracy in %.
PAPER_TABLES = {
    "induction": {"selective": [70, 60, 53, 34, 25, 21, 20], "residual": [100] * 7},
    "extended": {"selective": [69, 57, 22, 20, 17, 15, 13], "residual": [100] * 7},
}
# Training recipes (docs/recipe.md); steps are the defaults of a full run. "model": the
# recipe's additions to the paper's model (the deviations table of docs/recipe.md, each
# measured by an ablation); ``--paper-exact`` trains without them.
RESIDUAL_ADDITIONS = dict(gate_gain=5.0, gate_bias=True, gate_penalty=1.0)
SELECTIVE_ADDITIONS = dict()   # none: ModelConfig's defaults (tied cosine readout, as the Residual SSM)
RECIPES = {
    ("residual", "induction"): dict(steps=24000, lr=0.02, warmup=200, batch=256, restarts=4,
                                    restart_steps=1000, model=RESIDUAL_ADDITIONS),
    ("residual", "extended"): dict(steps=24000, lr=0.02, warmup=200, batch=256, restarts=4,
                                   restart_steps=1000, model=RESIDUAL_ADDITIONS),
    # the Selective SSM's best of the sweep in docs/recipe.md: the tied cosine readout
    # (no extra parameters; an untied linear one was no better at equal steps), lr 1e-2,
    # 10000 steps (the L = 16 loss is flat from there to 20000)
    ("selective", "induction"): dict(steps=10000, lr=1e-2, warmup=500, batch=64,
                                     model=SELECTIVE_ADDITIONS),
    ("selective", "extended"): dict(steps=10000, lr=1e-2, warmup=500, batch=64,
                                    model=SELECTIVE_ADDITIONS),
}
# ``--selective-recipe searched``: the winner of the 40-configuration search of
# docs/recipe.md (Euler B, output before, the D skip, 50 000 steps at batch 64): about 5x
# the short recipe's training time, so not the default run's. Euler B (mamba_ssm's) and D
# are additions to the paper's eq. (3b) model (off with --paper-exact).
SELECTIVE_SEARCHED = dict(steps=50000, lr=1e-2, warmup=500, batch=64, model=dict(use_D=True),
                          discretization="euler")
SELECTIVE_RECIPES = ("short", "searched")
QUICK = {"residual": dict(steps=300, warmup=20, restarts=1), "selective": dict(steps=15, warmup=5),
         "eval_n": 100}
TASK_NAMES = {"induction": "induction head (Table 1)", "extended": "extended induction head (Table 2)"}
MODEL_NAMES = {"residual": "Residual SSM", "selective": "Selective SSM"}


def chance(task):
    """% accuracy of a uniform guess among the task's possible answers (content tokens)."""
    return 100.0 / DEFAULT_TOKENS[task]
SMOKE_NOTE = ("SMOKE RUN (--quick): a few hundred training steps and 100 sequences per "
              "length check the pipeline; these accuracies are not the paper's experiment")


@dataclass(frozen=True)
class ReproduceConfig:
    """Options of ``python cli.py reproduce`` (see its --help)."""
    task: str = "induction"
    models: tuple = ("residual", "selective")
    seeds: tuple = (0,)
    steps: int = 0                 # total steps per run, restarts included; 0: the recipe
    quick: bool = False
    out: str = ""                  # "": results-<task>, one folder per task
    gate: str = "euler"
    discretization: str = None     # the Selective SSM's conventions (ModelConfig's names);
                                   # None: the recipe's (short: "zoh", searched: "euler")
    output: str = "before"
    eval_n: int = 1000
    lengths: tuple = LENGTHS
    resume: bool = False
    backend: str = "numpy"         # array module of the evaluation (training: NumPy autograd)
    paper_exact: bool = False      # True: the paper's model, none of the recipe's additions
    workers: int = 0               # processes; 0: one per core up to 2 (run_processes)
    selective_recipe: str = "short"   # or "searched" (SELECTIVE_SEARCHED)

    def __post_init__(self):
        if self.selective_recipe not in SELECTIVE_RECIPES:
            raise ValueError(f"--selective-recipe: {self.selective_recipe!r} (expected one of "
                             f"{', '.join(SELECTIVE_RECIPES)})")
        if self.discretization is None:
            searched = self.selective_recipe == "searched" and not self.paper_exact
            object.__setattr__(self, "discretization",
                               SELECTIVE_SEARCHED["discretization"] if searched else "zoh")
        if self.task not in TASKS:
            raise ValueError(f"task: {self.task!r} (expected 'induction' or 'extended')")
        for m in self.models:
            if m not in ("residual", "selective"):
                raise ValueError(f"model: {m!r} (expected 'residual', 'selective' or 'both')")
        if not self.seeds:
            raise ValueError("seeds: empty (expected e.g. 0,1,2)")
        if self.steps < 0:
            raise ValueError(f"--steps: {self.steps} (expected >= 0; 0: the recipe of each "
                             "model)")
        if self.eval_n < 1:
            raise ValueError(f"--eval-n: {self.eval_n} (expected a positive integer)")
        if int(self.workers) != self.workers or not 0 <= self.workers <= 64:
            raise ValueError(f"--workers: {self.workers!r} (expected an integer from 0 to 64; "
                             "0: one process per core, up to 2)")
        if not self.out:
            object.__setattr__(self, "out", default_out(self.task))
        namespace(self.backend)   # a clear error now, not after the training


def default_out(task):
    """Each task its own run folder, so that one never overwrites the other's results.

    >>> default_out("extended")
    'results-extended'
    """
    return f"results-{task}"


# ---------------------------------------------------------------- the run config
# Stored in every checkpoint (key run_config_json) so that --resume never continues or
# evaluates a model trained for another task, conventions or recipe. Bookkeeping fields
# that do not change the trained parameters are left out of the comparison.
_NOT_COMPARED = ("log_every", "checkpoint_every")
# the CLI flag that sets a field, for the refusal's message
_FIELD_FLAGS = {"task": "--task", "model": "--model", "gate": "--gate",
                "discretization": "--discretization", "output": "--output", "seed": "--seeds",
                "steps": "--steps", "restarts": "--steps", "restart_steps": "--steps"}


def run_config(cfg, model_cfg, tcfg):
    """Everything that decides a run's parameters: task, model options, recipe.

    >>> from rssm_ref.training.head import ModelConfig
    >>> rc = run_config(ReproduceConfig(), ModelConfig("residual", "induction"),
    ...                 train_config(ReproduceConfig(), "residual", 0))
    >>> rc["task"], rc["model"], rc["gate"], rc["seed"]
    ('induction', 'residual', 'euler', 0)
    """
    out = {"task": cfg.task}
    # the other model's conventions do not change this one (--gate on a selective run)
    unused = {"residual": ("discretization", "output"), "selective": ("gate",)}
    out.update({k: v for k, v in asdict(model_cfg).items()
                if k not in unused.get(model_cfg.model, ())})
    out.update({k: v for k, v in asdict(tcfg).items() if k not in _NOT_COMPARED})
    return json.loads(json.dumps(out))          # tuples -> lists, as read back from a file


# ModelConfig and TrainConfig fields added after checkpoints already recorded run configs:
# an older run config without one was trained with its value here (the option did not
# exist yet); in the JSON form run_config writes (tuples as lists)
_LATER_FIELDS = {"gate_penalty": 0.0, "gate_penalty_mode": "mean", "delta_init": [0.001, 0.1],
                 "A_init": "s4d", "use_D": False, "readout_scale": 10.0, "weight_decay": 0.0}


def read_run_config(path):
    """The run config stored in a checkpoint, or None (a checkpoint of an older rssm-ref).
    Fields added to ModelConfig / TrainConfig later (``_LATER_FIELDS``) read as the value
    the older run was trained with."""
    with onp.load(path, allow_pickle=False) as z:
        if "run_config_json" not in z.files:
            return None
        raw = z["run_config_json"]
    try:
        rc = json.loads(bytes(raw.astype(onp.uint8)).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{path}: key 'run_config_json' is not UTF-8 JSON (expected a "
                         "checkpoint written by rssm-ref reproduce)") from None
    if isinstance(rc, dict):
        rc = {**_LATER_FIELDS, **rc}
    return rc


def check_resume(path, want):
    """Refuse (ValueError, exit 2) to resume ``path`` for a run config other than ``want``,
    naming the first field that differs and the flag that sets it."""
    have = read_run_config(path)
    if have is None:
        raise ValueError(f"--resume: {path} holds no run config (written by an older rssm-ref: "
                         "its task and options are unknown); expected a checkpoint of this "
                         "run, or leave out --resume to train afresh")
    for key in sorted(set(have) | set(want), key=lambda k: (k not in _FIELD_FLAGS, k)):
        if have.get(key) != want.get(key):
            flag = _FIELD_FLAGS.get(key, "the recipe")
            raise ValueError(f"--resume: {path} was trained with {key} = {have.get(key)!r}, "
                             f"this run asks for {key} = {want.get(key)!r} ({flag}); expected "
                             "the same run config: use another --out, or leave out --resume")


def split_steps(total, restarts=1, restart_steps=1000):
    """Share ``total`` gradient steps between restart candidates and the winner's run.

    With R = ``restarts`` > 1 candidates of S steps, (R − 1)·S steps go to the discarded
    candidates, so the winner's schedule gets ``total − (R − 1)·S``; S is shrunk to at
    most total // (R + 1) so the winner keeps at least 2 S. Too few steps for R + 1
    shares: no restarts. Returns the TrainConfig fields (steps, restarts, restart_steps);
    ``TrainConfig(**split_steps(N, ...)).total_steps == N``.

    >>> split_steps(27000, 4, 1000)
    {'steps': 24000, 'restarts': 4, 'restart_steps': 1000}
    >>> split_steps(2000, 4, 1000)
    {'steps': 800, 'restarts': 4, 'restart_steps': 400}
    >>> split_steps(3, 4, 1000)
    {'steps': 3, 'restarts': 1, 'restart_steps': 1000}
    """
    total, restarts = int(total), int(restarts)
    if restarts <= 1:
        return {"steps": total, "restarts": 1, "restart_steps": int(restart_steps)}
    s = min(int(restart_steps), total // (restarts + 1))
    if s < 1:
        return {"steps": total, "restarts": 1, "restart_steps": int(restart_steps)}
    return {"steps": total - (restarts - 1) * s, "restarts": restarts, "restart_steps": s}


def model_config(cfg, model):
    """The ModelConfig of ``model`` in a reproduce run: the paper's model with the recipe's
    additions (``RECIPES[...]["model"]``) unless ``cfg.paper_exact``, and the conventions.

    >>> c = model_config(ReproduceConfig(), "residual")
    >>> c.gate_gain, c.gate_bias, c.gate_penalty, c.reflection_bound
    (5.0, True, 1.0, 1.0)
    >>> c = model_config(ReproduceConfig(paper_exact=True), "residual")
    >>> c.gate_gain, c.gate_bias, c.gate_penalty
    (1.0, False, 0.0)
    >>> c = model_config(ReproduceConfig(selective_recipe="searched"), "selective")
    >>> c.discretization, c.output, c.use_D
    ('euler', 'before', True)
    >>> c = model_config(ReproduceConfig(selective_recipe="searched", paper_exact=True), "selective")
    >>> c.discretization, c.use_D
    ('zoh', False)
    """
    extra = {} if cfg.paper_exact else dict(recipe_of(cfg, model).get("model", {}))
    return ModelConfig(model, cfg.task, gate=cfg.gate, discretization=cfg.discretization,
                       output=cfg.output, **extra)


def recipe_of(cfg, model):
    """The training recipe of ``model`` in this run: RECIPES, or for the Selective SSM with
    ``--selective-recipe searched`` SELECTIVE_SEARCHED (without its conventions, which
    ``cfg`` holds)."""
    if model == "selective" and cfg.selective_recipe == "searched":
        return {k: v for k, v in SELECTIVE_SEARCHED.items() if k != "discretization"}
    return RECIPES[(model, cfg.task)]


def train_config(cfg, model, seed):
    recipe = dict(recipe_of(cfg, model))
    recipe.pop("model", None)
    if cfg.quick:
        recipe.update(QUICK[model])
    if cfg.steps:
        recipe.update(split_steps(cfg.steps, recipe.get("restarts", 1),
                                  recipe.get("restart_steps", 1000)))
    recipe["warmup"] = min(recipe["warmup"], max(1, recipe["steps"] // 10))
    return TrainConfig(seed=seed, L=16, log_every=max(1, min(100, recipe["steps"] // 20)),
                       checkpoint_every=1000, **recipe)


def _evaluate(model_cfg, params, cfg, seed, task=None):
    """Accuracy (%) per length; ``task`` (a progress Task counted in tokens) is updated
    after each length."""
    n = QUICK["eval_n"] if cfg.quick else cfg.eval_n
    accs = []
    done = 0
    for L in cfg.lengths:
        rng = onp.random.default_rng([seed, EVAL_STREAM, L])
        tokens, targets = model_cfg.batch(rng, n, L)
        accs.append(100.0 * accuracy(model_cfg, params, tokens, targets, backend=cfg.backend))
        done += n * L
        if task is not None:
            task.update(done, L=L, acc=accs[-1] / 100.0)
    return accs, n


def steps_text(tcfg):
    """What a training runs, in words: '27000 steps (3 discarded restart candidates x
    1000 + 24000)' or '3000 steps'."""
    if tcfg.restarts <= 1:
        return f"{tcfg.total_steps} steps"
    short = min(tcfg.restart_steps, tcfg.steps)
    return (f"{tcfg.total_steps} steps ({tcfg.restarts - 1} discarded restart candidates x "
            f"{short} + {tcfg.steps})")


def prepare_out(out, flag="--out"):
    """Create the output folder ``out`` itself; its parent must exist (rssm-ref creates
    no parent folders, for any command)."""
    out = os.fspath(out)
    if os.path.isdir(out):
        return
    if os.path.exists(out):
        raise ValueError(f"{flag}: {out} exists and is not a folder (expected a folder for the run)")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ValueError(f"{flag}: {out}: parent folder {parent} does not exist (expected an "
                         "existing folder; rssm-ref creates the output folder, not its parents)")
    os.mkdir(out)



def reproduce(cfg, progress=None):
    """Train and evaluate every (model, seed); write results.json and accuracy.png.

    ``progress``: a ``rssm_ref.util.progress.Progress`` showing the work (the CLI passes one
    on stderr), or None (silent). Either way every line is appended to
    ``<out>/progress.log``. Returns the results dictionary (as written to results.json).
    """
    plan = []
    for model in cfg.models:
        model_cfg = model_config(cfg, model)
        for seed in cfg.seeds:
            tcfg = train_config(cfg, model, seed)
            ckpt = os.path.join(cfg.out, f"{model}-seed{seed}.npz")
            plan.append((model, seed, model_cfg, tcfg, ckpt, run_config(cfg, model_cfg, tcfg)))
    # before any training: the files written are files, and a checkpoint already in --out
    # is of this run (--resume) or at least of this task (else it would be overwritten)
    names = ["results.json", "accuracy.png", "progress.log"]
    check_outputs([("--out", os.path.join(cfg.out, n)) for n in names] +
                  [("--out", p[4]) for p in plan], folders=[("--out", cfg.out)])
    for model, seed, model_cfg, tcfg, ckpt, rc in plan:
        if not os.path.exists(ckpt):
            continue
        if cfg.resume:
            check_resume(ckpt, rc)
            continue
        have = read_run_config(ckpt)
        if have is not None and have.get("task") != cfg.task:
            raise ValueError(f"--task: {cfg.out} holds a run of the {have.get('task')} task "
                             f"({ckpt}); this {cfg.task} run would overwrite it (expected "
                             f"another --out, e.g. {default_out(cfg.task)})")
    prepare_out(cfg.out)
    log = os.path.join(cfg.out, "progress.log")
    progress = progress.with_log(log) if progress is not None else Progress(log_path=log)
    if cfg.quick:
        progress.message(SMOKE_NOTE)
    t_all = time.perf_counter()
    n_proc = run_processes(cfg, plan)
    if n_proc > 1:
        runs = _in_processes(cfg, plan, n_proc, progress)
    else:
        handle = _event_handler(progress)
        runs = [_train_and_evaluate(cfg, item, handle) for item in plan]
    results = {"task": cfg.task, "quick": cfg.quick, "paper_exact": cfg.paper_exact,
               "note": SMOKE_NOTE if cfg.quick else (
                   f"--steps {cfg.steps}: shorter or longer than the recipe" if cfg.steps
                   else "the recipe (docs/recipe.md)"),
               "chance_accuracy": chance(cfg.task), "lengths": list(cfg.lengths),
               "runs": runs, "summary": _summary(runs), "versions": versions(),
               "wall_seconds": round(time.perf_counter() - t_all, 3)}
    atomic_write_text(os.path.join(cfg.out, "results.json"), json.dumps(results, indent=2) + "\n")
    _plot(results, os.path.join(cfg.out, "accuracy.png"))
    return results


PROCESS_MIN_STEPS = 2000     # --workers 0: shorter trainings stay in one process


def run_processes(cfg, plan):
    """Processes a reproduce run trains in: ``cfg.workers``, or (0) one per core up to two
    and up to the number of runs; one for a smoke run or when a run trains fewer than
    ``PROCESS_MIN_STEPS`` steps (a process's start would cost more than it saves). The
    numbers do not depend on it."""
    if cfg.workers:
        return min(cfg.workers, len(plan))
    if cfg.quick or min(item[3].total_steps for item in plan) < PROCESS_MIN_STEPS:
        return 1
    return max(1, min(thread_workers(), len(plan)))


def _train_and_evaluate(cfg, item, event):
    """Train (or reuse) and evaluate one (model, seed) of the plan; ``event(kind, ...)``
    reports progress ("message", text) / ("start", key, label, total, unit) /
    ("update", key, done, info) / ("close", key). Returns its results.json run entry."""
    model, seed, model_cfg, tcfg, ckpt, rc = item
    event("message", f"train {model} seed {seed} at L = {tcfg.L}: {steps_text(tcfg)}, "
                     f"batch {tcfg.batch}")
    t0 = time.perf_counter()
    key = f"{model}/seed {seed}"
    if cfg.resume and os.path.exists(ckpt) and load_checkpoint(ckpt)[3] >= tcfg.steps:
        params = load_checkpoint(ckpt)[0]
        event("message", f"  {ckpt}: already trained to step {tcfg.steps}; not trained again")
    else:
        event("start", "train " + key, "train " + key, tcfg.total_steps, "step")
        params, _ = train(model_cfg, tcfg, checkpoint=ckpt, resume=cfg.resume, run_config=rc,
                          progress=lambda k, info: event(
                              "update", "train " + key, k,
                              {"rate": info.get("steps_per_s"), "loss": info.get("loss"),
                               "acc": info.get("acc")}))
        event("close", "train " + key)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    n_eval = QUICK["eval_n"] if cfg.quick else cfg.eval_n
    event("start", "evaluate " + key, "evaluate " + key, n_eval * sum(cfg.lengths), "token")
    accs, n = _evaluate(model_cfg, params, cfg, seed,
                        _EventTask(event, "evaluate " + key))
    event("close", "evaluate " + key)
    eval_s = time.perf_counter() - t1
    event("message", f"  {model} seed {seed}: accuracy (%) at L = "
                     f"{', '.join(map(str, cfg.lengths))}: " + " ".join(f"{a:.1f}" for a in accs))
    return {
        "model": model, "seed": seed, "lengths": list(cfg.lengths), "accuracy": accs,
        "paper_accuracy": PAPER_TABLES[cfg.task][model], "eval_sequences": n,
        "param_count": param_count(model_cfg), "steps": tcfg.steps,
        "total_steps": tcfg.total_steps, "steps_text": steps_text(tcfg),
        "train_config": asdict(tcfg), "model_config": asdict(model_cfg),
        "checkpoint": os.path.basename(ckpt), "eval_backend": cfg.backend,
        "train_seconds": round(train_s, 3), "eval_seconds": round(eval_s, 3),
    }


class _EventTask:
    """The ``update`` of a progress Task, sent as an event (``_evaluate`` calls it)."""

    def __init__(self, event, key):
        self.event, self.key = event, key

    def update(self, done, **info):
        self.event("update", self.key, done, info)


def _event_handler(progress):
    """Turn ``_train_and_evaluate``'s events into ``progress`` lines and bars."""
    tasks = {}

    def handle(kind, *args):
        if kind == "message":
            progress.message(args[0])
        elif kind == "start":
            key, label, total, unit = args
            tasks[key] = progress.task(label, total, unit=unit)
        elif kind == "update":
            key, done, info = args
            tasks[key].update(done, **info)
        elif kind == "close":
            tasks.pop(args[0]).close()
    return handle


def _worker_run(cfg, item, queue):
    """In a worker process (one thread): one run, its events sent through ``queue``."""
    return _train_and_evaluate(cfg, item, lambda kind, *a: queue.put((kind,) + a))


def _in_processes(cfg, plan, n_proc, progress):
    """Every run of ``plan`` in ``n_proc`` processes, their progress shown here as it
    comes; the run entries in the plan's order (bit-identical to one process: training
    and evaluation do not depend on the thread count)."""
    progress.message(f"{len(plan)} runs in {n_proc} processes (--workers)")
    handle = _event_handler(progress)
    with SPAWN.Manager() as manager:
        q = manager.Queue()
        with one_thread_processes(n_proc) as pool:
            futures = [pool.submit(_worker_run, cfg, item, q) for item in plan]
            pending = set(futures)
            while pending:
                try:
                    while True:
                        handle(*q.get(timeout=0.2))
                except queue_mod.Empty:
                    pass
                _, pending = wait(pending, timeout=0)
            while not q.empty():
                handle(*q.get())
            return [f.result() for f in futures]


def _summary(runs):
    out = {}
    for model in sorted({r["model"] for r in runs}):
        accs = onp.array([r["accuracy"] for r in runs if r["model"] == model])
        mine = [r for r in runs if r["model"] == model]
        out[model] = {"mean": accs.mean(0).round(4).tolist(), "std": accs.std(0).round(4).tolist(),
                      "min": accs.min(0).tolist(),
                      "max": accs.max(0).tolist(), "seeds": [r["seed"] for r in mine],
                      "total_steps": sorted({r.get("total_steps", r.get("steps")) for r in mine})}
    return out


def format_table(results):
    """The paper's table with the measured rows beside the published ones; a smoke run
    (``results["quick"]``) says so on its first line.

    >>> r = {"task": "induction", "lengths": [16], "runs": [], "summary": {"residual":
    ...      {"mean": [100.0], "min": [100.0], "max": [100.0], "seeds": [0]}}}
    >>> print(format_table(r).splitlines()[2])
    Residual SSM   paper           100%
    >>> print(format_table(dict(r, quick=True)).splitlines()[0][:30])
    SMOKE RUN (--quick): a few hun
    """
    table = "Table 1 (induction head)" if results["task"] == "induction" else "Table 2 (extended induction head)"
    lengths = results["lengths"]
    head = f"{'model':<14} {'':<10}" + "".join(f"{'2^%d' % int(onp.log2(L)):>8}" for L in lengths)
    lines = [SMOKE_NOTE] if results.get("quick") else []
    lines += [f"{table}: accuracy (%) by sequence length, trained at L = 16", head]
    for model, s in results["summary"].items():
        name = MODEL_NAMES[model]
        paper = PAPER_TABLES[results["task"]][model][: len(lengths)]
        lines.append(f"{name:<14} {'paper':<10}" + "".join(f"{p:>7}%" for p in paper))
        label = "smoke run" if results.get("quick") else "measured"
        lines.append(f"{'':<14} {label:<10}" + "".join(f"{v:>7.1f}%" if v < 100 else f"{v:>7.0f}%" for v in s["mean"]))
        if len(s["seeds"]) > 1:
            std = s.get("std") or [0.0] * len(s["mean"])
            lines.append(f"{'':<14} {'± std':<10}" + "".join(f"{'±%.1f' % v:>8}" for v in std))
            lines.append(f"{'':<14} {'min..max':<10}" + "".join(f"{a:>4.0f}..{b:<3.0f}" for a, b in zip(s["min"], s["max"])))
        steps = s.get("total_steps")
        steps = f", {' / '.join(map(str, steps))} steps" if steps else ""
        lines.append(f"{'':<14} ({_seeds_text(s['seeds'])}{steps})")
    lines.append(f"chance level (a uniform guess among {DEFAULT_TOKENS[results['task']]} tokens): "
                 f"{chance(results['task']):.1f}%")
    return "\n".join(lines)


def _seeds_text(seeds):
    """'seed 0' or 'seeds 0, 1, 2' (plain text, not a Python list).

    >>> _seeds_text([0]), _seeds_text([0, 1, 2])
    ('seed 0', 'seeds 0, 1, 2')
    """
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def measured_label(seeds, what="measured", spread="± std, band min..max"):
    """The legend's name of a measured curve: one seed is that seed, several are a mean
    (and ``spread`` says what the band or bars show).

    >>> measured_label([0]), measured_label([0, 1, 2])
    ('measured (seed 0)', 'measured (mean of 3 seeds, ± std, band min..max)')
    """
    if len(seeds) == 1:
        return f"{what} (seed {seeds[0]})"
    return f"{what} (mean of {len(seeds)} seeds" + (f", {spread})" if spread else ")")


PAPER_ZORDER, MEASURED_ZORDER = 2, 4     # measured drawn over the paper's markers


def accuracy_figure(results):
    """accuracy.png's figure: per model the paper's accuracies (large hollow squares,
    dashed, under) and the measured ones (filled circles with a white rim, solid, on top;
    one seed: that seed's; several: the mean ± std, band min..max), the chance level,
    and a title naming the task, seeds, steps and a smoke run. Returns the matplotlib
    figure (the caller closes it), or None without matplotlib.

    >>> r = {"task": "induction", "lengths": [16, 32], "summary": {"residual":
    ...      {"mean": [100.0, 100.0], "min": [100.0, 100.0], "max": [100.0, 100.0],
    ...       "seeds": [0], "total_steps": [27000]}}}
    >>> fig = accuracy_figure(r)
    >>> "Residual SSM: measured (seed 0)" in fig.axes[0].get_legend_handles_labels()[1]
    True
    >>> import matplotlib.pyplot as plt; plt.close(fig)
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional: pip install .[plot]
        return None
    fig, ax = plt.subplots(figsize=(8.4, 5.4))
    colors = {"residual": "tab:blue", "selective": "tab:orange"}
    L = results["lengths"]
    table = "Table 1" if results["task"] == "induction" else "Table 2"
    for model, s in results["summary"].items():
        c = colors[model]
        ax.plot(L, PAPER_TABLES[results["task"]][model][: len(L)], "s--", color=c, mfc="white",
                ms=11, mew=1.5, lw=1.2, alpha=0.8, zorder=PAPER_ZORDER,
                label=f"{MODEL_NAMES[model]}: paper ({table})")
        several = len(s["seeds"]) > 1
        if several:
            ax.fill_between(L, s["min"], s["max"], color=c, alpha=0.15, zorder=1, lw=0)
        what = "smoke run" if results.get("quick") else "measured"
        ax.errorbar(L, s["mean"], yerr=s.get("std") if several else None, fmt="o-",
                    color=c, ms=7, mec="white", mew=1.2, lw=1.8, capsize=3,
                    zorder=MEASURED_ZORDER,
                    label=f"{MODEL_NAMES[model]}: {measured_label(s['seeds'], what)}")
    n_ans = DEFAULT_TOKENS[results["task"]]
    ax.axhline(chance(results["task"]), color="gray", ls=":", lw=1.2, zorder=0,
               label=f"chance (1/{n_ans} = {chance(results['task']):.1f}%)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(L)
    ax.set_xlabel("sequence length L at evaluation (trained at L = 16)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    runs = results["summary"].values()
    seeds = sorted({k for s in runs for k in s["seeds"]})
    steps = ", ".join(f"{MODEL_NAMES[m]} {' / '.join(map(str, s.get('total_steps', [])))}"
                      for m, s in results["summary"].items() if s.get("total_steps"))
    title = [f"{TASK_NAMES[results['task']]}: accuracy vs length"
             + (" (--paper-exact: no recipe additions)" if results.get("paper_exact") else "")]
    if results.get("quick"):
        title.append("SMOKE RUN (--quick): a pipeline check, not the paper's experiment")
    title.append(_seeds_text(seeds) + (f"; steps per run: {steps}" if steps else ""))
    ax.set_title("\n".join(title), fontsize=10)
    # below the axes: the legend never covers a curve
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _plot(results, path):
    """Write accuracy.png (``accuracy_figure``); nothing without matplotlib."""
    fig = accuracy_figure(results)
    if fig is None:
        return None
    import matplotlib.pyplot as plt
    try:
        atomic_savefig(fig, path, dpi=110, bbox_inches="tight")    # the legend kept whole
    finally:
        plt.close(fig)
    return path
