"""The Residual SSM's training kernel: the last output y(L) of Fig. 3 (Σ, Σ_r, σ, Σ_g)
as one autograd primitive whose VJP chains the blocks' own VJPs by hand, and the
untraced recurrent form used for evaluation. ``rssm_ref.residual_ssm.residual_ssm_final``
validates its inputs and calls these; its ``_ref`` twin is the oracle for both.

Glossary (shapes)
-----------------
sigma_num (m, m, k), sigma_den (m, k)    Σ;   r_num (1, m, k_r), r_den (1, k_r)   Σ_r
gate_bias c (scalar), u (batch, L, m), y_L (batch, m) = y(L)
s̄ (batch,) = mean_t s(t), the gate's mean opening of each row (``final_kernel_gate_mean``)
"""
import numpy as onp
import scipy.signal as ssig
from autograd.extend import defvjp_argnums, primitive

from rssm_ref.kernels.convolution import causal_conv_kernel, causal_conv_vjp
from rssm_ref.kernels.gate import (a_coefficient, b_coefficient, gate_final_backward,
                                   gate_final_forward, suffix_products)
from rssm_ref.kernels.nonlinear import sigmoid, sigmoid_, sigmoid_slope
from rssm_ref.kernels.recurrence import impulse_backward, impulse_forward
from rssm_ref.util.kept import park, take


# ------------------------------------------ the last output only (training path)
def final_kernel_forward(sigma_num, sigma_den, r_num, r_den, gate_bias, u, gate):
    L = u.shape[1]
    h_sigma, G_sigma = impulse_forward(sigma_num, sigma_den, L)        # Σ's Markov parameters
    y_s = causal_conv_kernel(h_sigma, u)                               # y_s = Σ(u)
    h_r, G_r = impulse_forward(r_num, r_den, L)
    e = y_s - u
    r = causal_conv_kernel(h_r, e)                                     # r = Σ_r(y_s − u)
    s = sigmoid(r[:, :, 0] + gate_bias, onp)                          # s = σ(r + c)
    y_L, gate_pieces = gate_final_forward(y_s, s, gate)                # eq. (5) down to y(L)
    # (the blocks' pieces last, for the VJP: the lagged impulses and eq. (5)'s products)
    return y_L, (h_sigma, y_s, h_r, e, r, s, G_sigma, G_r, gate_pieces)


@primitive
def final_kernel(sigma_num, sigma_den, r_num, r_den, gate_bias, u, gate, keep):
    y_L, cache = final_kernel_forward(sigma_num, sigma_den, r_num, r_den, gate_bias, u, gate)
    if keep:          # traced: hand the intermediates to the VJP (rssm_ref.util.kept)
        park(y_L, cache)
    return y_L


# ------------------------------------------- a statistic of the gate, per sequence
GATE_STATS = ("mean", "relative")


def gate_stat(s, mode):
    """A penalty's statistic of the gate s (batch, L), per row (batch,):
    "mean"      s̄ = mean_t s(t)
    "relative"  (Σ_t s(t) − max_t s(t)) / max_t s(t): the openings off the largest one,
                relative to it (a cosine readout sees y(L)'s direction only, so what
                leaks the stored answer is this ratio, not the openings' scale)."""
    if mode == "mean":
        return onp.mean(s, axis=1)
    M = onp.max(s, axis=1)
    return (onp.sum(s, axis=1) - M) / M


def gate_stat_vjp(s, mode, g):
    """d s (batch, L) of ``gate_stat`` for its cotangent g (batch,): 1/L each ("mean");
    1/M off the argmax and −(S − M)/M² at it ("relative", S the sum, M the max)."""
    if mode == "mean":
        return g[:, None] / s.shape[1]
    M, S = onp.max(s, axis=1), onp.sum(s, axis=1)
    at_max = onp.arange(s.shape[1])[None, :] == onp.argmax(s, axis=1)[:, None]
    return onp.where(at_max, (-g * (S - M) / (M * M))[:, None], (g / M)[:, None])


