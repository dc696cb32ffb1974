"""The models around the cores: embedding table (Section 3.1), core, readout, loss.

Token ids -> embedding E[token] = u(t) (batch, L, m) -> core -> y(L) (batch, m) ->
logits over the N content tokens -> cross-entropy on the final position only.

Residual SSM (Section 3.2.2) — trainable arrays
    E (V, m)                    embedding table
    sigma_num (m, m, ν+1)       Σ numerators;   sigma_theta (m, ν)   Σ denominators
    r_num (1, m, ν_r+1)         Σ_r numerators; r_theta (1, ν_r)     Σ_r denominator
    c ()                        gate bias, only with ``gate_bias=True`` (not in the paper)
  The paper's gate is s(t) = σ(r(t)) (below eq. (5)): the defaults. Options the paper does
  not have, each measured in docs/recipe.md's deviations table: a fixed gain g in front
  of the sigmoid, s = σ(g (r + c)) (``gate_gain``; folded into the core's convention
  s = σ(r' + c') as r' = g·r, c' = g·c by ``residual_core_arrays``), and the learned bias c
  (``gate_bias``). Denominators are stable by construction (the paper does not say how it
  keeps them stable): reflection coefficients k = b tanh(θ), |k| < b, turned into a monic
  polynomial by the step-up recursion (``lti.den_from_theta``); b = ``reflection_bound``
  (1: every stable polynomial is reachable).
  Training option (not in the paper): ``gate_penalty`` λ adds λ · mean_{batch, t} s(t)
  to the loss (label-free: at the trigger s ≈ 1, where σ' ≈ 0 and the penalty barely
  acts; elsewhere it pushes the gate's small openings, which leak the stored answer
  away over long sequences, towards 0). λ = 0 (the default) is the paper's loss.

Selective SSM (Section 3.2.1) — trainable arrays
    E (V, m), A_log (m, n) [A = −exp(A_log) < 0], W_delta (m, m), delta_bias (m,),
    W_B (n, m), W_C (n, m);  D (m,) only with ``use_D=True`` (not in the paper)
  Initialisation (options the paper does not give; the defaults are Mamba's S4D-real):
  ``A_init`` "s4d": A_log = log(1..n) in every row (A = −(1..n)); a pair (lo, hi):
  A_log = log U(lo, hi) per entry (Mamba-2's draw), taken from the seeded stream after
  W_C so the other arrays keep their values. ``delta_init`` (lo, hi): Δ = U(lo, hi) per
  channel (uniform in Δ, not Mamba's log-uniform: the first release's draw, kept as the
  default (0.001, 0.1)), stored as delta_bias = softplus⁻¹(Δ) = log(expm1(Δ)).
  ``use_D``: the skip y(t) += D ⊙ u(t) of mamba_ssm, D initialised to ones.

Readout (the paper does not give one; ``readout``):
    "cosine"  logits_k = s · cos(E_k, y(L)), k = 0..N−1, s = ``readout_scale`` (default
              SCALE = 10): tied to the embedding, no extra parameters. A plain dot product E·y(L) trained to 100% at
              L = 16 but generalized badly to L = 1024 (measured-facts); the cosine makes
              the decision depend on the direction of y(L) only, which the gate preserves
              however long the sequence.
    "linear"  logits = W_out y(L) + b_out, untied: W_out (N, m), b_out (N,).
  N = the answers: the content tokens (induction: the dictionary less the trigger).

Vocabulary: the paper's dictionary of N = 8 tokens (§2.1.1, §4.2). Induction: 7 content
tokens and the trigger (7 answers, chance 1/7); extended: 8 tokens, the trigger sequence
made of them (8 answers).

Glossary (shapes)
-----------------
tokens (batch, L) int, targets (batch,) int, params dict name -> float64 array
logits (batch, N), loss scalar

>>> cfg = ModelConfig("residual", "induction")
>>> params = init_params(cfg, seed=0)
>>> tok = onp.array([[1, 7, 3, 2, 7]])
>>> logits(cfg, params, tok).shape
(1, 7)
"""
from dataclasses import dataclass

import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp_argnums, primitive

from rssm_ref.kernels.readout import (cosine_np, cosine_vjp_np, cross_entropy_np,
                                      cross_entropy_vjp_np, embed_np, embed_vjp_np)
