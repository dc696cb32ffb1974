"""The Selective SSM's training kernel (Section 3.2.1, eqs. (2)-(4)): the last output
y(L) as one autograd primitive with a hand-written VJP, split over two threads by batch
halves, and the stable φ1 derivatives J_k of eq. (3b)'s ZOH input matrix that it needs.
``rssm_ref.selective_ssm.selective_ssm_final`` validates and calls it; autograd through
``selective_ssm_final_ref`` is the oracle for its gradient.

Glossary (shapes)
-----------------
u (batch, L, m), A (m, n) < 0, W_delta (m, m), W_B, W_C (n, m), delta_bias (m,), D (m,)
J_k(x) = ∫_0^1 t^k e^{x t} dt   (φ1 = J_0; φ1' = J_1)
"""
from math import factorial

import numpy as onp
from autograd.extend import defvjp_argnums, primitive

from rssm_ref.kernels.nonlinear import softplus_np, softplus_slope
from rssm_ref.util.kept import park, take
from rssm_ref.util.threads import batch_halves, map_parts


# 0.5^N / (N! (N+1)) < 1e-21 for N = 18: truncation far below one ulp for |x| < 0.5.
SERIES_TERMS = 18


# log(float64 max) ~ 709.78: above this, exp(x) alone overflows.
EXP_MAX = 709.0


# ------------------------------------------------------------------- phi1 and J_k
def phi_deriv_np(x, k):
    """J_k(x) = int_0^1 t^k e^{x t} dt in plain NumPy (k-th derivative of phi1).

    Three regimes, each free of cancellation:
      |x| < 1   series  J_k(x) = sum_j x^j / (j! (j + k + 1))  (Horner);
      x <= -1   J_0 = expm1(x) / x,  J_k = (e^x - k J_{k-1}) / x  (integration by parts);
      x >= 1    J_k = e^x M_k(x) with M_k = int_0^1 (1-u)^k e^{-x u} du,
                M_0 = -expm1(-x) / x,  M_k = (1 - k M_{k-1}) / x; for x > 709 the product
                is taken as e^{x-64} (e^{64} M_k), which overflows to inf only where the
                true value exceeds the float64 range (x > ~716 for k = 0).
    """
    x = onp.asarray(x, dtype=onp.float64)
    out = onp.empty_like(x)
    small = onp.abs(x) < SERIES_RADIUS
    neg = x <= -SERIES_RADIUS
    pos = x >= SERIES_RADIUS

    xs = x[small]
    acc = onp.zeros_like(xs)
    fact = 1.0
    coefs = []
    for j in range(SERIES_TERMS):
        coefs.append(1.0 / (fact * (j + k + 1)))
        fact *= j + 1
    for c in reversed(coefs):  # Horner, highest power first
        acc = acc * xs + c
    out[small] = acc

    xn = x[neg]
    ex = onp.exp(xn)
    J = onp.expm1(xn) / xn
    for i in range(1, k + 1):
        J = (ex - i * J) / xn
    out[neg] = J

    xp = x[pos]
    M = -onp.expm1(-xp) / xp
    for i in range(1, k + 1):
        M = (1.0 - i * M) / xp
    big = xp > EXP_MAX
    res = onp.empty_like(xp)
    res[~big] = onp.exp(xp[~big]) * M[~big]
    # split e^x = e^{x - 64} e^{64}: x - 64 is exact, so no x*eps error from a log;
    # inf only where the true value exceeds the float64 range
    with onp.errstate(over="ignore"):
        res[big] = onp.exp(xp[big] - 64.0) * (M[big] * onp.exp(64.0))
    out[pos] = res
    return out


# |x| below this: power series of J_k; above it: recurrences without cancellation
# trouble (loss of at most a few ulps at |x| = 0.5, none for large |x|).
SERIES_RADIUS = 0.5


# ------------------------------------------- the last output only (training path)


def per_channel(X, m, n):
    """sum_j X[..., i n + j]: (…, m n) -> (…, m), the adjoint of ``onp.repeat(·, n, -1)``."""
    return onp.einsum("...ij->...i", X.reshape(X.shape[:-1] + (m, n)))


def per_state(X, m, n):
    """sum_i X[..., i n + j]: (…, m n) -> (…, n), the adjoint of ``onp.tile(·, m)``."""
    return onp.einsum("...ij->...j", X.reshape(X.shape[:-1] + (m, n)))


def j1_negative(x):
    """φ1'(x) = J_1(x) = ∫_0^1 t e^{x t} dt for x <= 0 (here x = Δ A < 0), elementwise.

    x <= -1/2: the closed form (x e^x − expm1(x)) / x², which loses at most a few ulps
    there; -1/2 < x <= 0: Taylor series about c = -1/4, sum_j J_{j+1}(c) (x − c)^j / j!
    (13 terms: truncation < 1e-17 relative; the coefficients come from the stable
    scheme of ``rssm_ref.discretize``). Both are computed on the whole array and the
    right one is kept: cheaper than gathering the small arguments.
    """
    acc = onp.full_like(x, J1_COEFS[0])
    d = onp.maximum(x, -J1_SERIES_RADIUS)
    d -= J1_CENTER
    for c in J1_COEFS[1:]:
        acc *= d
        acc += c
    with onp.errstate(divide="ignore", invalid="ignore"):    # x = 0: the series is kept
        closed = (x * onp.exp(x) - onp.expm1(x)) / (x * x)
    return onp.where(x > -J1_SERIES_RADIUS, acc, closed)


def j1_coefficients(center, terms):
    # d^j/dx^j J_1 = J_{j+1}; Horner order, highest power first
    return [float(phi_deriv_np(onp.array(center), j + 1)) / factorial(j)
            for j in range(terms - 1, -1, -1)]


