"""Lengths far beyond Table 1 (docs/13): the Residual SSM trained at L = 16 evaluated at
L = 2048 ... 65536, and the accuracy its gate's leak predicts (the leak statistics and the
prediction are defined in ``rssm_ref.experiments.beyond``'s docstring).
"""
import os
import time

import numpy as onp
from rssm_ref.experiments.common import (check_reproduce, CURVE_LENGTHS, evaluate, finish, LEAK_L,
                                         LEAK_N, LEAK_STREAM, model_cfg_from_run_config, run_entry,
                                         start, stats, TARGET_PCT, TASKS2, total_steps)
from rssm_ref.experiments.plots import plot_lengths
from rssm_ref.experiments.reproduce import read_run_config, reproduce
from rssm_ref.residual_ssm import residual_ssm_tf
from rssm_ref.training.head import init_params, residual_core_arrays
from rssm_ref.training.tasks import extended_induction_head, induction_head
from rssm_ref.training.train import load_checkpoint


# ==================================================================== the leak prediction
# Until predict_accuracy models the direction of what leaks in, every output marks it.
PREDICTION_RELIABLE = False
PREDICTION_CAVEAT = ("the leak prediction is unreliable: it assumes a mean leak per step and "
                     "a mean leaked-in vector (the curve and the horizon) or stationary gate "
                     "steps (the per-length prediction); on the recipe's trained models the "
                     "latter is within 5 points on 23 of 24 (model, L) but 30 points too high "
                     "at L = 65536 on one (docs/13-beyond-the-paper.md, section 1); read it "
                     "as a diagnostic, not a forecast")
# the gate's opening is looked for at the answer's position and the OPEN_LAG steps after
OPEN_LAG = 2


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
    # where the gate writes the answer: its largest opening at q or the next OPEN_LAG
    # steps — a trained Σ passes u(q) on one step late (docs/05, docs/06), so the gate
    # opens at q + 1 and y(q + 2) holds the answer; y(q + 1) does not yet
    window = onp.clip(q[:, None] + onp.arange(OPEN_LAG + 1)[None, :], 0, L - 1)
    rows = onp.arange(batch)
    w = window[rows, onp.argmax(b[rows[:, None], window], axis=1)]   # (batch,) the opening
    hold = (t[None, :] > w[:, None]) & (t[None, :] <= L - k - 1)
    n_hold = int(hold.sum())
    lam = float(ell[hold].mean()) if n_hold else 0.0
    med = float(onp.median(ell[hold])) if n_hold else 0.0
    wsum = float(b[hold].sum())
    mu = ((b * hold)[:, :, None] * y_s).sum(axis=(0, 1)) / wsum if wsum > 0 else onp.zeros(m)
    stored = y[rows, w]                                 # y(w + 1): the answer written
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
            "store_fraction": float(b[rows, w].mean()), "n_trig": k, "gate": gate,
            "opening_lag": float((w - q).mean())}


def trace(model_cfg, params, tokens):
    """(y, y_s, pre-activation) of the Residual SSM along whole sequences (recurrent path)."""
    arrs = residual_core_arrays(params, model_cfg)
    y, mid = residual_ssm_tf(*arrs, onp.asarray(params["E"])[tokens], path="recurrent",
                             gate=model_cfg.gate, return_intermediates=True)
    return onp.asarray(y), onp.asarray(mid["y_s"]), onp.asarray(mid["r"]) + float(onp.asarray(arrs[4]))