from rssm_ref.lti import den_from_theta
from rssm_ref.residual_ssm import (param_count as residual_core_count, residual_ssm_final,
                                   residual_ssm_tf)
from rssm_ref.selective_ssm import (A_from_log, param_count as selective_core_count, selective_ssm,
                                    selective_ssm_final)
from rssm_ref.kernels.convolution import DIRECT_MAX_L
from rssm_ref.kernels.residual import GATE_STATS
from rssm_ref.training.fused import ARGS, LossSpec, residual_loss, residual_loss_flat
from rssm_ref.training.tasks import DEFAULT_TOKENS, make_batch, vocab_size
from rssm_ref.validation import (check_number, check_option, check_range, is_traced,
                                 TRAINING_PATHS)
from rssm_ref.xp.backend import namespace, to_backend, to_host
from rssm_ref.xp.models import residual_ssm_xp, selective_ssm_xp

__all__ = ["ModelConfig", "init_params", "residual_core_arrays", "final_output", "logits",
           "loss", "accuracy", "param_count", "PAPER_PARAM_COUNTS", "embed", "cosine_logits",
           "cross_entropy", "final_output_ref", "loss_ref", "loss_composed", "loss_spec", "flat_loss",
           "fused_route"]

SCALE = 10.0        # cosine readout scale (the default of ModelConfig.readout_scale)
DELTA_INIT = (0.001, 0.1)   # Δ = U(lo, hi) at initialisation (the default of delta_init)
MODELS = ("residual", "selective")
READOUTS = ("cosine", "linear")
PAPER_PARAM_COUNTS = {"residual": 50, "selective": 700}   # Section 4.2, "about"


