"""The Selective SSM core of Mamba as the paper writes it (Section 3.2.1, eqs. (2)-(4)).

m SISO systems, one per embedding channel i, each with n states and time-varying
matrices produced from the current input u(t) (the selection mechanism):

    (4a)  Δ_t^i  = softplus(W_Δ^i u(t) + b_Δ^i)            scalar per channel
    (4b)  B̄_t    = W_B u(t)                                 (n,), shared by the channels
    (4c)  C̄_t    = W_C u(t)                                 (n,)
    (3a)  A_t^i  = exp(Δ_t^i Ā^i)                           Ā^i = diag(A[i]), A[i] < 0
    (3b)  B_t^i  = (Ā^i)^{-1}(exp(Δ_t^i Ā^i) − I) B̄_t       discretization="zoh" (the paper)
          B_t^i  = Δ_t^i B̄_t                                discretization="euler" (mamba_ssm)
    (2)   h^i(t+1) = A_t^i h^i(t) + B_t^i u_i(t),   h^i(0) = 0
          y_i(t)   = C̄_t · h^i(t)                           output="before" (the paper, eq. (2))
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
import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp, primitive

from rssm_ref.discretize import mamba_discretize
from rssm_ref.kernels.nonlinear import softplus
from rssm_ref.kernels.selective import final_kernel
from rssm_ref.validation import (check_array, check_option, DISCRETIZATIONS, is_traced,
                                 on_other_backend, OUTPUTS)
from rssm_ref.xp.models import selective_ssm_xp

__all__ = ["selective_ssm", "selective_ssm_ref", "selective_ssm_final", "selective_ssm_final_ref",
           "linear_scan", "linear_scan_ref", "softplus",
           "A_from_log", "random_params", "param_count"]


def A_from_log(A_log):
    """A = −exp(A_log): the parameterization that keeps every Ā entry negative during
    training (Mamba's ``A_log``), so each A_t = exp(Δ A) lies in (0, 1).

    >>> A_from_log(onp.zeros((1, 2))).tolist()
    [[-1.0, -1.0]]
    """
    return -np.exp(A_log)


# ------------------------------------------------------------------ the scan, eq. (2)
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


# ------------------------------------------------------------------ validation
def _check(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output):
    check_option("discretization", discretization, DISCRETIZATIONS)
    check_option("output", output, OUTPUTS)
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
        return final_kernel(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output, keep)
    return final_kernel(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output, keep, v)


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
