"""Realizations of a discrete LTI system: the bottom of the paper's blocks.

The same system (eq. (1); Remark 3.2) stored as matrices (A, B, C, D) or as the
polynomials of its transfer matrix, and the maps between them: Markov parameters
h[t] (the impulse response, the kernel of the convolution path), ss <-> tf, and the
stable denominators of the training parameterization (reflection coefficients). scipy
keeps the same layer apart under its ``_ltisys`` objects (``_lti_conversion.py``);
here ``rssm_ref.lti`` builds its objects on top of these functions.

Glossary (shapes)
-----------------
n, m, p        states, inputs, outputs;  k coefficients per polynomial (order k - 1)
A (n, n), B (n, m), C (p, n), D (p, m)          state-space matrices
num (p, m, k), den (p, k)                       transfer matrix, descending powers of z
h (L, p, m)                                     Markov parameters, h[0] = D, h[t] = C A^(t-1) B
k (..., n)                                      reflection coefficients, |k| < 1

>>> h = markov_parameters([[0.5]], [[1.0]], [[1.0]], [[0.0]], 4)
>>> h[:, 0, 0].tolist()
[0.0, 1.0, 0.5, 0.25]
>>> num, den = ss2tf([[0.5]], [[1.0]], [[1.0]], [[0.0]])
>>> bool(onp.allclose(tf_impulse_ref(num, den, 4), h))
True
"""
import autograd.numpy as np
import numpy as onp
import scipy.signal as ssig
from autograd.extend import defvjp, primitive

from rssm_ref.kernels.recurrence import state_scan
from rssm_ref.validation import check_array, check_length, check_state_space, check_tf, is_traced

K_MAX = 1.0 - 2.0 ** -40  # |k| cap: tanh rounds to ±1 for |theta| > ~19

__all__ = ["markov_parameters", "markov_parameters_ref", "tf_impulse", "tf_impulse_ref",
           "den_from_reflection", "den_from_reflection_ref", "den_from_theta", "ss2tf", "tf2ss",
           "observable_realization", "normalize_tf"]


def tf_impulse_ref(num, den, L):
    """The impulse response of a transfer matrix by its difference equation, a loop:

        a_0 h[t] = b_t - sum_{i=1}^{min(t, n)} a_i h[t-i]  (b_t = 0 for t > n).

    num (p, m, k), den (p, k) -> (L, p, m). Works for any den with den[:, 0] != 0.

    >>> import numpy
    >>> numpy.round(tf_impulse_ref([[[1.0, 0.0, 0.0]]], [[1.0, -1.8, 0.81]], 4)[:, 0, 0], 12)
    array([1.   , 1.8  , 2.43 , 2.916])
    """
    num = check_array("num", num, ndim=3)
    den = check_array("den", den, ndim=2)
    L = check_length("L", L)
    p, m, k = onp.shape(num)
    if onp.shape(den) != (p, k):
        raise ValueError(f"den: expected shape ({p}, {k}) to match num, got {onp.shape(den)}")
    n = k - 1
    hs = []
    for t in range(L):
        acc = num[:, :, t] if t <= n else onp.zeros((p, m))
        for i in range(1, min(t, n) + 1):
            acc = acc - den[:, i:i + 1] * hs[t - i]
        hs.append(acc / den[:, :1])
    return np.stack(hs, axis=0)


def normalize_tf(num, den):
    """Proper, equal-length, den[:, 0] == 1 form of a transfer matrix (plain NumPy).

    The shorter polynomial is padded on the left with zeros; leading zeros that make
    the lengths differ or den[i, 0] vanish are shifted out (multiplying num and den of a
    row by the same power of z leaves H(z) unchanged). A numerator of higher degree than
    its denominator (an improper row) is refused.
    """
    num = onp.array(num, dtype=float)
    den = onp.array(den, dtype=float)
    p, m, kn = num.shape
    kd = den.shape[1]
    k = max(kn, kd)
    num = onp.concatenate([onp.zeros((p, m, k - kn)), num], axis=2)
    den = onp.concatenate([onp.zeros((p, k - kd)), den], axis=1)
    out_num = onp.zeros_like(num)
    out_den = onp.zeros_like(den)
    for i in range(p):
        nz = onp.flatnonzero(den[i])
        if nz.size == 0:
            raise ValueError(f"den: row {i} is identically zero (expected a nonzero denominator)")
        s = int(nz[0])
        if onp.any(num[i, :, :s] != 0.0):
            raise ValueError(f"num: row {i} has higher degree than den row {i} (improper transfer "
                             "function; expected a proper system, deg num <= deg den)")
        # multiply num and den of row i by z^s: H(z) unchanged, den[i, 0] becomes nonzero
        out_den[i, :k - s] = den[i, s:] / den[i, s]
        out_num[i, :, :k - s] = num[i, :, s:] / den[i, s]
    return out_num, out_den


