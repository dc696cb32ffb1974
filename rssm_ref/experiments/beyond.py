"""Beyond the paper (issue 17): its untested claims as experiments, and lengths to 65536.

One function per experiment, one runner (``run_experiment``), one command::

    python cli.py experiment NAME [--seeds 0,1,2] [--steps N] [--quick] [--out DIR] [--json]

=========  ==========================================================================
NAME       what it trains and measures
=========  ==========================================================================
lengths    the Residual SSM trained at L = 16 (reproduce's checkpoints
           ``<dir>/residual-seed<k>.npz``, ``--checkpoints`` template, default
           ``results-{task}``; trained here with reproduce's recipe where absent),
           evaluated at L = 2048, 4096, 16384, 65536 on both tasks; beside it the
           accuracy predicted from the gate's leak per step (``predict_accuracy``)
nu_sweep   §3.2.2 "ν_r corresponds to the length of the trigger sequence": the
           Residual SSM on the extended task for ν_r ∈ {1, 2, 3, 4, 6, 8} × N_trig ∈
           {1, 2, 3, 4, 6}, accuracy at L = 16 and 1024, and the smallest ν_r that
           solves each N_trig ("solves": mean accuracy >= 99 % at L = 16, SOLVED_PCT)
window     §4.3 "the selection is static": the Selective SSM whose Δ, B, C read a
           depthwise causal window of w ∈ {1, 2, 4, 8} inputs, Table 2 (extended,
           L = 16 … 1024)
zoh_gate   Remark 3.1's exact ZOH gate, trained: Tables 1 and 2 (Residual SSM) with
           gate = "zoh" beside gate = "euler" (eq. 5), through ``reproduce``; with the
           leak per step and the fraction written at the answer
cost       every model of these tables: parameter count and measured seconds per
           training step, joined with the accuracies of the other experiments' results
=========  ==========================================================================

Every training uses reproduce's recipe (``experiments.RECIPES`` through
``experiments.model_config`` and ``train_config``: ``--steps`` is the total number of
steps per training, restart candidates included; ``--quick`` its smoke-run steps).
Evaluation sequences are drawn from ``default_rng([seed, EVAL_STREAM, L])``, the stream
reproduce evaluates on (so L <= 1024 sees reproduce's very sequences); batches of more
than ``EVAL_BLOCK_TOKENS`` tokens are drawn in blocks of rows, block c from
``default_rng([seed, EVAL_STREAM, L, c])``, to bound memory. The extended task at long L
is built by ``tasks.extended_induction_head(method="auto")``: whole-row rejection where
affordable, else resampling of the accidental windows (its docstring states the change
of distribution); every run records the construction used at each length
(``generator``).

Outputs, in ``--out`` (default ``results-<name>``; created, its parent must exist):
``results.json`` (written atomically), ``<name>.png``, ``progress.log``, and the
checkpoints of the trainings run here (a rerun with the same options reuses a finished
checkpoint and continues an unfinished one: same seed, same parameters; a checkpoint of
another run config is refused, exit 2). ``lengths`` and ``zoh_gate`` run ``reproduce``
into sub-folders (``train-<task>``, ``<task>-<gate>``) that hold its own results.

results.json (schema ``rssm-ref/experiment/1``)
-----------------------------------------------
Common keys: ``schema``, ``experiment`` (NAME), ``quick`` (true: a smoke run, its
numbers are not the experiment) and ``note``, ``seeds``, ``steps`` (0: the recipe),
``paper_exact``, ``settings`` (lengths, eval_n, grids: what was run), ``runs``,
``table``, ``answer`` (the question asked, the criterion and the answer computed from
the table; absent for cost), ``figure`` (the PNG's file name), ``versions``,
``wall_seconds``. Keys ending in ``_seconds`` are timings; everything else is the same
for the same command and seeds.

A run (lengths, nu_sweep, window, zoh_gate): ``task``, ``model``, ``seed``,
``model_config`` (ModelConfig as a dict), ``lengths``, ``accuracy`` (% per length),
``eval_sequences``, ``generator`` (per length: "construct" for the induction task,
else "reject" or "resample"), ``param_count``, ``total_steps``, ``checkpoint``,
``train_seconds`` (null when reused), ``eval_seconds``; lengths and zoh_gate add
``leak`` (``measure_leak``'s statistics), lengths adds ``predicted_accuracy`` (% per
length).

``table`` per experiment (mean, min, max: over seeds, % per length):

- lengths: ``{task: {lengths, mean, min, max, predicted, seeds, leak_per_step,
  horizon_steps}}``, and ``prediction_curve: {task: {lengths: 2^4..2^16, predicted}}``
  (mean over seeds); answer: ``target_pct`` 99.5, ``first_below_target`` per task
  (length or null), ``holds``.
- nu_sweep: ``nu_r``, ``n_trig``, ``lengths``, ``mean``/``min``/``max`` of shape
  (n_trig, nu_r, lengths); answer: ``criterion``, ``smallest_nu_r`` and
  ``equals_n_trig`` (one per N_trig, null when no ν_r of the grid solves), ``holds``.
- window: ``windows``, ``lengths``, ``mean``/``min``/``max`` (windows, lengths),
  ``paper_selective``; answer: ``n_trig``, ``criterion``, ``lifted`` (per w), ``holds``
  (lifted exactly for the w >= N_trig), ``text``.
- zoh_gate: ``lengths``, ``{task: {gate: {mean, min, max, seeds, leak_per_step,
  store_fraction}}}``; answer: ``zoh_max_write`` = 1 − e^{−1}, ``difference`` per task
  (zoh − euler mean at each length).
- cost: ``rows``: {``label``, ``experiments``, ``task``, ``model``, ``model_config``,
  ``param_count``, ``batch``, ``recipe_total_steps``, ``per_step_seconds``,
  ``train_estimate_seconds``, ``accuracy`` ({L: mean % over every run of this model
  config found} or null), ``accuracy_from`` (the results.json files), ``accuracy_quick``
  (one of them a smoke run), ``accuracy_total_steps`` (the joined runs' training steps)}.

The leak prediction (``measure_leak``, ``predict_accuracy``)
-------------------------------------------------------------
The gate is y(t+1) = a(t) y(t) + (1 − a(t)) y_s(t), a = 1 − s (eq. 5) or e^{−s} (ZOH).
Per step it keeps a fraction a(t) of what is stored; its leak is ℓ(t) = −log a(t)
(eq. 5: softplus of the gate's pre-activation, exact even where s rounds to 1; ZOH: s).
Measured on the trained model over ``leak_n`` fresh sequences of length ``leak_L``:

- λ, the leak per step: the mean of ℓ(t) over the holding positions, strictly between
  the answer (position q = p + N_trig, where the answer is stored) and the final
  trigger (positions q + 1 … L − N_trig − 1);
- y_c, the stored vector: the mean of y(q + 1) over the sequences whose answer is c;
- μ, what leaks in: the mean of y_s over the holding positions, weighted by 1 − a(t);
- (A_f, b_f): the final trigger's own steps, y(L) = A_f y(L − N_trig) + b_f (means).

Prediction: after d holding steps the stored answer keeps W = e^{−λ d}, so
ŷ(c, d) = A_f (W y_c + (1 − W) μ) + b_f, and the model answers c iff its readout's argmax
at ŷ(c, d) is c. The task puts the first trigger uniformly, so d is uniform on
{0, …, L − 2 N_trig − 1}; the predicted accuracy is the mean of that indicator over d and
over the answers (weighted as they occurred). It has no free parameter fitted to the
accuracies; it assumes the leak is spread evenly (its mean) and that what leaks in is
its mean. ``horizon_steps``: the first d at which some answer is lost.

Glossary
--------
ExperimentConfig(name, seeds, steps, quick, out, eval_n, checkpoints, results_from, ...)
run_experiment(cfg, progress=None) -> results dict (as written to results.json)
lengths / nu_sweep / window / zoh_gate / cost (cfg, progress=None) -> results dict
measure_leak(model_cfg, params, L, n, seed) -> leak statistics (dict)
leak_statistics(y, y_s, pre, p, targets, n_trig, gate, n_answers) -> the same, from arrays
predict_accuracy(leak, L, readout) -> % ;  horizon_steps(leak, readout, d_max)
readout_fn(model_cfg, params) -> (y (n, m) -> scores (n, N));  cost_configs(cfg) -> models
nu_answer(mean16, nu_rs, n_trigs) -> answer dict;  format_results(results) -> str

>>> cfg = ExperimentConfig("nu-sweep", quick=True)
>>> cfg.name, cfg.seeds, cfg.out
('nu_sweep', (0,), 'results-nu_sweep')
"""
import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as onp