@dataclass(frozen=True)
class ModelConfig:
    """What a model is: kind, task (sets the vocabulary) and sizes.

    residual: m = 2, ν = 4, ν_r = 4 (Section 4.2); selective: m = 16, n = 8.
    ``gate`` "euler" (eq. (5)) or "zoh" (Remark 3.1); ``discretization`` and ``output``
    are the selective model's conventions (see ``rssm_ref.selective_ssm``).
    ``n_tokens`` content tokens (0: the paper's N = 8 dictionary, i.e. 7 plus the
    trigger for the induction task, 8 for the extended task). ``gate_gain``,
    ``gate_bias``, ``reflection_bound``, ``readout`` and ``gate_penalty`` (residual only):
    see the module docstring. Selective only (refused for the residual model):
    ``delta_init``, ``A_init``, ``use_D``. ``readout_scale``: the cosine readout's s (both
    models; refused with the linear readout). Each default is the model as it was before
    the option existed.
    """
    model: str
    task: str
    n_tokens: int = 0
    m: int = 0               # 0 = the paper's choice for the model
    nu: int = 4
    nu_r: int = 4
    n: int = 8
    gate: str = "euler"
    discretization: str = "zoh"
    output: str = "before"
    path: str = "auto"       # residual path: auto | kernel | recurrent | fft (see final_output)
    gate_gain: float = 1.0   # s = σ(g (r + c)); the paper: g = 1
    gate_bias: bool = False  # learned c; the paper: none
    reflection_bound: float = 1.0   # |k| < b for the stable denominators; 1: no constraint
    readout: str = "cosine"  # cosine (tied) | linear (untied)
    n_trig: int = 4          # extended task: the trigger sequence (0, 1, ..., n_trig - 1)
    window: int = 1          # selective: Δ, B, C read a causal window of w inputs (1: u(t))
    gate_penalty: float = 0.0   # residual: loss + λ mean_{batch, t} s(t); the paper: 0
    gate_penalty_mode: str = "mean"   # the penalised statistic: "mean" or "relative" (gate_stat)
    delta_init: tuple = DELTA_INIT   # selective: Δ = U(lo, hi) at initialisation
    A_init: object = "s4d"   # selective: "s4d" (A = −(1..n)) or (lo, hi): A_log = log U(lo, hi)
    use_D: bool = False      # selective: the skip D ⊙ u(t); the paper: none
    readout_scale: float = SCALE   # cosine readout: logits = s · cos(E_k, y(L))

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model: {self.model!r} (expected 'residual' or 'selective')")
        vocab_size(self.task)                 # validates the task name
        if self.n_tokens == 0:                # the paper's dictionary (rssm_ref.training.tasks)
            object.__setattr__(self, "n_tokens", DEFAULT_TOKENS[self.task])
        if self.readout not in READOUTS:
            raise ValueError(f"readout: {self.readout!r} (expected one of {', '.join(READOUTS)})")
        if not 0.0 < self.reflection_bound <= 1.0:
            raise ValueError(f"reflection_bound: {self.reflection_bound!r} (expected 0 < b <= 1)")
        if not self.gate_gain > 0:
            raise ValueError(f"gate_gain: {self.gate_gain!r} (expected > 0)")
        if int(self.window) != self.window or self.window < 1:
            raise ValueError(f"window: {self.window!r} (expected an integer >= 1)")
        if int(self.n_trig) != self.n_trig or not 1 <= self.n_trig <= self.n_tokens:
            raise ValueError(f"n_trig: {self.n_trig!r} (expected 1 <= n_trig <= {self.n_tokens})")
        self._check_gate_penalty()
        self._check_selective_options()
        scale = check_number("readout_scale", self.readout_scale, strict=True)
        if self.readout == "linear" and scale != SCALE:
            raise ValueError(f"readout_scale: {self.readout_scale!r} (the linear readout has no "
                             f"scale; expected {SCALE} or readout='cosine')")
        object.__setattr__(self, "readout_scale", scale)
        check_option("path", self.path, TRAINING_PATHS)
        if self.m == 0:
            object.__setattr__(self, "m", 2 if self.model == "residual" else 16)

    def _check_gate_penalty(self):
        try:
            lam = float(self.gate_penalty)
        except (TypeError, ValueError):
            lam = float("nan")
        if not (onp.isfinite(lam) and lam >= 0.0):
            raise ValueError(f"gate_penalty: {self.gate_penalty!r} (expected a finite number >= 0)")
        if lam > 0.0 and self.model != "residual":
            raise ValueError(f"gate_penalty: {self.gate_penalty!r} (the {self.model} model has no "
                             "gate s(t) to penalise; expected 0)")
        object.__setattr__(self, "gate_penalty", lam)
        check_option("gate_penalty_mode", self.gate_penalty_mode, GATE_STATS)

    def _check_selective_options(self):
        delta = check_range("delta_init", self.delta_init)
        if self.A_init == "s4d":
            A_init = "s4d"
        elif isinstance(self.A_init, str):
            raise ValueError(f"A_init: {self.A_init!r} (expected 's4d' or a pair (lo, hi) with "
                             "0 < lo < hi)")
        else:
            A_init = check_range("A_init", self.A_init)
        if not isinstance(self.use_D, (bool, onp.bool_)):
            raise ValueError(f"use_D: {self.use_D!r} (expected True or False)")
        given = {"delta_init": delta != DELTA_INIT, "A_init": A_init != "s4d",
                 "use_D": bool(self.use_D)}
        for name, changed in given.items():
            if changed and self.model != "selective":
                raise ValueError(f"{name}: {getattr(self, name)!r} (a selective-model option; "
                                 f"the {self.model} model has none; expected the default)")
        object.__setattr__(self, "delta_init", delta)
        object.__setattr__(self, "A_init", A_init)
        object.__setattr__(self, "use_D", bool(self.use_D))

    @property
    def vocab(self):
        return vocab_size(self.task, self.n_tokens)

    @property
    def trigger(self):
        """The extended task's trigger sequence (0, 1, ..., n_trig - 1)."""
        return tuple(range(self.n_trig))

    def batch(self, rng, batch, L):
        """(tokens, targets) of this model's task and vocabulary (``tasks.make_batch``)."""
        return make_batch(self.task, rng, batch, L, self.n_tokens, self.trigger)


