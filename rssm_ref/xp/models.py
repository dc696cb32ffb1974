"""The three oracle models on any backend (NumPy, CuPy, array_api_strict): outputs,
intermediates and gradients, with the batch x L work on the chosen array module.

How a gradient is computed here (autograd holds NumPy arrays, so it cannot trace CuPy):

1. host, autograd: the parameters θ are mapped to the LTI blocks the sequence kernels
   need -- Markov kernels h (``convolution.tf_kernel``, ``lti.markov_parameters``) for
   ``path="fft"``, state-space matrices for ``path="recurrent"`` (a transfer matrix via
   ``lti.observable_realization``) -- under ``autograd.make_vjp``;
2. device, by hand: the forward pass over (batch, L) runs in ``rssm_ref.xp.core``, and
   the reverse pass runs the hand-written VJPs of the same kernels (the adjoint
   recursions of the NumPy cores' custom primitives);
3. the cotangents of the blocks (small: L p m numbers for a kernel, n^2 for a matrix)
   come back to the host and step 1's VJP carries them to θ.

The selective SSM's parameters act at every time step, so its whole reverse pass
(eqs. (2)-(4) backwards) runs on the device by hand; only the final parameter cotangents
come back. Gradients are those of sum(y * dy), as in ``rssm_ref.oracle.forward``.

Glossary (shapes)
-----------------
params                dict of host float64 arrays, keys as in docs/formats.md
u, dy (batch, L, m|p) device arrays of one backend (``rssm_ref.xp.backend.to_backend``)
returns               dict: "y" and the intermediates as device arrays; with dy also
                      "grad_u" (device) and "grad_<key>" (host NumPy, params' shapes)

>>> import numpy
>>> from rssm_ref.xp.backend import namespace, to_host
>>> P = {"num": numpy.array([[[0.0, 1.0]]]), "den": numpy.array([[1.0, -0.5]])}
>>> out = lti_xp(P, numpy.ones((1, 4, 1)), path="recurrent", dy=numpy.ones((1, 4, 1)))
>>> to_host(out["y"])[0, :, 0].tolist(), [round(float(v), 12) for v in out["grad_num"].ravel()]
([0.0, 1.0, 1.5, 1.75], [6.125, 4.25])
"""
import numpy as onp
from autograd import make_vjp
from autograd.builtins import tuple as traced_tuple

from rssm_ref.convolution import tf_kernel
from rssm_ref.lti import markov_parameters, observable_realization
from rssm_ref.validation import (check_array, check_residual_ss, check_residual_tf,
                                 check_spectral_radius, check_state_space, check_tf)
from rssm_ref.xp import core as K
from rssm_ref.xp.backend import namespace_of, to_backend, to_host

__all__ = ["lti_xp", "residual_ssm_xp", "selective_ssm_xp",
           "compute_xp", "phi1_prime"]

MODELS = ("lti", "residual", "selective")


# ------------------------------------------------------------------ host side (autograd)
def _block_maker(form, path, L):
    """θ (num, den) or (A, B, C, D) -> the block's arrays: (h,) for "fft", (A, B, C, D)
    for "recurrent". Runs on the host under autograd."""
    if path == "fft":
        if form == "tf":
            return lambda num, den: (tf_kernel(num, den, L),)
        return lambda A, B, C, D: (markov_parameters(A, B, C, D, L),)
    if form == "tf":
        return observable_realization
    return lambda A, B, C, D: (A, B, C, D)


# ------------------------------------------------------------------ one LTI block on device
def _block_forward(path, blk, u):
    if path == "fft":
        return K.causal_conv(blk[0], u), None
    return K.ss_forward(*blk, u)


def _block_vjp(path, blk, u, saved, g):
    """-> (cotangents of the block's arrays, du)."""
    if path == "fft":
        dh, du = K.causal_conv_vjp(blk[0], u, g)
        return (dh,), du
    d = K.ss_vjp(*blk, u, saved, g)
    return (d["A"], d["B"], d["C"], d["D"]), d["u"]