# --------------------------------------------------------------- Markov parameters
def markov_parameters_ref(A, B, C, D, L):
    """Plain loop twin of :func:`markov_parameters`: h[t] = C A^(t-1) B, one step at a time.

    >>> markov_parameters_ref([[0.5]], [[1.0]], [[2.0]], [[3.0]], 3)[:, 0, 0].tolist()
    [3.0, 2.0, 1.0]
    """
    A, B, C, D = check_state_space(A, B, C, D)
    L = check_length("L", L)
    hs = [D]
    G = B  # A^(t-1) B
    for _ in range(1, L):
        hs.append(np.dot(C, G))
        G = np.dot(A, G)
    return np.stack(hs)


def markov_parameters(A, B, C, D, L):
    """Impulse response (Markov parameters) of x(t+1) = A x + B u, y = C x + D u.

    Shapes: A (n, n), B (n, m), C (p, n), D (p, m), L >= 1 -> h (L, p, m) with
    h[0] = D and h[t] = C A^(t-1) B (the kernel of the convolution form of eq. (2)).

    Computed by the state recursion itself, G(t+1) = A G(t), G(0) = B (the m columns of B
    as a batch of initial states), in rssm_ref.recurrence's scan primitive: the same
    rounding as the recurrent path, and differentiable with autograd through the scan's
    adjoint VJP. (Powers by repeated squaring were measured up to ~1e-9 off for
    companion matrices with poles near the unit circle, where the recursion stays at
    rounding level.) Cost O(L n^2 m), one small matrix product per step.

    >>> A = np.array([[0.5]]); B = np.array([[1.0]]); C = np.array([[2.0]]); D = np.array([[3.0]])
    >>> markov_parameters(A, B, C, D, 4)[:, 0, 0].tolist()
    [3.0, 2.0, 1.0, 0.5]
    """
    A, B, C, D = check_state_space(A, B, C, D)
    L = check_length("L", L)
    if L == 1:
        return D[None]
    n, m = onp.shape(B)
    # rows of G[t] are (A^t B)^T, t = 0 .. L-2: x(t+1) = A x(t) with x(0) = each column of B
    G = state_scan(A, onp.zeros((L - 2, m, n)), np.transpose(B))
    # h[t] = C A^(t-1) B for t = 1 .. L-1:  (C G^T) = (G C^T)^T
    tail = np.transpose(np.matmul(G, np.transpose(C)), (0, 2, 1))
    return np.concatenate([D[None], tail], axis=0)


# -------------------------------------------------------- reflection coefficients
def den_from_reflection_ref(k):
    """Loop twin of :func:`den_from_reflection`, coefficient by coefficient, 1-D only.

    a_new[j] = a[j] + k a[i+1-j] with a[-1] = a[i+1] = 0 (the step-up recursion).

    >>> den_from_reflection_ref([0.5, 0.25]).tolist()
    [1.0, 0.625, 0.25]
    """
    k = check_array("k", k, ndim=1)
    a = [1.0]
    for i, ki in enumerate(k):
        ext = a + [0.0]
        a = [ext[j] + ki * ext[i + 1 - j] for j in range(i + 2)]
    return onp.array(a)


def den_from_reflection(k):
    """Monic Schur-stable polynomial from reflection coefficients (step-up recursion).

    Shapes: k (..., n) with every |k| < 1 -> den (..., n+1), descending powers of z,
    den[..., 0] = 1. The Levinson step-up recursion

        a^(0) = [1],   a^(i+1) = [a^(i), 0] + k_i [0, reverse(a^(i))]

    maps the open cube (-1, 1)^n onto the monic polynomials with all roots strictly
    inside the unit circle (Schur-Cohn), so any unconstrained parameter squashed into
    (-1, 1) (e.g. 0.5 tanh(theta)) gives a stable denominator. Differentiable: a
    primitive whose VJP runs the recursion backwards (one NumPy pass, training path).
    Used for stable training denominators and Hypothesis strategies.

    >>> den_from_reflection([0.5]).tolist()
    [1.0, 0.5]
    >>> den = den_from_reflection([0.9, -0.5, 0.3])
    >>> bool(np.all(np.abs(np.roots(den)) < 1))
    True
    """
    if not is_traced(k):
        k = check_array("k", k)
        if onp.ndim(k) < 1:
            raise ValueError("k: expected shape (..., n), got a scalar")
        if onp.any(onp.abs(k) >= 1.0):
            raise ValueError("k: reflection coefficients must satisfy |k| < 1 "
                             f"(got max |k| = {float(onp.max(onp.abs(k))):.6g})")
    return step_up(k)


