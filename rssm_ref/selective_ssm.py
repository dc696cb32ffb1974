"""The Selective SSM core of Mamba as the paper writes it (Section 3.2.1, eqs. 2-4).

m SISO systems, one per embedding channel i, each with n states and time-varying
matrices produced from the current input u(t) (the selection mechanism):

    (4a)  Δ_t^i  = softplus(W_Δ^i u(t) + b_Δ^i)            scalar per channel
    (4b)  B̄_t    = W_B u(t)                                 (n,), shared by the channels
    (4c)  C̄_t    = W_C u(t)                                 (n,)
    (3a)  A_t^i  = exp(Δ_t^i Ā^i)                           Ā^i = diag(A[i]), A[i] < 0
    (3b)  B_t^i  = (Ā^i)^{-1}(exp(Δ_t^i Ā^i) − I) B̄_t       discretization="zoh" (the paper)
          B_t^i  = Δ_t^i B̄_t                                discretization="euler" (mamba_ssm)
    (2)   h^i(t+1) = A_t^i h^i(t) + B_t^i u_i(t),   h^i(0) = 0
          y_i(t)   = C̄_t · h^i(t)                           output="before" (the paper, eq. 2)
          y_i(t)   = C̄_t · h^i(t+1)                         output="after"  (mamba_ssm)
          (+ D_i u_i(t) when a skip D is given, as in mamba_ssm)

mamba_ssm's ``selective_scan_ref`` uses Euler B and reads the output after the update;
``discretization="euler", output="after"`` with D reproduces its conventions (without its
optional z-gate and in float64 instead of float32).

Glossary (shapes)
-----------------
batch, L, m, n   sequences, length, channels (embedding width), states per channel
u (batch, L, m)            input;  y (batch, L, m) output
A (m, n)                   continuous diagonals Ā^i (negative); A = -exp(A_log) in training
W_delta (m, m)             row i is W_Δ^i;  delta_bias (m,) optional
W_B, W_C (n, m);           D (m,) optional
delta (batch, L, m)        Δ_t^i;  h (batch, L, m, n) the state h(t+1) after consuming u(t)

>>> rng = onp.random.default_rng(0)
>>> P = random_params(m=4, n=3, seed=0)
>>> u = rng.normal(size=(2, 10, 4))
>>> y = selective_ssm(u, **P)
>>> bool(onp.allclose(y, selective_ssm_ref(u, **P), rtol=0, atol=1e-12))
True
"""
import functools

import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp, defvjp_argnums, primitive

from rssm_ref.util.kept import park, take
from rssm_ref.util.threads import batch_halves, map_parts
from rssm_ref.discretize import mamba_discretize
from rssm_ref.validation import (DISCRETIZATIONS, OUTPUTS, check_array, check_option, is_traced,
                                 on_other_backend)

__all__ = ["selective_ssm", "selective_ssm_ref", "selective_ssm_final", "selective_ssm_final_ref",
           "linear_scan", "linear_scan_ref", "softplus",
           "A_from_log", "random_params", "param_count"]



def softplus(x):
    """τ(x) = log(1 + e^x) (eq. 4a), stable for large |x| via logaddexp.

    >>> [round(float(v), 6) for v in softplus(onp.array([-50.0, 0.0, 50.0]))]
    [0.0, 0.693147, 50.0]
    """
    return np.logaddexp(0.0, x)


def A_from_log(A_log):
    """A = −exp(A_log): the parameterization that keeps every Ā entry negative during
    training (Mamba's ``A_log``), so each A_t = exp(Δ A) lies in (0, 1).

    >>> A_from_log(onp.zeros((1, 2))).tolist()
    [[-1.0, -1.0]]
    """
    return -np.exp(A_log)