def init_params(cfg, seed=0):
    """Seeded initial parameters (dict of float64 arrays) for ``cfg``.

    >>> sorted(init_params(ModelConfig("residual", "extended"), seed=1))
    ['E', 'r_num', 'r_theta', 'sigma_num', 'sigma_theta']
    >>> sorted(init_params(ModelConfig("residual", "extended", gate_bias=True, readout="linear")))
    ['E', 'W_out', 'b_out', 'c', 'r_num', 'r_theta', 'sigma_num', 'sigma_theta']
    """
    rng = onp.random.default_rng(seed)
    params = _init_core(cfg, rng)
    if cfg.model == "selective" and cfg.window > 1:
        # depthwise causal kernel over the last w inputs: starts as the identity (u(t)),
        # the older taps small, so w > 1 begins where the paper's static selection is
        taps = rng.normal(0.0, 0.1, size=(cfg.window - 1, cfg.m))
        params["conv"] = onp.concatenate([onp.ones((1, cfg.m)), taps], axis=0)
    if cfg.readout == "linear":
        # drawn after the core so the core's initial values do not depend on the readout
        params["W_out"] = rng.normal(0.0, 1.0 / onp.sqrt(cfg.m), size=(cfg.n_tokens, cfg.m))
        params["b_out"] = onp.zeros(cfg.n_tokens)
    return params


def _init_core(cfg, rng):
    m = cfg.m
    E = rng.normal(0.0, 1.0, size=(cfg.vocab, m))
    if cfg.model == "residual":
        lag_nu = 0.3 ** onp.arange(cfg.nu + 1)
        lag_r = 0.3 ** onp.arange(cfg.nu_r + 1)
        params = {
            "E": E,
            "sigma_num": rng.normal(0.0, 0.5, size=(m, m, cfg.nu + 1)) * lag_nu,
            "sigma_theta": rng.normal(0.0, 0.3, size=(m, cfg.nu)),
            "r_num": rng.normal(0.0, 0.5, size=(1, m, cfg.nu_r + 1)) * lag_r,
            "r_theta": rng.normal(0.0, 0.3, size=(1, cfg.nu_r)),
        }
        if cfg.gate_bias:
            params["c"] = onp.array(0.0)
        return params
    n = cfg.n
    s = 1.0 / onp.sqrt(m)
    params = {
        "E": E,
        # S4D-real initialization A = -(1..n), as in Mamba (a range: replaced below)
        "A_log": onp.log(onp.tile(onp.arange(1, n + 1, dtype=float), (m, 1))),
        "W_delta": rng.normal(0.0, s, size=(m, m)),
        # Δ = U(lo, hi) per channel, delta_bias = softplus⁻¹(Δ)
        "delta_bias": onp.log(onp.expm1(rng.uniform(*cfg.delta_init, size=m))),
        "W_B": rng.normal(0.0, s, size=(n, m)),
        "W_C": rng.normal(0.0, s, size=(n, m)),
    }
    if cfg.A_init != "s4d":
        # drawn last, so that E, W_delta, delta_bias, W_B, W_C are the s4d run's
        params["A_log"] = onp.log(rng.uniform(*cfg.A_init, size=(m, n)))
    if cfg.use_D:
        params["D"] = onp.ones(m)
    return params


def residual_core_arrays(params, cfg=None):
    """Map trainable arrays to the core's (sigma_num, sigma_den, r_num, r_den, gate_bias):
    the stable parameterization (bound ``cfg.reflection_bound``) and the gain
    ``cfg.gate_gain`` folded in (s = σ(g (r + c)) = σ(r' + c')). ``cfg`` None: the
    defaults (the paper's gate, bound 1). No ``c`` in params: gate_bias = 0.

    >>> arrs = residual_core_arrays(init_params(ModelConfig("residual", "induction")))
    >>> [a.shape for a in arrs[:4]], arrs[4]
    ([(2, 2, 5), (2, 5), (1, 2, 5), (1, 5)], 0.0)
    """
    gain = cfg.gate_gain if cfg is not None else 1.0
    bound = cfg.reflection_bound if cfg is not None else 1.0
    sigma_den = den_from_theta(params["sigma_theta"], bound)
    r_den = den_from_theta(params["r_theta"], bound)
    r_num = params["r_num"] if gain == 1.0 else gain * params["r_num"]
    c = params.get("c", 0.0)
    return (params["sigma_num"], sigma_den, r_num, r_den, c if gain == 1.0 else gain * c)


