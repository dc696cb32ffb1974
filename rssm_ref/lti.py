"""Discrete-time LTI systems in state-space and transfer-function form.

The building blocks of the Residual SSM (paper Fig. 3): Σ and Σ_r are LTI systems that
may be stored either as matrices (A, B, C, D) or as the polynomials of their transfer
matrix (Remark 3.2; parameter counts eqs. (8)-(9)). The state-space recursion is the
time-invariant case of the paper's eq. (2), with a feedthrough D:

    x(t+1) = A x(t) + B u(t),     y(t) = C x(t) + D u(t),     x(0) = 0 unless given.

Transfer matrices follow scipy (``lfilter``'s b, a): coefficients in **descending powers
of z**, one common denominator per output row, proper only (num and den have equal
length k), normalized so that ``den[:, 0] == 1``:

    H_ij(z) = (num[i, j, 0] z^(k-1) + ... + num[i, j, k-1]) / (den[i, 0] z^(k-1) + ... + den[i, k-1]).

Glossary (shapes)
-----------------
n : state dimension          m : number of inputs        p : number of outputs
k : number of coefficients per polynomial (order k - 1 per output row)
A (n, n), B (n, m), C (p, n), D (p, m)          state-space matrices
num (p, m, k), den (p, k)                       transfer matrix, descending powers of z
h (L, p, m)                                     Markov parameters, h[0] = D, h[t] = C A^(t-1) B
x (batch, n), u_t (batch, m), y_t (batch, p)    one streaming step
z (N,) complex                                  points where freqresp evaluates H(z)
k (..., n)  (den_from_reflection only)          reflection coefficients, |k| < 1

Public API
----------
markov_parameters(A, B, C, D, L) -> h (L, p, m)       (scan primitive; differentiable)
markov_parameters_ref(A, B, C, D, L)                  (plain loop, the twin)
den_from_reflection(k) -> den (..., n+1)              (step-up / Levinson; differentiable)
den_from_reflection_ref(k)
ss2tf(A, B, C, D) -> (num, den);  tf2ss(num, den) -> (A, B, C, D)
StateSpace(A, B, C, D), TransferFunction(num, den), from_scipy(sys)
sys.filter(u, path="recurrent"|"fft") -> y     (simulate: scipy.signal.dlsim / lfilter's job)
from_control(sys), sys.to_control()            (python-control, optional: pip install control)

>>> sys = TransferFunction([1.0, 0.0], [1.0, -0.5])      # H(z) = z / (z - 0.5)
>>> sys.impulse(4)[:, 0, 0].tolist()
[1.0, 0.5, 0.25, 0.125]
>>> bool(np.allclose(sys.to_ss().impulse(4), sys.impulse(4)))
True
"""
import autograd.numpy as np
import numpy as onp
import scipy.signal as ssig
from autograd.extend import defvjp, primitive

from rssm_ref.recurrence import _state_scan  # the scan primitive (recurrence never imports lti)
from rssm_ref.validation import (PATHS, check_array, check_length, check_option, check_state_space,
                                 check_tf, is_traced)

__all__ = [
    "markov_parameters", "markov_parameters_ref", "den_from_reflection", "den_from_theta",
    "den_from_reflection_ref", "ss2tf", "tf2ss", "observable_realization", "StateSpace", "TransferFunction",
    "from_scipy", "from_control",
]


def _filter_io(u, m):
    """Shape u for the batched filters: (batch, L, m) as is, (L, m) and, when m == 1,
    (L,) as one sequence. Returns (u3, unshape) with unshape(y3) giving y back in u's
    layout ((L, p), or (L,) for a SISO 1-D u)."""
    nd = onp.ndim(u)
    if nd == 3:
        return u, lambda y: y
    if nd == 2:
        return np.reshape(u, (1,) + onp.shape(u)), lambda y: y[0]
    if nd == 1 and m == 1:
        return np.reshape(u, (1, onp.shape(u)[0], 1)), lambda y: y[0, :, 0] if onp.shape(y)[2] == 1 else y[0]
    raise ValueError(f"u: expected shape (batch, L, {m}) or (L, {m})"
                     + (" or (L,)" if m == 1 else "") + f", got {onp.shape(u)}")


# ----------------------------------------------------------------------------- helpers