from rssm_ref.experiments.reproduce import (chance, EVAL_STREAM, LENGTHS, model_config,
                                            PAPER_TABLES, prepare_out, read_run_config, reproduce,
                                            ReproduceConfig, run_config, RunCheckpoint, steps_text,
                                            train_config)
from rssm_ref.residual_ssm import residual_ssm_tf
from rssm_ref.training.head import (accuracy, init_params, ModelConfig, param_count,
                                    residual_core_arrays)
from rssm_ref.training.tasks import extended_induction_head, extended_method, induction_head
from rssm_ref.training.train import load_checkpoint, train, TrainConfig
from rssm_ref.util.paths import atomic_savefig, atomic_write_text, check_outputs
from rssm_ref.util.progress import Progress
from rssm_ref.util.version import versions

__all__ = ["ExperimentConfig", "EXPERIMENTS", "run_experiment", "lengths", "nu_sweep", "window",
           "zoh_gate", "cost", "measure_leak", "leak_statistics", "predict_accuracy",
           "horizon_steps", "nu_answer", "format_results", "SOLVED_PCT", "TARGET_PCT"]

EXPERIMENTS = ("lengths", "nu_sweep", "window", "zoh_gate", "cost")
SCHEMA = "rssm-ref/experiment/1"
TASKS2 = ("induction", "extended")
LONG_LENGTHS = (2048, 4096, 16384, 65536)
NU_RS = (1, 2, 3, 4, 6, 8)
N_TRIGS = (1, 2, 3, 4, 6)
SWEEP_LENGTHS = (16, 1024)
WINDOWS = (1, 2, 4, 8)
SOLVED_PCT = 99.0          # "solves" / "lifted": mean accuracy >= this at L = 16
TARGET_PCT = 99.5          # issue 17's target for the long lengths
EVAL_N = 1000
LEAK_STREAM = 3            # the leak's measurement sequences (train: 1, evaluation: 2)
LEAK_L, LEAK_N = 4096, 200
COST_STEPS, COST_REPEATS = 10, 3
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
    checkpoints: str = "results-{task}"     # lengths: reproduce's run folders
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

    def __post_init__(self):
        name = str(self.name).replace("-", "_")
        if name not in EXPERIMENTS:
            raise ValueError(f"NAME: {self.name!r} (expected one of {', '.join(EXPERIMENTS)})")
        q = self.quick
        default_lengths = {"lengths": QUICK["lengths"] if q else LONG_LENGTHS,
                           "nu_sweep": QUICK["sweep_lengths"] if q else SWEEP_LENGTHS,
                           "window": QUICK["window_lengths"] if q else _table_lengths(),
                           "zoh_gate": _table_lengths(), "cost": ()}
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


def _table_lengths():
    return tuple(LENGTHS)


# ==================================================================== the leak prediction
def leak_statistics(y, y_s, pre, p, targets, n_trig, gate="euler", n_answers=None):
    """The gate's leak statistics from one batch of traced sequences (module docstring).

    Shapes: y (batch, L, m) the gate's output y(1..L) (y[:, t] = y(t+1)), y_s (batch, L, m),
    pre (batch, L) the gate's pre-activation r(t) + c (s = σ(pre)), p (batch,) the first
    trigger's position, targets (batch,) the answers, n_trig the trigger's length (1 for
    the induction task), gate "euler" | "zoh", n_answers N (default max(targets) + 1).
    Returns {"leak_per_step": λ, "leak_median", "hold_steps" (positions averaged),
    "store": (N, m) list (y_c, null rows for answers never seen), "answer_weights" (N,),
    "mu" (m,), "final_a", "final_b" (m,), "store_fraction" (mean 1 − a(q) at the answer),
    "n_trig", "gate"}.

    >>> L = 12; pre = onp.full((1, L), -3.0)        # a constant gate s = σ(−3)
    >>> st = leak_statistics(onp.ones((1, L, 2)), onp.ones((1, L, 2)), pre, onp.array([2]),
    ...                      onp.array([1]), 2, n_answers=3)
    >>> round(st["leak_per_step"], 12) == round(float(onp.log1p(onp.exp(-3.0))), 12), st["hold_steps"]
    (True, 5)
    """
    y, y_s, pre = onp.asarray(y, float), onp.asarray(y_s, float), onp.asarray(pre, float)
    p, targets = onp.asarray(p, int), onp.asarray(targets, int)
    batch, L, m = y.shape
    k = int(n_trig)
    n_answers = int(n_answers if n_answers is not None else targets.max() + 1)
    if gate == "euler":
        ell = onp.logaddexp(0.0, pre)                   # −log(1 − σ(x)) = softplus(x)
    elif gate == "zoh":
        ell = 0.5 * (onp.tanh(0.5 * pre) + 1.0)         # −log e^{−s} = s = σ(x)
    else:
        raise ValueError(f"gate: {gate!r} (expected 'euler' or 'zoh')")
    b = -onp.expm1(-ell)                                # 1 − a(t), a = e^{−ℓ}: exact for small leaks
    t = onp.arange(L)
    q = p + k                                           # the answer's position
    hold = (t[None, :] > q[:, None]) & (t[None, :] <= L - k - 1)
    n_hold = int(hold.sum())
    lam = float(ell[hold].mean()) if n_hold else 0.0
    med = float(onp.median(ell[hold])) if n_hold else 0.0
    wsum = float(b[hold].sum())
    mu = ((b * hold)[:, :, None] * y_s).sum(axis=(0, 1)) / wsum if wsum > 0 else onp.zeros(m)
    rows = onp.arange(batch)
    stored = y[rows, q]                                 # y(q + 1): the answer written
    store, weights = [], []
    for c in range(n_answers):
        sel = targets == c
        store.append(stored[sel].mean(axis=0).tolist() if sel.any() else None)
        weights.append(float(sel.mean()))
    final_a_rows = onp.exp(-ell[:, L - k:].sum(axis=1))
    final_b_rows = y[:, L - 1] - final_a_rows[:, None] * y[:, L - k - 1]
    return {"leak_per_step": lam, "leak_median": med, "hold_steps": n_hold,
            "store": store, "answer_weights": weights, "mu": mu.tolist(),
            "final_a": float(final_a_rows.mean()), "final_b": final_b_rows.mean(axis=0).tolist(),
            "store_fraction": float(b[rows, q].mean()), "n_trig": k, "gate": gate}