# ---------------------------------------------------- hot-path primitives, hand VJPs
@primitive
def embed(E, tokens):
    """u = E[tokens]: (V, m), (batch, L) int -> (batch, L, m) (Section 3.1's embedding).

    An autograd primitive: its VJP sums the cotangent rows per token id with one
    ``bincount`` (autograd's generic VJP of indexing, ``np.add.at``, is ~20x slower).

    >>> embed(onp.arange(6.0).reshape(3, 2), onp.array([[2, 0]])).tolist()
    [[[4.0, 5.0], [0.0, 1.0]]]
    """
    return embed_np(E, tokens)


defvjp_argnums(embed, lambda argnums, ans, args, kwargs: (
    lambda g: (embed_vjp_np(onp.shape(args[0]), args[1], g),)))


@primitive
def cosine_logits(y, E, scale, n_rows=None):
    """z = scale · cos(E_k, y): y (batch, m), E (V, m) -> (batch, N) over the first
    N = ``n_rows`` rows of E (default all): the tied readout.

    cos(a, b) = a·b / (‖a‖_ε ‖b‖_ε) with ‖x‖_ε = sqrt(‖x‖² + 1e-12) (no 0/0 at x = 0).
    A primitive with a hand-written VJP (d(x/‖x‖_ε) = (dx − x̂ (x̂·dx) ‖x‖²/‖x‖_ε²)/‖x‖_ε).

    >>> cosine_logits(onp.array([[1.0, 0.0]]), onp.array([[2.0, 0.0], [0.0, 3.0]]), 10.0).round(6).tolist()
    [[10.0, 0.0]]
    """
    return cosine_np(y, E, scale, n_rows)


def _cosine_logits_vjp(argnums, ans, args, kwargs):
    y, E_all, scale = args[:3]
    n_rows = args[3] if len(args) > 3 else None

    def vjp(g):
        dy, dE, dscale = cosine_vjp_np(y, E_all, scale, n_rows, g)
        out = {0: lambda: dy, 1: lambda: dE, 2: dscale}
        return tuple(out[k]() for k in argnums)
    return vjp


defvjp_argnums(cosine_logits, _cosine_logits_vjp)


@primitive
def cross_entropy(z, targets):
    """Mean over the batch of −log softmax(z)[target]: z (batch, N), targets (batch,) int
    -> scalar (stable: the row maximum is subtracted). Hand-written VJP
    (softmax(z) − onehot(target)) / batch.

    >>> round(float(cross_entropy(onp.zeros((2, 4)), onp.array([0, 3]))), 12) == round(float(onp.log(4)), 12)
    True
    """
    return cross_entropy_np(z, targets)


defvjp_argnums(cross_entropy, lambda argnums, ans, args, kwargs: (
    lambda g: (cross_entropy_vjp_np(args[0], args[1], g),)))


# ------------------------------------------------------------------ the models
def _core(cfg, params, u, return_intermediates=False, path=None):
    """The whole output sequence (batch, L, m) of the core: the oracle's full forward."""
    if cfg.model == "residual":
        path = path or cfg.path
        return residual_ssm_tf(*residual_core_arrays(params, cfg), u,
                               path="fft" if path == "fft" else "recurrent",
                               gate=cfg.gate, return_intermediates=return_intermediates)
    return selective_ssm(u, A_from_log(params["A_log"]), params["W_delta"], params["W_B"],
                         params["W_C"], delta_bias=params["delta_bias"], D=params.get("D"),
                         discretization=cfg.discretization, output=cfg.output,
                         return_intermediates=return_intermediates)


def _residual_final(cfg, params, u, path):
    """y(L) of the Residual SSM (Fig. 3): ``residual_ssm_final`` on the trained arrays."""
    return residual_ssm_final(*residual_core_arrays(params, cfg), u, path=path, gate=cfg.gate)


