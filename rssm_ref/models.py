"""The models around the cores: embedding table (Section 3.1), core, readout, loss.

Token ids -> embedding E[token] = u(t) (batch, L, m) -> core -> y(L) (batch, m) ->
logits over the N content tokens -> cross-entropy on the final position only.

Residual SSM (Section 3.2.2) — trainable arrays
    E (V, m)                    embedding table
    sigma_num (m, m, ν+1)       Σ numerators;   sigma_theta (m, ν)   Σ denominators
    r_num (1, m, ν_r+1)         Σ_r numerators; r_theta (1, ν_r)     Σ_r denominator
    c ()                        gate bias
  Denominators are stable by construction: reflection coefficients k = 0.5 tanh(θ)
  (|k| < 1/2) turned into a monic polynomial by the step-up recursion
  (``lti.den_from_reflection``). The gate is s = σ(GAIN (r + c)) with the fixed gain
  GAIN = 3 folded into the core's convention s = σ(r' + c'): r' uses GAIN·r_num and
  c' = GAIN·c (``residual_core_arrays``).

Selective SSM (Section 3.2.1) — trainable arrays
    E (V, m), A_log (m, n) [A = −exp(A_log) < 0], W_delta (m, m), delta_bias (m,),
    W_B (n, m), W_C (n, m)

Readout (both models, tied to the embedding, no extra parameters):
    logits_k = SCALE · cos(E_k, y(L)),  k = 0..N−1,  SCALE = 10.
  A plain dot product E·y(L) trained to 100% at L = 16 but generalized badly to L = 1024
  (measured-facts); the cosine makes the decision depend on the direction of y(L) only,
  which the gate preserves however long the sequence.

Glossary (shapes)
-----------------
tokens (batch, L) int, targets (batch,) int, params dict name -> float64 array
logits (batch, N), loss scalar

>>> cfg = ModelConfig("residual", "induction")
>>> params = init_params(cfg, seed=0)
>>> tok = onp.array([[1, 8, 3, 2, 8]])
>>> logits(cfg, params, tok).shape
(1, 8)
"""
from dataclasses import dataclass

import autograd.numpy as np
import numpy as onp

from rssm_ref.lti import den_from_reflection
from rssm_ref.residual_ssm import param_count as residual_core_count
from rssm_ref.residual_ssm import residual_ssm_tf
from rssm_ref.selective_ssm import A_from_log, selective_ssm
from rssm_ref.selective_ssm import param_count as selective_core_count
from rssm_ref.tasks import vocab_size

__all__ = ["ModelConfig", "init_params", "residual_core_arrays", "final_output", "logits",
           "loss", "accuracy", "param_count", "PAPER_PARAM_COUNTS"]

GAIN = 3.0          # fixed gain in front of the gate's sigmoid (documented above)
SCALE = 10.0        # cosine readout scale
REFLECTION_SCALE = 0.5
MODELS = ("residual", "selective")
PAPER_PARAM_COUNTS = {"residual": 50, "selective": 700}   # Section 4.2, "about"


@dataclass(frozen=True)
class ModelConfig:
    """What a model is: kind, task (sets the vocabulary) and sizes.

    residual: m = 2, ν = 4, ν_r = 4 (Section 4.2); selective: m = 16, n = 8.
    ``gate`` "euler" (eq. 5) or "zoh" (Remark 3.1); ``discretization`` and ``output``
    are the selective model's conventions (see ``rssm_ref.selective_ssm``).
    """
    model: str
    task: str
    n_tokens: int = 8
    m: int = 0               # 0 = the paper's choice for the model
    nu: int = 4
    nu_r: int = 4
    n: int = 8
    gate: str = "euler"
    discretization: str = "zoh"
    output: str = "before"
    path: str = "fft"        # residual training/evaluation path

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model: {self.model!r} (expected 'residual' or 'selective')")
        vocab_size(self.task, self.n_tokens)  # validates the task name
        if self.m == 0:
            object.__setattr__(self, "m", 2 if self.model == "residual" else 16)

    @property
    def vocab(self):
        return vocab_size(self.task, self.n_tokens)


def init_params(cfg, seed=0):
    """Seeded initial parameters (dict of float64 arrays) for ``cfg``.

    >>> sorted(init_params(ModelConfig("residual", "extended"), seed=1))
    ['E', 'c', 'r_num', 'r_theta', 'sigma_num', 'sigma_theta']
    """
    rng = onp.random.default_rng(seed)
    m = cfg.m
    E = rng.normal(0.0, 1.0, size=(cfg.vocab, m))
    if cfg.model == "residual":
        lag_nu = 0.3 ** onp.arange(cfg.nu + 1)
        lag_r = 0.3 ** onp.arange(cfg.nu_r + 1)
        return {
            "E": E,
            "sigma_num": rng.normal(0.0, 0.5, size=(m, m, cfg.nu + 1)) * lag_nu,
            "sigma_theta": rng.normal(0.0, 0.3, size=(m, cfg.nu)),
            "r_num": rng.normal(0.0, 0.5, size=(1, m, cfg.nu_r + 1)) * lag_r,
            "r_theta": rng.normal(0.0, 0.3, size=(1, cfg.nu_r)),
            "c": onp.array(0.0),
        }
    n = cfg.n
    s = 1.0 / onp.sqrt(m)
    return {
        "E": E,
        # S4D-real initialization A = -(1..n), as in Mamba
        "A_log": onp.log(onp.tile(onp.arange(1, n + 1, dtype=float), (m, 1))),
        "W_delta": rng.normal(0.0, s, size=(m, m)),
        "delta_bias": onp.log(onp.expm1(rng.uniform(0.001, 0.1, size=m))),  # Δ in [1e-3, 0.1]
        "W_B": rng.normal(0.0, s, size=(n, m)),
        "W_C": rng.normal(0.0, s, size=(n, m)),
    }