def _trace(model_cfg, params, tokens):
    """(y, y_s, pre-activation) of the Residual SSM along whole sequences (recurrent path)."""
    arrs = residual_core_arrays(params, model_cfg)
    y, mid = residual_ssm_tf(*arrs, onp.asarray(params["E"])[tokens], path="recurrent",
                             gate=model_cfg.gate, return_intermediates=True)
    return onp.asarray(y), onp.asarray(mid["y_s"]), onp.asarray(mid["r"]) + float(onp.asarray(arrs[4]))


def _task_rows(model_cfg, rng, n, L):
    """(tokens, targets, p, n_trig) of the model's task, with the first trigger's position."""
    if model_cfg.task == "induction":
        tok, tgt, p = induction_head(rng, n, L, model_cfg.n_tokens, return_positions=True)
        return tok, tgt, p, 1
    tok, tgt, p = extended_induction_head(rng, n, L, model_cfg.n_tokens, model_cfg.trigger,
                                          return_positions=True)
    return tok, tgt, p, model_cfg.n_trig


def measure_leak(model_cfg, params, L=LEAK_L, n=LEAK_N, seed=0):
    """``leak_statistics`` of a trained Residual SSM on ``n`` fresh sequences of its task
    at length ``L`` (drawn from ``default_rng([seed, LEAK_STREAM, L])``); adds "L", "n".

    >>> cfg = ModelConfig("residual", "induction")
    >>> st = measure_leak(cfg, init_params(cfg), L=64, n=4)
    >>> st["leak_per_step"] > 0, len(st["store"]), st["n_trig"]
    (True, 7, 1)
    """
    if model_cfg.model != "residual":
        raise ValueError(f"model: {model_cfg.model!r} (the leak is the Residual SSM's gate)")
    tok, tgt, p, k = _task_rows(model_cfg, onp.random.default_rng([seed, LEAK_STREAM, L]), n, L)
    y, y_s, pre = _trace(model_cfg, params, tok)
    st = leak_statistics(y, y_s, pre, p, tgt, k, model_cfg.gate, model_cfg.n_tokens)
    st.update(L=int(L), n=int(n))
    return st


def readout_fn(model_cfg, params):
    """y (n, m) -> scores (n, N) whose argmax is the model's answer (its readout)."""
    if model_cfg.readout == "linear":
        W, b = onp.asarray(params["W_out"]), onp.asarray(params["b_out"])
        return lambda y: y @ W.T + b
    E = onp.asarray(params["E"])[:model_cfg.n_tokens]
    En = E / onp.sqrt((E * E).sum(axis=1, keepdims=True) + 1e-12)
    return lambda y: y @ En.T                            # cosine: |y| does not change argmax


def _correct(leak, d, readout):
    """(answers, len(d)) bool: is answer c still read after d holding steps?"""
    W = onp.exp(-leak["leak_per_step"] * onp.asarray(d, float))[:, None]
    mu, fb = onp.asarray(leak["mu"], float), onp.asarray(leak["final_b"], float)
    out = []
    for c, yc in enumerate(leak["store"]):
        if yc is None:
            out.append(onp.ones(len(W), dtype=bool))
            continue
        yhat = leak["final_a"] * (W * onp.asarray(yc) + (1.0 - W) * mu) + fb
        out.append(onp.argmax(readout(yhat), axis=1) == c)
    return onp.array(out)


def predict_accuracy(leak, L, readout, n_trig=None):
    """Predicted accuracy (%) at length L from the leak statistics (module docstring):
    the mean over answers c (weights ``answer_weights``) and over d uniform in
    {0, …, L − 2 N_trig − 1} of [argmax readout(A_f (e^{−λd} y_c + (1 − e^{−λd}) μ) + b_f) = c].

    >>> leak = {"leak_per_step": onp.log(2) / 10.5, "store": [[1.0, 0.0], [0.0, 1.0]],
    ...         "answer_weights": [0.5, 0.5], "mu": [1.0, 0.0], "final_a": 1.0,
    ...         "final_b": [0.0, 0.0], "n_trig": 1}
    >>> ident = lambda y: y        # answer 1 is lost once e^{−λd} < 1/2, i.e. d >= 11
    >>> predict_accuracy(leak, 13, ident), predict_accuracy(leak, 46, ident)
    (100.0, 62.5)
    """
    k = int(n_trig if n_trig is not None else leak["n_trig"])
    D = max(0, int(L) - 2 * k - 1)
    ok = _correct(leak, onp.arange(D + 1), readout).mean(axis=1)
    w = onp.asarray(leak["answer_weights"], float)
    return float(100.0 * (w * ok).sum() / w.sum())


def horizon_steps(leak, readout, d_max=1 << 20):
    """The first number of holding steps d <= d_max after which some answer (with weight
    > 0) is no longer read; None when every answer survives d_max steps.

    >>> leak = {"leak_per_step": onp.log(2) / 10.5, "store": [[1.0, 0.0], [0.0, 1.0]],
    ...         "answer_weights": [0.5, 0.5], "mu": [1.0, 0.0], "final_a": 1.0, "final_b": [0.0, 0.0]}
    >>> horizon_steps(leak, lambda y: y)
    11
    """
    d = onp.unique(onp.concatenate([onp.arange(min(d_max, 4096) + 1),
                                    onp.geomspace(1, d_max, 4000).astype(int)]))
    ok = _correct(leak, d, readout)
    ok[[w <= 0 for w in leak["answer_weights"]]] = True
    bad = onp.nonzero(~ok.all(axis=0))[0]
    if not bad.size:
        return None
    hi = int(d[bad[0]])
    lo = int(d[bad[0] - 1]) if bad[0] > 0 else -1
    if hi - lo > 1:                                       # refine between grid points
        fine = onp.arange(lo + 1, hi + 1)
        okf = _correct(leak, fine, readout)
        okf[[w <= 0 for w in leak["answer_weights"]]] = True
        hi = int(fine[onp.nonzero(~okf.all(axis=0))[0][0]])
    return hi