def _normalize_tf(num, den):
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
    G = _state_scan(A, onp.zeros((L - 2, m, n)), np.transpose(B))
    # h[t] = C A^(t-1) B for t = 1 .. L-1:  (C G^T) = (G C^T)^T
    tail = np.transpose(np.matmul(G, np.transpose(C)), (0, 2, 1))
    return np.concatenate([D[None], tail], axis=0)


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


# -------------------------------------------------------- reflection coefficients
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
    return _step_up(k)


def _step_up_np(k):
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
def _step_up(k):
    return _step_up_np(onp.asarray(k, dtype=float))[-1]


def _step_up_vjp(ans, k):
    def vjp(g):
        # reverse through a^(i+1)_j = a^(i)_j + k_i a^(i)_(i+1-j):
        #   dk_i = sum_j g_j a^(i)_(i+1-j),   da^(i)_l = g_l + k_i g_(i+1-l)
        k_np = onp.asarray(k, dtype=float)
        steps = _step_up_np(k_np)
        g = onp.asarray(g, dtype=float)
        dk = []
        for i in range(k_np.shape[-1] - 1, -1, -1):
            a_i = steps[i]
            dk.append(onp.sum(g[..., 1:] * a_i[..., ::-1], axis=-1))
            g = g[..., :-1] + k_np[..., i:i + 1] * g[..., :0:-1]
        return onp.stack(dk[::-1], axis=-1)
    return vjp


defvjp(_step_up, _step_up_vjp)


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
    return _step_up_np(_reflection(theta, bound))[-1]


K_MAX = 1.0 - 2.0 ** -40


def _reflection(theta, bound):
    return onp.clip(bound * onp.tanh(theta), -K_MAX, K_MAX)


def _den_from_theta_vjp(ans, theta, bound):
    t = onp.tanh(theta)
    inner = _step_up_vjp(ans, _reflection(theta, bound))
    return lambda g: inner(g) * (bound * (1.0 - t * t))


defvjp(den_from_theta, _den_from_theta_vjp)


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
    return observable_realization(*_normalize_tf(*check_tf(num, den)))


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


def _tf_impulse(num, den, L):
    delta = onp.zeros(L)
    delta[0] = 1.0
    p, m, _ = num.shape
    h = onp.empty((L, p, m))
    for i in range(p):
        for j in range(m):
            h[:, i, j] = ssig.lfilter(num[i, j], den[i], delta)
    return h


def _check_z(z):
    arr = onp.atleast_1d(onp.asarray(z))
    if arr.dtype.kind not in "fiuc":
        raise TypeError(f"z: dtype {arr.dtype} (expected real or complex numbers)")
    if arr.ndim != 1:
        raise ValueError(f"z: expected a scalar or a 1-D array of points, got shape {arr.shape}")
    if not onp.all(onp.isfinite(arr)):
        raise ValueError("z: contains NaN or inf (expected finite complex values)")
    return arr.astype(complex)


# ----------------------------------------------------------------------- classes
def _check_dt(dt):
    """The sampling period: True ("unspecified", scipy's and python-control's default) or
    a positive finite number; 0, None and False would mean a continuous-time system.

    >>> _check_dt(0.1), _check_dt(True)
    (0.1, True)
    """
    if dt is True:
        return True
    if isinstance(dt, (bool, type(None))) or not isinstance(dt, (int, float, onp.number)) \
            or not (onp.isfinite(dt) and dt > 0):
        raise ValueError(f"dt: {dt!r} (expected a positive sampling period, or True for "
                         "unspecified; a continuous-time system must be discretized first)")
    return dt if isinstance(dt, int) and not isinstance(dt, bool) else float(dt)


