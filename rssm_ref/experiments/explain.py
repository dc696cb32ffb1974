"""Take one sequence through a model and show what each part of it does.

The model comes from a parameter file in the oracle's format (docs/formats.md: written
by ``init``, or by you from your own model), from a checkpoint written by ``reproduce``
(converted to that format), or, with neither, from a short training run. The sequence is
one task sequence (when the params hold an embedding with a row for every token of the
task), the first sequence of an inputs file (``inputs``), or else a Gaussian input
u ~ N(0, 1), seeded.

Residual SSM (Fig. 3, eq. (5)): the trace lists, per step t, the token, y_s(t), the
residual r(t), the gate s(t) = σ(r(t) + c) and the gate output y(t+1). Figures: s(t)
along the sequence with the trigger and answer positions marked; poles and zeros of Σ
and Σ_r, per channel, with the unit circle; their impulse responses per channel.

Selective SSM (eqs. (2)-4): per step the token, Δ_t (mean over channels) and the state
norm ‖h(t+1)‖; the figure shows Δ_t along the sequence, the tokens under it.

LTI system: per step u(t) and y(t); figures: poles/zeros and impulse response.

Outputs in ``out`` (created; its parent must exist): the figures, ``trace.json`` (the
table, positions, target, prediction, sources) and ``trace.npz`` (u, y, the
intermediates, tokens, and the params as ``param__<key>``), and ``progress.log`` when
a model is trained here.

Glossary
--------
ExplainConfig(model, task, params, inputs, seed, out, L, steps, gate, discretization, output)
explain(cfg, progress=None) -> {"trace": str, "figures": [paths], "files": [paths],
                                "prediction": int | None, "target": int | None}
oracle_params(model_cfg, params) -> params dict in the oracle's format (docs/formats.md)

>>> import tempfile
>>> res = explain(ExplainConfig("residual", "induction", steps=30, out=tempfile.mkdtemp(), L=12))
>>> res["trace"].splitlines()[0].split()[:4]
['t', 'token', 'y_s', 'r']
"""
import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as onp

from rssm_ref.experiments.reproduce import (model_config, prepare_out, read_run_config,
                                            ReproduceConfig)
from rssm_ref.lti import StateSpace, TransferFunction
from rssm_ref.oracle import formats, forward
from rssm_ref.selective_ssm import A_from_log
from rssm_ref.training.head import init_params, ModelConfig, residual_core_arrays
from rssm_ref.training.tasks import (DEFAULT_TOKENS, extended_induction_head, induction_head,
                                     vocab_size)
from rssm_ref.training.train import load_checkpoint, train, TrainConfig
from rssm_ref.util.paths import atomic_savefig, atomic_write_text, check_outputs
from rssm_ref.util.invocation import prog
from rssm_ref.util.progress import Progress

__all__ = ["ExplainConfig", "explain", "oracle_params"]

MODELS = ("residual", "selective", "lti")
TASK_TITLES = {"induction": "induction-head", "extended": "extended induction-head"}
TRIGGER_LEN = {"induction": 1, "extended": 4}


@dataclass(frozen=True)
class ExplainConfig:
    """Options of ``rssm-ref explain`` (see its --help)."""
    model: str = "residual"
    task: str = "induction"
    params: str = ""              # oracle-format params file or a reproduce checkpoint
    inputs: str = ""              # optional oracle-format inputs file (its first sequence)
    seed: int = 0
    out: str = "explain"
    L: int = 32
    steps: int = 3000             # training steps when no params file is given
    gate: Optional[str] = None
    discretization: Optional[str] = None
    output: Optional[str] = None
    checkpoint: str = ""          # older name of ``params``

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model: {self.model!r} (expected one of {', '.join(MODELS)})")
        vocab_size(self.task)                      # validates the task name
        if self.params and self.checkpoint and self.params != self.checkpoint:
            raise ValueError("--checkpoint: given with --params (expected only --params)")
        if int(self.L) < 2 * TRIGGER_LEN[self.task] + 1:
            raise ValueError(f"--length: {self.L} (expected >= {2 * TRIGGER_LEN[self.task] + 1} "
                             f"for the {self.task} task)")
        if int(self.steps) < 1:
            raise ValueError(f"--steps: {self.steps} (expected a positive integer)")
        if self.model == "lti" and not (self.params or self.checkpoint):
            raise ValueError("--params: required for --model lti (expected a params file, e.g. "
                             f"from `{prog()} init --model lti`)")

    @property
    def params_path(self):
        return self.params or self.checkpoint