# ------------------------------------------------------------------ the scan, eq. (2)
@primitive
def linear_scan(a, x):
    """H(t) = a(t) H(t−1) + x(t), H(−1) = 0, along axis 1 (time); elementwise.

    Shapes: a, x (batch, L, ...) -> H (batch, L, ...); H[:, t] is h(t+1) of eq. (2) when
    a = A_t and x = B_t u(t). A custom autograd primitive: the forward loop runs over
    time on whole (batch, ...) slices, and its VJP is the reverse-time adjoint scan
    λ(t) = g(t) + a(t+1) λ(t+1);  ∂/∂x(t) = λ(t);  ∂/∂a(t) = λ(t) H(t−1).

    >>> linear_scan(onp.full((1, 3), 0.5), onp.ones((1, 3))).tolist()
    [[1.0, 1.5, 1.75]]
    """
    a_t = onp.moveaxis(onp.asarray(a, dtype=float), 1, 0)
    x_t = onp.moveaxis(onp.asarray(x, dtype=float), 1, 0)
    H = onp.empty(onp.broadcast_shapes(a_t.shape, x_t.shape))
    h = onp.zeros(H.shape[1:])
    for t in range(H.shape[0]):
        h = a_t[t] * h + x_t[t]
        H[t] = h
    return onp.moveaxis(H, 0, 1)


def _linear_scan_vjp(H, a, x):
    def vjp(g):
        a_t = onp.moveaxis(onp.asarray(a, dtype=float), 1, 0)
        g_t = onp.moveaxis(onp.asarray(g, dtype=float), 1, 0)
        L = g_t.shape[0]
        lam = onp.empty(g_t.shape)
        acc = onp.zeros(g_t.shape[1:])
        for t in range(L - 1, -1, -1):
            # λ(t) = g(t) + a(t+1) λ(t+1)
            acc = g_t[t] + (a_t[t + 1] * acc if t + 1 < L else 0.0)
            lam[t] = acc
        H_prev = onp.concatenate([onp.zeros_like(H[:, :1]), H[:, :-1]], axis=1)
        lam_b = onp.moveaxis(lam, 0, 1)
        return lam_b * H_prev, lam_b
    return vjp


def _unbroadcast_vjp(argnum):
    def maker(H, a, x):
        inner = _linear_scan_vjp(H, a, x)

        def vjp(g):
            grads = inner(g)[argnum]
            shape = onp.shape(a if argnum == 0 else x)
            while grads.ndim > len(shape):
                grads = grads.sum(axis=0)
            for ax, size in enumerate(shape):
                if size == 1 and grads.shape[ax] != 1:
                    grads = grads.sum(axis=ax, keepdims=True)
            return grads
        return vjp
    return maker


defvjp(linear_scan, _unbroadcast_vjp(0), _unbroadcast_vjp(1))


def linear_scan_ref(a, x):
    """The plain loop twin of ``linear_scan`` (collect and stack; autograd-differentiable).

    >>> linear_scan_ref(onp.full((1, 3), 0.5), onp.ones((1, 3))).tolist()
    [[1.0, 1.5, 1.75]]
    """
    h = 0.0 * x[:, 0]
    out = []
    for t in range(onp.shape(x)[1]):
        h = a[:, t] * h + x[:, t]
        out.append(h)
    return np.stack(out, axis=1)


# ------------------------------------------------------------------ validation
def _check(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output):
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f"discretization: {discretization!r} (expected 'zoh' or 'euler')")
    if output not in OUTPUTS:
        raise ValueError(f"output: {output!r} (expected 'before' or 'after')")
    A = check_array("A", A, ndim=2)
    m, n = onp.shape(A)
    if not is_traced(A) and onp.size(A) and not onp.all(A < 0):
        raise ValueError(f"A: expected strictly negative continuous diagonals, got max {float(onp.max(A)):.6g}")
    u = check_array("u", u, ndim=3)
    if onp.shape(u)[2] != m or onp.shape(u)[1] < 1:
        raise ValueError(f"u: expected shape (batch, L >= 1, {m}), got {onp.shape(u)}")
    W_delta = check_array("W_delta", W_delta, shape=(m, m))
    W_B = check_array("W_B", W_B, shape=(n, m))
    W_C = check_array("W_C", W_C, shape=(n, m))
    if delta_bias is not None:
        delta_bias = check_array("delta_bias", delta_bias, shape=(m,))
    if D is not None:
        D = check_array("D", D, shape=(m,))
    return u, A, W_delta, W_B, W_C, delta_bias, D


