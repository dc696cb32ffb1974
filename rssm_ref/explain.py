"""Take one sequence through a trained model and show how it selects.

Residual SSM (Fig. 3): the trace lists, per step t, the token, y_s(t), the residual r(t),
the gate s(t) = σ(r(t) + c) and the gate output y(t+1) (eq. 5). On a trained model the
gate opens (s ≈ 1) right after the first trigger and stays shut elsewhere, so y keeps
the answer token's embedding until the end. Figures: s(t) along the sequence; poles and
zeros of Σ and Σ_r with the unit circle; their impulse responses.

Selective SSM (eqs. 2-4): per step the token, Δ_t (mean over channels) and the state
norm ‖h(t+1)‖; the figure shows Δ_t along the sequence.

Glossary
--------
ExplainConfig(model, task, checkpoint, seed, out, L, steps)
explain(cfg) -> {"trace": str, "figures": [paths], "prediction": int, "target": int}

>>> import tempfile
>>> res = explain(ExplainConfig("residual", "induction", steps=30, out=tempfile.mkdtemp(), L=12))
>>> res["trace"].splitlines()[0].split()[:4]
['t', 'token', 'y_s', 'r']
"""
import os
import tempfile
from dataclasses import dataclass

import numpy as onp

from rssm_ref.lti import TransferFunction
from rssm_ref.models import ModelConfig, init_params, logits, residual_core_arrays
from rssm_ref.residual_ssm import residual_ssm_tf
from rssm_ref.selective_ssm import A_from_log, selective_ssm
from rssm_ref.tasks import extended_induction_head, induction_head
from rssm_ref.train import TrainConfig, load_checkpoint, train

__all__ = ["ExplainConfig", "explain"]


@dataclass(frozen=True)
class ExplainConfig:
    """Options of ``python cli.py explain``."""
    model: str = "residual"
    task: str = "induction"
    checkpoint: str = ""          # a params checkpoint written by reproduce/train
    seed: int = 0
    out: str = "explain"
    L: int = 32
    steps: int = 3000             # training steps when no checkpoint is given


def _sequence(cfg):
    rng = onp.random.default_rng([cfg.seed, 7])
    if cfg.task == "induction":
        tok, tgt, p = induction_head(rng, 1, cfg.L, return_positions=True)
    else:
        tok, tgt, p = extended_induction_head(rng, 1, cfg.L, return_positions=True)
    return tok, tgt, int(p[0])