def oracle_params(model_cfg, params):
    """A trained model's arrays (rssm_ref.training.head) in the oracle's params format.

    Residual: sigma_num, sigma_den, r_num, r_den, gate_bias (the stable parameterization
    and the fixed gain folded in, ``residual_core_arrays``) and embedding = E.
    Selective: A = −exp(A_log), W_delta, W_B, W_C, delta_bias, embedding = E.

    >>> cfg = ModelConfig("residual", "induction")
    >>> sorted(oracle_params(cfg, init_params(cfg)))
    ['embedding', 'gate_bias', 'r_den', 'r_num', 'sigma_den', 'sigma_num']
    """
    if model_cfg.model == "residual":
        keys = ("sigma_num", "sigma_den", "r_num", "r_den", "gate_bias")
        P = dict(zip(keys, residual_core_arrays(params, model_cfg)))
    else:
        P = {"A": A_from_log(params["A_log"]), "W_delta": params["W_delta"],
             "W_B": params["W_B"], "W_C": params["W_C"], "delta_bias": params["delta_bias"]}
    P["embedding"] = params["E"]
    return {k: onp.array(v, dtype=onp.float64) for k, v in P.items()}


def _model_config(cfg):
    """The model explained: a reproduce checkpoint's own options (its run config), else
    the reproduce recipe's model for the task (what explain trains when given no params)."""
    if cfg.params_path and os.path.isfile(cfg.params_path):
        try:
            rc = read_run_config(cfg.params_path)
        except Exception:            # not a checkpoint: the oracle's format, read later
            rc = None
        if rc:
            fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"model", "task"}
            return ModelConfig(cfg.model, cfg.task, **{k: (tuple(v) if isinstance(v, list) else v)
                                                        for k, v in rc.items() if k in fields})
    recipe = model_config(ReproduceConfig(task=cfg.task, gate=cfg.gate or "euler",
                                          discretization=cfg.discretization or "zoh",
                                          output=cfg.output or "before"), cfg.model)
    keys = _checkpoint_keys(cfg.params_path)
    if keys is None:
        return recipe
    # a checkpoint without a run config (an older rssm-ref, or written by hand): the
    # recipe's options, with what the parameters themselves show (readout, bias, window)
    fixed = {"readout": "linear" if "W_out" in keys else "cosine"}
    if cfg.model == "residual":
        fixed["gate_bias"] = "c" in keys
    return dataclasses.replace(recipe, **fixed)