def step_up_np(k):
    """[a^(0), ..., a^(n)] of the step-up recursion, plain NumPy (k (..., n)): row i of
    one (..., n+1, n+1) buffer holds a^(i) (zero-padded), two array operations a step."""
    n = k.shape[-1]
    A = onp.zeros(k.shape[:-1] + (n + 1, n + 1))
    A[..., 0, 0] = 1.0
    for i in range(n):
        # a^(i+1) = [a, 0] + k_i [0, reverse(a)]
        A[..., i + 1, :i + 1] = A[..., i, :i + 1]
        A[..., i + 1, 1:i + 2] += k[..., i:i + 1] * A[..., i, i::-1]
    return [A[..., i, :i + 1] for i in range(n + 1)]


@primitive
def step_up(k):
    return step_up_np(onp.asarray(k, dtype=float))[-1]


def step_up_vjp(ans, k, steps=None):
    def vjp(g):
        # reverse through a^(i+1)_j = a^(i)_j + k_i a^(i)_(i+1-j):
        #   dk_i = sum_j g_j a^(i)_(i+1-j),   da^(i)_l = g_l + k_i g_(i+1-l)
        k_np = onp.asarray(k, dtype=float)
        st = steps if steps is not None else step_up_np(k_np)
        g = onp.asarray(g, dtype=float)
        dk = []
        for i in range(k_np.shape[-1] - 1, -1, -1):
            a_i = st[i]
            dk.append(onp.sum(g[..., 1:] * a_i[..., ::-1], axis=-1))
            g = g[..., :-1] + k_np[..., i:i + 1] * g[..., :0:-1]
        return onp.stack(dk[::-1], axis=-1)
    return vjp


defvjp(step_up, step_up_vjp)


@primitive
def den_from_theta(theta, bound):
    """den_from_reflection(bound · tanh(theta)): a stable monic denominator from
    unconstrained parameters, as one primitive (the training parameterization).

    Shapes: theta (..., n), 0 < bound <= 1 -> den (..., n+1), every root strictly inside
    |z| < 1. tanh rounds to +-1 for |theta| > ~19, so |k| is capped at K_MAX = 1 - 2^-40
    (there tanh' < 1e-12: the gradient is unaffected to rounding), which keeps the roots
    off the unit circle also with bound = 1. VJP: the step-up recursion backwards, times
    bound (1 - tanh^2).

    >>> den_from_theta(onp.array([0.0, 10.0]), 0.5).round(6).tolist()
    [1.0, 0.0, 0.5]
    >>> bool(onp.abs(onp.roots(den_from_theta(onp.array([0.3, 40.0]), 1.0))).max() < 1)
    True
    """
    return step_up_np(reflection(theta, bound))[-1]


def reflection(theta, bound):
    return onp.clip(bound * onp.tanh(theta), -K_MAX, K_MAX)


def den_from_theta_np(theta, bound, with_steps=False):
    """:func:`den_from_theta` in plain NumPy (the fused training loss calls it); with
    ``with_steps`` also the step-up recursion's intermediate polynomials, which its VJP
    reuses."""
    steps = step_up_np(reflection(theta, bound))
    return (steps[-1], steps) if with_steps else steps[-1]


def den_from_theta_vjp_np(theta, bound, g, steps=None):
    """d theta for the cotangent g of den_from_theta(theta, bound): the step-up
    recursion backwards (``steps`` from ``den_from_theta_np``, recomputed when None),
    times bound (1 - tanh²)."""
    t = onp.tanh(theta)
    return step_up_vjp(None, reflection(theta, bound), steps)(g) * (bound * (1.0 - t * t))


def den_from_theta_vjp(ans, theta, bound):
    return lambda g: den_from_theta_vjp_np(theta, bound, g)


defvjp(den_from_theta, den_from_theta_vjp)