class _Blocks:
    """Host θ -> device blocks, with the host VJP kept for step 3 of the module doc."""

    def __init__(self, form, path, L, theta, xp, grads):
        self.path = path
        maker = _block_maker(form, path, L)
        if grads:
            # autograd's own tuple, so that a tuple of traced arrays is itself traced
            self._vjp, host = make_vjp(lambda th: traced_tuple(maker(*th)))(tuple(theta))
        else:
            host = maker(*theta)
        self.dev = tuple(to_backend(onp.asarray(h), xp) for h in host)

    def forward(self, u):
        self.u = u
        y, self.saved = _block_forward(self.path, self.dev, u)
        return y

    def backward(self, g):
        d_dev, du = _block_vjp(self.path, self.dev, self.u, self.saved, g)
        return self._vjp(tuple(to_host(d) for d in d_dev)), du


def _check_u(u, width, name="u"):
    xp = namespace_of(u)
    if u.ndim != 3 or u.shape[2] != width or u.shape[0] < 1 or u.shape[1] < 1:
        raise ValueError(f"{name}: expected shape (batch >= 1, L >= 1, {width}), got {tuple(u.shape)}")
    if u.dtype != xp.float64:
        raise TypeError(f"{name}: expected float64, got {u.dtype}")
    if not bool(xp.all(xp.isfinite(u))):
        raise ValueError(f"{name}: contains NaN or inf")
    return xp


def _check_lti_params(form, path, theta):
    """Host checks of an LTI block's parameters, with the NumPy cores' messages: shapes,
    den[:, 0] != 0, and (FFT path) stability -- a convolution kernel must decay."""
    if form == "ss":
        A, B, C, D = check_state_space(*theta)
        if path == "fft" and A.shape[0]:
            check_spectral_radius("A", A, fix="for path 'fft': the kernel of an unstable "
                                  "system never decays; use path 'recurrent'")
        return [A, B, C, D]
    if path == "fft":
        return list(check_tf(*theta, proper=True, stable=True))   # shapes and stability, as tf_fft_filter
    num = check_array("num", theta[0], ndim=3)
    p, m, k = num.shape
    den = check_array("den", theta[1], shape=(p, k))
    if min(p, m, k) < 1:
        raise ValueError(f"num: shape {num.shape} (expected (p, m, k) with p, m, k >= 1)")
    if onp.any(den[:, 0] == 0.0):
        raise ValueError("den: zero leading coefficient den[:, 0] (expected den[:, 0] != 0)")
    return [num, den]


def _grads_out(out, keys, shapes, grads):
    for key, g in zip(keys, grads):
        out[f"grad_{key}"] = onp.reshape(onp.asarray(g, dtype=onp.float64), shapes[key])
    return out


# ------------------------------------------------------------------ LTI, Remark 3.2
def lti_xp(params, u, path="recurrent", dy=None):
    """y = Σ u for Σ given as (num, den) or (A, B, C, D), on u's backend.

    Shapes: num (p, m, k), den (p, k) | A (n, n), B (n, m), C (p, n), D (p, m);
    u (batch, L, m), dy (batch, L, p) or None -> {"y"} (+ "grad_u", "grad_<key>").
    ``path="recurrent"`` runs the state recursion (eq. (2), LTI), ``"fft"`` the causal
    convolution with the exact kernel (Remark 3.2).

    >>> import numpy
    >>> P = {k: numpy.array([[v]]) for k, v in zip("ABCD", (0.5, 1.0, 1.0, 0.0))}
    >>> [round(float(v), 12) for v in lti_xp(P, numpy.ones((1, 3, 1)), path="fft")["y"][0, :, 0]]
    [0.0, 1.0, 1.5]
    """
    form = "tf" if "num" in params else "ss"
    keys = ("num", "den") if form == "tf" else ("A", "B", "C", "D")
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(f"params: missing key {missing[0]!r} (expected {', '.join(keys)})")
    theta = _check_lti_params(form, path, [params[k] for k in keys])
    m = theta[0 if form == "tf" else 1].shape[1]
    xp = _check_u(u, m)
    blocks = _Blocks(form, path, u.shape[1], theta, xp, dy is not None)
    y = blocks.forward(u)
    out = {"y": y}
    if dy is None:
        return out
    g_theta, du = blocks.backward(dy)
    out["grad_u"] = du
    return _grads_out(out, keys, {k: onp.shape(params[k]) for k in keys}, g_theta)


