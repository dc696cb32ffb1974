"""The Residual SSM's whole training loss as one autograd primitive (Section 3.1, Fig. 3):
embedding → Σ, Σ_r, σ, the gate eq. (5) down to y(L) → readout → cross-entropy (+ the
optional gate penalty), with one hand-written VJP.

The loss the composed route (``rssm_ref.training.head.loss``: embed, den_from_theta twice,
the core's fused kernel, cosine_logits, cross_entropy, each its own primitive, composed by
autograd) computes, by the same NumPy operations in the same order — so the same bits —
without autograd's bookkeeping between them: at the training size (batch 256, L 16,
~10^5 flops) that bookkeeping is most of the step. ``value_and_grad`` still works (the
primitive is registered with autograd), and autograd through ``head.loss_ref`` (the
reference cores) remains the oracle for its gradient (tests/test_fused_loss.py).

Glossary (shapes; as ``rssm_ref.training.head``)
-----------------------------------------------
E (V, m)  sigma_num (m, m, ν+1)  sigma_theta (m, ν)  r_num (1, m, ν_r+1)  r_theta (1, ν_r)
c ()      gate bias (absent: 0);  W_out (N, m), b_out (N,)  the linear readout (else cosine)
tokens (batch, L) int, targets (batch,) int;  spec = LossSpec (the ModelConfig's constants)
"""
from typing import NamedTuple

import numpy as onp
from autograd.extend import defvjp_argnums, primitive

from rssm_ref.kernels.readout import (cosine_np, cosine_vjp_np, cross_entropy_np,
                                      cross_entropy_vjp_np, embed_np, embed_vjp_np)
from rssm_ref.kernels.residual import final_kernel_backward, final_kernel_forward, gate_stat
from rssm_ref.realization import den_from_theta_np, den_from_theta_vjp_np
from rssm_ref.util.kept import park, take

__all__ = ["LossSpec", "residual_loss", "residual_loss_kernel", "residual_loss_flat",
           "ARGS"]

# the primitive's array arguments, by position
ARGS = ("E", "sigma_num", "sigma_theta", "r_num", "r_theta", "c", "W_out", "b_out")


class LossSpec(NamedTuple):
    """The constants of the loss (hashable, so the primitive can take it as an argument):
    gate gain g, reflection bound b, gate ("euler" | "zoh"), readout ("cosine" |
    "linear"), N answer rows of E, the cosine scale, the gate penalty λ and its statistic
    (kernels.residual.gate_stat: "mean" or "relative")."""
    gain: float
    bound: float
    gate: str
    readout: str
    n_rows: int
    scale: float
    penalty: float
    penalty_mode: str = "mean"


def _forward(E, sigma_num, sigma_theta, r_num, r_theta, c, W_out, b_out, tokens, targets, spec):
    """The loss and what the VJP reuses, in head.loss's order of operations."""
    u = embed_np(E, tokens)                                            # u = E[tokens]
    sigma_den, sigma_steps = den_from_theta_np(sigma_theta, spec.bound, True)   # stable dens
    r_den, r_steps = den_from_theta_np(r_theta, spec.bound, True)
    # s = σ(g (r + c)) = σ(r' + c') with r' = g r, c' = g c (head.residual_core_arrays)
    rn = r_num if spec.gain == 1.0 else spec.gain * r_num
    c0 = 0.0 if c is None else c
    cc = c0 if spec.gain == 1.0 else spec.gain * c0
    core_args = (sigma_num, sigma_den, rn, r_den, cc, u, spec.gate)
    y_L, core = final_kernel_forward(*core_args)                       # Fig. 3 down to y(L)
    rows = None
    if spec.readout == "linear":
        z = onp.dot(y_L, W_out.T) + b_out
    else:
        z, rows = cosine_np(y_L, E, spec.scale, spec.n_rows, with_rows=True)
    loss = cross_entropy_np(z, targets)
    if spec.penalty != 0.0:
        s_bar = gate_stat(core[5], spec.penalty_mode)                  # e.g. mean_t s(t)
        loss = loss + spec.penalty * onp.mean(s_bar)
    return loss, (u, sigma_den, r_den, core_args, core, y_L, z, sigma_steps, r_steps, rows)


@primitive
def residual_loss_kernel(E, sigma_num, sigma_theta, r_num, r_theta, c, W_out, b_out, tokens,
                         targets, spec, keep):
    """The scalar loss (see the module docstring); ``keep``: traced, so park the forward's
    intermediates for the VJP (rssm_ref.util.kept)."""
    loss, cache = _forward(E, sigma_num, sigma_theta, r_num, r_theta, c, W_out, b_out, tokens,
                           targets, spec)
    if keep:
        park(loss, cache)
    return loss