def final_output_ref(cfg, params, tokens, path=None):
    """Twin of :func:`final_output`: the whole sequence by the reference cores
    (``residual_ssm_tf`` / ``selective_ssm``), then its last step.

    >>> cfg = ModelConfig("residual", "induction")
    >>> p, tok = init_params(cfg), onp.array([[0, 7, 1, 7]])
    >>> bool(onp.allclose(final_output(cfg, p, tok), final_output_ref(cfg, p, tok), rtol=0, atol=1e-14))
    True
    """
    if cfg.model == "selective" and cfg.window > 1:
        u = params["E"][tokens]
        return selective_ssm(u, A_from_log(params["A_log"]), params["W_delta"], params["W_B"],
                             params["W_C"], delta_bias=params["delta_bias"], D=params.get("D"),
                             discretization=cfg.discretization, output=cfg.output,
                             v=_window(cfg, params, u))[:, -1, :]
    return _core(cfg, params, params["E"][tokens], path=path)[:, -1, :]


def final_output(cfg, params, tokens, path=None, backend="numpy"):
    """y(L) (batch, m): the core's output after the last token.

    The fast paths compute only the last output: ``gate_final`` (Residual SSM) and
    ``selective_ssm_final`` (Selective SSM), primitives with hand-written VJPs.
    ``path`` (Residual SSM, see ``residual_ssm_final``): "auto" (default: "kernel" for
    L <= 64, else "recurrent"), "kernel" (exact Markov kernel + causal convolution, one
    fused primitive), "recurrent" (scipy lfilter), "fft" (the exact state-free FFT route
    of Section 4.1).
    Twin: :func:`final_output_ref` (the full-sequence cores, last step).
    ``backend`` other than "numpy" runs the core with rssm_ref.xp.models on that array
    module (evaluation only); y(L) comes back as a host array.

    >>> cfg = ModelConfig("selective", "induction", m=4, n=2)
    >>> final_output(cfg, init_params(cfg), onp.array([[0, 7, 1, 7]])).shape
    (1, 4)
    """
    if backend != "numpy":
        return _final_output_xp(cfg, params, params["E"][tokens], path, backend)
    u = embed(params["E"], tokens)
    if cfg.model == "residual":
        return _residual_final(cfg, params, u, path or cfg.path)
    return selective_ssm_final(u, A_from_log(params["A_log"]), params["W_delta"], params["W_B"],
                               params["W_C"], delta_bias=params["delta_bias"], D=params.get("D"),
                               discretization=cfg.discretization, output=cfg.output,
                               v=_window(cfg, params, u))


def _window(cfg, params, u):
    """v(t) = sum_{k<w} conv[k] ⊙ u(t − k) (zero before t = 0): what a window-w selection
    reads; None for w = 1 (the paper: Δ_t, B̄_t, C̄_t from u(t) alone)."""
    if cfg.model != "selective" or cfg.window == 1:
        return None
    K = params["conv"]
    L = onp.shape(u)[1]
    v = K[0] * u
    for k in range(1, cfg.window):
        if k < L:
            shifted = np.concatenate([onp.zeros((onp.shape(u)[0], k, onp.shape(u)[2])),
                                      u[:, :L - k]], axis=1)
            v = v + K[k] * shifted
    return v


def _final_output_xp(cfg, params, u, path, backend):
    u = to_backend(u, namespace(backend))
    if cfg.model == "residual":
        keys = ("sigma_num", "sigma_den", "r_num", "r_den", "gate_bias")
        P = dict(zip(keys, residual_core_arrays(params, cfg)))
        y = residual_ssm_xp(P, u, path="fft" if (path or cfg.path) == "fft" else "recurrent",
                            gate=cfg.gate)["y"]
    else:
        P = {"A": A_from_log(params["A_log"]), "W_delta": params["W_delta"], "W_B": params["W_B"],
             "W_C": params["W_C"], "delta_bias": params["delta_bias"], "D": params.get("D")}
        y = selective_ssm_xp(P, u, discretization=cfg.discretization, output=cfg.output)["y"]
    return to_host(y[:, -1, :])


def logits(cfg, params, tokens, path=None, backend="numpy"):
    """s · cos(E_k, y(L)) over the N content tokens, s = ``cfg.readout_scale`` (or the
    linear readout): (batch, N).

    >>> cfg = ModelConfig("residual", "induction")
    >>> bool(onp.all(onp.abs(logits(cfg, init_params(cfg), onp.array([[0, 7, 1, 7]]))) <= 10))
    True
    """
    y = final_output(cfg, params, tokens, path, backend)
    return _readout(cfg, params, y)