def _checkpoint_keys(path):
    """The parameter names of a reproduce checkpoint at ``path``, or None (not one)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with onp.load(path, allow_pickle=False) as z:
            names = [k[len("param/"):] for k in z.files if k.startswith("param/")]
    except Exception:                # not an npz: the loader reports it later
        return None
    return set(names) or None


def _is_checkpoint(arrays):
    return "step" in arrays and any(k.startswith("param/") for k in arrays)


def _load(cfg, model_cfg, progress):
    """(oracle params, sizes, source text)."""
    path = cfg.params_path
    if not path:
        tcfg = TrainConfig(steps=cfg.steps, seed=cfg.seed,
                           lr=0.02 if cfg.model == "residual" else 5e-3,
                           warmup=min(200, max(1, cfg.steps // 10)),
                           log_every=max(1, min(100, cfg.steps // 20)))
        progress.message(f"train {cfg.model} on the {cfg.task} task at L = {tcfg.L}: "
                         f"{tcfg.total_steps} steps (no --params given)")
        task = progress.task(f"train {cfg.model}/seed {cfg.seed}", tcfg.total_steps)
        params, _ = train(model_cfg, tcfg, progress=lambda k, info: task.update(
            k, rate=info.get("steps_per_s"), loss=info.get("loss"), acc=info.get("acc")))
        task.close()
        P = oracle_params(model_cfg, params)
        source = f"trained here: {tcfg.total_steps} steps, seed {cfg.seed}"
    else:
        arrays = formats.load_npz(path, "params")
        if _is_checkpoint(arrays):
            if cfg.model == "lti":
                raise ValueError(f"{path}: a training checkpoint (expected an lti params file "
                                 "in the oracle's format)")
            params = load_checkpoint(path)[0]
            if set(params) != set(init_params(model_cfg)):
                raise ValueError(f"{path}: parameters {sorted(params)} do not describe a "
                                 f"{cfg.model} model for the {cfg.task} task")
            P = oracle_params(model_cfg, params)
            source = (f"{path} (a reproduce checkpoint, saved at step {load_checkpoint(path)[3]} "
                      "of its schedule)")
        else:
            P = arrays
            source = f"{path} (oracle format)"
    P, sizes = formats.check_params(cfg.model, P, where=path or "params")
    return P, sizes, source


def _sequence(cfg, P, sizes):
    """u (1, L, m), tokens (L,) or None, target, trigger position p, where-from text."""
    if cfg.inputs:
        U, _ = formats.load_inputs(cfg.inputs, cfg.model, sizes,
                                   params_where=cfg.params_path or "params")
        if "tokens" in U:
            tok = U["tokens"][0]
            return P["embedding"][tok][None], tok, None, None, f"{cfg.inputs} (sequence 0)"
        return U["u"][:1], None, None, None, f"{cfg.inputs} (sequence 0)"
    emb = P.get("embedding")
    need = vocab_size(cfg.task)
    if emb is not None and emb.shape[0] >= need:
        rng = onp.random.default_rng([cfg.seed, 7])
        gen = induction_head if cfg.task == "induction" else extended_induction_head
        tok, tgt, p = gen(rng, 1, cfg.L, DEFAULT_TOKENS[cfg.task], return_positions=True)
        return (emb[tok[0]][None], tok[0], int(tgt[0]), int(p[0]),
                f"one {cfg.task} sequence, seed {cfg.seed}")
    m = sizes["m"]
    u = onp.random.default_rng([cfg.seed, 8]).standard_normal((1, cfg.L, m))
    why = ("no embedding" if emb is None else
           f"the embedding has {emb.shape[0]} rows, the {cfg.task} task needs {need}")
    return u, None, None, None, f"u ~ N(0, 1), seed {cfg.seed} ({why})"


def _prediction(P, y_last, n_content):
    """argmax_k cos(E_k, y(L)) over the content tokens (the tied cosine readout)."""
    E = P["embedding"][:n_content]
    cos = E @ y_last / (onp.linalg.norm(E, axis=1) * onp.linalg.norm(y_last) + 1e-12)
    return int(onp.argmax(cos))


def _savefig(fig, path):
    atomic_savefig(fig, path, dpi=100, bbox_inches="tight")   # titles and legends kept whole


def explain(cfg, progress=None):
    """Trace one sequence through the model; write figures and the trace into ``cfg.out``.

    ``progress``: a ``rssm_ref.util.progress.Progress`` for the training run (None: silent;
    the lines still go to ``out/progress.log`` when a model is trained).
    """
    # before anything is trained or read: the files written into --out are not inputs
    check_outputs([("--out", os.path.join(cfg.out, n))
                   for n in ("trace.json", "trace.npz", "progress.log")],
                  [("--params", cfg.params_path), ("--inputs", cfg.inputs)],
                  folders=[("--out", cfg.out)])
    prepare_out(cfg.out)
    if not cfg.params_path:
        log = os.path.join(cfg.out, "progress.log")
        progress = progress.with_log(log) if progress is not None else Progress(log_path=log)
    progress = progress or Progress()
    model_cfg = _model_config(cfg) if cfg.model != "lti" else None
    P, sizes, source = _load(cfg, model_cfg, progress)
    u, tok, target, p, seq_source = _sequence(cfg, P, sizes)
    conv = {"gate": cfg.gate} if cfg.model == "residual" else (
        {"discretization": cfg.discretization, "output": cfg.output} if cfg.model == "selective" else {})
    core = {k: v for k, v in P.items() if k != "embedding"}
    out = forward.compute(cfg.model, core, {"u": u}, intermediates=cfg.model != "lti", **conv)
    opts = forward.resolve_options(cfg.model, **conv)
    y = out["y"]
    L = u.shape[1]
    pred = _prediction(P, y[0, -1], DEFAULT_TOKENS[cfg.task]) if tok is not None and target is not None else None
    answer = p + TRIGGER_LEN[cfg.task] if p is not None else None
    rows, lines = _trace_rows(cfg, u, tok, y, out, p, answer)
    if target is not None:
        lines.append(f"target {target}, prediction {pred}")
    lines.append(f"params: {source}; sequence: {seq_source}")
    ctx = {"cfg": cfg, "tok": tok, "p": p, "answer": answer, "target": target, "pred": pred,
           "L": L, "tag": cfg.task if tok is not None and target is not None else "input"}
    if cfg.model == "residual":
        figures = _residual_figures(ctx, P, out)
    elif cfg.model == "selective":
        figures = _selective_figures(ctx, out)
    else:
        figures = _lti_figures(ctx, P)
    doc = {"model": cfg.model, "task": cfg.task, "params": source, "sequence": seq_source,
           "options": {k: v for k, v in opts.items() if k in ("gate", "discretization", "output")
                       and v is not None},
           "L": L, "tokens": None if tok is None else [int(t) for t in tok],
           "trigger_position": p, "answer_position": answer, "target": target,
           "prediction": pred, "rows": rows, "figures": [os.path.basename(f) for f in figures],
           "config": asdict(cfg)}
    jpath = os.path.join(cfg.out, "trace.json")
    atomic_write_text(jpath, json.dumps(doc, indent=1) + "\n")
    arrays = {"u": u[0], "y": y[0]}
    arrays.update({k: v[0] for k, v in out.items() if k not in ("y",)})
    if tok is not None:
        arrays["tokens"] = onp.asarray(tok, dtype=onp.int64)
    arrays.update({formats.PARAM_PREFIX + k: v for k, v in P.items()})
    npath = os.path.join(cfg.out, "trace.npz")
    formats.save_npz_atomic(npath, arrays)
    return {"trace": "\n".join(lines), "figures": figures, "files": [jpath, npath],
            "prediction": pred, "target": target}


def _v(x):
    return "(" + ", ".join(f"{v:6.3f}" for v in onp.atleast_1d(x)) + ")"


def _trace_rows(cfg, u, tok, y, out, p, answer):
    """Per-step dicts (for trace.json) and the text table."""
    L = u.shape[1]

    def mark(t):
        if p is None:
            return ""
        k = TRIGGER_LEN[cfg.task]
        if p <= t < p + k:
            return "  <- first trigger"
        if t == answer:
            return "  <- answer"
        if t >= L - k:
            return "  <- trigger again (query)"
        return ""

    first = "token" if tok is not None else "u"
    rows, lines = [], []
    if cfg.model == "residual":
        w = 17 if tok is None else 5
        lines.append(f"{'t':>3} {first:>{w}} {'y_s':>17} {'r':>9} {'s':>7} {'y(t+1)':>17}")
        for t in range(L):
            shown = str(tok[t]) if tok is not None else _v(u[0, t])
            rows.append({"t": t, "token": None if tok is None else int(tok[t]),
                         "u": u[0, t].tolist(), "y_s": out["y_s"][0, t].tolist(),
                         "r": float(out["r"][0, t]), "s": float(out["s"][0, t]),
                         "y_next": y[0, t].tolist()})
            lines.append(f"{t:>3} {shown:>{w}} {_v(out['y_s'][0, t]):>17} {out['r'][0, t]:>9.3f} "
                         f"{out['s'][0, t]:>7.4f} {_v(y[0, t]):>17}{mark(t)}")
    elif cfg.model == "selective":
        w = 5 if tok is not None else 9
        lines.append(f"{'t':>3} {first:>{w}} {'mean delta':>11} {'|h(t+1)|':>10}")
        for t in range(L):
            shown = str(tok[t]) if tok is not None else f"{onp.linalg.norm(u[0, t]):.3f}"
            d = out["delta"][0, t]
            h = onp.linalg.norm(out["h"][0, t])
            rows.append({"t": t, "token": None if tok is None else int(tok[t]),
                         "mean_delta": float(d.mean()), "h_norm": float(h),
                         "y": y[0, t].tolist()})
            lines.append(f"{t:>3} {shown:>{w}} {d.mean():>11.4f} {h:>10.4f}{mark(t)}")
    else:
        lines.append(f"{'t':>3} {'u':>17} {'y':>17}")
        for t in range(L):
            rows.append({"t": t, "u": u[0, t].tolist(), "y": y[0, t].tolist()})
            lines.append(f"{t:>3} {_v(u[0, t]):>17} {_v(y[0, t]):>17}")
    return rows, lines


# ------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _sequence_axes(ax, ctx):
    """Integer t ticks, the tokens on a row above the axes (trigger tokens red, the
    answer green), the trigger span(s) shaded and the answer position marked."""
    L, tok, p, answer, task = ctx["L"], ctx["tok"], ctx["p"], ctx["answer"], ctx["cfg"].task
    step = 1 if L <= 40 else (2 if L <= 80 else max(1, L // 40))
    ax.set_xticks(range(0, L, step))
    ax.set_xlim(-0.6, L - 0.4)
    ax.set_xlabel("t (position in the sequence)")
    if p is not None:
        k = TRIGGER_LEN[task]
        ax.axvspan(p - 0.5, p + k - 0.5, color="tab:red", alpha=0.12, lw=0,
                   label="trigger" if k == 1 else f"trigger sequence ({k} tokens)")
        ax.axvspan(L - k - 0.5, L - 0.5, color="tab:red", alpha=0.12, lw=0)
        ax.axvline(answer, color="tab:green", ls="--", lw=1.5,
                   label=f"answer position (target token {ctx['target']})")
    if tok is not None:
        top = ax.secondary_xaxis("top")
        top.set_xticks(range(L))
        fs = 10 if L <= 32 else (8 if L <= 64 else 6)
        top.set_xticklabels([str(t) for t in tok], fontsize=fs)
        top.set_xlabel("token", fontsize=9)
        top.tick_params(length=0)
        if p is not None:
            k = TRIGGER_LEN[task]
            marks = {**{t: "tab:red" for t in range(p, p + k)},
                     **{t: "tab:red" for t in range(L - k, L)}, answer: "tab:green"}
            for t, lab in enumerate(top.get_xticklabels()):
                if t in marks:
                    lab.set_color(marks[t])
                    lab.set_fontweight("bold")


def _pred_text(ctx):
    if ctx["target"] is None:
        return ""
    ok = "correct" if ctx["pred"] == ctx["target"] else "wrong"
    return f"; target {ctx['target']}, predicted {ctx['pred']} ({ok})"


def _legend_below(ax, ncol=3):
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol,
                  frameon=False)


def _residual_figures(ctx, P, out):
    plt = _plt()
    cfg, L = ctx["cfg"], ctx["L"]
    paths = []
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(range(L), out["s"][0], "o-", color="tab:blue", ms=4, lw=1.5, zorder=3,
            label="gate s(t)")
    _sequence_axes(ax, ctx)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("gate s(t) = σ(r(t) + c)")
    what = (f"one {TASK_TITLES[cfg.task]} sequence" if ctx["tag"] != "input"
            else "one input sequence")
    ax.set_title(f"Residual SSM: gate s(t) (eq. (5)) along {what}{_pred_text(ctx)}", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(ax)
    fig.tight_layout()
    paths.append(os.path.join(cfg.out, f"gate-{ctx['tag']}.png"))
    _savefig(fig, paths[-1])
    plt.close(fig)

    sigma, r_sys = _residual_systems(P)
    names = (("Σ", sigma, "u_{j}", "y_{s,%d}"), ("Σ_r", r_sys, "(y_s - u)_{j}", "r"))
    paths.append(_pole_zero_figure(plt, names, os.path.join(cfg.out, f"poles-zeros-{ctx['tag']}.png")))
    paths.append(_impulse_figure(plt, names, os.path.join(cfg.out, f"impulse-{ctx['tag']}.png")))
    return paths


def _residual_systems(P):
    if "sigma_num" in P:
        return (TransferFunction(P["sigma_num"], P["sigma_den"]),
                TransferFunction(P["r_num"], P["r_den"]))
    return tuple(StateSpace(P[pre + "A"], P[pre + "B"], P[pre + "C"], P[pre + "D"]).to_tf()
                 for pre in ("sigma_", "r_"))


def _channel(in_fmt, out_fmt, i, j):
    """Channel (i, j) of a transfer matrix as 'input j -> output i', numbered from 1.

    >>> print(_channel("u_{j}", "y_{s,%d}", 0, 1))
    $u_{2} \\to y_{s,1}$
    """
    inp = in_fmt.replace("{j}", "{%d}" % (j + 1))
    outp = out_fmt % (i + 1) if "%d" in out_fmt else out_fmt
    return f"${inp} \\to {outp}$"


def _zeros(sys_, i, j):
    b = onp.trim_zeros(sys_.num[i, j], "f")
    return onp.roots(b) if b.size > 1 else onp.zeros(0, complex)


WINDOW_MAX = 1.6      # pole-zero plots show |z| <= 1.6 at most; zeros beyond are listed


def _pole_zero_figure(plt, systems, path):
    """One panel per system: the unit circle, the poles (x) and each channel's zeros
    (its own colour and marker), Re z / Im z axes sized to what is there."""
    fig, axes = plt.subplots(1, len(systems), figsize=(5.2 * len(systems), 5.6), squeeze=False)
    circle = onp.exp(1j * onp.linspace(0, 2 * onp.pi, 400))
    markers = "osD^v<>ph"
    for ax, (name, sys_, in_fmt, out_fmt) in zip(axes[0], systems):
        ax.plot(circle.real, circle.imag, color="gray", lw=1, label="unit circle |z| = 1")
        ax.axhline(0, color="lightgray", lw=0.8, zorder=0)
        ax.axvline(0, color="lightgray", lw=0.8, zorder=0)
        pol = sys_.poles()
        ax.plot(pol.real, pol.imag, "x", color="black", ms=9, mew=2, label="poles", zorder=4)
        pts = [pol]
        chans = []
        for i in range(sys_.n_outputs):
            for j in range(sys_.n_inputs):
                zer = _zeros(sys_, i, j)
                chans.append((i, j, zer))
                pts.append(zer)
        allp = onp.concatenate(pts) if pts else onp.zeros(0)
        reach = float(onp.max(onp.abs(allp))) if allp.size else 1.0
        lim = min(max(1.15, 1.08 * reach), WINDOW_MAX)
        far = []
        for c, (i, j, zer) in enumerate(chans):
            near = zer[onp.abs(zer) <= lim]
            far += [abs(z) for z in zer[onp.abs(zer) > lim]]
            ax.plot(near.real, near.imag, markers[c % len(markers)], mfc="none", mew=1.5, ms=8,
                    color=f"C{c % 10}", label=f"zeros of {_channel(in_fmt, out_fmt, i, j)}",
                    zorder=3)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel("Re z")
        ax.set_ylabel("Im z")
        far = sorted(far)
        note = ""
        if far:
            shown = ", ".join(f"{r:.3g}" for r in far[:4]) + (", ..." if len(far) > 4 else "")
            note = (f"\n{len(far)} zero{'s' if len(far) > 1 else ''} outside the view, "
                    f"at |z| = {shown}")
        ax.set_title(f"{name}: poles and zeros per channel{note}", fontsize=10)
        ax.grid(alpha=0.2)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2,
                  frameon=False)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return path


IMPULSE_MAX = 64      # impulse plots end where |h| has decayed below 1e-3 of its peak


def _impulse_length(sys_):
    """Samples worth showing: up to 4 past the last |h(t)| above 1e-3 max|h|, 8 to 64."""
    h = onp.abs(sys_.impulse(IMPULSE_MAX)).reshape(IMPULSE_MAX, -1).max(axis=1)
    big = onp.flatnonzero(h > 1e-3 * max(h.max(), 1e-300))
    return int(min(IMPULSE_MAX, max(8, (big[-1] if big.size else 0) + 5)))


def _impulse_figure(plt, systems, path):
    """One panel per system: h(t) of every channel until it has decayed, legend below."""
    fig, axes = plt.subplots(1, len(systems), figsize=(5.2 * len(systems), 4.4), squeeze=False)
    for ax, (name, sys_, in_fmt, out_fmt) in zip(axes[0], systems):
        n = _impulse_length(sys_)
        h = sys_.impulse(n)
        for i in range(h.shape[1]):
            for j in range(h.shape[2]):
                ax.plot(range(n), h[:, i, j], ".-", label=_channel(in_fmt, out_fmt, i, j))
        ax.axhline(0, color="lightgray", lw=0.8, zorder=0)
        ax.set_title(f"{name}: impulse response per channel", fontsize=10)
        ax.set_xlabel("t (steps after a unit impulse at t = 0)")
        ax.set_ylabel("h(t)")
        ax.set_xticks(range(0, n, max(1, n // 8)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
                  frameon=False, title="channel (input → output)", title_fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return path


def _selective_figures(ctx, out):
    plt = _plt()
    cfg, L = ctx["cfg"], ctx["L"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    d = out["delta"][0]
    ax.fill_between(range(L), d.min(axis=1), d.max(axis=1), color="tab:blue", alpha=0.15,
                    lw=0, label="min..max over channels")
    ax.plot(range(L), d.mean(axis=1), "o-", ms=4, color="tab:blue", zorder=3,
            label="mean over channels")
    _sequence_axes(ax, ctx)
    ax.set_ylabel("step size Δ_t")
    what = (f"one {TASK_TITLES[cfg.task]} sequence" if ctx["tag"] != "input"
            else "one input sequence")
    ax.set_title(f"Selective SSM: step size Δ_t (eq. (4a)) along {what}{_pred_text(ctx)}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(ax, ncol=4)
    fig.tight_layout()
    path = os.path.join(cfg.out, f"delta-{ctx['tag']}.png")
    _savefig(fig, path)
    plt.close(fig)
    return [path]


def _lti_figures(ctx, P):
    plt = _plt()
    out = ctx["cfg"].out
    if "num" in P:
        sys_ = TransferFunction(P["num"], P["den"])
    else:
        sys_ = StateSpace(P["A"], P["B"], P["C"], P["D"]).to_tf()
    names = (("LTI system Σ", sys_, "u_{j}", "y_%d"),)
    return [_pole_zero_figure(plt, names, os.path.join(out, "poles-zeros-lti.png")),
            _impulse_figure(plt, names, os.path.join(out, "impulse-lti.png"))]