# ----------------------------------------------------------------- conversions
def ss2tf(A, B, C, D):
    """Transfer matrix of a state-space system (plain NumPy; not differentiated).

    Shapes: A (n, n), B (n, m), C (p, n), D (p, m) -> num (p, m, n+1), den (p, n+1).
    Every output row gets the same denominator, the characteristic polynomial
    a(z) = det(zI - A) = np.poly(A) (descending powers). The numerators come from the
    Markov parameters h (Remark 3.2: H(z) = sum_t h[t] z^-t):

        b_j = sum_{i <= j} a_i h_{j-i},   j = 0 .. n,

    the coefficients of a(z) H(z), a polynomial by Cayley-Hamilton. This avoids the
    poly(A - B C) determinant trick of scipy's ss2tf. The result is the non-minimal
    common denominator (no pole-zero cancellation) and, like every coefficient
    representation, it is ill-conditioned for high order (scipy #17405): keep n small
    (say <= 10) or compare in impulse response, not coefficients.

    >>> num, den = ss2tf([[0.5]], [[1.0]], [[1.0]], [[0.0]])
    >>> num.tolist(), den.tolist()
    ([[[0.0, 1.0]]], [[1.0, -0.5]])
    """
    A, B, C, D = check_state_space(A, B, C, D)
    A, B, C, D = (onp.asarray(x, dtype=float) for x in (A, B, C, D))
    n = A.shape[0]
    p, m = D.shape
    a = onp.real(onp.poly(A)) if n else onp.ones(1)
    h = markov_parameters(A, B, C, D, n + 1)
    # b_j = sum_{i<=j} a_i h_{j-i}
    num = onp.stack([sum(a[i] * h[j - i] for i in range(j + 1)) for j in range(n + 1)], axis=-1)
    den = onp.tile(a, (p, 1))
    return num, den


def tf2ss(num, den):
    """Block-diagonal observable-companion realization of a transfer matrix (no slycot).

    Shapes: num (p, m, k), den (p, k) (or 1-D SISO) -> A (n, n), B (n, m), C (p, n),
    D (p, m) with n = p (k - 1): one observable-companion block of order k - 1 per output
    row (shared denominator a, row numerators b_j, normalized so a_0 = 1):

        A_i = [[-a_1, 1, 0, ...], [-a_2, 0, 1, ...], ..., [-a_(k-1), 0, ..., 0]],
        B_i[:, j] = b_j[1:] - b_j[0] a[1:],   C_i = e_1^T,   D[i, j] = b_j[0].

    The realization is minimal only if no pole of row i cancels in every entry of the row.

    >>> A, B, C, D = tf2ss([1.0, 0.0], [1.0, -0.5])
    >>> A.tolist(), B.tolist(), C.tolist(), D.tolist()
    ([[0.5]], [[0.5]], [[1.0]], [[1.0]])
    """
    return observable_realization(*normalize_tf(*check_tf(num, den)))


def observable_realization(num, den):
    """The realization of :func:`tf2ss` without its checks, written for autograd (built by
    concatenation, no assignment): differentiable in num and den.

    Shapes: num (p, m, k), den (p, k) with den[:, 0] != 0 -> A (n, n), B (n, m), C (p, n),
    D (p, m), n = p (k - 1). Per output row i, with a = den[i] / den[i, 0] and
    b_j = num[i, j] / den[i, 0] (Remark 3.2, recurrent form):

        A_i = [-a_{1:} | shift],   B_i[:, j] = b_j[1:] - b_j[0] a[1:],   C_i = e_1^T,
        D[i, j] = b_j[0].

    >>> A, B, C, D = observable_realization(np.array([[[2.0, 0.0]]]), np.array([[2.0, -1.0]]))
    >>> A.tolist(), B.tolist(), C.tolist(), D.tolist()
    ([[0.5]], [[0.5]], [[1.0]], [[1.0]])
    """
    p, m, k = onp.shape(num)
    r = k - 1
    a = den / den[:, :1]
    b = num / den[:, None, :1]
    D = b[:, :, 0]
    if r == 0:   # static gains: no state
        return onp.zeros((0, 0)), onp.zeros((0, m)), onp.zeros((p, 0)), D
    shift = onp.vstack([onp.eye(r - 1, r - 1), onp.zeros((1, r - 1))])
    rows, B_blocks = [], []
    for i in range(p):
        A_i = np.concatenate([-a[i, 1:, None], shift], axis=1)
        rows.append(np.concatenate([onp.zeros((r, i * r)), A_i, onp.zeros((r, (p - 1 - i) * r))], axis=1))
        B_blocks.append(np.transpose(b[i, :, 1:] - b[i, :, :1] * a[i, None, 1:]))
    C = onp.kron(onp.eye(p), onp.eye(1, r))
    return np.concatenate(rows, axis=0), np.concatenate(B_blocks, axis=0), C, D


def tf_impulse(num, den, L):
    delta = onp.zeros(L)
    delta[0] = 1.0
    p, m, _ = num.shape
    h = onp.empty((L, p, m))
    for i in range(p):
        for j in range(m):
            h[:, i, j] = ssig.lfilter(num[i, j], den[i], delta)
    return h