# ==================================================================== shared machinery
def _plan_run(cfg, task, model_cfg, seed, name):
    """One training of nu_sweep/window: its TrainConfig and checkpoint (carrying its run
    config, as reproduce's)."""
    rcfg = cfg.reproduce_config(task)
    tcfg = train_config(rcfg, model_cfg.model, seed)
    path = os.path.join(cfg.out, name + ".npz")
    return {"task": task, "model_cfg": model_cfg, "seed": seed, "tcfg": tcfg,
            "ckpt": RunCheckpoint(path, run_config(rcfg, model_cfg, tcfg))}


def _check_existing(run):
    """A checkpoint already at the run's path must be of this very run config."""
    path, want = run["ckpt"], run["ckpt"].run_config
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


def _check_reproduce(rcfg):
    """Before any training: a checkpoint already in a reproduce sub-folder must be of the
    run config reproduce will ask for (else refused here, naming the field)."""
    for model in rcfg.models:
        mc = model_config(rcfg, model)
        for seed in rcfg.seeds:
            tcfg = train_config(rcfg, model, seed)
            path = os.path.join(rcfg.out, f"{model}-seed{seed}.npz")
            _check_existing({"ckpt": RunCheckpoint(path, run_config(rcfg, mc, tcfg))})


def _train_run(run, progress):
    """Train (or reuse / continue the checkpoint of) one run; returns (params, seconds or
    None when reused)."""
    mc, tcfg, ckpt = run["model_cfg"], run["tcfg"], run["ckpt"]
    label = os.path.splitext(os.path.basename(ckpt))[0]
    if os.path.exists(ckpt) and load_checkpoint(ckpt)[3] >= tcfg.steps:
        progress.message(f"{label}: {ckpt} already trained to step {tcfg.steps}; not trained again")
        return load_checkpoint(ckpt)[0], None
    resume = os.path.exists(ckpt)
    progress.message(f"train {label} ({mc.model}, {run['task']} task) at L = {tcfg.L}: "
                     f"{steps_text(tcfg)}, batch {tcfg.batch}"
                     + (f" (continuing {ckpt})" if resume else ""))
    t0 = time.perf_counter()
    task = progress.task(f"train {label}", tcfg.total_steps)
    params, _ = train(mc, tcfg, checkpoint=ckpt, resume=resume,
                      progress=lambda k, info: task.update(k, rate=info.get("steps_per_s"),
                                                           loss=info.get("loss"), acc=info.get("acc")))
    task.close()
    return params, time.perf_counter() - t0


def _generator(model_cfg, L):
    if model_cfg.task == "induction":
        return "construct"
    return extended_method(L, model_cfg.n_tokens, model_cfg.n_trig)