# ------------------------------------------------------------------ Residual SSM, Fig. 3
_SIGMA_TF, _R_TF = ("sigma_num", "sigma_den"), ("r_num", "r_den")
_SIGMA_SS = ("sigma_A", "sigma_B", "sigma_C", "sigma_D")
_R_SS = ("r_A", "r_B", "r_C", "r_D")


def _sigmoid_and_slope(x, xp):
    """σ(x) = (1 + tanh(x/2)) / 2 (as ``residual_ssm.sigmoid``) and σ'(x) = (1 - tanh^2) / 4."""
    t = xp.tanh(0.5 * x)
    return 0.5 * (t + 1.0), 0.25 * (1.0 - t * t)


def residual_ssm_xp(params, u, path="fft", gate="euler", dy=None, allow_unstable=False):
    """Residual SSM (Fig. 3, eq. (5)) on u's backend; the same model as
    ``residual_ssm.residual_ssm_tf`` / ``residual_ssm_ss`` (either form, either path).

        y_s = Σ(u),  r = Σ_r(y_s - u),  s = σ(r + gate_bias),  y(t+1) = a(t) y(t) + b(t) y_s(t)

    Shapes: u (batch, L, m) -> {"y", "y_s" (batch, L, m), "r", "s" (batch, L)}; with dy
    (batch, L, m) also "grad_u" and "grad_<key>" for every params key. Poles on or
    outside |z| = 1 are refused unless ``allow_unstable`` (recurrent path only), as in
    the NumPy model.

    >>> from rssm_ref.residual_ssm import ResidualSSM
    >>> import numpy
    >>> M = ResidualSSM.random(seed=0)
    >>> P = dict(zip(("sigma_num", "sigma_den", "r_num", "r_den", "gate_bias"), M.tf_arrays()))
    >>> u = numpy.random.default_rng(0).normal(size=(2, 8, 2))
    >>> bool(numpy.allclose(residual_ssm_xp(P, u)["y"], M.forward(u), rtol=0, atol=1e-12))
    True
    """

    form = "tf" if "sigma_num" in params else "ss"
    s_keys, r_keys = (_SIGMA_TF, _R_TF) if form == "tf" else (_SIGMA_SS, _R_SS)
    missing = [k for k in s_keys + r_keys if k not in params]
    if missing:
        raise ValueError(f"params: missing key {missing[0]!r} (expected {', '.join(s_keys + r_keys)})")
    # the NumPy model's checks: shapes (Σ is m x m, Σ_r 1 x m) and stability
    if form == "tf":
        checked = check_residual_tf(*[params[k] for k in s_keys + r_keys], allow_unstable)[:4]
    else:
        checked = check_residual_ss([params[k] for k in s_keys + r_keys], allow_unstable)[0]
    theta_s, theta_r = list(checked[:len(s_keys)]), list(checked[len(s_keys):])
    m = theta_s[0 if form == "tf" else 1].shape[1]
    xp = _check_u(u, m)
    grads = dy is not None
    L = u.shape[1]
    bias = float(onp.reshape(onp.asarray(params.get("gate_bias", 0.0), dtype=float), ()))
    sigma = _Blocks(form, path, L, theta_s, xp, grads)
    sigma_r = _Blocks(form, path, L, theta_r, xp, grads)
    # Σ : y_s = Σ(u);   Σ_r : r = Σ_r(y_s - u)
    y_s = sigma.forward(u)
    r = sigma_r.forward(y_s - u)[:, :, 0]
    # s(t) = σ(r(t) + c);  Σ_g, eq. (5) or Remark 3.1
    s, slope = _sigmoid_and_slope(r + bias, xp)
    y = K.gate_forward(y_s, s, gate)
    out = {"y": y, "y_s": y_s, "r": r, "s": s}
    if not grads:
        return out
    _check_u(dy, m, "dy")
    dy_s, ds = K.gate_vjp(y_s, s, y, dy, gate)
    dr = ds * slope
    g_r, de = sigma_r.backward(dr[:, :, None])
    g_s, du_s = sigma.backward(dy_s + de)
    out["grad_u"] = du_s - de
    keys = s_keys + r_keys
    out = _grads_out(out, keys, {k: onp.shape(params[k]) for k in keys}, tuple(g_s) + tuple(g_r))
    if "gate_bias" in params:
        out["grad_gate_bias"] = onp.reshape(float(to_host(xp.sum(dr))), onp.shape(params["gate_bias"]))
    return out