J1_SERIES_RADIUS = 0.5


J1_CENTER = -0.25


J1_COEFS = j1_coefficients(J1_CENTER, 13)


def mm(x, M):
    """(…, k) @ (k, r) as one 2-D BLAS call (a stacked 3-D matmul calls gemm per slice)."""
    return (x.reshape(-1, x.shape[-1]) @ M).reshape(x.shape[:-1] + (M.shape[1],))


def final_forward(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output, v=None):
    """y(L-1) (batch, m) and what the VJP reuses; see :func:`selective_ssm_final`
    (``v``: the signal the selection reads, None: u).

    Per-state arrays are laid out as contiguous (batch, T, q), q = m n, index i n + j:
    ``onp.repeat`` / ``onp.tile`` spread per-channel and per-state quantities (a
    (…, m, 1) x (…, 1, n) broadcast has an 8-long inner loop and is several times
    slower), ``per_channel`` / ``per_state`` sum them back (no BLAS: tiny threaded
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
    pre = mm(sel[:, :T], W_delta.T)
    if delta_bias is not None:
        pre = pre + delta_bias
    delta = softplus_np(pre)                                                 # (4a) (batch, T, m)
    Bb = mm(sel[:, :T], W_B.T)                                               # (4b) (batch, T, n)
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
    K = per_channel(W * CBq, m, n)                                           # (batch, T, m)
    y = onp.einsum("bti,bti->bi", uT, K)
    if D is not None:
        y = y + D * u[:, -1]
    return y, dict(T=T, Aq=Aq, pre=pre, delta=delta, Bb=Bb, C_last=C_last, CBq=CBq, Sq=Sq,
                   E=E, x=x, W=W, K=K)


def final_backward(c, g, u, A, W_delta, W_B, W_C, D, discretization, v=None):
    """The VJP of ``final_forward`` for a cotangent g (batch, m), every argument at once:
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
    dCB = per_state(dKq * W, m, n)                                          # ∂/∂(C̄_j B̄_j(t))
    dBb = dCB * c["C_last"][:, None, :]
    dC = onp.einsum("btn,btn->bn", dCB, c["Bb"])
    # W = E φ
    X = dW * W                                                               # (∂/∂E) E
    dphi = dW * E                                                            # ∂/∂φ
    # E = exp(S A): dS_t = sum_j X A;  S_t = sum_{k>t} Δ_k, so dΔ_k = sum_{t<k} dS_t
    dAq = onp.einsum("btq,btq->q", X, c["Sq"])
    X *= Aq
    dS = per_channel(X, m, n)
    ddelta = onp.concatenate([onp.zeros((batch, min(T, 1), m)),
                              onp.cumsum(dS[:, :-1], axis=1)], axis=1)
    if discretization == "zoh":
        # ∂/∂Δ [expm1(ΔA)/A] = exp(ΔA);  ∂/∂A = Δ² φ1'(ΔA)
        x = c["x"]
        ddelta = ddelta + per_channel(dphi * onp.exp(x), m, n)
        dq = onp.repeat(delta * delta, n, axis=-1)
        dq *= dphi
        dAq = dAq + onp.einsum("btq,btq->q", dq, j1_negative(x))
    else:
        ddelta = ddelta + per_channel(dphi, m, n)
    dpre = ddelta * softplus_slope(c["pre"])                                    # softplus' = σ
    sel = u if v is None else v
    selT = sel[:, :T]
    # the selection's share (4a)-(4c), then the input's
    dsel = onp.zeros_like(sel)
    dsel[:, :T] = mm(dpre, W_delta) + mm(dBb, W_B)
    dsel[:, -1] += dC @ W_C
    du = dsel if v is None else onp.zeros_like(u)
    du[:, :T] += du_direct
    if D is not None:
        du[:, -1] += g * D
    return (du, dAq.reshape(m, n), dpre.reshape(-1, m).T @ selT.reshape(-1, m),
            dBb.reshape(-1, n).T @ selT.reshape(-1, m), dC.T @ sel[:, -1], dpre.sum(axis=(0, 1)),
            onp.einsum("bi,bi->i", g, u[:, -1]), None if v is None else dsel)


@primitive
def final_kernel(u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output, keep, v=None):
    # two halves of the batch on two cores (rssm_ref.util.threads: the cut depends on the
    # batch size only, so the numbers are the same on any machine)
    parts = batch_halves(u.shape[0])
    outs = map_parts(final_forward, [(u[p], A, W_delta, W_B, W_C, delta_bias, D,
                                       discretization, output, None if v is None else v[p])
                                      for p in parts])
    y = outs[0][0] if len(outs) == 1 else onp.concatenate([o[0] for o in outs], axis=0)
    if keep:          # traced: hand the intermediates to the VJP (rssm_ref.util.kept)
        park(y, [o[1] for o in outs])
    return y


def final_vjp(argnums, ans, args, kwargs):
    u, A, W_delta, W_B, W_C, delta_bias, D, discretization, output, keep = args[:10]
    v = args[10] if len(args) > 10 else None
    caches = take(ans)

    def vjp(g):
        g = onp.asarray(g)                                                   # (batch, m)
        parts = batch_halves(u.shape[0])
        vp = (lambda p: None) if v is None else (lambda p: v[p])
        cs = caches or [final_forward(u[p], A, W_delta, W_B, W_C, delta_bias, D,
                                       discretization, output, vp(p))[1] for p in parts]
        outs = map_parts(final_backward, [(c, g[p], u[p], A, W_delta, W_B, W_C, D,
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


defvjp_argnums(final_kernel, final_vjp)
