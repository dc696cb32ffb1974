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
# The leak law (gate_writes, law_accuracy) was checked against the measured accuracy of
# every model of docs/13 section 1 before this flag was set; outputs still say what it assumes.
PREDICTION_RELIABLE = True
PREDICTION_CAVEAT = ("the leak law assumes the gate's off-trigger steps are stationary (the "
                     "pooled steps of leak_n traced sequences of length leak_L stand for the "
                     "windows before and after the answer at any length) and reaches only "
                     "lengths whose windows fit in a quarter of that pool; on docs/13's six "
                     "gate-penalty models it is within 1 point of the measured accuracy at "
                     "L = 2^11 ... 2^16 (docs/13-beyond-the-paper.md, section 1)")
# a window of the law may use at most 1 / POOL_REACH of the pooled steps (windows drawn
# from a pool not much longer than themselves would share most of their steps)
POOL_REACH = 4
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
    ell = gate_leak(pre, gate)
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


def gate_writes(model_cfg, params, L=LEAK_L, n=LEAK_N, seed=0):
    """What the gate writes, split where the answer is stored (the leak law, docs/13
    section 1), from ``n`` traced sequences of length L (the stream of ``measure_leak``).

    Eq. (5) unrolled from y(0) = 0 is y(t) = Σ_{j<t} b(j) Π_{j<i<t} a(i) y_s(j)
    (a = 1 − s, b = s; ZOH: a = e^{−s}, b = 1 − a). Cut at the trigger p, the opening w
    (``leak_statistics``) and the final trigger L − N_trig:
      y(L − N_trig) = D_hold (A_span y(p) + Y_span) + Y_hold,   y(L) = A_f y(L − N_trig) + b_f,
    y(p) what the steps before the trigger wrote, A_span = Π_{p<=t<=w} a(t) what the
    trigger's span keeps of it, Y_span = y(w + 1) − A_span y(p) what the span writes (the
    answer), D_hold and Y_hold what the holding steps w < t < L − N_trig keep and write.
    Off the trigger the steps (b(t), y_s(t)) are driven by random tokens alone (the gate
    reads r = Σ_r(y_s − u)), so they are stationary: their pool, laid end to end, gives
    the windows before and after the answer at any length.

    Returns {"span" (n, m) Y_span, "keep_span" (n,) A_span, "span_steps" (n,) w − p + 1,
    "cum_writes" (N + 1, m) and "cum_leak" (N + 1,): cumulative Σ b y_s e^{C} and
    C = Σ −log a over the N pooled off-trigger steps (writes weighted by e^{C − C_N/2}
    when ``exact_decay``, i.e. C_N <= 600), "final_a", "final_b", "targets", "n_trig",
    "pool_steps" N, "exact_decay", "readout", "stats" (``leak_statistics``), "L"}.
    """
    tok, tgt, p, k = task_rows(model_cfg, onp.random.default_rng([seed, LEAK_STREAM, L]), n, L)
    y, y_s, pre = trace(model_cfg, params, tok)
    st = leak_statistics(y, y_s, pre, p, tgt, k, model_cfg.gate, model_cfg.n_tokens)
    ell = gate_leak(pre, model_cfg.gate)
    b = -onp.expm1(-ell)                                             # 1 − a(t)
    rows, t, q = onp.arange(n), onp.arange(L), p + k
    window = onp.clip(q[:, None] + onp.arange(OPEN_LAG + 1)[None, :], 0, L - 1)
    w = window[rows, onp.argmax(b[rows[:, None], window], axis=1)]
    y_p = onp.where((p > 0)[:, None], y[rows, onp.maximum(p - 1, 0)], 0.0)   # y(p)
    span = (t[None, :] >= p[:, None]) & (t[None, :] <= w[:, None])
    keep_span = onp.exp(-(ell * span).sum(axis=1))
    Y_span = y[rows, w] - keep_span[:, None] * y_p
    off = (t[None, :] < p[:, None]) | ((t[None, :] > w[:, None]) & (t[None, :] <= L - k - 1))
    C = onp.concatenate([[0.0], onp.cumsum(ell[off])])
    # a window (s, e] of the pool writes Σ_{s<=j<e} b(j) y_s(j) e^{−(C[e] − C[j+1])}:
    # e^{−C[e]} (F[e] − F[s]) with F the cumulative sum of b y_s e^{C[j+1]}, exact while
    # e^{C} stays in range (shifted by C_N / 2); beyond, the decay inside a window is left out
    exact = bool(C[-1] <= 600.0)
    scale = onp.exp(C[1:] - 0.5 * C[-1]) if exact else onp.ones(len(C) - 1)
    F = onp.concatenate([onp.zeros((1, y.shape[2])),
                         onp.cumsum((b[..., None] * y_s)[off] * scale[:, None], axis=0)])
    return {"span": Y_span, "keep_span": keep_span, "span_steps": w - p + 1, "cum_writes": F,
            "cum_leak": C, "final_a": st["final_a"], "final_b": onp.asarray(st["final_b"]),
            "targets": tgt, "n_trig": k, "pool_steps": int(off.sum()), "exact_decay": exact,
            "readout": readout_fn(model_cfg, params), "stats": st, "L": int(L), "seed": seed}