def final_kernel_backward(args, cache, y_L, g, g_mean=None, stat="mean"):
    """Cotangents of every differentiable argument (a dict by position 0..5) from the
    cotangent g (batch, m) of y(L) and, with ``g_mean`` (batch,), that of the gate's
    statistic ``gate_stat(s, stat)`` (s̄ = mean_t s(t) by default)."""
    sigma_num, sigma_den, r_num, r_den, gate_bias, u, gate = args[:7]
    L = u.shape[1]
    # the blocks' own VJPs, chained by hand in reverse order (Fig. 3 read backwards)
    h_sigma, y_s, h_r, e, r, s, G_sigma, G_r, gate_pieces = cache
    dg = gate_final_backward(y_s, s, gate, g, gate_pieces)
    d_ys, d_s = dg[0], dg[1]
    if g_mean is not None:
        d_s = d_s + gate_stat_vjp(s, stat, g_mean)      # "mean": ∂s̄/∂s(t) = 1/L
    d_x = d_s * sigmoid_slope(r[:, :, 0] + gate_bias)
    d_hr, d_e = causal_conv_vjp((0, 1), r, (h_r, e), {})(d_x[:, :, None])
    d_ys = d_ys + d_e
    d_hs, d_u = causal_conv_vjp((0, 1), y_s, (h_sigma, u), {})(d_ys)
    d_r = impulse_backward(r_num, r_den, L, h_r, d_hr, G_r)
    d_sig = impulse_backward(sigma_num, sigma_den, L, h_sigma, d_hs, G_sigma)
    d_rn, d_rd, d_sn, d_sd = d_r[0], d_r[1], d_sig[0], d_sig[1]
    return {0: d_sn, 1: d_sd, 2: d_rn, 3: d_rd, 4: float(onp.sum(d_x)), 5: d_u - d_e}


def final_kernel_vjp(argnums, ans, args, kwargs):
    cache = take(ans)

    def vjp(g):
        grads = final_kernel_backward(args, cache or final_kernel_forward(*args[:-1])[1], ans, g)
        return tuple(grads[k] for k in argnums)
    return vjp


defvjp_argnums(final_kernel, final_kernel_vjp)


# ------------------- the last output and the gate's mean opening (penalised training)
@primitive
def final_kernel_gate_mean(sigma_num, sigma_den, r_num, r_den, gate_bias, u, gate, keep,
                           stat="mean"):
    """[y(L), gate_stat(s, stat)] (batch, m + 1): :func:`final_kernel`'s y(L) and, as a
    last column, the gate's statistic of each row (default the mean opening s̄ = mean_t
    s(t)), from one forward pass (a training penalty on it then costs no second forward)."""
    y_L, cache = final_kernel_forward(sigma_num, sigma_den, r_num, r_den, gate_bias, u, gate)
    out = onp.concatenate([y_L, gate_stat(cache[5], stat)[:, None]], axis=1)
    if keep:
        park(out, cache)
    return out


def final_kernel_gate_mean_vjp(argnums, ans, args, kwargs):
    cache = take(ans)
    m = ans.shape[1] - 1

    def vjp(g):
        g = onp.asarray(g)
        stat = args[8] if len(args) > 8 else kwargs.get("stat", "mean")
        grads = final_kernel_backward(args, cache or final_kernel_forward(*args[:7])[1],
                                      ans[:, :m], onp.ascontiguousarray(g[:, :m]), g[:, m],
                                      stat)
        return tuple(grads[k] for k in argnums)
    return vjp


defvjp_argnums(final_kernel_gate_mean, final_kernel_gate_mean_vjp)


def final_recurrent(sigma_num, sigma_den, r_num, r_den, gate_bias, u, gate):
    """The recurrent path of :func:`residual_ssm_final` for evaluation (nothing traced):
    the same scipy lfilter calls as ``tf_filter``, on channel-major (batch, L) rows and in
    place, so that little but the p m + m filters themselves is left (checked equal to
    the traced route in tests)."""
    p, m, _ = sigma_num.shape
    # Σ : y_s,i = sum_j lfilter(b_ij, a_i, u_j)
    y_s = []
    for i in range(p):
        row = ssig.lfilter(sigma_num[i, 0], sigma_den[i], u[:, :, 0], axis=-1)
        for j in range(1, m):
            row += ssig.lfilter(sigma_num[i, j], sigma_den[i], u[:, :, j], axis=-1)
        y_s.append(row)
    # Σ_r : r = sum_j lfilter(b_r,j, a_r, y_s,j − u_j)
    r = None
    for j in range(m):
        term = ssig.lfilter(r_num[0, j], r_den[0], y_s[j] - u[:, :, j], axis=-1)
        r = term if r is None else r.__iadd__(term)
    r += gate_bias
    s = sigmoid_(r)                                                   # s = σ(r + c), in place
    b = b_coefficient(s, gate)
    w = b * suffix_products(a_coefficient(s, b, gate))
    return onp.stack([onp.einsum("bt,bt->b", w, y_s[i]) for i in range(p)], axis=1)