def task_rows(model_cfg, rng, n, L):
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

    >>> from rssm_ref.training.head import ModelConfig, init_params
    >>> cfg = ModelConfig("residual", "induction")
    >>> st = measure_leak(cfg, init_params(cfg), L=64, n=4)
    >>> st["leak_per_step"] > 0, len(st["store"]), st["n_trig"]
    (True, 7, 1)
    """
    if model_cfg.model != "residual":
        raise ValueError(f"model: {model_cfg.model!r} (the leak is the Residual SSM's gate)")
    tok, tgt, p, k = task_rows(model_cfg, onp.random.default_rng([seed, LEAK_STREAM, L]), n, L)
    y, y_s, pre = trace(model_cfg, params, tok)
    st = leak_statistics(y, y_s, pre, p, tgt, k, model_cfg.gate, model_cfg.n_tokens)
    st.update(L=int(L), n=int(n))
    return st


def predict_windowed(model_cfg, params, lengths, L=LEAK_L, n=LEAK_N, seed=0, n_d=20):
    """Predicted accuracy (%) at each of ``lengths`` from what the gate writes step by
    step, not its mean: on ``n`` traced sequences of length L (the stream of
    ``measure_leak``), each sequence's stored vector y(w + 1) at the gate's opening w,
    plus the vector a holding window of d real steps writes, Σ_t (1 − a(t)) y_s(t), taken
    from the measured holding steps laid end to end (the gate is driven by the inputs
    alone, r = Σ_r(y_s − u), so its steps are stationary over random tokens); then the
    final trigger's steps (final_a, final_b) and the readout. The mean over the
    sequences and over ``n_d`` holding lengths d spread evenly on {1, …, Lx − 2 N_trig − 1}.

    >>> from rssm_ref.training.head import ModelConfig, init_params
    >>> cfg = ModelConfig("residual", "induction")
    >>> acc = predict_windowed(cfg, init_params(cfg), [64, 256], L=64, n=8)
    >>> len(acc), all(0.0 <= a <= 100.0 for a in acc)
    (2, True)
    """
    tok, tgt, p, k = task_rows(model_cfg, onp.random.default_rng([seed, LEAK_STREAM, L]), n, L)
    y, y_s, pre = trace(model_cfg, params, tok)
    st = leak_statistics(y, y_s, pre, p, tgt, k, model_cfg.gate, model_cfg.n_tokens)
    ell = onp.logaddexp(0.0, pre) if model_cfg.gate == "euler" else 0.5 * (onp.tanh(0.5 * pre) + 1)
    b = -onp.expm1(-ell)
    rows, t, q = onp.arange(n), onp.arange(L), p + k
    window = onp.clip(q[:, None] + onp.arange(OPEN_LAG + 1)[None, :], 0, L - 1)
    w = window[rows, onp.argmax(b[rows[:, None], window], axis=1)]
    stored = y[rows, w]                                              # (n, m), per sequence
    hold = (t[None, :] > w[:, None]) & (t[None, :] <= L - k - 1)
    writes = (b[..., None] * y_s)[hold]                              # (steps, m)
    cum = onp.concatenate([onp.zeros((1, writes.shape[1])), onp.cumsum(writes, axis=0)])
    ro = readout_fn(model_cfg, params)
    fa, fb = st["final_a"], onp.asarray(st["final_b"])
    rng = onp.random.default_rng([seed, LEAK_STREAM, L, 1])
    out = []
    for Lx in lengths:
        ds = onp.unique(onp.linspace(1, max(1, Lx - 2 * k - 1), n_d).astype(int))
        hits = []
        for d in ds:
            d = int(min(d, len(writes) - 1))
            start = rng.integers(0, len(writes) - d + 1, size=n)
            leak = cum[start + d] - cum[start]                        # (n, m)
            hits.append(onp.mean(onp.argmax(ro(fa * (stored + leak) + fb), axis=1) == tgt))
        out.append(float(100.0 * onp.mean(hits)))
    return out


def readout_fn(model_cfg, params):
    """y (n, m) -> scores (n, N) whose argmax is the model's answer (its readout)."""
    if model_cfg.readout == "linear":
        W, b = onp.asarray(params["W_out"]), onp.asarray(params["b_out"])
        return lambda y: y @ W.T + b
    E = onp.asarray(params["E"])[:model_cfg.n_tokens]
    En = E / onp.sqrt((E * E).sum(axis=1, keepdims=True) + 1e-12)
    return lambda y: y @ En.T                            # cosine: |y| does not change argmax


def correct(leak, d, readout):
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
    ok = correct(leak, onp.arange(D + 1), readout).mean(axis=1)
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
    ok = correct(leak, d, readout)
    ok[[w <= 0 for w in leak["answer_weights"]]] = True
    bad = onp.nonzero(~ok.all(axis=0))[0]
    if not bad.size:
        return None
    hi = int(d[bad[0]])
    lo = int(d[bad[0] - 1]) if bad[0] > 0 else -1
    if hi - lo > 1:                                       # refine between grid points
        fine = onp.arange(lo + 1, hi + 1)
        okf = correct(leak, fine, readout)
        okf[[w <= 0 for w in leak["answer_weights"]]] = True
        hi = int(fine[onp.nonzero(~okf.all(axis=0))[0][0]])
    return hi


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
        mc = model_cfg_from_run_config(rc, path, task)
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
        check_reproduce(rcfg)
    progress = start(cfg, progress, inputs=[("--checkpoints", p) for p in found.values()],
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
            loaded[(task, seed)] = (model_cfg_from_run_config(rc, path, task),
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
            # the prediction from what the gate writes step by step (predict_windowed);
            # the mean-leak law (predict_accuracy) still draws the curve and the horizon
            pred = [round(a, 4) for a in predict_windowed(mc, params, cfg.lengths, cfg.leak_L,
                                                          cfg.leak_n, seed)]
            leak["horizon_steps"] = horizon_steps(leak, ro)
            accs, gens, ev_s = evaluate(mc, params, cfg.lengths, cfg.eval_n, seed, progress,
                                         f"residual/{task}/seed {seed}")
            progress.message(f"  {task} seed {seed}: accuracy (%) at L = "
                             f"{', '.join(map(str, cfg.lengths))}: " + " ".join(f"{a:.1f}" for a in accs)
                             + "; predicted " + " ".join(f"{a:.1f}" for a in pred)
                             + f"; leak per step {leak['leak_per_step']:.3g}")
            entry = run_entry(task, mc, seed, cfg.lengths, accs, gens, cfg.eval_n, path, None,
                               train_s.get((task, seed)), ev_s)
            entry["total_steps"] = total_steps(rc)
            entry.update(leak=leak, predicted_accuracy=pred)
            runs.append(entry)
            rows.append(accs)
            preds.append(pred)
            curve_rows.append([predict_accuracy(leak, L, ro) for L in CURVE_LENGTHS])
            leaks.append(leak)
        hz = [lk["horizon_steps"] for lk in leaks]
        table[task] = {"lengths": list(cfg.lengths), **stats(rows),
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
               "runs": runs, "table": table, "prediction_curve": curves,
               "prediction_reliable": PREDICTION_RELIABLE, "prediction_caveat": PREDICTION_CAVEAT,
               "answer": answer}
    return finish(cfg, results, t0, plot_lengths)