# ------------------------------------------------------------------ Selective SSM, eqs. (2)-(4)
_SERIES_TERMS = 25


def phi1_prime(x):
    """φ1'(x) = d/dx (e^x - 1)/x = ∫_0^1 t e^{xt} dt for x <= 0 (Δ A < 0 in eq. (3b)),
    backend-neutral: the series sum_j x^j / (j! (j + 2)) for |x| < 1 (no cancellation),
    (e^x - φ1(x)) / x below, as ``discretize._phi_deriv_np(x, 1)``.

    >>> import numpy
    >>> [round(float(v), 12) for v in phi1_prime(numpy.array([0.0, -2.0]))]
    [0.5, 0.148498537573]
    """
    xp = namespace_of(x)
    small = xp.abs(x) < 1.0
    xs = xp.where(small, x, xp.zeros_like(x))
    coefs, fact = [], 1.0
    for j in range(_SERIES_TERMS):
        coefs.append(1.0 / (fact * (j + 2)))
        fact *= j + 1
    acc = xp.zeros_like(x)
    for c in reversed(coefs):  # Horner, highest power first
        acc = acc * xs + c
    xl = xp.where(small, -xp.ones_like(x), x)   # keeps the unused branch finite
    big = (xp.exp(xl) - xp.expm1(xl) / xl) / xl
    return xp.where(small, acc, big)