def _params(cfg, model_cfg):
    if cfg.checkpoint:
        return load_checkpoint(cfg.checkpoint)[0]
    params, _ = train(model_cfg, TrainConfig(steps=cfg.steps, seed=cfg.seed,
                                             lr=0.02 if cfg.model == "residual" else 5e-3,
                                             warmup=min(200, max(1, cfg.steps // 10))))
    return params


def _savefig(fig, path):
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def explain(cfg):
    """Trace one sequence through the model and write the figures into ``cfg.out``."""
    model_cfg = ModelConfig(cfg.model, cfg.task)
    params = _params(cfg, model_cfg)
    if set(params) != set(init_params(model_cfg)):
        raise ValueError(f"{cfg.checkpoint}: parameters {sorted(params)} do not describe a "
                         f"{cfg.model} model for the {cfg.task} task")
    tok, tgt, p = _sequence(cfg)
    u = params["E"][tok]
    pred = int(onp.argmax(logits(model_cfg, params, tok)[0]))
    os.makedirs(cfg.out, exist_ok=True)
    if cfg.model == "residual":
        arrays = residual_core_arrays(params)
        y, mid = residual_ssm_tf(*arrays, u, return_intermediates=True)
        lines = [f"{'t':>3} {'token':>5} {'y_s':>17} {'r':>9} {'s':>7} {'y(t+1)':>17}"]
        for t in range(cfg.L):
            mark = "  <- first trigger" if t == p else ("  <- answer" if t == p + (1 if cfg.task == 'induction' else 4) else "")
            lines.append(f"{t:>3} {tok[0, t]:>5} {_v(mid['y_s'][0, t]):>17} {mid['r'][0, t]:>9.3f} "
                         f"{mid['s'][0, t]:>7.4f} {_v(y[0, t]):>17}{mark}")
        figures = _residual_figures(cfg, arrays, tok, mid, p)
    else:
        A = A_from_log(params["A_log"])
        y, mid = selective_ssm(u, A, params["W_delta"], params["W_B"], params["W_C"],
                               delta_bias=params["delta_bias"], discretization=model_cfg.discretization,
                               output=model_cfg.output, return_intermediates=True)
        lines = [f"{'t':>3} {'token':>5} {'mean delta':>11} {'|h(t+1)|':>10}"]
        for t in range(cfg.L):
            lines.append(f"{t:>3} {tok[0, t]:>5} {mid['delta'][0, t].mean():>11.4f} "
                         f"{onp.linalg.norm(mid['h'][0, t]):>10.4f}")
        figures = _selective_figures(cfg, tok, mid, p)
    lines.append(f"target {int(tgt[0])}, prediction {pred}")
    return {"trace": "\n".join(lines), "figures": figures, "prediction": pred, "target": int(tgt[0])}


def _v(x):
    return "(" + ", ".join(f"{v:6.3f}" for v in x) + ")"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _residual_figures(cfg, arrays, tok, mid, p):
    plt = _plt()
    paths = []
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.step(onp.arange(cfg.L), mid["s"][0], where="mid", color="tab:blue")
    ax.axvline(p, color="tab:red", ls="--", lw=1, label="first trigger")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("t")
    ax.set_ylabel("gate s(t)")
    ax.set_title("Residual SSM: the gate opens after the trigger (eq. 5)")
    for t in range(cfg.L):
        ax.annotate(str(tok[0, t]), (t, 1.0), ha="center", fontsize=7, color="gray")
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    paths.append(os.path.join(cfg.out, f"gate-{cfg.task}.png"))
    _savefig(fig, paths[-1])
    plt.close(fig)

    sigma = TransferFunction(arrays[0], arrays[1])
    r_sys = TransferFunction(arrays[2], arrays[3])
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    circle = onp.exp(1j * onp.linspace(0, 2 * onp.pi, 200))
    for ax, (name, sys_) in zip(axes, (("Σ", sigma), ("Σ_r", r_sys))):
        ax.plot(circle.real, circle.imag, color="lightgray")
        pol = sys_.poles()
        ax.plot(pol.real, pol.imag, "x", color="tab:red", label="poles")
        outside = 0
        for i in range(sys_.n_outputs):
            for j in range(sys_.n_inputs):
                zer = onp.roots(sys_.num[i, j]) if onp.any(sys_.num[i, j][:-1]) else onp.array([])
                outside += int(onp.sum(onp.abs(zer) > 1.9))
                ax.plot(zer.real, zer.imag, "o", mfc="none", color="tab:blue",
                        label="zeros" if i == 0 and j == 0 else None)
        # zeros may lie far away; keep the unit circle readable and count the rest
        ax.set_xlim(-2, 2)
        ax.set_ylim(-2, 2)
        ax.set_aspect("equal")
        ax.set_title(f"{name}: poles and zeros" + (f" ({outside} zeros off view)" if outside else ""))
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(cfg.out, f"poles-zeros-{cfg.task}.png"))
    _savefig(fig, paths[-1])
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, (name, sys_) in zip(axes, (("Σ", sigma), ("Σ_r", r_sys))):
        h = sys_.impulse(24)
        for i in range(h.shape[1]):
            for j in range(h.shape[2]):
                ax.plot(h[:, i, j], ".-", label=f"{i}<-{j}")
        ax.set_title(f"{name}: impulse response")
        ax.set_xlabel("t")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(cfg.out, f"impulse-{cfg.task}.png"))
    _savefig(fig, paths[-1])
    plt.close(fig)
    return paths


def _selective_figures(cfg, tok, mid, p):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(mid["delta"][0].mean(axis=1), ".-")
    ax.axvline(p, color="tab:red", ls="--", lw=1, label="first trigger")
    ax.set_xlabel("t")
    ax.set_ylabel("mean Δ_t")
    ax.set_title("Selective SSM: step size Δ_t (eq. 4a)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(cfg.out, f"delta-{cfg.task}.png")
    _savefig(fig, path)
    plt.close(fig)
    return [path]