def gate_leak(pre, gate):
    """ℓ(t) = −log a(t) from the gate's pre-activation: softplus (eq. (5), a = 1 − σ) or
    σ itself (ZOH, a = e^{−σ})."""
    if gate == "euler":
        return onp.logaddexp(0.0, pre)                 # −log(1 − σ(x)) = softplus(x)
    if gate == "zoh":
        return 0.5 * (onp.tanh(0.5 * pre) + 1.0)       # −log e^{−s} = s = σ(x)
    raise ValueError(f"gate: {gate!r} (expected 'euler' or 'zoh')")


def window_writes(gw, start, steps):
    """(what windows of the pool write (n, m), what they keep (n,)): windows of ``steps``
    (n,) pooled steps from ``start`` (n,)."""
    F, C = gw["cum_writes"], gw["cum_leak"]
    e = start + steps
    keep = onp.exp(-(C[e] - C[start]))
    rebase = onp.exp(0.5 * C[-1] - C[e]) if gw["exact_decay"] else onp.ones(len(e))
    return rebase[:, None] * (F[e] - F[start]), keep


def law_accuracy(gw, Lx, n_d=20):
    """The leak law's accuracy (%) at length Lx from ``gate_writes``, None when a window
    would be longer than the pool's reach (1 / POOL_REACH of it). The first trigger is uniform on {0, …, Lx − 2 N_trig − 1}
    (the tasks' law): ``n_d`` values P of it spread evenly, each with the P steps before
    and the Lx − N_trig − P − (w − p + 1) holding steps after drawn from the pool at random
    starts (``default_rng([seed, LEAK_STREAM, L, Lx])``), per traced sequence; then the
    final trigger and the readout: is the argmax still the answer?"""
    k, N, n = gw["n_trig"], gw["pool_steps"], len(gw["targets"])
    Ps = onp.unique(onp.linspace(0, max(0, Lx - 2 * k - 1), n_d).astype(int))
    holds = [onp.maximum(Lx - k - P - gw["span_steps"], 0) for P in Ps]
    if max(int(Ps.max()), max(int(d.max()) for d in holds)) > N // POOL_REACH:
        return None
    rng = onp.random.default_rng([gw["seed"], LEAK_STREAM, gw["L"], int(Lx)])
    hits = []
    for P, d in zip(Ps, holds):
        before, _ = window_writes(gw, rng.integers(0, N - P + 1, size=n), onp.full(n, P))
        after, keep = window_writes(gw, rng.integers(0, N - d.max() + 1, size=n), d)
        y_stop = keep[:, None] * (gw["keep_span"][:, None] * before + gw["span"]) + after
        scores = gw["readout"](gw["final_a"] * y_stop + gw["final_b"])
        hits.append(onp.mean(onp.argmax(scores, axis=1) == gw["targets"]))
    return float(100.0 * onp.mean(hits))