def residual_core_arrays(params):
    """Map trainable arrays to the core's (sigma_num, sigma_den, r_num, r_den, gate_bias)
    with the stable parameterization and the fixed gain folded in.

    >>> arrs = residual_core_arrays(init_params(ModelConfig("residual", "induction")))
    >>> [a.shape for a in arrs[:4]]
    [(2, 2, 5), (2, 5), (1, 2, 5), (1, 5)]
    """
    sigma_den = den_from_reflection(REFLECTION_SCALE * np.tanh(params["sigma_theta"]))
    r_den = den_from_reflection(REFLECTION_SCALE * np.tanh(params["r_theta"]))
    return (params["sigma_num"], sigma_den, GAIN * params["r_num"], r_den, GAIN * params["c"])


def _core(cfg, params, u, return_intermediates=False, path=None):
    if cfg.model == "residual":
        return residual_ssm_tf(*residual_core_arrays(params), u, path=path or cfg.path,
                               gate=cfg.gate, return_intermediates=return_intermediates)
    return selective_ssm(u, A_from_log(params["A_log"]), params["W_delta"], params["W_B"],
                         params["W_C"], delta_bias=params["delta_bias"],
                         discretization=cfg.discretization, output=cfg.output,
                         return_intermediates=return_intermediates)


def final_output(cfg, params, tokens, path=None, backend="numpy"):
    """y(L) (batch, m): the core's output after the last token.

    ``backend`` other than "numpy" runs the core with rssm_ref.xp_models on that array
    module (evaluation only: training differentiates the NumPy cores with autograd);
    y(L) comes back as a host array.

    >>> cfg = ModelConfig("selective", "induction", m=4, n=2)
    >>> final_output(cfg, init_params(cfg), onp.array([[0, 8, 1, 8]])).shape
    (1, 4)
    """
    u = params["E"][tokens]
    if backend != "numpy":
        return _final_output_xp(cfg, params, u, path, backend)
    return _core(cfg, params, u, path=path)[:, -1, :]


def _final_output_xp(cfg, params, u, path, backend):
    from rssm_ref.backend import namespace, to_backend, to_host
    from rssm_ref.xp_models import residual_ssm_xp, selective_ssm_xp
    u = to_backend(u, namespace(backend))
    if cfg.model == "residual":
        keys = ("sigma_num", "sigma_den", "r_num", "r_den", "gate_bias")
        P = dict(zip(keys, residual_core_arrays(params)))
        y = residual_ssm_xp(P, u, path=path or cfg.path, gate=cfg.gate)["y"]
    else:
        P = {"A": A_from_log(params["A_log"]), "W_delta": params["W_delta"], "W_B": params["W_B"],
             "W_C": params["W_C"], "delta_bias": params["delta_bias"]}
        y = selective_ssm_xp(P, u, discretization=cfg.discretization, output=cfg.output)["y"]
    return to_host(y[:, -1, :])


def logits(cfg, params, tokens, path=None, backend="numpy"):
    """SCALE · cos(E_k, y(L)) over the N content tokens: (batch, N).

    >>> cfg = ModelConfig("residual", "induction")
    >>> bool(onp.all(onp.abs(logits(cfg, init_params(cfg), onp.array([[0, 8, 1, 8]]))) <= 10))
    True
    """
    y = final_output(cfg, params, tokens, path, backend)
    E = params["E"][: cfg.n_tokens]
    y_n = y / np.sqrt(np.sum(y * y, axis=1, keepdims=True) + 1e-12)
    E_n = E / np.sqrt(np.sum(E * E, axis=1, keepdims=True) + 1e-12)
    return SCALE * np.dot(y_n, E_n.T)


def loss(cfg, params, tokens, targets):
    """Cross-entropy on the final position (stable log-softmax), mean over the batch.

    >>> cfg = ModelConfig("residual", "induction")
    >>> round(float(loss(cfg, init_params(cfg), onp.array([[0, 8, 1, 8]]), onp.array([1]))), 3) > 0
    True
    """
    z = logits(cfg, params, tokens)
    logp = z - _logsumexp(z)
    return -np.mean(logp[onp.arange(len(targets)), targets])


def _logsumexp(z):
    zmax = np.max(z, axis=1, keepdims=True)
    return zmax + np.log(np.sum(np.exp(z - zmax), axis=1, keepdims=True))


def accuracy(cfg, params, tokens, targets, chunk=None, path=None, backend="numpy"):
    """Fraction of rows whose argmax logit is the target; evaluated in chunks of rows so
    long sequences fit in memory (the selective state is (batch, L, m, n)).

    >>> cfg = ModelConfig("residual", "induction")
    >>> 0.0 <= accuracy(cfg, init_params(cfg), onp.array([[0, 8, 1, 8]]), onp.array([1])) <= 1.0
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
    """{"core", "embedding", "total", "paper"} learnable parameter counts.

    Residual core by eq. (9) generalized (``residual_ssm.param_count``); selective core
    ``selective_ssm.param_count``. The paper reports about 50 (Residual, m = 2) and about
    700 (Selective, n = 8, m = 16).

    >>> param_count(ModelConfig("residual", "induction"))
    {'core': 43, 'embedding': 18, 'total': 61, 'paper': 50}
    """
    if cfg.model == "residual":
        core = residual_core_count(cfg.m, cfg.nu, cfg.nu_r, "tf")
    else:
        core = selective_core_count(cfg.m, cfg.n, delta_bias=True, D=False)
    emb = cfg.vocab * cfg.m
    return {"core": core, "embedding": emb, "total": core + emb, "paper": PAPER_PARAM_COUNTS[cfg.model]}