class StateSpace:
    """x(t+1) = A x(t) + B u(t), y(t) = C x(t) + D u(t) (the LTI case of eq. (2)).

    Shapes: A (n, n), B (n, m), C (p, n), D (p, m); float64 copies are kept. ``n = 0``
    (a static gain) is allowed. ``dt``: the sampling period (a positive number, or True
    for "unspecified" as in scipy and python-control; default 1), kept through every
    conversion (``to_tf``, ``to_scipy``, ``to_control``, ``from_scipy``, ``from_control``).

    >>> sys = StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]])
    >>> (sys.n_inputs, sys.n_outputs, sys.order, sys.is_stable())
    (1, 1, 1, True)
    """

    def __init__(self, A, B, C, D, dt=1):
        A, B, C, D = check_state_space(A, B, C, D)
        self.A, self.B, self.C, self.D = (onp.array(x, dtype=float) for x in (A, B, C, D))
        self.dt = _check_dt(dt)

    def __repr__(self):
        return f"StateSpace(n={self.order}, m={self.n_inputs}, p={self.n_outputs})"

    @property
    def n_inputs(self):
        """m, the number of inputs."""
        return self.B.shape[1]

    @property
    def n_outputs(self):
        """p, the number of outputs."""
        return self.C.shape[0]

    @property
    def order(self):
        """n, the state dimension."""
        return self.A.shape[0]

    def impulse(self, L):
        """Markov parameters h (L, p, m), h[0] = D, h[t] = C A^(t-1) B.

        >>> StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]]).impulse(3)[:, 0, 0].tolist()
        [0.0, 1.0, 0.5]
        """
        return markov_parameters(self.A, self.B, self.C, self.D, L)

    def poles(self):
        """Eigenvalues of A, shape (n,) complex.

        >>> StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]]).poles().tolist()
        [(0.5+0j)]
        """
        return onp.linalg.eigvals(self.A).astype(complex)

    def is_stable(self):
        """True when every pole has modulus < 1 (Schur stability).

        >>> StateSpace([[1.0]], [[1.0]], [[1.0]], [[0.0]]).is_stable()
        False
        """
        return bool(onp.all(onp.abs(self.poles()) < 1.0))

    def freqresp(self, z):
        """H(z) = C (zI - A)^-1 B + D at the points z (N,) -> (N, p, m) complex.

        >>> complex(StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]]).freqresp([1.0])[0, 0, 0])
        (2+0j)
        """
        z = _check_z(z)
        n = self.order
        if n == 0:
            return onp.broadcast_to(self.D.astype(complex), (z.size,) + self.D.shape).copy()
        M = z[:, None, None] * onp.eye(n) - self.A
        X = onp.linalg.solve(M, onp.broadcast_to(self.B.astype(complex), (z.size,) + self.B.shape))
        return onp.matmul(self.C, X) + self.D

    def filter(self, u, path="recurrent", x0=None):
        """Simulate the system on input sequences (what scipy.signal.dlsim does), eq. (2).

        Shapes: u (batch, L, m) -> y (batch, L, p); u (L, m) -> y (L, p); a SISO system
        also takes u (L,) -> y (L,). ``path``: "recurrent" (the state recursion,
        rssm_ref.recurrence.ss_filter; ``x0`` (batch, n) or (n,) an initial state) or
        "fft" (FFT convolution with the Markov parameters h, rssm_ref.convolution.
        ss_fft_filter; zero initial state). Both are differentiable with autograd.

        >>> sys = StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]])
        >>> sys.filter(np.ones(4)).tolist()
        [0.0, 1.0, 1.5, 1.75]
        >>> bool(np.allclose(sys.filter(np.ones(4), path="fft"), sys.filter(np.ones(4))))
        True
        """
        check_option("path", path, PATHS)
        u3, back = _filter_io(u, self.n_inputs)
        if path == "fft":
            if x0 is not None:
                raise ValueError("x0: given with path 'fft' (the FFT path starts from a zero "
                                 "state; expected path 'recurrent')")
            from rssm_ref.convolution import ss_fft_filter
            return back(ss_fft_filter(self.A, self.B, self.C, self.D, u3))
        from rssm_ref.recurrence import ss_filter
        return back(ss_filter(self.A, self.B, self.C, self.D, u3, x0=x0))

    def step(self, x, u_t):
        """One streaming step: (x(t), u(t)) -> (x(t+1), y(t)), batched.

        Shapes: x (batch, n), u_t (batch, m) -> x_next (batch, n), y_t (batch, p);
        1-D x (n,) and u_t (m,) give 1-D results. Same equations as eq. (2).

        >>> sys = StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]])
        >>> x, y = sys.step(np.zeros((2, 1)), np.ones((2, 1)))
        >>> x.tolist(), y.tolist()
        ([[1.0], [1.0]], [[0.0], [0.0]])
        """
        one_d = onp.ndim(x) == 1 and onp.ndim(u_t) == 1
        x = check_array("x", onp.atleast_2d(x) if one_d else x, ndim=2)
        u_t = check_array("u_t", onp.atleast_2d(u_t) if one_d else u_t, ndim=2)
        if onp.shape(x)[1] != self.order:
            raise ValueError(f"x: expected shape (batch, {self.order}), got {onp.shape(x)}")
        if onp.shape(u_t) != (onp.shape(x)[0], self.n_inputs):
            raise ValueError(f"u_t: expected shape ({onp.shape(x)[0]}, {self.n_inputs}) "
                             f"to match x, got {onp.shape(u_t)}")
        # x(t+1) = A x(t) + B u(t);  y(t) = C x(t) + D u(t)   (row vectors: x A^T)
        x_next = np.dot(x, self.A.T) + np.dot(u_t, self.B.T)
        y_t = np.dot(x, self.C.T) + np.dot(u_t, self.D.T)
        if one_d:
            return x_next[0], y_t[0]
        return x_next, y_t

    def to_ss(self):
        """Itself (a copy).

        >>> StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]]).to_ss().order
        1
        """
        return StateSpace(self.A, self.B, self.C, self.D, dt=self.dt)

    def to_tf(self):
        """TransferFunction via :func:`ss2tf` (non-minimal common denominator det(zI - A)).

        >>> StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]]).to_tf().den.tolist()
        [[1.0, -0.5]]
        """
        return TransferFunction(*ss2tf(self.A, self.B, self.C, self.D), dt=self.dt)

    def to_scipy(self):
        """scipy.signal.dlti in state-space form, with this system's ``dt``.

        >>> StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]]).to_scipy().dt
        1
        """
        return ssig.dlti(self.A, self.B, self.C, self.D, dt=self.dt)

    def to_control(self):
        """python-control StateSpace with this system's ``dt`` (needs ``pip install control``).

        >>> StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]]).to_control().dt
        1
        """
        control = _control()
        return control.ss(self.A, self.B, self.C, self.D, self.dt)