def _evaluate(model_cfg, params, lengths, n, seed, progress, label):
    """Accuracy (%) per length on ``n`` fresh sequences each (module docstring: streams
    and blocks); returns (accuracies, generators, seconds)."""
    t0 = time.perf_counter()
    task = progress.task(f"evaluate {label}", n * sum(lengths), unit="token")
    accs, done = [], 0
    for L in lengths:
        if n * L <= EVAL_BLOCK_TOKENS:
            blocks = [(onp.random.default_rng([seed, _eval_stream(), L]), n)]
        else:
            rows = max(1, EVAL_BLOCK_TOKENS // L)
            blocks = [(onp.random.default_rng([seed, _eval_stream(), L, c]), min(rows, n - lo))
                      for c, lo in enumerate(range(0, n, rows))]
        hits = 0
        for rng, rows in blocks:
            tok, tgt = model_cfg.batch(rng, rows, L)
            hits += int(round(accuracy(model_cfg, params, tok, tgt) * rows))
            done += rows * L
            task.update(done, L=L)
        accs.append(100.0 * hits / n)
    task.close()
    return accs, [_generator(model_cfg, L) for L in lengths], time.perf_counter() - t0


def _eval_stream():
    return EVAL_STREAM


def _run_entry(task, model_cfg, seed, lens, accs, gens, n, ckpt, tcfg, train_s, eval_s):
    return {"task": task, "model": model_cfg.model, "seed": int(seed),
            "model_config": json.loads(json.dumps(asdict(model_cfg))),
            "lengths": list(lens), "accuracy": accs, "eval_sequences": int(n), "generator": gens,
            "param_count": param_count(model_cfg),
            "total_steps": None if tcfg is None else int(tcfg.total_steps),
            "checkpoint": os.fspath(ckpt),
            "train_seconds": None if train_s is None else round(train_s, 3),
            "eval_seconds": round(eval_s, 3)}


def _stats(rows):
    a = onp.asarray(rows, float)
    return {"mean": a.mean(0).round(4).tolist(), "min": a.min(0).tolist(), "max": a.max(0).tolist()}


def _start(cfg, progress, outputs=(), inputs=()):
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


def _finish(cfg, results, t0, plot):
    head = {"schema": SCHEMA, "experiment": cfg.name, "title": TITLES[cfg.name],
            "quick": cfg.quick,
            "note": SMOKE_NOTE if cfg.quick else (
                f"--steps {cfg.steps}: shorter or longer than the recipe" if cfg.steps
                else "the recipe (docs/recipe.md)"),
            "seeds": list(cfg.seeds), "steps": int(cfg.steps), "paper_exact": cfg.paper_exact}
    results = {**head, **results, "figure": f"{cfg.name}.png", "versions": versions(),
               "wall_seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_text(os.path.join(cfg.out, "results.json"),
                       json.dumps(results, indent=2, default=_jsonable) + "\n")
    plt = _plt()
    if plt is not None:
        fig = plot(plt, results)
        _savefig(plt, fig, os.path.join(cfg.out, f"{cfg.name}.png"))
    return results


def _jsonable(x):
    if isinstance(x, onp.generic):
        return x.item()
    if isinstance(x, onp.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON: {type(x).__name__}")


def _total_steps(rc):
    """Steps a checkpoint's run ran in all (restart candidates included), from its run config."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return int(TrainConfig(**{k: v for k, v in rc.items() if k in fields}).total_steps)
    except (TypeError, ValueError):
        return None


def _model_cfg_from_run_config(rc, path, task):
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


# ==================================================================== 1. lengths
def lengths(cfg, progress=None):
    """Residual SSM trained at L = 16, evaluated at ``cfg.lengths`` (default 2048, 4096,
    16384, 65536) on both tasks, seeds ``cfg.seeds``; beside it the accuracy predicted
    from the gate's leak (module docstring). Checkpoints: ``cfg.checkpoints`` with
    {task} filled in, ``residual-seed<k>.npz``; absent ones are trained here by
    ``reproduce`` (its recipe) into ``<out>/train-<task>``. Returns the results dict."""
    t0 = time.perf_counter()
    found, missing = {}, {}
    for task in TASKS2:
        folder = cfg.checkpoints.format(task=task)
        if os.path.realpath(folder) == os.path.realpath(cfg.out):
            raise ValueError(f"--out: {cfg.out} is the --checkpoints folder of the {task} task "
                             "(expected another folder: its results.json is reproduce's)")
        for seed in cfg.seeds:
            path = os.path.join(folder, f"residual-seed{seed}.npz")
            if os.path.isfile(path):
                found[(task, seed)] = path
            else:
                missing.setdefault(task, []).append(seed)
    loaded = {}
    for (task, seed), path in found.items():           # refuse a wrong input before any work
        params, _, _, step, _ = load_checkpoint(path)   # a ValueError naming the file
        rc = read_run_config(path)
        mc = _model_cfg_from_run_config(rc, path, task)
        if step < rc.get("steps", 0):
            raise ValueError(f"--checkpoints: {path} was saved at step {step} of {rc['steps']} "
                             "(an unfinished run: finish it with reproduce --resume)")
        if set(params) != set(init_params(mc)):
            raise ValueError(f"--checkpoints: {path}: parameters {sorted(params)} do not "
                             f"describe the model of its run config")
        loaded[(task, seed)] = (mc, params, path, rc)
    train_dirs = {task: os.path.join(cfg.out, f"train-{task}") for task in missing}
    train_s = {}
    train_cfgs = {task: cfg.reproduce_config(task, models=("residual",), seeds=tuple(seeds),
                                             out=train_dirs[task], resume=True,
                                             eval_n=cfg.eval_n)
                  for task, seeds in missing.items()}
    for rcfg in train_cfgs.values():
        _check_reproduce(rcfg)
    progress = _start(cfg, progress, inputs=[("--checkpoints", p) for p in found.values()],
                      outputs=[("--out", os.path.join(d, f"residual-seed{s}.npz"))
                               for task, d in train_dirs.items() for s in missing[task]])
    for task, seeds in missing.items():
        progress.message(f"no checkpoint for the {task} task, seeds "
                         f"{', '.join(map(str, seeds))} in "
                         f"{cfg.checkpoints.format(task=task)}: trained here by reproduce "
                         f"into {train_dirs[task]}")
        res = reproduce(train_cfgs[task], progress)
        for seed in seeds:
            path = os.path.join(train_dirs[task], f"residual-seed{seed}.npz")
            rc = read_run_config(path)
            loaded[(task, seed)] = (_model_cfg_from_run_config(rc, path, task),
                                    load_checkpoint(path)[0], path, rc)
            train_s.update({(task, r["seed"]): r.get("train_seconds") for r in res["runs"]})
    runs, table, curves = [], {}, {}
    for task in TASKS2:
        rows, preds, curve_rows, leaks = [], [], [], []
        for seed in cfg.seeds:
            mc, params, path, rc = loaded[(task, seed)]
            progress.message(f"{task} seed {seed}: the gate's leak on {cfg.leak_n} sequences "
                             f"of L = {cfg.leak_L}")
            leak = measure_leak(mc, params, cfg.leak_L, cfg.leak_n, seed)
            ro = readout_fn(mc, params)
            pred = [round(predict_accuracy(leak, L, ro), 4) for L in cfg.lengths]
            leak["horizon_steps"] = horizon_steps(leak, ro)
            accs, gens, ev_s = _evaluate(mc, params, cfg.lengths, cfg.eval_n, seed, progress,
                                         f"residual/{task}/seed {seed}")
            progress.message(f"  {task} seed {seed}: accuracy (%) at L = "
                             f"{', '.join(map(str, cfg.lengths))}: " + " ".join(f"{a:.1f}" for a in accs)
                             + "; predicted " + " ".join(f"{a:.1f}" for a in pred)
                             + f"; leak per step {leak['leak_per_step']:.3g}")
            entry = _run_entry(task, mc, seed, cfg.lengths, accs, gens, cfg.eval_n, path, None,
                               train_s.get((task, seed)), ev_s)
            entry["total_steps"] = _total_steps(rc)
            entry.update(leak=leak, predicted_accuracy=pred)
            runs.append(entry)
            rows.append(accs)
            preds.append(pred)
            curve_rows.append([predict_accuracy(leak, L, ro) for L in CURVE_LENGTHS])
            leaks.append(leak)
        hz = [lk["horizon_steps"] for lk in leaks]
        table[task] = {"lengths": list(cfg.lengths), **_stats(rows),
                       "predicted": onp.mean(preds, axis=0).round(4).tolist(),
                       "seeds": list(cfg.seeds),
                       "leak_per_step": [lk["leak_per_step"] for lk in leaks],
                       "horizon_steps": hz}
        curves[task] = {"lengths": list(CURVE_LENGTHS),
                        "predicted": onp.mean(curve_rows, axis=0).round(4).tolist()}
    first_below = {}
    for task, t in table.items():
        below = [L for L, m in zip(t["lengths"], t["min"]) if m < TARGET_PCT]
        first_below[task] = below[0] if below else None
    answer = {"question": "Does the Residual SSM trained at L = 16 keep >= 99.5 % at every "
                          "length, on every seed?",
              "target_pct": TARGET_PCT, "first_below_target": first_below,
              "holds": all(v is None for v in first_below.values())}
    results = {"settings": {"lengths": list(cfg.lengths), "eval_n": cfg.eval_n,
                            "leak_L": cfg.leak_L, "leak_n": cfg.leak_n,
                            "checkpoints": cfg.checkpoints, "tasks": list(TASKS2)},
               "runs": runs, "table": table, "prediction_curve": curves, "answer": answer}
    return _finish(cfg, results, t0, _plot_lengths)


# ==================================================================== 2. nu_sweep
def _train_and_evaluate(cfg, plan, progress, label):
    """Check, train (or reuse) and evaluate every planned run of the extended task, in
    order; ``label(model_cfg)`` names a run in the progress lines. Returns the run entries."""
    for run in plan:
        _check_existing(run)
    progress = _start(cfg, progress, outputs=[("--out", r["ckpt"]) for r in plan])
    runs = []
    for run in plan:
        params, train_s = _train_run(run, progress)
        mc = run["model_cfg"]
        name = f"{label(mc)}, seed {run['seed']}"
        accs, gens, ev_s = _evaluate(mc, params, cfg.lengths, cfg.eval_n, run["seed"], progress,
                                     name)
        progress.message(f"  {name}: accuracy (%) at L = {', '.join(map(str, cfg.lengths))}: "
                         + " ".join(f"{a:.1f}" for a in accs))
        runs.append(_run_entry("extended", mc, run["seed"], cfg.lengths, accs, gens, cfg.eval_n,
                               run["ckpt"], run["tcfg"], train_s, ev_s))
    return runs


def nu_answer(mean16, nu_rs, n_trigs, threshold=SOLVED_PCT):
    """The smallest ν_r that solves each N_trig ("solves": mean accuracy >= ``threshold``
    % at L = 16) and whether it equals N_trig. ``mean16`` (n_trig, nu_r).

    >>> a = nu_answer([[100, 100], [50, 99.5]], nu_rs=[1, 2], n_trigs=[1, 2])
    >>> a["smallest_nu_r"], a["equals_n_trig"], a["holds"]
    ([1, 2], [True, True], True)
    >>> nu_answer([[40, 100]], [1, 2], [1])["smallest_nu_r"]
    [2]
    """
    smallest, equal = [], []
    for i, N in enumerate(n_trigs):
        ok = [nu for j, nu in enumerate(nu_rs) if mean16[i][j] >= threshold]
        smallest.append(min(ok) if ok else None)
        equal.append(None if not ok else min(ok) == N)
    holds = all(e is True for e in equal)
    gaps = [N for N in n_trigs if N not in nu_rs]
    words = []
    for N, s in zip(n_trigs, smallest):
        words.append(f"N_trig {N}: " + (f"smallest nu_r {s}" if s is not None else "no nu_r solves"))
    text = ("yes: " if holds else "no: ") + "; ".join(words)
    if gaps:
        text += f" (nu_r = {', '.join(map(str, gaps))} not in the grid)"
    return {"question": "Is the smallest nu_r that solves the task equal to N_trig (§3.2.2)?",
            "criterion": f"solves: mean accuracy >= {threshold:g} % at L = 16",
            "smallest_nu_r": smallest, "equals_n_trig": equal, "holds": holds, "text": text}


def nu_sweep(cfg, progress=None):
    """The Residual SSM on the extended task for every ν_r in ``cfg.nu_rs`` and N_trig in
    ``cfg.n_trigs`` (trigger (0, …, N_trig − 1); N_trig = 1 is the induction-like task),
    seeds ``cfg.seeds``, accuracy at ``cfg.lengths`` (default 16 and 1024); the answer
    from ``nu_answer``. Returns the results dict."""
    t0 = time.perf_counter()
    base = model_config(cfg.reproduce_config("extended"), "residual")
    plan = [_plan_run(cfg, "extended", dataclasses.replace(base, nu_r=nu, n_trig=N), seed,
                      f"residual-nu_r{nu}-ntrig{N}-seed{seed}")
            for N in cfg.n_trigs for nu in cfg.nu_rs for seed in cfg.seeds]
    runs = _train_and_evaluate(cfg, plan, progress,
                               lambda mc: f"nu_r {mc.nu_r}, N_trig {mc.n_trig}")
    shape = (len(cfg.n_trigs), len(cfg.nu_rs), len(cfg.seeds), len(cfg.lengths))
    acc = onp.array([r["accuracy"] for r in runs]).reshape(shape)
    table = {"nu_r": list(cfg.nu_rs), "n_trig": list(cfg.n_trigs), "lengths": list(cfg.lengths),
             "mean": acc.mean(2).round(4).tolist(), "min": acc.min(2).tolist(),
             "max": acc.max(2).tolist()}
    i16 = list(cfg.lengths).index(16) if 16 in cfg.lengths else 0
    answer = nu_answer(acc.mean(2)[:, :, i16], cfg.nu_rs, cfg.n_trigs)
    answer["at_length"] = int(cfg.lengths[i16])
    results = {"settings": {"lengths": list(cfg.lengths), "eval_n": cfg.eval_n,
                            "nu_r": list(cfg.nu_rs), "n_trig": list(cfg.n_trigs),
                            "solved_pct": SOLVED_PCT},
               "runs": runs, "table": table, "answer": answer}
    return _finish(cfg, results, t0, _plot_nu)


# ==================================================================== 3. window
def window(cfg, progress=None):
    """The Selective SSM on the extended task (Table 2) whose Δ, B, C read a depthwise
    causal window of w inputs, w in ``cfg.windows`` (w = 1: the paper's), seeds
    ``cfg.seeds``, lengths ``cfg.lengths`` (default 16 … 1024). Answer: is it lifted
    (mean >= SOLVED_PCT at L = 16) exactly when w >= N_trig? Returns the results dict."""
    t0 = time.perf_counter()
    base = model_config(cfg.reproduce_config("extended"), "selective")
    plan = [_plan_run(cfg, "extended", dataclasses.replace(base, window=w), seed,
                      f"selective-w{w}-seed{seed}")
            for w in cfg.windows for seed in cfg.seeds]
    runs = _train_and_evaluate(cfg, plan, progress, lambda mc: f"window {mc.window}")
    acc = onp.array([r["accuracy"] for r in runs]).reshape(
        len(cfg.windows), len(cfg.seeds), len(cfg.lengths))
    paper = dict(zip(LENGTHS, PAPER_TABLES["extended"]["selective"]))
    table = {"windows": list(cfg.windows), "lengths": list(cfg.lengths),
             "mean": acc.mean(1).round(4).tolist(), "min": acc.min(1).tolist(),
             "max": acc.max(1).tolist(),
             "paper_selective": [paper.get(L) for L in cfg.lengths]}
    n_trig = base.n_trig
    i16 = list(cfg.lengths).index(16) if 16 in cfg.lengths else 0
    lifted = [bool(m >= SOLVED_PCT) for m in acc.mean(1)[:, i16]]
    want = [w >= n_trig for w in cfg.windows]
    holds = lifted == want
    answer = {"question": "Does a causal window of w >= N_trig inputs lift the Selective SSM "
                          "to ~100 % (§4.3: its selection is static)?",
              "n_trig": n_trig,
              "criterion": f"lifted: mean accuracy >= {SOLVED_PCT:g} % at L = {cfg.lengths[i16]}",
              "lifted": lifted, "holds": holds,
              "text": ("yes: lifted exactly for w >= N_trig" if holds else
                       "no: lifted for w = " + (", ".join(str(w) for w, l in zip(cfg.windows, lifted) if l)
                                                or "none") + f" (N_trig = {n_trig})")}
    results = {"settings": {"lengths": list(cfg.lengths), "eval_n": cfg.eval_n,
                            "windows": list(cfg.windows), "solved_pct": SOLVED_PCT},
               "runs": runs, "table": table, "answer": answer}
    return _finish(cfg, results, t0, _plot_window)


# ==================================================================== 4. zoh_gate
def zoh_gate(cfg, progress=None):
    """Tables 1 and 2 for the Residual SSM with gate = "zoh" (Remark 3.1) beside
    gate = "euler" (eq. 5), each through ``reproduce`` (its recipe, seeds ``cfg.seeds``)
    into ``<out>/<task>-<gate>``, plus the leak per step and the fraction written at the
    answer (``measure_leak``). Returns the results dict."""
    t0 = time.perf_counter()
    subs = {(task, gate): os.path.join(cfg.out, f"{task}-{gate}")
            for task in TASKS2 for gate in ("euler", "zoh")}
    rcfgs = {key: cfg.reproduce_config(key[0], models=("residual",), seeds=cfg.seeds, out=sub,
                                       gate=key[1], resume=True, eval_n=cfg.eval_n)
             for key, sub in subs.items()}
    for rcfg in rcfgs.values():
        _check_reproduce(rcfg)
    progress = _start(cfg, progress, outputs=[("--out", os.path.join(d, f"residual-seed{s}.npz"))
                                              for d in subs.values() for s in cfg.seeds])
    runs, table = [], {"lengths": None}
    for (task, gate), sub in subs.items():
        progress.message(f"reproduce {task} with gate = {gate} into {sub}")
        res = reproduce(rcfgs[(task, gate)], progress)
        table["lengths"] = res["lengths"]
        rows, leaks = [], []
        for r in res["runs"]:
            path = os.path.join(sub, r["checkpoint"])
            mc = _model_cfg_from_run_config(read_run_config(path), path, task)
            leak = measure_leak(mc, load_checkpoint(path)[0], cfg.leak_L, cfg.leak_n, r["seed"])
            gens = [_generator(mc, L) for L in r["lengths"]]
            entry = _run_entry(task, mc, r["seed"], r["lengths"], r["accuracy"], gens,
                               r["eval_sequences"], path, None, r.get("train_seconds"),
                               r.get("eval_seconds", 0.0))
            entry["total_steps"] = r.get("total_steps")
            entry["leak"] = leak
            runs.append(entry)
            rows.append(r["accuracy"])
            leaks.append(leak)
        table.setdefault(task, {})[gate] = {
            **_stats(rows), "seeds": list(cfg.seeds),
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
    return _finish(cfg, results, t0, _plot_zoh)


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


def _joined_accuracy(cfg, mc):
    """Mean accuracy per length over the runs of ``mc`` in the other experiments' results."""
    want = json.loads(json.dumps(asdict(mc)))
    per_L, sources, quick, steps = {}, [], False, set()
    for name in ("lengths", "nu_sweep", "window", "zoh_gate"):
        path = os.path.join(cfg.results_from.format(name=name), "results.json")
        if not os.path.isfile(path):
            continue
        data = _read_results(path)
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


def _read_results(path):
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
    progress = _start(cfg, progress, inputs=inputs)
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
        acc, sources, quick, acc_steps = _joined_accuracy(cfg, mc)
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
    return _finish(cfg, results, t0, _plot_cost)


# ==================================================================== runner, text
RUNNERS = {"lengths": lengths, "nu_sweep": nu_sweep, "window": window, "zoh_gate": zoh_gate,
           "cost": cost}


def run_experiment(cfg, progress=None):
    """Run the experiment ``cfg.name``; write results.json and <name>.png into ``cfg.out``.

    ``progress``: a ``rssm_ref.util.progress.Progress`` (the CLI passes one on stderr) or None
    (silent); either way every line goes to ``<out>/progress.log``.
    """
    return RUNNERS[cfg.name](cfg, progress)


def _row(label, vals, width=8):
    return f"{label:<26}" + "".join(f"{v:>{width}.1f}" if v is not None else f"{'-':>{width}}"
                                    for v in vals)


def format_results(results):
    """The experiment's table as text (a smoke run says so on its first line).

    >>> r = {"experiment": "window", "title": "t", "seeds": [0], "table": {"windows": [1],
    ...      "lengths": [16], "mean": [[50.0]], "paper_selective": [69]},
    ...      "answer": {"text": "no: lifted for w = none (N_trig = 4)"}}
    >>> print(format_results(r))
    t (seed 0)
    window w                        2^4
    paper (w = 1)                  69.0
    w = 1                          50.0
    answer: no: lifted for w = none (N_trig = 4)
    """
    name, t = results["experiment"], results["table"]
    lines = [SMOKE_NOTE] if results.get("quick") else []
    seeds = results.get("seeds", [])
    lines.append(f"{results['title']} ({'seed' if len(seeds) == 1 else 'seeds'} "
                 f"{', '.join(map(str, seeds))})")

    def head(label, lens):
        return f"{label:<26}" + "".join(f"{'2^%d' % int(onp.log2(L)):>8}" for L in lens)
    if name == "lengths":
        for task in TASKS2:
            tt = t[task]
            lines.append(head(f"{task}: L", tt["lengths"]))
            lines.append(_row("  measured mean", tt["mean"]))
            lines.append(_row("  measured min", tt["min"]))
            lines.append(_row("  predicted from the leak", tt["predicted"]))
            lines.append(f"  leak per step {', '.join(f'{v:.3g}' for v in tt['leak_per_step'])}"
                         f"; horizon (steps) {', '.join(str(h) for h in tt['horizon_steps'])}")
    elif name == "nu_sweep":
        for li, L in enumerate(t["lengths"]):
            lines.append(f"accuracy (%) at L = {L}: rows N_trig, columns nu_r")
            corner = "N_trig \\ nu_r"
            lines.append(f"{corner:<26}" + "".join(f"{nu:>8}" for nu in t["nu_r"]))
            for i, N in enumerate(t["n_trig"]):
                lines.append(_row(f"{N}", [t["mean"][i][j][li] for j in range(len(t["nu_r"]))]))
    elif name == "window":
        lines.append(head("window w", t["lengths"]))
        lines.append(_row("paper (w = 1)", t["paper_selective"]))
        for i, w in enumerate(t["windows"]):
            lines.append(_row(f"w = {w}", t["mean"][i]))
    elif name == "zoh_gate":
        for task in TASKS2:
            lines.append(head(f"{task}: L", t["lengths"]))
            for gate in ("euler", "zoh"):
                g = t[task][gate]
                lines.append(_row(f"  gate {gate}", g["mean"]))
                lines.append(f"    leak per step {', '.join(f'{v:.3g}' for v in g['leak_per_step'])}; "
                             f"written at the answer {', '.join(f'{v:.3f}' for v in g['store_fraction'])}")
    elif name == "cost":
        lines.append(f"{'model':<34}{'params':>8}{'ms/step':>9}{'batch':>7}{'steps':>8}"
                     f"{'est. s':>9}  accuracy (%)")
        for r in t["rows"]:
            acc = r["accuracy"]
            acc_txt = ", ".join(f"L{L} {a:.1f}" for L, a in acc.items()) if acc else "-"
            lines.append(f"{r['label']:<34}{r['param_count']['total']:>8}"
                         f"{1e3 * r['per_step_seconds']:>9.2f}{r['batch']:>7}"
                         f"{r['recipe_total_steps']:>8}{r['train_estimate_seconds']:>9.0f}  {acc_txt}")
    ans = results.get("answer")
    if ans:
        if "text" in ans:
            lines.append(f"answer: {ans['text']}")
        elif name == "lengths":
            lines.append(f"answer: >= {ans['target_pct']} % everywhere: {ans['holds']}; first "
                         f"length below: {ans['first_below_target']}")
        elif name == "zoh_gate":
            lines.append(f"answer: zoh - euler (mean, per length): {ans['difference']}")
    return "\n".join(lines)


# ==================================================================== figures
def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:          # plotting is optional: pip install .[plot]
        return None
    return plt


def _savefig(plt, fig, path):
    try:
        fig.tight_layout()
        atomic_savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)


def _suptitle(fig, results):
    title = results["title"]
    if results.get("quick"):
        title += "\nSMOKE RUN (--quick): a pipeline check, not the experiment"
    seeds = results["seeds"]
    title += f"\n{'seed' if len(seeds) == 1 else 'seeds'} {', '.join(map(str, seeds))}"
    fig.suptitle(title, fontsize=9)


def _accuracy_panels_done(fig, axes, results):
    """The shared finish of an accuracy-vs-length figure: y label and range, legend, title."""
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_ylim(0, 105)
    axes[0].legend(fontsize=7, loc="lower left")
    _suptitle(fig, results)
    return fig


def _plot_lengths(plt, results):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, task in zip(axes, TASKS2):
        t, c = results["table"][task], results["prediction_curve"][task]
        L = t["lengths"]
        ax.fill_between(L, t["min"], t["max"], color="tab:blue", alpha=0.15, lw=0)
        ax.plot(L, t["mean"], "o-", color="tab:blue", label="measured (mean, band min..max)")
        ax.plot(L, t["predicted"], "s", color="tab:red", mfc="white", label="predicted from the leak")
        ax.plot(c["lengths"], c["predicted"], "--", color="tab:red", lw=1, label="prediction curve")
        ax.axhline(TARGET_PCT, color="green", ls=":", lw=1, label=f"target {TARGET_PCT} %")
        ax.axhline(chance(task), color="gray", ls=":", lw=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("L at evaluation (trained at L = 16)")
        ax.set_title(task, fontsize=9)
        ax.grid(alpha=0.3)
    return _accuracy_panels_done(fig, axes, results)


def _plot_nu(plt, results):
    t = results["table"]
    mean = onp.array(t["mean"])
    fig, axes = plt.subplots(1, len(t["lengths"]), figsize=(5.2 * len(t["lengths"]), 4.6),
                             squeeze=False)
    for li, ax in enumerate(axes[0]):
        im = ax.imshow(mean[:, :, li], vmin=0, vmax=100, cmap="viridis", origin="lower",
                       aspect="auto")
        for i, N in enumerate(t["n_trig"]):
            for j, nu in enumerate(t["nu_r"]):
                v = mean[i, j, li]
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                        color="black" if v > 60 else "white",
                        fontweight="bold" if nu == N else "normal")
        ax.set_xticks(range(len(t["nu_r"])), [str(v) for v in t["nu_r"]])
        ax.set_yticks(range(len(t["n_trig"])), [str(v) for v in t["n_trig"]])
        ax.set_xlabel("nu_r (order of Sigma_r)")
        ax.set_ylabel("N_trig (trigger length)")
        ax.set_title(f"mean accuracy (%) at L = {t['lengths'][li]} (bold: nu_r = N_trig)",
                     fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    _suptitle(fig, results)
    return fig


def _plot_window(plt, results):
    t = results["table"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    L = t["lengths"]
    paper = [(x, p) for x, p in zip(L, t["paper_selective"]) if p is not None]
    if paper:
        ax.plot(*zip(*paper), "s--", color="gray", mfc="white", label="paper, Selective SSM (w = 1)")
    for i, w in enumerate(t["windows"]):
        line, = ax.plot(L, t["mean"][i], "o-", label=f"w = {w} (mean)")
        ax.fill_between(L, t["min"][i], t["max"][i], color=line.get_color(), alpha=0.12, lw=0)
    ax.axhline(chance("extended"), color="gray", ls=":", lw=1, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("L at evaluation (trained at L = 16)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _suptitle(fig, results)
    return fig


def _plot_zoh(plt, results):
    t = results["table"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, task in zip(axes, TASKS2):
        for gate, color in (("euler", "tab:blue"), ("zoh", "tab:orange")):
            g = t[task][gate]
            ax.fill_between(t["lengths"], g["min"], g["max"], color=color, alpha=0.15, lw=0)
            ax.plot(t["lengths"], g["mean"], "o-", color=color,
                    label=f"gate = {gate}" + (" (eq. 5)" if gate == "euler" else " (Remark 3.1)"))
        ax.plot(t["lengths"], [100] * len(t["lengths"]), "s--", color="gray", mfc="white",
                label="paper (eq. 5)")
        ax.axhline(chance(task), color="gray", ls=":", lw=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_title("Table 1 (induction)" if task == "induction" else "Table 2 (extended)",
                     fontsize=9)
        ax.set_xlabel("L at evaluation (trained at L = 16)")
        ax.grid(alpha=0.3)
    return _accuracy_panels_done(fig, axes, results)


def _plot_cost(plt, results):
    rows = results["table"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    colors = {"zoh_gate": "tab:blue", "tables": "tab:gray", "nu_sweep": "tab:green",
              "window": "tab:orange"}
    for r in rows:
        c = colors.get(r["experiments"][0], "black")
        axes[0].scatter(r["param_count"]["total"], 1e3 * r["per_step_seconds"], color=c, s=18)
        acc = r["accuracy"]
        if acc:
            L_max = "1024" if "1024" in acc else max(acc, key=int)    # Tables' longest
            axes[1].scatter(1e3 * r["per_step_seconds"], acc[L_max], color=c, s=18)
            axes[1].annotate(f"{r['label']} (L {L_max})", (1e3 * r["per_step_seconds"], acc[L_max]),
                             fontsize=5)
    for name, c in colors.items():
        axes[0].scatter([], [], color=c, label=name)
    axes[0].set_xlabel("parameters")
    axes[0].set_ylabel("training time per step (ms)")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    axes[1].set_xlabel("training time per step (ms)")
    axes[1].set_ylabel("accuracy (%) at L = 1024 (else the longest measured)")
    axes[1].set_ylim(0, 105)
    axes[1].grid(alpha=0.3)
    if not any(r["accuracy"] for r in rows):
        axes[1].text(0.5, 0.5, "no accuracies found (--results-from)", ha="center",
                     transform=axes[1].transAxes)
    _suptitle(fig, results)
    return fig