def _readout(cfg, params, y):
    if cfg.readout == "linear":
        return np.dot(y, params["W_out"].T) + params["b_out"]
    return cosine_logits(y, params["E"], cfg.readout_scale, cfg.n_tokens)


def loss_ref(cfg, params, tokens, targets):
    """Twin of :func:`loss` written with autograd's own operations only: the reference
    cores' last output, the cosine readout and the log-softmax as plain expressions.

    >>> cfg = ModelConfig("residual", "induction")
    >>> p, tok, tgt = init_params(cfg), onp.array([[0, 7, 1, 7]]), onp.array([1])
    >>> bool(abs(loss(cfg, p, tok, tgt) - loss_ref(cfg, p, tok, tgt)) < 1e-13)
    True
    >>> cfg = ModelConfig("residual", "induction", gate_penalty=0.1)
    >>> bool(abs(loss(cfg, p, tok, tgt) - loss_ref(cfg, p, tok, tgt)) < 1e-13)
    True
    """
    ce = _cross_entropy_ref(cfg, params, final_output_ref(cfg, params, tokens), targets)
    if cfg.gate_penalty == 0.0:
        return ce
    # λ · mean over the batch of the gate's statistic, s from the reference core's own
    # intermediates: mean_t s(t), or (Σ_t s − max_t s) / max_t s ("relative")
    s = _core(cfg, params, params["E"][tokens], return_intermediates=True)[1]["s"]
    if cfg.gate_penalty_mode == "mean":
        return ce + cfg.gate_penalty * np.mean(s)
    M = np.max(s, axis=1)
    return ce + cfg.gate_penalty * np.mean((np.sum(s, axis=1) - M) / M)


def _cross_entropy_ref(cfg, params, y, targets):
    if cfg.readout == "linear":
        z = np.dot(y, params["W_out"].T) + params["b_out"]
        logp = z - _logsumexp(z)
        return -np.mean(logp[onp.arange(len(targets)), targets])
    E = params["E"][: cfg.n_tokens]
    y_n = y / np.sqrt(np.sum(y * y, axis=1, keepdims=True) + 1e-12)
    E_n = E / np.sqrt(np.sum(E * E, axis=1, keepdims=True) + 1e-12)
    z = cfg.readout_scale * np.dot(y_n, E_n.T)
    logp = z - _logsumexp(z)
    return -np.mean(logp[onp.arange(len(targets)), targets])


def loss_spec(cfg):
    """The constants of ``cfg``'s Residual loss for the fused primitive
    (rssm_ref.training.fused.LossSpec)."""
    return LossSpec(float(cfg.gate_gain), float(cfg.reflection_bound), cfg.gate, cfg.readout,
                    int(cfg.n_tokens), cfg.readout_scale, float(cfg.gate_penalty),
                    cfg.gate_penalty_mode)


def fused_route(cfg, L):
    """Whether ``cfg``'s loss at length L has the one-primitive form
    (rssm_ref.training.fused): the Residual SSM on the kernel path (L <= DIRECT_MAX_L with
    "auto", or "kernel" at any L)."""
    return cfg.model == "residual" and (cfg.path == "kernel"
                                        or (cfg.path == "auto" and L <= DIRECT_MAX_L))


def _fused(cfg, params, tokens):
    """The Residual loss runs as one primitive under autograd (the training step)."""
    return is_traced(params["E"]) and fused_route(cfg, onp.shape(tokens)[1])


def flat_loss(cfg, layout, L):
    """The training step's loss as a function of the optimizer's flat vector theta, one
    primitive (fused.residual_loss_flat), when ``fused_route``; else None (the caller
    composes ``loss`` on the unflattened params). ``layout``: ((name, start, stop,
    shape), ...) of theta."""
    if not fused_route(cfg, L) or any(k not in ARGS for k, _, _, _ in layout):
        return None
    spec = loss_spec(cfg)
    return lambda theta, tokens, targets: residual_loss_flat(
        theta, layout, onp.asarray(tokens), onp.asarray(targets), spec)


