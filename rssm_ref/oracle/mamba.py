"""A Mamba layer's own parameters, mapped onto the selective core (``--model mamba``).

A Mamba layer (mamba_ssm's ``Mamba``, mambapy's ``MambaBlock``) stores its selective
scan under these ``state_dict`` names; with u the input of ``x_proj`` (after conv1d and
SiLU) they give the selective SSM of eqs. (2)-(4):

    x_dbl  = u x_proj.weightᵀ                      (batch, L, dt_rank + 2 n)
    dt, B̄, C̄ = x_dbl[..., :r], x_dbl[..., r:r+n], x_dbl[..., r+n:]      r = dt_rank
    Δ      = softplus(dt dt_proj.weightᵀ + dt_proj.bias)                (4a)
    A      = -exp(A_log)                                                 (3a)
    y      = scan(Δ, A, B̄, C̄, u) + D u          Euler B, output after the update

so in the selective model's terms W_Δ = dt_proj.weight · x_proj.weight[:r] (rank r),
delta_bias = dt_proj.bias, W_B = x_proj.weight[r:r+n], W_C = x_proj.weight[r+n:]. The
oracle computes exactly that mapping with autograd (``to_selective``), runs the
selective core, and pulls its gradients back through the mapping, so ``grad_A_log``,
``grad_x_proj.weight``, ``grad_dt_proj.weight``, ``grad_dt_proj.bias`` and ``grad_D``
come out under the layer's own names (no hand-derived chain rule: grad_A_log =
grad_A ⊙ A, the low-rank chain through dt_proj and x_proj, are autograd's).

Glossary (shapes; m = d_inner, n = d_state in mamba_ssm's names)
-----------------------------------------------------------------
A_log (m, n)                x_proj.weight (dt_rank + 2 n, m)
dt_proj.weight (m, dt_rank) dt_proj.bias (m,) optional;  D (m,) optional
u (batch, L, m)             or (batch, m, L) with layout "channel-first" (mamba_ssm)
to_selective(P) -> {A, W_delta, W_B, W_C[, delta_bias][, D]}   (autograd-friendly)
with_pullback(P) -> (S, pull)   S = to_selective(P); pull maps S's gradients to P's keys
scan_args(P, u) -> selective_scan_ref's arguments (u, delta, A, B, C, D, delta_bias)
random_params(m, n, dt_rank=None, seed=0) -> a Mamba-initialised parameter set

>>> P = random_params(m=4, n=3, seed=0)
>>> sorted(P)
['A_log', 'D', 'dt_proj.bias', 'dt_proj.weight', 'x_proj.weight']
>>> S = to_selective(P)
>>> S["W_delta"].shape, S["W_B"].shape, bool((S["A"] < 0).all())
((4, 4), (3, 4), True)
"""
import math

import autograd.numpy as np
import numpy as onp
from autograd import make_vjp

KEYS = ("A_log", "x_proj.weight", "dt_proj.weight")
OPTIONAL = ("dt_proj.bias", "D")


def dims(P):
    """(m, n, dt_rank) of a Mamba parameter set: d_inner, d_state, dt_rank.

    >>> dims(random_params(m=8, n=2, dt_rank=3))
    (8, 2, 3)
    """
    m, n = onp.shape(P["A_log"])
    return m, n, onp.shape(P["dt_proj.weight"])[1]


def to_selective(P):
    """Mamba names -> the selective model's params (eqs. (3a), (4a)-c); autograd-friendly.

    A = -exp(A_log), W_delta = dt_proj.weight @ x_proj.weight[:dt_rank] (m, m),
    W_B = x_proj.weight[dt_rank:dt_rank+n], W_C = x_proj.weight[dt_rank+n:] (n, m),
    delta_bias = dt_proj.bias, D = D.

    >>> P = random_params(m=2, n=1, dt_rank=1, seed=1)
    >>> S = to_selective(P)
    >>> bool(onp.allclose(S["W_delta"], onp.outer(P["dt_proj.weight"][:, 0], P["x_proj.weight"][0])))
    True
    """
    Wx = P["x_proj.weight"]
    _, n, r = dims(P)
    S = {"A": -np.exp(P["A_log"]),
         "W_delta": np.dot(P["dt_proj.weight"], Wx[:r]),
         "W_B": Wx[r:r + n],
         "W_C": Wx[r + n:]}
    if "dt_proj.bias" in P:
        S["delta_bias"] = P["dt_proj.bias"]
    if "D" in P:
        S["D"] = P["D"]
    return S