# ------------------------------------------------------------------ the model
def _on_backend(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output,
                return_intermediates):
    """u from CuPy / array_api_strict: the same model through rssm_ref.xp.models on u's
    module (params checked on the host; not traced by autograd)."""
    from rssm_ref.xp.models import selective_ssm_xp
    # the host checks need only u's width; xp_models checks u itself on its module
    probe = onp.zeros((1, 1, u.shape[-1]))
    _, A, W_delta, W_B, W_C, delta_bias, D = _check(
        probe, A, W_delta, W_B, W_C, delta_bias, D, discretization, output)
    P = {"A": A, "W_delta": W_delta, "W_B": W_B, "W_C": W_C}
    P.update({k: v for k, v in (("delta_bias", delta_bias), ("D", D)) if v is not None})
    out = selective_ssm_xp({k: onp.asarray(v) for k, v in P.items()}, u,
                           discretization=discretization, output=output)
    if return_intermediates:
        return out["y"], {"delta": out["delta"], "h": out["h"]}
    return out["y"]


def selective_ssm(u, A, W_delta, W_B, W_C, delta_bias=None, D=None, discretization="zoh",
                  output="before", return_intermediates=False, v=None):
    """Selective SSM, eqs. (2)-(4), all m channels and the whole batch at once.

    Shapes: u (batch, L, m), A (m, n) (< 0), W_delta (m, m), W_B (n, m), W_C (n, m),
    delta_bias (m,) or None, D (m,) or None -> y (batch, L, m); with
    ``return_intermediates`` also {"delta": (batch, L, m), "h": (batch, L, m, n)} where
    h[:, t] = h(t+1), the state after consuming u(t), for both output conventions.
    Differentiable with autograd in every array argument (the scan is a primitive).

    >>> P = random_params(m=2, n=2, seed=1)
    >>> u = onp.ones((1, 3, 2))
    >>> y, mid = selective_ssm(u, **P, return_intermediates=True)
    >>> y.shape, mid["h"].shape, float(y[0, 0, 0])   # "before": y(0) = C h(0) = 0
    ((1, 3, 2), (1, 3, 2, 2), 0.0)
    """
    if on_other_backend(u):
        return _on_backend(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output,
                           return_intermediates)
    u, A, W_delta, W_B, W_C, delta_bias, D = _check(
        u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output)
    # the selection reads u(t) (the paper), or v(t) when given (a causal window of u)
    sel = u if v is None else check_array("v", v, shape=onp.shape(u))
    # (4a) Δ_t^i = softplus(W_Δ^i u(t) + b_Δ^i)
    pre = np.einsum("blj,ij->bli", sel, W_delta)
    delta = softplus(pre if delta_bias is None else pre + delta_bias)
    # (4b), (4c) B̄_t = W_B u(t), C̄_t = W_C u(t)
    B_bar = np.einsum("blj,nj->bln", sel, W_B)
    C_bar = np.einsum("blj,nj->bln", sel, W_C)
    # (3a), (3b) per channel i and state j: shapes (batch, L, m, n)
    A_t, B_t = mamba_discretize(A, delta[:, :, :, None], B_bar[:, :, None, :], discretization)
    # (2) h^i(t+1) = A_t^i h^i(t) + B_t^i u_i(t)
    H = linear_scan(A_t, B_t * u[:, :, :, None])
    if output == "before":
        # y_i(t) = C̄_t h^i(t): the state before consuming u(t); h(0) = 0
        h_read = np.concatenate([np.zeros_like(H[:, :1]), H[:, :-1]], axis=1)
    else:
        # y_i(t) = C̄_t h^i(t+1), mamba_ssm's order
        h_read = H
    y = np.einsum("blin,bln->bli", h_read, C_bar)
    if D is not None:
        y = y + D * u
    if return_intermediates:
        return y, {"delta": delta, "h": H}
    return y