class TransferFunction:
    """Transfer matrix H(z) (p x m), one common denominator per output row (Remark 3.2).

    Shapes: num (p, m, k), den (p, k) in descending powers of z (or 1-D num, den for a
    SISO system). Stored normalized: equal lengths (left zero padding), den[:, 0] = 1.
    Improper rows (deg num > deg den) are refused. ``dt`` as for :class:`StateSpace`.

    >>> sys = TransferFunction([2.0, 1.0], [2.0, -1.0])
    >>> sys.num.tolist(), sys.den.tolist(), sys.order
    ([[[1.0, 0.5]]], [[1.0, -0.5]], 1)
    """

    def __init__(self, num, den, dt=1):
        num, den = check_tf(num, den)
        self.num, self.den = _normalize_tf(num, den)
        self.dt = _check_dt(dt)

    def __repr__(self):
        return f"TransferFunction(p={self.n_outputs}, m={self.n_inputs}, k={self.num.shape[2]})"

    @property
    def n_inputs(self):
        """m, the number of inputs."""
        return self.num.shape[1]

    @property
    def n_outputs(self):
        """p, the number of outputs."""
        return self.num.shape[0]

    @property
    def order(self):
        """State dimension of :meth:`to_ss`: p (k - 1) (k - 1 per output row)."""
        return self.n_outputs * (self.num.shape[2] - 1)

    def impulse(self, L):
        """Impulse response h (L, p, m): lfilter(num[i, j], den[i], delta).

        >>> TransferFunction([0.0, 1.0], [1.0, -0.5]).impulse(3)[:, 0, 0].tolist()
        [0.0, 1.0, 0.5]
        """
        L = check_length("L", L)
        return _tf_impulse(self.num, self.den, L)

    def poles(self):
        """Roots of every denominator row, concatenated: (p (k - 1),) complex.

        >>> TransferFunction([0.0, 1.0], [1.0, -0.5]).poles().tolist()
        [(0.5+0j)]
        """
        roots = [onp.roots(row).astype(complex) if onp.any(row[1:]) else onp.zeros(row.size - 1, complex)
                 for row in self.den]
        return onp.concatenate(roots) if roots else onp.zeros(0, complex)

    def is_stable(self):
        """True when every pole has modulus < 1.

        >>> TransferFunction([0.0, 1.0], [1.0, -1.5]).is_stable()
        False
        """
        return bool(onp.all(onp.abs(self.poles()) < 1.0))

    def freqresp(self, z):
        """H(z) = num(z) / den(z) at the points z (N,) -> (N, p, m) complex.

        >>> complex(TransferFunction([0.0, 1.0], [1.0, -0.5]).freqresp([1.0])[0, 0, 0])
        (2+0j)
        """
        z = _check_z(z)
        k = self.num.shape[2]
        zp = z[:, None] ** onp.arange(k - 1, -1, -1)  # (N, k) descending powers
        bn = onp.einsum("ijk,nk->nij", self.num, zp)
        an = onp.einsum("ik,nk->ni", self.den, zp)
        return bn / an[:, :, None]

    def filter(self, u, path="recurrent"):
        """Simulate the transfer matrix on input sequences (scipy.signal.lfilter per
        channel, summed over inputs), zero initial conditions (Remark 3.2).

        Shapes: u (batch, L, m) -> y (batch, L, p); u (L, m) -> y (L, p); a SISO system
        also takes u (L,) -> y (L,). ``path``: "recurrent" (the difference equation,
        rssm_ref.recurrence.tf_filter) or "fft" (the exact FFT route of Section 4.1,
        rssm_ref.convolution.tf_fft_filter). Both are differentiable with autograd.

        >>> sys = TransferFunction([1.0, 0.0], [1.0, -0.5])
        >>> sys.filter(np.ones(3)).tolist()
        [1.0, 1.5, 1.75]
        >>> np.round(sys.filter(np.ones(3), path="fft"), 12).tolist()
        [1.0, 1.5, 1.75]
        """
        check_option("path", path, PATHS)
        u3, back = _filter_io(u, self.n_inputs)
        if path == "fft":
            from rssm_ref.convolution import tf_fft_filter
            return back(tf_fft_filter(self.num, self.den, u3))
        from rssm_ref.recurrence import tf_filter
        return back(tf_filter(self.num, self.den, u3))

    def to_tf(self):
        """Itself (a copy).

        >>> TransferFunction([1.0], [1.0]).to_tf().order
        0
        """
        return TransferFunction(self.num, self.den, dt=self.dt)

    def to_ss(self):
        """StateSpace via :func:`tf2ss` (block-diagonal observable companion).

        >>> TransferFunction([0.0, 1.0], [1.0, -0.5]).to_ss().A.tolist()
        [[0.5]]
        """
        return StateSpace(*tf2ss(self.num, self.den), dt=self.dt)

    def to_scipy(self):
        """scipy.signal.dlti with this system's ``dt``: tf form for SISO, ss form (via tf2ss)
        for MIMO.

        >>> TransferFunction([0.0, 1.0], [1.0, -0.5]).to_scipy().den.tolist()
        [1.0, -0.5]
        """
        if self.n_inputs == 1 and self.n_outputs == 1:
            # drop the numerator's leading zeros ourselves (same H(z); scipy would warn)
            b = onp.trim_zeros(self.num[0, 0], "f")
            return ssig.dlti(b if b.size else onp.zeros(1), self.den[0], dt=self.dt)
        return ssig.dlti(*tf2ss(self.num, self.den), dt=self.dt)

    def to_control(self):
        """python-control TransferFunction (p x m) with this system's ``dt`` (needs
        ``pip install control``).

        >>> TransferFunction([0.0, 1.0], [1.0, -0.5]).to_control().dt
        1
        """
        control = _control()
        num = [[_trim(self.num[i, j]) for j in range(self.n_inputs)] for i in range(self.n_outputs)]
        den = [[self.den[i].copy() for _ in range(self.n_inputs)] for i in range(self.n_outputs)]
        return control.tf(num, den, self.dt)