def with_pullback(params):
    """The selective parameters of a Mamba parameter set and the pull-back of their
    gradients: ``S, pull = with_pullback(P)``; ``pull(G)`` maps gradients ``G[k]`` of the
    selective keys ``k`` of S to the gradients of P's own keys, by autograd's VJP of
    :func:`to_selective` (no hand-derived chain rule). ``embedding`` is left out of both.

    >>> P = random_params(m=2, n=1, dt_rank=1, seed=1)
    >>> S, pull = with_pullback(P)
    >>> G = pull({k: onp.ones_like(v) for k, v in S.items()})
    >>> bool(onp.allclose(G["A_log"], S["A"]))      # d/dA_log sum(-exp(A_log)) = A
    True
    """
    keys = sorted(k for k in params if k != "embedding")
    S = {k: onp.asarray(v, dtype=onp.float64) for k, v in to_selective(params).items()}
    names = sorted(S)

    def flat(args):
        # the mapping as one vector (autograd traces arrays, not dicts of arrays)
        T = to_selective(dict(zip(keys, args)))
        return np.concatenate([np.ravel(T[k]) for k in names])

    vjp, _ = make_vjp(flat)([params[k] for k in keys])

    def pull(G):
        grads = vjp(onp.concatenate([onp.ravel(G[k]) for k in names]))
        return {k: onp.asarray(g, dtype=onp.float64).reshape(onp.shape(params[k]))
                for k, g in zip(keys, grads)}
    return S, pull


def scan_args(P, u, layout="channel-last"):
    """The arguments of mamba_ssm's ``selective_scan_ref`` for these params and inputs.

    ``u`` (batch, L, m) (or (batch, m, L) with ``layout="channel-first"``). Returns float64
    NumPy arrays under selective_scan_ref's names: u (batch, m, L); delta (batch, m, L)
    the pre-activation *without* bias and softplus (dt_proj.weight · dt); A (m, n);
    B, C (batch, n, L); D (m,) or None; delta_bias (m,) or None. Call it as
    ``selective_scan_ref(u, delta, A, B, C, D, z=None, delta_bias=delta_bias,
    delta_softplus=True, return_last_state=True)`` (as float32 torch tensors).

    >>> P = random_params(m=4, n=3, dt_rank=2, seed=0)
    >>> a = scan_args(P, onp.ones((2, 5, 4)))
    >>> a["u"].shape, a["delta"].shape, a["B"].shape, a["A"].shape
    ((2, 4, 5), (2, 4, 5), (2, 3, 5), (4, 3))
    """
    u = onp.asarray(u, dtype=onp.float64)
    if layout == "channel-first":
        u = onp.moveaxis(u, -1, 1)
    _, n, r = dims(P)
    x_dbl = u @ onp.asarray(P["x_proj.weight"]).T
    delta = x_dbl[..., :r] @ onp.asarray(P["dt_proj.weight"]).T
    tr = lambda x: onp.ascontiguousarray(onp.moveaxis(x, 1, -1))   # (b, L, k) -> (b, k, L)
    return {"u": tr(u), "delta": tr(delta), "A": -onp.exp(onp.asarray(P["A_log"])),
            "B": tr(x_dbl[..., r:r + n]), "C": tr(x_dbl[..., r + n:]),
            "D": P.get("D"), "delta_bias": P.get("dt_proj.bias")}


def random_params(m=8, n=4, dt_rank=None, seed=0, D=True, bias=True, dt_min=1e-3, dt_max=0.1):
    """A Mamba layer's SSM parameters, initialised as mamba_ssm and mambapy do, seeded.

    A_log = log(1..n) per channel (S4D-real); x_proj.weight ~ U(±1/√m) (nn.Linear);
    dt_proj.weight ~ U(±1/√dt_rank); dt_proj.bias = softplus⁻¹(dt), dt log-uniform in
    [dt_min, dt_max]; D = 1. dt_rank defaults to ceil(m / 16), as ``dt_rank="auto"``
    (from d_model = m / 2 with expand 2, rounded up: at least 1).

    >>> P = random_params(m=4, n=2, seed=0)
    >>> P["x_proj.weight"].shape, P["dt_proj.weight"].shape
    ((5, 4), (4, 1))
    """
    r = dt_rank or max(1, math.ceil(m / 16))
    rng = onp.random.default_rng(seed)
    P = {"A_log": onp.log(onp.tile(onp.arange(1, n + 1, dtype=float), (m, 1))),
         "x_proj.weight": rng.uniform(-1, 1, size=(r + 2 * n, m)) / math.sqrt(m),
         "dt_proj.weight": rng.uniform(-1, 1, size=(m, r)) / math.sqrt(r)}
    if bias:
        dt = onp.exp(rng.uniform(math.log(dt_min), math.log(dt_max), size=m))
        P["dt_proj.bias"] = dt + onp.log(-onp.expm1(-dt))      # softplus⁻¹(dt)
    if D:
        P["D"] = onp.ones(m)
    return P