def selective_ssm_ref(u, A, W_delta, W_B, W_C, delta_bias=None, D=None, discretization="zoh",
                      output="before", return_intermediates=False):
    """The `_ref` twin: loops over batch, time and channel straight from eqs. (2)-(4),
    with the matrix form of (3b) A^{-1}(exp(ΔA) − I) B̄ for diagonal A.

    Same signature and outputs as ``selective_ssm``; plain NumPy (not differentiated).

    >>> P = random_params(m=2, n=2, seed=2)
    >>> selective_ssm_ref(onp.ones((1, 2, 2)), **P).shape
    (1, 2, 2)
    """
    u, A, W_delta, W_B, W_C, delta_bias, D = _check(
        u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output)
    u, A = onp.asarray(u), onp.asarray(A)
    batch, L, m = u.shape
    n = A.shape[1]
    bias = onp.zeros(m) if delta_bias is None else onp.asarray(delta_bias)
    y = onp.zeros((batch, L, m))
    deltas = onp.zeros((batch, L, m))
    hs = onp.zeros((batch, L, m, n))
    for b in range(batch):
        h = onp.zeros((m, n))
        for t in range(L):
            B_bar = W_B @ u[b, t]
            C_bar = W_C @ u[b, t]
            for i in range(m):
                delta = onp.logaddexp(0.0, W_delta[i] @ u[b, t] + bias[i])
                Abar = onp.diag(A[i])
                A_t = onp.diag(onp.exp(delta * A[i]))
                if discretization == "zoh":
                    B_t = onp.linalg.solve(Abar, (A_t - onp.eye(n)) @ B_bar)
                else:
                    B_t = delta * B_bar
                h_next = A_t @ h[i] + B_t * u[b, t, i]
                read = h[i] if output == "before" else h_next
                y[b, t, i] = C_bar @ read + (0.0 if D is None else D[i] * u[b, t, i])
                h[i] = h_next
                deltas[b, t, i] = delta
            hs[b, t] = h
    if return_intermediates:
        return y, {"delta": deltas, "h": hs}
    return y


# ------------------------------------------- the last output only (training path)
def _sigmoid_np(x):
    """σ(x) = softplus'(x) to a few ulps relative for every x: e^{-|x|} / (1 + e^{-|x|})
    below 0 (0.5 (tanh(x/2) + 1) would cancel there), 1 / (1 + e^{-x}) above."""
    q = onp.exp(-onp.abs(x))
    return onp.where(x >= 0, 1.0, q) / (1.0 + q)


def _per_channel(X, m, n):
    """sum_j X[..., i n + j]: (…, m n) -> (…, m), the adjoint of ``onp.repeat(·, n, -1)``."""
    return onp.einsum("...ij->...i", X.reshape(X.shape[:-1] + (m, n)))


def _per_state(X, m, n):
    """sum_i X[..., i n + j]: (…, m n) -> (…, n), the adjoint of ``onp.tile(·, m)``."""
    return onp.einsum("...ij->...j", X.reshape(X.shape[:-1] + (m, n)))