def predict_windowed(model_cfg, params, lengths, L=LEAK_L, n=LEAK_N, seed=0, n_d=20):
    """The leak law's accuracy (%) at each of ``lengths`` (None beyond the pool's reach):
    ``law_accuracy`` of ``gate_writes`` — the answer each traced sequence stored, what
    its trigger kept of the steps before it, and the pooled off-trigger steps as the
    windows before and after it (nothing fitted to accuracies).

    >>> from rssm_ref.training.head import ModelConfig, init_params
    >>> cfg = ModelConfig("residual", "induction")
    >>> acc = predict_windowed(cfg, init_params(cfg), [64, 1024], L=128, n=16)
    >>> 0.0 <= acc[0] <= 100.0, acc[1]        # 1024: beyond a quarter of ~2000 pooled steps
    (True, None)
    """
    gw = gate_writes(model_cfg, params, L, n, seed)
    return [law_accuracy(gw, Lx, n_d) for Lx in lengths]


# the law "holds" a length while it predicts at least this accuracy (explain's horizon)
HOLD_PCT = 99.0


def law_horizon(gw, n_d=20):
    """{"holds_to_L", "first_below_L", "pool_steps"}: on lengths 2^(j/4) from 16 up to the
    pool's reach, the last one before the first whose law accuracy is below HOLD_PCT
    (None: below already at 16), and that first one (None: none within the reach, so
    holds_to_L is a lower bound)."""
    last = None
    for j in range(16, 4 * 40):
        Lx = int(round(2.0 ** (j / 4)))
        acc = law_accuracy(gw, Lx, n_d)
        if acc is None:
            break
        if acc < HOLD_PCT:
            return {"holds_to_L": last, "first_below_L": Lx, "pool_steps": gw["pool_steps"]}
        last = Lx
    return {"holds_to_L": last, "first_below_L": None, "pool_steps": gw["pool_steps"]}


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


def _round(a):
    return None if a is None else round(a, 4)


def _mean_rows(rows):
    """The mean over seeds per length; None where some seed's law had no reach."""
    cols = list(zip(*rows))
    return [None if any(v is None for v in c) else round(float(onp.mean(c)), 4) for c in cols]


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
            gw = gate_writes(mc, params, cfg.leak_L, cfg.leak_n, seed)
            leak = dict(gw["stats"], L=int(cfg.leak_L), n=int(cfg.leak_n))   # measure_leak's
            pred = [_round(law_accuracy(gw, L)) for L in cfg.lengths]
            leak.update(law_horizon(gw))
            accs, gens, ev_s = evaluate(mc, params, cfg.lengths, cfg.eval_n, seed, progress,
                                         f"residual/{task}/seed {seed}")
            progress.message(f"  {task} seed {seed}: accuracy (%) at L = "
                             f"{', '.join(map(str, cfg.lengths))}: " + " ".join(f"{a:.1f}" for a in accs)
                             + "; predicted " + " ".join("-" if a is None else f"{a:.1f}"
                                                         for a in pred)
                             + f"; leak per step {leak['leak_per_step']:.3g}")
            entry = run_entry(task, mc, seed, cfg.lengths, accs, gens, cfg.eval_n, path, None,
                               train_s.get((task, seed)), ev_s)
            entry["total_steps"] = total_steps(rc)
            entry.update(leak=leak, predicted_accuracy=pred)
            runs.append(entry)
            rows.append(accs)
            preds.append(pred)
            curve_rows.append([law_accuracy(gw, L) for L in CURVE_LENGTHS])
            leaks.append(leak)
        table[task] = {"lengths": list(cfg.lengths), **stats(rows),
                       "predicted": _mean_rows(preds), "seeds": list(cfg.seeds),
                       "leak_per_step": [lk["leak_per_step"] for lk in leaks],
                       "holds_to_L": [lk["holds_to_L"] for lk in leaks],
                       "first_below_L": [lk["first_below_L"] for lk in leaks],
                       "pool_steps": [lk["pool_steps"] for lk in leaks]}
        curves[task] = {"lengths": list(CURVE_LENGTHS), "predicted": _mean_rows(curve_rows)}
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