def loss(cfg, params, tokens, targets):
    """Cross-entropy on the final position (stable log-softmax), mean over the batch;
    with ``cfg.gate_penalty`` λ > 0 plus λ · mean_{batch, t} s(t), the Residual SSM's
    mean gate opening (y(L) and s̄ from one forward: ``residual_ssm_final``'s
    ``gate_mean``). λ = 0: the cross-entropy alone, by the same code as without the option.

    Under autograd on the kernel path the Residual loss is one primitive with one VJP
    (rssm_ref.training.fused: the same operations, the same bits, without autograd's
    bookkeeping between the blocks); otherwise the blocks' primitives composed.

    >>> cfg = ModelConfig("residual", "induction")
    >>> round(float(loss(cfg, init_params(cfg), onp.array([[0, 7, 1, 7]]), onp.array([1]))), 3) > 0
    True
    """
    if _fused(cfg, params, tokens):
        return residual_loss(params, tokens, targets, loss_spec(cfg))
    return loss_composed(cfg, params, tokens, targets)


def loss_composed(cfg, params, tokens, targets):
    """:func:`loss` with every block its own primitive, composed by autograd (the route
    the fused primitive is checked against, bit for bit)."""
    if cfg.gate_penalty == 0.0:
        return cross_entropy(logits(cfg, params, tokens), onp.asarray(targets))
    y_and_mean = residual_ssm_final(*residual_core_arrays(params, cfg), embed(params["E"], tokens),
                                    path=cfg.path, gate=cfg.gate,
                                    gate_mean=cfg.gate_penalty_mode)
    y, s_bar = y_and_mean[:, :cfg.m], y_and_mean[:, cfg.m]
    return (cross_entropy(_readout(cfg, params, y), onp.asarray(targets))
            + cfg.gate_penalty * np.mean(s_bar))


def _logsumexp(z):
    zmax = np.max(z, axis=1, keepdims=True)
    return zmax + np.log(np.sum(np.exp(z - zmax), axis=1, keepdims=True))


def accuracy(cfg, params, tokens, targets, chunk=None, path=None, backend="numpy"):
    """Fraction of rows whose argmax logit is the target; evaluated in chunks of rows so
    long sequences fit in memory.

    >>> cfg = ModelConfig("residual", "induction")
    >>> 0.0 <= accuracy(cfg, init_params(cfg), onp.array([[0, 7, 1, 7]]), onp.array([1])) <= 1.0
    True
    """
    tokens = onp.asarray(tokens)
    if chunk is None:
        L = tokens.shape[1]
        chunk = max(1, int(4e6 // (L * cfg.m * (cfg.n if cfg.model == "selective" else 8))))
    hits = 0
    for lo in range(0, len(tokens), chunk):
        z = logits(cfg, params, tokens[lo:lo + chunk], path, backend)
        hits += int(onp.sum(onp.argmax(z, axis=1) == targets[lo:lo + chunk]))
    return hits / len(tokens)


def param_count(cfg):
    """{"core", "embedding", "readout", "total", "paper"} learnable parameter counts.

    Residual core by eq. (9) generalized (``residual_ssm.param_count``, + 1 with
    ``gate_bias``); selective core ``selective_ssm.param_count``; embedding V·m; readout
    0 (tied cosine) or N·m + N (linear). The paper reports "around 50" (Residual, m = 2;
    58 here: with eq. (9)'s feedthrough terms, 52 without) and "approximately 700"
    (Selective, n = 8, m = 16; 784 here with the tied readout).

    >>> param_count(ModelConfig("residual", "induction"))
    {'core': 42, 'embedding': 16, 'readout': 0, 'total': 58, 'paper': 50}
    >>> param_count(ModelConfig("selective", "induction"))["total"]
    784
    """
    if cfg.model == "residual":
        core = residual_core_count(cfg.m, cfg.nu, cfg.nu_r, "tf", gate_bias=cfg.gate_bias)
    else:
        core = selective_core_count(cfg.m, cfg.n, delta_bias=True, D=cfg.use_D)
    emb = cfg.vocab * cfg.m
    head = cfg.n_tokens * cfg.m + cfg.n_tokens if cfg.readout == "linear" else 0
    if cfg.model == "selective" and cfg.window > 1:
        core += cfg.window * cfg.m                    # the depthwise causal kernel
    return {"core": core, "embedding": emb, "readout": head, "total": core + emb + head,
            "paper": PAPER_PARAM_COUNTS[cfg.model]}