def _J1_negative(x):
    """φ1'(x) = J_1(x) = ∫_0^1 t e^{x t} dt for x <= 0 (here x = Δ A < 0), elementwise.

    x <= -1/2: the closed form (x e^x − expm1(x)) / x², which loses at most a few ulps
    there; -1/2 < x <= 0: Taylor series about c = -1/4, sum_j J_{j+1}(c) (x − c)^j / j!
    (13 terms: truncation < 1e-17 relative; the coefficients come from the stable
    scheme of ``rssm_ref.discretize``). Both are computed on the whole array and the
    right one is kept: cheaper than gathering the small arguments.
    """
    acc = onp.full_like(x, _J1_COEFS[0])
    d = onp.maximum(x, -_J1_SERIES_RADIUS)
    d -= _J1_CENTER
    for c in _J1_COEFS[1:]:
        acc *= d
        acc += c
    with onp.errstate(divide="ignore", invalid="ignore"):    # x = 0: the series is kept
        closed = (x * onp.exp(x) - onp.expm1(x)) / (x * x)
    return onp.where(x > -_J1_SERIES_RADIUS, acc, closed)


def _j1_coefficients(center, terms):
    from math import factorial
    from rssm_ref.discretize import _phi_deriv_np
    # d^j/dx^j J_1 = J_{j+1}; Horner order, highest power first
    return [float(_phi_deriv_np(onp.array(center), j + 1)) / factorial(j)
            for j in range(terms - 1, -1, -1)]


_J1_SERIES_RADIUS = 0.5
_J1_CENTER = -0.25
_J1_COEFS = _j1_coefficients(_J1_CENTER, 13)


def _mm(x, M):
    """(…, k) @ (k, r) as one 2-D BLAS call (a stacked 3-D matmul calls gemm per slice)."""
    return (x.reshape(-1, x.shape[-1]) @ M).reshape(x.shape[:-1] + (M.shape[1],))


def _softplus_np(x):
    """τ(x) = log(1 + e^x) = max(x, 0) + log1p(e^{-|x|}) (eq. 4a), stable for any x."""
    return onp.maximum(x, 0.0) + onp.log1p(onp.exp(-onp.abs(x)))


def _final_forward(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output, v=None):
    """y(L-1) (batch, m) and what the VJP reuses; see :func:`selective_ssm_final`
    (``v``: the signal the selection reads, None: u).

    Per-state arrays are laid out as contiguous (batch, T, q), q = m n, index i n + j:
    ``onp.repeat`` / ``onp.tile`` spread per-channel and per-state quantities (a
    (…, m, 1) x (…, 1, n) broadcast has an 8-long inner loop and is several times
    slower), ``_per_channel`` / ``_per_state`` sum them back (no BLAS: tiny threaded
    gemms stall when another process holds a core). The readout is folded in early,
    y_i = sum_t u_i(t) K_i(t) with K_i(t) = sum_j W_ij(t) C̄_j B̄_j(t), so that the
    backward pass needs as few (batch, T, q) passes as possible.
    """
    batch, L, m = u.shape
    n = A.shape[1]
    Aq = A.reshape(-1)
    # T inputs reach the state that is read: all L ("after"), or L-1 ("before")
    T = L - (1 if output == "before" else 0)
    uT = u[:, :T]
    sel = u if v is None else v
    pre = _mm(sel[:, :T], W_delta.T)
    if delta_bias is not None:
        pre = pre + delta_bias
    delta = _softplus_np(pre)                                                 # (4a) (batch, T, m)
    Bb = _mm(sel[:, :T], W_B.T)                                               # (4b) (batch, T, n)
    C_last = sel[:, -1] @ W_C.T                                               # (4c) at t = L-1
    CBq = onp.tile(Bb * C_last[:, None, :], (1, 1, m))                        # C̄_j B̄_j(t), spread
    # S_t = sum_{t<k<T} Δ_k: prod_{t<k<T} exp(Δ_k A) = exp(S_t A)        (3a) composed
    S = onp.concatenate([onp.cumsum(delta[:, :0:-1], axis=1)[:, ::-1],
                         onp.zeros((batch, min(T, 1), m))], axis=1)
    Sq = onp.repeat(S, n, axis=-1)
    E = onp.exp(Sq * Aq)                                                      # (batch, T, q)
    x = onp.repeat(delta, n, axis=-1) * Aq                                    # Δ_t A
    # (3b): Δ φ1(ΔA) = expm1(ΔA)/A (zoh; A < 0 so no 0/0), or Δ (euler)
    if discretization == "zoh":
        phi = onp.expm1(x)
        phi /= Aq
    else:
        phi = onp.repeat(delta, n, axis=-1)
    W = E * phi                                     # exp(S_t A) B_t / B̄_t: what u(t) is worth
    # (2) unrolled and read out: y_i = C̄ · h^i(T) = sum_t u_i(t) sum_j W_ij(t) C̄_j B̄_j(t)
    K = _per_channel(W * CBq, m, n)                                           # (batch, T, m)
    y = onp.einsum("bti,bti->bi", uT, K)
    if D is not None:
        y = y + D * u[:, -1]
    return y, dict(T=T, Aq=Aq, pre=pre, delta=delta, Bb=Bb, C_last=C_last, CBq=CBq, Sq=Sq,
                   E=E, x=x, W=W, K=K)