def selective_ssm_xp(params, u, discretization="zoh", output="before", dy=None):
    """Selective SSM, eqs. (2)-(4), on u's backend; the same model and conventions as
    ``selective_ssm.selective_ssm`` (ZOH or Euler B; output before or after the update).

    Shapes: params A (m, n), W_delta (m, m), W_B, W_C (n, m), delta_bias (m,), D (m,)
    (the last two optional); u (batch, L, m) -> {"y", "delta" (batch, L, m),
    "h" (batch, L, m, n)}; with dy also "grad_u" and "grad_<key>".

    >>> from rssm_ref.selective_ssm import random_params, selective_ssm
    >>> import numpy
    >>> P = random_params(m=3, n=2, seed=0)
    >>> u = numpy.random.default_rng(0).normal(size=(2, 6, 3))
    >>> bool(numpy.allclose(selective_ssm_xp(P, u)["y"], selective_ssm(u, **P), rtol=0, atol=1e-12))
    True
    """
    if discretization not in ("zoh", "euler") or output not in ("before", "after"):
        raise ValueError(f"discretization, output: expected 'zoh'|'euler' and 'before'|'after', "
                         f"got {discretization!r}, {output!r}")
    A_host = onp.asarray(params["A"], dtype=onp.float64)
    m, n = A_host.shape
    xp = _check_u(u, m)
    P = {k: to_backend(v, xp) for k, v in params.items() if v is not None}
    A, W_B, W_C = P["A"], P["W_B"], P["W_C"]
    T = xp.matrix_transpose
    # (4a) Δ_t^i = softplus(W_Δ^i u(t) + b_Δ^i)
    pre = xp.matmul(u, T(P["W_delta"]))
    if "delta_bias" in P:
        pre = pre + P["delta_bias"]
    delta = xp.logaddexp(pre, xp.zeros_like(pre))
    # (4b), (4c) B̄_t = W_B u(t), C̄_t = W_C u(t)
    B_bar = xp.matmul(u, T(W_B))
    C_bar = xp.matmul(u, T(W_C))
    # (3a) A_t = exp(Δ A);  (3b) B_t = q B̄_t, q = A^{-1}(exp(Δ A) - 1) (zoh) or Δ (euler)
    dA = delta[:, :, :, None] * A
    A_t = xp.exp(dA)
    q = xp.expm1(dA) / A if discretization == "zoh" else xp.broadcast_to(delta[:, :, :, None], dA.shape)
    B_t = q * B_bar[:, :, None, :]
    # (2) h^i(t+1) = A_t^i h^i(t) + B_t^i u_i(t)
    H = K.diag_scan(A_t, B_t * u[:, :, :, None])
    # y_i(t) = C̄_t h^i(t) ("before", eq. (2)) or C̄_t h^i(t+1) ("after", mamba_ssm)
    h_read = K.shift_time(H, 1) if output == "before" else H
    y = xp.sum(h_read * C_bar[:, :, None, :], axis=3)
    if "D" in P:
        y = y + P["D"] * u
    out = {"y": y, "delta": delta, "h": H}
    if dy is None:
        return out
    _check_u(dy, m, "dy")
    g = {}
    du = xp.zeros_like(u)
    if "D" in P:
        g["D"] = xp.sum(dy * u, axis=(0, 1))
        du = du + dy * P["D"]
    # y = sum_n h_read C̄
    dC_bar = xp.sum(dy[:, :, :, None] * h_read, axis=2)
    dh_read = dy[:, :, :, None] * C_bar[:, :, None, :]
    dH = K.advance(dh_read) if output == "before" else dh_read
    # the scan's adjoint (the same recursion as selective_ssm.linear_scan's VJP)
    da, dx = K.diag_scan_vjp(A_t, H, dH)
    du = du + xp.sum(dx * B_t, axis=3)
    dB_t = dx * u[:, :, :, None]
    dB_bar = xp.sum(dB_t * q, axis=2)
    dq = dB_t * B_bar[:, :, None, :]
    # A_t = exp(Δ A)
    dAt = da * A_t
    d_delta = xp.sum(dAt * A, axis=3)
    gA = xp.sum(dAt * delta[:, :, :, None], axis=(0, 1))
    if discretization == "zoh":
        # q = (e^{ΔA} - 1)/A:  ∂q/∂Δ = e^{ΔA},  ∂q/∂A = Δ^2 φ1'(ΔA)
        d_delta = d_delta + xp.sum(dq * A_t, axis=3)
        gA = gA + xp.sum(dq * delta[:, :, :, None] ** 2 * phi1_prime(dA), axis=(0, 1))
    else:
        d_delta = d_delta + xp.sum(dq, axis=3)
    g["A"] = gA
    # softplus' = σ
    d_pre = d_delta * (0.5 * (xp.tanh(0.5 * pre) + 1.0))
    g["W_delta"] = K.outer_sum(d_pre, u)
    if "delta_bias" in P:
        g["delta_bias"] = xp.sum(d_pre, axis=(0, 1))
    g["W_B"] = K.outer_sum(dB_bar, u)
    g["W_C"] = K.outer_sum(dC_bar, u)
    du = du + xp.matmul(d_pre, P["W_delta"]) + xp.matmul(dB_bar, W_B) + xp.matmul(dC_bar, W_C)
    out["grad_u"] = du
    keys = sorted(g)
    return _grads_out(out, keys, {k: onp.shape(params[k]) for k in keys},
                      [to_host(g[k]) for k in keys])


# ------------------------------------------------------------------ the oracle's entry
def compute_xp(model, params, u, opts, dy=None):
    """Dispatch for ``rssm_ref.oracle.forward`` with ``backend != "numpy"``.

    ``opts`` holds the resolved options (path, gate, discretization, output).

    >>> import numpy
    >>> P = {"num": numpy.array([[[1.0, 0.0]]]), "den": numpy.array([[1.0, -0.5]])}
    >>> compute_xp("lti", P, numpy.ones((1, 2, 1)), {"path": "fft"})["y"].shape
    (1, 2, 1)
    """
    if model == "lti":
        return lti_xp(params, u, path=opts["path"], dy=dy)
    if model == "residual":
        return residual_ssm_xp(params, u, path=opts["path"], gate=opts["gate"], dy=dy,
                               allow_unstable=bool(opts.get("allow_unstable", False)))
    if model == "selective":
        out = selective_ssm_xp(params, u, discretization=opts["discretization"],
                               output=opts["output"], dy=dy)
        out["last_state"] = out["h"][:, -1, ...]      # (batch, m, n), mamba_ssm's last_state
        return out
    raise ValueError(f"model: {model!r} (expected one of {', '.join(MODELS)})")