def from_scipy(sys):
    """StateSpace or TransferFunction from a discrete scipy.signal.dlti (ss, tf or zpk form).

    A dlti in state-space form gives a StateSpace; tf form gives a TransferFunction (a 2-D
    scipy numerator (p, k) is a single-input, p-output system with a common denominator);
    zpk form is turned into tf form first. The sampling period ``sys.dt`` is kept on the
    result (``.dt``) and given back by ``to_scipy``.

    >>> import scipy.signal as ssig
    >>> from_scipy(ssig.dlti([1.0], [1.0, -0.5], dt=1)).impulse(3)[:, 0, 0].tolist()
    [0.0, 1.0, 0.5]
    """
    if type(sys).__module__.split(".")[0] == "control":
        raise TypeError(f"sys: a python-control {type(sys).__name__} (expected a scipy.signal.dlti; "
                        "use rssm_ref.lti.from_control for python-control systems)")
    if not isinstance(sys, ssig.dlti):
        raise TypeError(f"sys: expected a discrete-time scipy.signal.dlti, got {type(sys).__name__}")
    if isinstance(sys, ssig.StateSpace):
        return StateSpace(sys.A, sys.B, sys.C, sys.D, dt=sys.dt)
    if isinstance(sys, ssig.ZerosPolesGain):
        sys = sys.to_tf()
    if isinstance(sys, ssig.TransferFunction):
        num = onp.atleast_2d(onp.real_if_close(onp.asarray(sys.num)))
        den = onp.real_if_close(onp.asarray(sys.den))
        if onp.iscomplexobj(num) or onp.iscomplexobj(den):
            raise TypeError("sys: complex transfer-function coefficients (expected a real system)")
        p = num.shape[0]
        return TransferFunction(num[:, None, :], onp.tile(onp.atleast_1d(den), (p, 1)),
                                dt=sys.dt)
    raise TypeError(f"sys: unsupported dlti form {type(sys).__name__} (expected ss, tf or zpk)")