def _final_backward(c, g, u, A, W_delta, W_B, W_C, D, discretization, v=None):
    """The VJP of ``_final_forward`` for a cotangent g (batch, m), every argument at once:
    (du, dA, dW_delta, dW_B, dW_C, d delta_bias, dD, dv); with v None the selection's
    share is in du and dv is None."""
    batch, L, m = u.shape
    n = A.shape[1]
    T, Aq, delta, E, W = (c[k] for k in ("T", "Aq", "delta", "E", "W"))
    uT = u[:, :T]
    # y_i = sum_t u_i(t) K_i(t),  K_i(t) = sum_j W_ij(t) (C̄_j B̄_j(t))
    dK = g[:, None, :] * uT
    du_direct = g[:, None, :] * c["K"]
    dKq = onp.repeat(dK, n, axis=-1)
    dW = dKq * c["CBq"]                                                      # ∂/∂W
    dCB = _per_state(dKq * W, m, n)                                          # ∂/∂(C̄_j B̄_j(t))
    dBb = dCB * c["C_last"][:, None, :]
    dC = onp.einsum("btn,btn->bn", dCB, c["Bb"])
    # W = E φ
    X = dW * W                                                               # (∂/∂E) E
    dphi = dW * E                                                            # ∂/∂φ
    # E = exp(S A): dS_t = sum_j X A;  S_t = sum_{k>t} Δ_k, so dΔ_k = sum_{t<k} dS_t
    dAq = onp.einsum("btq,btq->q", X, c["Sq"])
    X *= Aq
    dS = _per_channel(X, m, n)
    ddelta = onp.concatenate([onp.zeros((batch, min(T, 1), m)),
                              onp.cumsum(dS[:, :-1], axis=1)], axis=1)
    if discretization == "zoh":
        # ∂/∂Δ [expm1(ΔA)/A] = exp(ΔA);  ∂/∂A = Δ² φ1'(ΔA)
        x = c["x"]
        ddelta = ddelta + _per_channel(dphi * onp.exp(x), m, n)
        dq = onp.repeat(delta * delta, n, axis=-1)
        dq *= dphi
        dAq = dAq + onp.einsum("btq,btq->q", dq, _J1_negative(x))
    else:
        ddelta = ddelta + _per_channel(dphi, m, n)
    dpre = ddelta * _sigmoid_np(c["pre"])                                    # softplus' = σ
    sel = u if v is None else v
    selT = sel[:, :T]
    # the selection's share (4a)-(4c), then the input's
    dsel = onp.zeros_like(sel)
    dsel[:, :T] = _mm(dpre, W_delta) + _mm(dBb, W_B)
    dsel[:, -1] += dC @ W_C
    du = dsel if v is None else onp.zeros_like(u)
    du[:, :T] += du_direct
    if D is not None:
        du[:, -1] += g * D
    return (du, dAq.reshape(m, n), dpre.reshape(-1, m).T @ selT.reshape(-1, m),
            dBb.reshape(-1, n).T @ selT.reshape(-1, m), dC.T @ sel[:, -1], dpre.sum(axis=(0, 1)),
            onp.einsum("bi,bi->i", g, u[:, -1]), None if v is None else dsel)


