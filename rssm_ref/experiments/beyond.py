"""Beyond the paper (docs/13-beyond-the-paper.md): its untested claims as experiments, and lengths to 65536.

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
           gate = "zoh" beside gate = "euler" (eq. (5)), through ``reproduce``; with the
           leak per step and the fraction written at the answer
cost       every model of these tables: parameter count and measured seconds per
           training step, joined with the accuracies of reproduce's results (its
           folders results-{task}, ``--checkpoints``) and the other experiments'
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

- lengths: ``{task: {lengths, mean, min, max, predicted (the leak law; None beyond its
  reach), seeds, leak_per_step, holds_to_L, first_below_L, pool_steps}}``, and
  ``prediction_curve: {task: {lengths: 2^4..2^16, predicted}}`` (mean over seeds);
  ``prediction_reliable`` (true since the leak law below was checked on docs/13's
  models; false in older results) and ``prediction_caveat`` (what it assumes, in words);
  answer: ``target_pct``
  99.5, ``first_below_target`` per task (length or null), ``holds``.
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
  (one of them a smoke run), ``accuracy_total_steps`` (the joined runs' training steps)};
  ``settings.accuracy_files``: every results.json looked in ({``path``, ``found``}):
  reproduce's run folders (``--checkpoints``, default results-{task}, where reproduce
  writes) and the experiments' (``--results-from``).

The leak law (``gate_writes``, ``law_accuracy``, ``law_horizon``; docs/13 section 1)
--------------------------------------------------------------------------------------
The gate is y(t+1) = a(t) y(t) + b(t) y_s(t), a = 1 − s, b = s (eq. (5)) or a = e^{−s}
(ZOH); its leak is ℓ(t) = −log a(t) (eq. (5): softplus of the gate's pre-activation,
exact even where s rounds to 1; ZOH: s). Unrolled from y(0) = 0 and cut at the first
trigger p, the gate's opening w (its largest opening at the answer's position
q = p + N_trig or the ``OPEN_LAG`` = 2 steps after: a trained Σ passes u(q) on one step
late, docs/05, docs/06) and the final trigger:

  y(L − N_trig) = D_hold (A_span y(p) + Y_span) + Y_hold,   y(L) = A_f y(L − N_trig) + b_f,

an identity. Off the trigger the steps (b(t), y_s(t)) are driven by the random tokens
alone, hence stationary: ``gate_writes`` traces ``leak_n`` sequences of length ``leak_L``
once, keeps each one's (Y_span, A_span, w − p + 1) and pools all their off-trigger
steps; ``law_accuracy`` lays windows of the pool end to end for y(p) and for the holding
steps at any length (the first trigger uniform, as the tasks draw it) and reads the
model's readout. Nothing is fitted to accuracies. ``law_horizon``: the last length
2^(j/4) before the first where the law falls below ``HOLD_PCT``. The first law,
``predict_accuracy`` (a mean leak λ, a mean leaked-in μ, the stored vector y_c), counted
only the steps after the answer; it is kept, with ``measure_leak``'s statistics.

Glossary
--------
ExperimentConfig(name, seeds, steps, quick, out, eval_n, checkpoints, results_from, ...)
run_experiment(cfg, progress=None) -> results dict (as written to results.json)
lengths / nu_sweep / window / zoh_gate / cost (cfg, progress=None) -> results dict
measure_leak(model_cfg, params, L, n, seed) -> leak statistics (dict)
leak_statistics(y, y_s, pre, p, targets, n_trig, gate, n_answers) -> the same, from arrays
gate_writes(model_cfg, params, L, n, seed) -> the law's pieces;  law_accuracy(gw, L) -> % | None
law_horizon(gw) -> {holds_to_L, first_below_L, pool_steps}
predict_accuracy(leak, L, readout) -> % ;  horizon_steps(leak, readout, d_max)  (the first law)
readout_fn(model_cfg, params) -> (y (n, m) -> scores (n, N));  cost_configs(cfg) -> models
nu_answer(mean16, nu_rs, n_trigs) -> answer dict;  format_results(results) -> str

>>> cfg = ExperimentConfig("nu-sweep", quick=True)
>>> cfg.name, cfg.seeds, cfg.out
('nu_sweep', (0,), 'results-nu_sweep')
"""

import numpy as onp

from rssm_ref.experiments.common import (ExperimentConfig, EXPERIMENTS, SMOKE_NOTE, SOLVED_PCT,
                                         TARGET_PCT, TASKS2)
from rssm_ref.experiments.cost import cost, sources_text
from rssm_ref.experiments.lengths import (gate_writes, horizon_steps, law_accuracy, law_horizon,
                                          leak_statistics, lengths, measure_leak,
                                          predict_accuracy, PREDICTION_CAVEAT)
from rssm_ref.experiments.nu_sweep import nu_answer, nu_sweep
from rssm_ref.experiments.window import window
from rssm_ref.experiments.zoh_gate import zoh_gate

__all__ = ["ExperimentConfig", "EXPERIMENTS", "run_experiment", "lengths", "nu_sweep", "window",
           "zoh_gate", "cost", "measure_leak", "leak_statistics", "gate_writes", "law_accuracy",
           "law_horizon", "predict_accuracy", "horizon_steps", "nu_answer", "format_results",
           "SOLVED_PCT", "TARGET_PCT"]


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


def _holds(tt, i):
    """Seed i's horizon in ``lengths``' table: the length, "> L" beyond the law's reach
    (older results.json: the mean-leak law's holding steps)."""
    if "holds_to_L" not in tt:
        return f"{tt['horizon_steps'][i]} steps"
    h, below = tt["holds_to_L"][i], tt["first_below_L"][i]
    return "< 16" if h is None else (f"> {h}" if below is None else str(h))


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
        # results.json of an older rssm-ref has no flag: the same prediction, as unreliable
        shaky = not results.get("prediction_reliable", False)
        label = "  leak pred. (unreliable)" if shaky else "  leak law"
        for task in TASKS2:
            tt = t[task]
            lines.append(head(f"{task}: L", tt["lengths"]))
            lines.append(_row("  measured mean", tt["mean"]))
            lines.append(_row("  measured min", tt["min"]))
            lines.append(_row(label, tt["predicted"]))
            lines.append(f"  leak per step {', '.join(f'{v:.3g}' for v in tt['leak_per_step'])}"
                         f"; holds to L ≈ (per seed{', of the same prediction' if shaky else ''}) "
                         f"{', '.join(_holds(tt, i) for i in range(len(tt['leak_per_step'])))}")
        # what the law assumes (or, for an older results.json, why it was unreliable)
        lines.append("note: " + results.get("prediction_caveat", PREDICTION_CAVEAT))
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
        looked = results.get("settings", {}).get("accuracy_files")
        if looked is not None:
            lines.append(sources_text(looked))
        lines.append(f"{'model':<34}{'params':>8}{'ms/step':>9}{'batch':>7}{'steps':>8}"
                     f"{'est. s':>9}  accuracy (%)")
        for r in t["rows"]:
            acc = r["accuracy"]
            acc_txt = ", ".join(f"L{L} {a:.1f}" for L, a in acc.items()) if acc else "-"
            if acc and r.get("accuracy_quick"):
                acc_txt += " (smoke run)"
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