# ------------------------------------------------------------------ python-control
def _control():
    try:
        import control
    except ImportError:
        raise ImportError("python-control is not installed (pip install control, or "
                          "pip install 'rssm-ref[control]')") from None
    return control


def _trim(b):
    """Leading zeros off a numerator (at least one coefficient kept)."""
    t = onp.trim_zeros(onp.asarray(b, dtype=float), "f")
    return t if t.size else onp.zeros(1)


def from_control(sys):
    """StateSpace or TransferFunction from a discrete-time python-control system.

    ``control.StateSpace`` -> StateSpace(A, B, C, D). ``control.TransferFunction`` (p x m,
    one denominator per channel) -> TransferFunction with one common denominator per
    output row: equal denominators in a row are kept once, different ones multiplied
    together (and each numerator by the others). The sampling period ``sys.dt`` is kept
    (``.dt``, True when unspecified); a continuous-time system (dt = 0) is refused: discretize it first
    (``control.sample_system`` or rssm_ref.discretize.cont2discrete).

    >>> import control
    >>> h = from_control(control.tf([1.0, 0.5], [1.0, -0.9], True)).impulse(3)[:, 0, 0]
    >>> np.round(h, 12).tolist()
    [1.0, 1.4, 1.26]
    """
    control = _control()
    if not isinstance(sys, (control.StateSpace, control.TransferFunction)):
        raise TypeError(f"sys: expected a python-control StateSpace or TransferFunction, got "
                        f"{type(sys).__name__}")
    if not sys.isdtime(strict=True):
        raise ValueError("sys: a continuous-time system (dt = 0; expected a discrete-time one: "
                         "discretize with control.sample_system or rssm_ref.discretize.cont2discrete)")
    if isinstance(sys, control.StateSpace):
        return StateSpace(sys.A, sys.B, sys.C, sys.D, dt=sys.dt)
    p, m = sys.noutputs, sys.ninputs
    nums, dens = [], []
    for i in range(p):
        row_num = []
        row_den = []
        for j in range(m):
            a = onp.trim_zeros(onp.asarray(sys.den[i][j], dtype=float), "f")
            b = _trim(sys.num[i][j])
            row_num.append(b / a[0])
            row_den.append(a / a[0])
        distinct = []
        for a in row_den:
            if not any(a.shape == d.shape and onp.array_equal(a, d) for d in distinct):
                distinct.append(a)
        common = onp.ones(1)
        for d in distinct:
            common = onp.polymul(common, d)
        row = []
        for b, a in zip(row_num, row_den):
            for d in distinct:
                if not (a.shape == d.shape and onp.array_equal(a, d)):
                    b = onp.polymul(b, d)
            row.append(b)
        nums.append(row)
        dens.append(common)
    k = max(max(len(d) for d in dens), max(len(b) for row in nums for b in row))
    num = onp.zeros((p, m, k))
    den = onp.zeros((p, k))
    for i in range(p):
        den[i, k - len(dens[i]):] = dens[i]
        for j in range(m):
            num[i, j, k - len(nums[i][j]):] = nums[i][j]
    return TransferFunction(num, den, dt=sys.dt)