@primitive
def _final_prim(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output, keep, v=None):
    # two halves of the batch on two cores (rssm_ref.util.threads: the cut depends on the
    # batch size only, so the numbers are the same on any machine)
    parts = batch_halves(u.shape[0])
    outs = map_parts(_final_forward, [(u[p], A, W_delta, W_B, W_C, delta_bias, D,
                                       discretization, output, None if v is None else v[p])
                                      for p in parts])
    y = outs[0][0] if len(outs) == 1 else onp.concatenate([o[0] for o in outs], axis=0)
    if keep:          # traced: hand the intermediates to the VJP (rssm_ref.util.kept)
        park(y, [o[1] for o in outs])
    return y


def _final_vjp(argnums, ans, args, kwargs):
    u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output, keep = args[:10]
    v = args[10] if len(args) > 10 else None
    caches = take(ans)

    def vjp(g):
        g = onp.asarray(g)                                                   # (batch, m)
        parts = batch_halves(u.shape[0])
        vp = (lambda p: None) if v is None else (lambda p: v[p])
        cs = caches or [_final_forward(u[p], A, W_delta, W_B, W_C, delta_bias, D,
                                       discretization, output, vp(p))[1] for p in parts]
        outs = map_parts(_final_backward, [(c, g[p], u[p], A, W_delta, W_B, W_C, D,
                                            discretization, vp(p)) for c, p in zip(cs, parts)])
        # du, dv by rows; the parameters' gradients summed over the parts in a fixed order
        grads = {0: onp.concatenate([o[0] for o in outs], axis=0)}
        for k in range(1, 7):
            total = outs[0][k]
            for o in outs[1:]:
                total = total + o[k]
            grads[k] = total
        if v is not None:
            grads[10] = onp.concatenate([o[7] for o in outs], axis=0)
        return tuple(grads[k] for k in argnums)
    return vjp


defvjp_argnums(_final_prim, _final_vjp)


def selective_ssm_final(u, A, W_delta, W_B, W_C, delta_bias=None, D=None, discretization="zoh",
                        output="before", v=None):
    """The Selective SSM's last output y(L-1) only, eqs. (2)-(4): what the readout uses.

    Shapes and arguments as :func:`selective_ssm`; returns (batch, m). The state that is
    read, h(T) with T = L ("after") or L - 1 ("before"), is the unrolled scan

        h^i(T) = sum_{t<T} exp(A^i S_t^i) B_t^i u_i(t),   S_t^i = sum_{t<k<T} Δ_k^i,

    (the product of the A_k of (3a) is one exponential of a reversed cumulative sum; the
    sums only grow, so the exponentials only shrink), with B_t of (3b) as
    expm1(Δ A)/A (zoh) or Δ B̄ (euler): no loop over time and no series in the forward
    pass. One autograd primitive with a hand-written VJP (reverse cumulative sums; the
    series of φ1' only for |Δ A| < 1/2 in ∂/∂A). Equal to
    ``selective_ssm(...)[:, -1]`` to rounding (tests: ``fast_vs_ref``). ``v`` (batch, L, m)
    or None: the signal the selection (4a)-(4c) reads instead of u (a causal window of
    the inputs, ``rssm_ref.training.head``' ``window`` option); the scan's input stays u.

    >>> P = random_params(m=3, n=2, seed=1)
    >>> u = onp.random.default_rng(0).normal(size=(2, 5, 3))
    >>> bool(onp.allclose(selective_ssm_final(u, **P), selective_ssm(u, **P)[:, -1], rtol=0, atol=1e-14))
    True
    """
    u, A, W_delta, W_B, W_C, delta_bias, D = _check(
        u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output)
    if v is not None:
        v = check_array("v", v, shape=onp.shape(u))
    keep = any(is_traced(a) for a in (u, A, W_delta, W_B, W_C, delta_bias, D, v))
    if v is None:
        return _final_prim(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output, keep)
    return _final_prim(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output, keep, v)