def _backward(args, cache, g):
    """Cotangents of E, sigma_num, sigma_theta, r_num, r_theta, c, W_out, b_out (by position)
    for the loss's cotangent g: the blocks' own VJPs, Fig. 3 read backwards."""
    E, sigma_num, sigma_theta, r_num, r_theta, c, W_out, b_out, tokens, targets, spec = args[:11]
    u, sigma_den, r_den, core_args, core, y_L, z, sigma_steps, r_steps, rows = cache
    dz = cross_entropy_vjp_np(z, targets, g)
    out = {}
    if spec.readout == "linear":
        dy = onp.dot(dz, W_out)
        out[6], out[7] = onp.dot(dz.T, y_L), onp.sum(dz, axis=0)
        dE_readout = None
    else:
        dy, dE_readout, _ = cosine_vjp_np(y_L, E, spec.scale, spec.n_rows, dz, rows)
    g_mean = None
    if spec.penalty != 0.0:
        # d(λ mean(s̄))/d s̄ = λ / batch, as autograd's mean gives it
        g_mean = onp.full(y_L.shape[0], (g * spec.penalty) / y_L.shape[0])
    d = final_kernel_backward(core_args, core, y_L, dy, g_mean, spec.penalty_mode)
    out[1] = d[0]
    out[2] = den_from_theta_vjp_np(sigma_theta, spec.bound, d[1], sigma_steps)
    out[3] = d[2] if spec.gain == 1.0 else d[2] * spec.gain
    out[4] = den_from_theta_vjp_np(r_theta, spec.bound, d[3], r_steps)
    out[5] = d[4] if spec.gain == 1.0 else d[4] * spec.gain
    dE = embed_vjp_np(onp.shape(E), tokens, d[5])
    out[0] = dE if dE_readout is None else dE + dE_readout
    return out


def _vjp(argnums, ans, args, kwargs):
    cache = take(ans)

    def vjp(g):
        grads = _backward(args, cache or _forward(*args[:11])[1], g)
        return tuple(grads[k] for k in argnums)
    return vjp


defvjp_argnums(residual_loss_kernel, _vjp)


def residual_loss(params, tokens, targets, spec, traced=True):
    """The loss of ``params`` (head.init_params' residual keys) on a batch: the primitive
    on the params' arrays. ``traced``: called under autograd (park the intermediates).

    >>> from rssm_ref.training.head import ModelConfig, init_params, loss, loss_spec
    >>> cfg = ModelConfig("residual", "induction")
    >>> p, tok, tgt = init_params(cfg), onp.array([[0, 7, 1, 7]]), onp.array([1])
    >>> bool(residual_loss(p, tok, tgt, loss_spec(cfg), False) == loss(cfg, p, tok, tgt))
    True
    """
    return residual_loss_kernel(params["E"], params["sigma_num"], params["sigma_theta"],
                                params["r_num"], params["r_theta"], params.get("c"),
                                params.get("W_out"), params.get("b_out"), onp.asarray(tokens),
                                onp.asarray(targets), spec, traced)


# ------------------------------------------------- the loss of the optimizer's flat vector
def _flat_args(theta, layout):
    """The primitive's array arguments read from the flat parameter vector: ``layout``
    = ((name, start, stop, shape), ...) as train.FlatAdam lays theta out."""
    params = {k: theta[a:b].reshape(shp) for k, a, b, shp in layout}
    return tuple(params.get(k) for k in ARGS)


@primitive
def residual_loss_flat(theta, layout, tokens, targets, spec, keep=True):
    """The loss of :func:`residual_loss_kernel` as a function of the optimizer's flat
    vector theta itself: the training step's whole value_and_grad is one primitive (no
    per-array slicing for autograd to trace and sum back). Its VJP is the kernel's,
    concatenated in theta's order."""
    loss, cache = _forward(*_flat_args(theta, layout), tokens, targets, spec)
    if keep:
        park(loss, cache)
    return loss


def _flat_vjp(argnums, ans, args, kwargs):
    theta, layout, tokens, targets, spec = args[:5]
    cache = take(ans)

    def vjp(g):
        kernel_args = _flat_args(theta, layout) + (tokens, targets, spec)
        grads = _backward(kernel_args, cache or _forward(*kernel_args)[1], g)
        flat = onp.concatenate([onp.ravel(grads[ARGS.index(k)]) for k, _, _, _ in layout])
        return tuple(flat if i == 0 else None for i in argnums)
    return vjp


defvjp_argnums(residual_loss_flat, _flat_vjp)