def selective_ssm_final_ref(u, A, W_delta, W_B, W_C, delta_bias=None, D=None,
                            discretization="zoh", output="before", v=None):
    """Twin of :func:`selective_ssm_final`: the loops of ``selective_ssm_ref``, last step
    (with ``v``: the selection of step t computed from v(t), the scan fed u(t)).

    >>> P = random_params(m=2, n=2, seed=2)
    >>> selective_ssm_final_ref(onp.ones((1, 2, 2)), **P).shape
    (1, 2)
    """
    if v is None:
        return selective_ssm_ref(u, A, W_delta, W_B, W_C, delta_bias, D, discretization,
                                 output)[:, -1]
    return _selection_from_ref(u, v, A, W_delta, W_B, W_C, delta_bias, D, discretization, output)


def _selection_from_ref(u, v, A, W_delta, W_B, W_C, delta_bias, D, discretization, output):
    """Loops of eqs. (2)-(4) with the selection read from v and the scan fed u."""
    u, v, A = onp.asarray(u), onp.asarray(v), onp.asarray(A)
    batch, L, m = u.shape
    n = A.shape[1]
    bias = onp.zeros(m) if delta_bias is None else onp.asarray(delta_bias)
    y = onp.zeros((batch, m))
    for b in range(batch):
        h = onp.zeros((m, n))
        for t in range(L):
            B_bar, C_bar = W_B @ v[b, t], W_C @ v[b, t]
            for i in range(m):
                delta = onp.logaddexp(0.0, W_delta[i] @ v[b, t] + bias[i])
                A_t = onp.exp(delta * A[i])
                B_t = (A_t - 1.0) / A[i] * B_bar if discretization == "zoh" else delta * B_bar
                h_next = A_t * h[i] + B_t * u[b, t, i]
                if t == L - 1:
                    read = h[i] if output == "before" else h_next
                    y[b, i] = C_bar @ read + (0.0 if D is None else D[i] * u[b, t, i])
                h[i] = h_next
    return y


# ------------------------------------------------------------------ construction, counts
def random_params(m=16, n=8, seed=0, delta_bias=True, D=False):
    """Valid random parameters (keyword dict for ``selective_ssm``), seeded.

    A = −exp(A_log) with A_log = log(1..n) per channel (S4D-real initialization, as in
    Mamba); weights N(0, 1/m).

    >>> sorted(random_params(m=2, n=2))
    ['A', 'W_B', 'W_C', 'W_delta', 'delta_bias']
    """
    rng = onp.random.default_rng(seed)
    P = {
        "A": A_from_log(onp.log(onp.tile(onp.arange(1, n + 1, dtype=float), (m, 1)))),
        "W_delta": rng.normal(0.0, 1.0 / onp.sqrt(m), size=(m, m)),
        "W_B": rng.normal(0.0, 1.0 / onp.sqrt(m), size=(n, m)),
        "W_C": rng.normal(0.0, 1.0 / onp.sqrt(m), size=(n, m)),
    }
    if delta_bias:
        P["delta_bias"] = rng.uniform(-4.0, -1.0, size=m)
    if D:
        P["D"] = rng.normal(0.0, 1.0, size=m)
    return P


def param_count(m=16, n=8, delta_bias=True, D=False):
    """Learnable parameters of the selective core: A (m n) + W_Δ (m²) + W_B, W_C (2 n m)
    [+ b_Δ (m)] [+ D (m)]. With m = 16, n = 8: 128 + 256 + 256 + 16 = 656, about the
    paper's ~700 once the embedding is added.

    >>> param_count(16, 8)
    656
    """
    return m * n + m * m + 2 * n * m + (m if delta_bias else 0) + (m if D else 0)
