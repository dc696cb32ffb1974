"""Backend-neutral batched kernels of the LTI core and the gate, with hand-written VJPs.

The same blocks as ``recurrence``, ``convolution`` and ``gate``, written against the
Python array API standard so that one source runs on NumPy, on CuPy (GPU) and on
``array_api_strict`` (the test that no NumPy-only call creeps in). The array module is
taken from the arrays (``rssm_ref.xp.backend.namespace_of``); nothing here names NumPy.

Only the work that grows with batch x L lives here. Parameter-side work (kernels h from
(num, den) or (A, B, C, D), realizations, discretizations of small matrices) stays on the
host in the autograd cores (``rssm_ref.xp.models`` joins the two).

autograd holds NumPy arrays only, so every kernel comes as a pair: ``f(...)`` and
``f_vjp(saved, g)``, the reverse-mode rule written out by hand (the same adjoint
recursions as the NumPy cores' custom primitives). Each fast kernel has a ``_ref`` twin
written straight from its equation.

Glossary (shapes)
-----------------
batch, L, m, p, n    sequences, length, inputs, outputs, states
a, x (batch, L, ...)   diag_scan: H(t) = a(t) H(t-1) + x(t), H(-1) = 0   (eq. (2), eq. (5))
A (n, n), v (batch, L, n)   state_scan: S(t) = A S(t-1) + v(t), S(-1) = 0   (eq. (2), LTI)
A, B, C, D            state space, x(t+1) = A x(t) + B u(t), y(t) = C x(t) + D u(t), x(0) = 0
h (L, p, m)           Markov kernel; causal_conv: y(t) = sum_k h(k) u(t-k)   (Remark 3.2)
y_s (batch, L, m), s (batch, L)   gate input and values (eq. (5) / Remark 3.1)
g                     a cotangent, same shape as the output it belongs to

>>> import numpy
>>> a = numpy.full((1, 3), 0.5); x = numpy.ones((1, 3))
>>> diag_scan(a, x).tolist()
[[1.0, 1.5, 1.75]]
"""
from rssm_ref.xp.backend import namespace_of

__all__ = ["shift_time", "diag_scan", "diag_scan_ref", "diag_scan_vjp",
           "state_scan", "state_scan_vjp", "ss_forward", "ss_forward_ref", "ss_vjp",
           "fft_len", "causal_conv", "causal_conv_ref", "causal_conv_vjp",
           "gate_coefficients", "gate_forward", "gate_forward_ref", "gate_vjp",
           "sum_to_shape"]


# ------------------------------------------------------------------ helpers
def shift_time(x, d, fill=0.0):
    """x delayed by d steps along axis 1: out(t) = x(t - d), ``fill`` for t < d.

    Shapes: x (batch, L, ...) -> same.

    >>> import numpy
    >>> shift_time(numpy.array([[1.0, 2.0, 3.0]]), 1).tolist()
    [[0.0, 1.0, 2.0]]
    """
    xp = namespace_of(x)
    L = x.shape[1]
    d = min(d, L)
    pad = xp.full((x.shape[0], d) + tuple(x.shape[2:]), fill, dtype=x.dtype)
    return xp.concat([pad, x[:, :L - d, ...]], axis=1)


def advance(x, fill=0.0):
    """out(t) = x(t + 1), ``fill`` at t = L - 1 (the adjoint of a one-step delay)."""
    xp = namespace_of(x)
    pad = xp.full((x.shape[0], 1) + tuple(x.shape[2:]), fill, dtype=x.dtype)
    return xp.concat([x[:, 1:, ...], pad], axis=1)


def sum_to_shape(g, shape):
    """Sum a broadcast cotangent back to ``shape`` (the VJP of broadcasting).

    >>> import numpy
    >>> sum_to_shape(numpy.ones((2, 3, 4)), (3, 1)).tolist()
    [[8.0], [8.0], [8.0]]
    """
    xp = namespace_of(g)
    shape = tuple(shape)
    lead = g.ndim - len(shape)
    if lead > 0:
        g = xp.sum(g, axis=tuple(range(lead)))
    axes = tuple(i for i, size in enumerate(shape) if size == 1 and g.shape[i] != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return g


def _flat(x):
    """(batch, L, k) -> (batch * L, k): sums over batch and time become one matmul."""
    xp = namespace_of(x)
    return xp.reshape(x, (x.shape[0] * x.shape[1], x.shape[2]))


def outer_sum(g, x):
    """sum over batch and time of g(t) x(t)^T: (batch, L, p), (batch, L, q) -> (p, q)."""
    xp = namespace_of(g, x)
    return xp.matmul(xp.matrix_transpose(_flat(g)), _flat(x))


# ------------------------------------------------------------ diagonal (elementwise) scan
def diag_scan_ref(a, x):
    """The plain loop twin of :func:`diag_scan`, straight from H(t) = a(t) H(t-1) + x(t).

    >>> import numpy
    >>> diag_scan_ref(numpy.full((1, 3), 0.5), numpy.ones((1, 3))).tolist()
    [[1.0, 1.5, 1.75]]
    """
    xp = namespace_of(a, x)
    a = xp.broadcast_to(a, x.shape)
    h = xp.zeros_like(x[:, 0, ...])
    out = []
    for t in range(x.shape[1]):
        h = a[:, t, ...] * h + x[:, t, ...]
        out.append(h)
    return xp.stack(out, axis=1)


def diag_scan(a, x):
    """H(t) = a(t) H(t-1) + x(t), H(-1) = 0, along axis 1, elementwise (fast path).

    Shapes: x (batch, L, ...), a broadcastable to x -> H like x. The recurrence of eq. (2)
    for diagonal A_t (the selective SSM) and of eq. (5) (the gate, a = 1 - s).

    Hillis-Steele doubling: after the pass with offset d, H(t) holds the recurrence over
    the last 2d inputs and P(t) the product of the a's over them, so log2(L) whole-array
    passes replace L dependent steps (what a GPU needs). Each H(t) is the same sum as the
    sequential loop in another order; with |a| <= 1 (every use here) the two agree to a
    few ulps times log2(L).

    >>> import numpy
    >>> diag_scan(numpy.full((1, 4), 0.5), numpy.ones((1, 4))).tolist()
    [[1.0, 1.5, 1.75, 1.875]]
    """
    xp = namespace_of(a, x)
    P = xp.broadcast_to(a, x.shape)
    H = x
    L = x.shape[1]
    d = 1
    while d < L:
        # H(t) <- H(t) + P(t) H(t - d): join the window ending at t - d (empty before t = 0)
        H = H + P * shift_time(H, d)
        if 2 * d < L:
            # P(t) <- P(t) P(t - d); the empty window's product is 1
            P = P * shift_time(P, d, fill=1.0)
        d *= 2
    return H


def diag_scan_vjp(a, H, g):
    """VJP of :func:`diag_scan`: (da, dx), both of H's shape (sum with ``sum_to_shape``).

    The adjoint recursion runs backwards in time,

        λ(t) = g(t) + a(t+1) λ(t+1),   ∂/∂x(t) = λ(t),   ∂/∂a(t) = λ(t) H(t-1),

    itself a diagonal scan on the time-reversed sequences.

    >>> import numpy
    >>> a = numpy.full((1, 3), 0.5); x = numpy.ones((1, 3))
    >>> da, dx = diag_scan_vjp(a, diag_scan(a, x), numpy.ones((1, 3)))
    >>> dx.tolist()
    [[1.75, 1.5, 1.0]]
    """
    xp = namespace_of(a, H, g)
    a_next = advance(xp.broadcast_to(a, H.shape))
    lam = xp.flip(diag_scan(xp.flip(a_next, axis=1), xp.flip(g, axis=1)), axis=1)
    return lam * shift_time(H, 1), lam


# ------------------------------------------------------------ time-invariant state scan
def state_scan(A, v):
    """S(t) = A S(t-1) + v(t), S(-1) = 0: the LTI state recursion of eq. (2), row form.

    Shapes: A (n, n), v (batch, L, n) -> S (batch, L, n); S(t) is the state x(t+1) after
    consuming v(t) = B u(t). One small matrix product per step over the whole batch: the
    recurrence itself, so its rounding is that of the NumPy cores (repeated squaring of A
    was measured up to ~1e-9 off for companion matrices with poles near |z| = 1, see
    ``rssm_ref.lti.markov_parameters``). On a GPU the FFT path is the fast one.

    >>> import numpy
    >>> state_scan(numpy.array([[0.5]]), numpy.ones((1, 3, 1)))[0, :, 0].tolist()
    [1.0, 1.5, 1.75]
    """
    xp = namespace_of(A, v)
    At = xp.matrix_transpose(A)
    s = xp.zeros_like(v[:, 0, :])
    out = []
    for t in range(v.shape[1]):
        s = xp.matmul(s, At) + v[:, t, :]
        out.append(s)
    return xp.stack(out, axis=1)


def state_scan_vjp(A, S, g):
    """VJP of :func:`state_scan`: (dA (n, n), dv (batch, L, n)).

        λ(t) = g(t) + A^T λ(t+1),   dv(t) = λ(t),   dA = sum_t λ(t) S(t-1)^T.

    >>> import numpy
    >>> A = numpy.array([[0.5]]); S = state_scan(A, numpy.ones((1, 3, 1)))
    >>> dA, dv = state_scan_vjp(A, S, numpy.ones((1, 3, 1)))
    >>> dv[0, :, 0].tolist(), float(dA[0, 0])
    ([1.75, 1.5, 1.0], 3.0)
    """
    xp = namespace_of(A, S, g)
    lam = xp.flip(state_scan(xp.matrix_transpose(A), xp.flip(g, axis=1)), axis=1)
    return outer_sum(lam, shift_time(S, 1)), lam


def ss_forward_ref(A, B, C, D, u):
    """Loop twin of :func:`ss_forward` (output only), one time step at a time.

    >>> import numpy
    >>> ss_forward_ref(*[numpy.array([[v]]) for v in (0.5, 1.0, 1.0, 0.0)], numpy.ones((1, 3, 1)))[0, :, 0].tolist()
    [0.0, 1.0, 1.5]
    """
    xp = namespace_of(A, B, C, D, u)
    x = xp.zeros((u.shape[0], A.shape[0]), dtype=u.dtype)
    ys = []
    for t in range(u.shape[1]):
        u_t = u[:, t, :]
        ys.append(xp.matmul(x, xp.matrix_transpose(C)) + xp.matmul(u_t, xp.matrix_transpose(D)))
        x = xp.matmul(x, xp.matrix_transpose(A)) + xp.matmul(u_t, xp.matrix_transpose(B))
    return xp.stack(ys, axis=1)


def ss_forward(A, B, C, D, u):
    """y(t) = C x(t) + D u(t), x(t+1) = A x(t) + B u(t), x(0) = 0 (eq. (2), LTI; the output
    is read before the update, as in ``rssm_ref.recurrence.ss_filter``).

    Shapes: A (n, n), B (n, m), C (p, n), D (p, m), u (batch, L, m) -> (y (batch, L, p),
    S (batch, L, n)), S(t) = x(t+1), kept for the VJP.

    >>> import numpy
    >>> y, _ = ss_forward(*[numpy.array([[v]]) for v in (0.5, 1.0, 1.0, 0.0)], numpy.ones((1, 4, 1)))
    >>> y[0, :, 0].tolist()
    [0.0, 1.0, 1.5, 1.75]
    """
    xp = namespace_of(A, B, C, D, u)
    # x(t+1) = A x(t) + B u(t)
    S = state_scan(A, xp.matmul(u, xp.matrix_transpose(B)))
    # y(t) = C x(t) + D u(t), x(t) = S(t-1)
    y = xp.matmul(shift_time(S, 1), xp.matrix_transpose(C)) + xp.matmul(u, xp.matrix_transpose(D))
    return y, S


def ss_vjp(A, B, C, D, u, S, g):
    """VJP of :func:`ss_forward`: dict with "A", "B", "C", "D" and "u".

    >>> import numpy
    >>> M = [numpy.array([[v]]) for v in (0.5, 1.0, 1.0, 0.0)]
    >>> u = numpy.ones((1, 3, 1)); y, S = ss_forward(*M, u)
    >>> ss_vjp(*M, u, S, numpy.ones((1, 3, 1)))["u"][0, :, 0].tolist()
    [1.5, 1.0, 0.0]
    """
    xp = namespace_of(A, B, C, D, u, S, g)
    X = shift_time(S, 1)
    dX = xp.matmul(g, C)
    # x(t) = S(t-1): the cotangent of S(t) is that of x(t+1)
    dA, dv = state_scan_vjp(A, S, advance(dX))
    return {"A": dA, "B": outer_sum(dv, u), "C": outer_sum(g, X), "D": outer_sum(g, u),
            "u": xp.matmul(dv, B) + xp.matmul(g, D)}


# ------------------------------------------------------------ FFT convolution
def fft_len(L):
    """The FFT length used for a causal convolution of length L: the smallest power of
    two >= 2L (even, and long enough that the circular product has no wrap-around).

    >>> fft_len(5), fft_len(8)
    (16, 16)
    """
    K = 2
    while K < 2 * L:
        K *= 2
    return K


def _spectra(h, u):
    xp = namespace_of(h, u)
    K = fft_len(u.shape[1])
    # the standard's fft takes n by keyword only (autograd is not involved here)
    return xp.fft.rfft(h, n=K, axis=0), xp.fft.rfft(u, n=K, axis=1), K


def causal_conv_ref(h, u):
    """Direct O(L^2) twin of :func:`causal_conv`: y = sum_k (u delayed by k) h(k)^T.

    >>> import numpy
    >>> causal_conv_ref(numpy.ones((3, 1, 1)), numpy.ones((1, 3, 1)))[0, :, 0].tolist()
    [1.0, 2.0, 3.0]
    """
    xp = namespace_of(h, u)
    y = xp.zeros((u.shape[0], u.shape[1], h.shape[1]), dtype=u.dtype)
    for k in range(u.shape[1]):
        y = y + xp.matmul(shift_time(u, k), xp.matrix_transpose(h[k, ...]))
    return y


def causal_conv(h, u):
    """y(t) = sum_{k=0}^{t} h(k) u(t-k), the convolution form of an LTI system (Remark 3.2).

    Shapes: h (L, p, m), u (batch, L, m) -> y (batch, L, p). Zero-padded FFTs of length
    ``fft_len(L)`` >= 2L, so the circular product equals the linear one: exact to
    round-off given the exact kernel h (the aliasing correction of
    ``rssm_ref.convolution.tf_kernel`` happens where h is made, on the host).

    >>> import numpy
    >>> h = numpy.array([0.5 ** t for t in range(4)])[:, None, None]
    >>> [round(float(v), 12) for v in causal_conv(h, numpy.ones((1, 4, 1)))[0, :, 0]]
    [1.0, 1.5, 1.75, 1.875]
    """
    xp = namespace_of(h, u)
    L = u.shape[1]
    Hf, U, K = _spectra(h, u)
    # Y(f) = H(f) U(f) per frequency: (batch, F, 1, m) @ (F, m, p)
    Y = xp.matmul(U[:, :, None, :], xp.matrix_transpose(Hf))[:, :, 0, :]
    return xp.fft.irfft(Y, n=K, axis=1)[:, :L, :]


def causal_conv_vjp(h, u, g):
    """VJP of :func:`causal_conv`: (dh (L, p, m), du (batch, L, m)), both correlations:

        du(t) = sum_k h(k)^T g(t + k),    dh(k) = sum_b sum_t g(t) u(t - k)^T,

    computed as conj(H) G and sum_b G conj(U) on the same zero-padded grid (no wrap).

    >>> import numpy
    >>> dh, du = causal_conv_vjp(numpy.ones((3, 1, 1)), numpy.ones((1, 3, 1)), numpy.ones((1, 3, 1)))
    >>> [round(float(v), 12) for v in du[0, :, 0]], [round(float(v), 12) for v in dh[:, 0, 0]]
    ([3.0, 2.0, 1.0], [3.0, 2.0, 1.0])
    """
    xp = namespace_of(h, u, g)
    L = u.shape[1]
    Hf, U, K = _spectra(h, u)
    G = xp.fft.rfft(g, n=K, axis=1)
    # dU(f) = H(f)^H G(f): (batch, F, 1, p) @ (F, p, m)
    dU = xp.matmul(G[:, :, None, :], xp.conj(Hf))[:, :, 0, :]
    du = xp.fft.irfft(dU, n=K, axis=1)[:, :L, :]
    # dH(f) = sum_b G_b(f) U_b(f)^H: (F, p, batch) @ (F, batch, m)
    dHf = xp.matmul(xp.permute_dims(G, (1, 2, 0)), xp.conj(xp.permute_dims(U, (1, 0, 2))))
    dh = xp.fft.irfft(dHf, n=K, axis=0)[:L, ...]
    return dh, du


# ------------------------------------------------------------ the gate, eq. (5)
def gate_coefficients(s, mode):
    """(a, b, db/ds) of y(t+1) = a(t) y(t) + b(t) y_s(t):

        euler (eq. (5))        a = 1 - s,      b = s,                 db/ds = 1
        zoh (Remark 3.1)     a = 1 - b,      b = 1 - e^{-s} = -expm1(-s),  db/ds = e^{-s}

    as in ``rssm_ref.gate`` (a = 1 - b, one transcendental). Shapes: s (batch, L).

    >>> import numpy
    >>> [v.tolist() for v in gate_coefficients(numpy.array([0.25]), "euler")]
    [[0.75], [0.25], [1.0]]
    """
    xp = namespace_of(s)
    if mode == "euler":
        return 1.0 - s, s, xp.ones_like(s)
    if mode == "zoh":
        b = -xp.expm1(-s)
        return 1.0 - b, b, xp.exp(-s)
    raise ValueError(f"mode: expected 'euler' or 'zoh', got {mode!r}")


def gate_forward_ref(y_s, s, mode="euler"):
    """Loop twin of :func:`gate_forward`, straight from eq. (5) / Remark 3.1.

    >>> import numpy
    >>> gate_forward_ref(numpy.ones((1, 2, 1)), numpy.full((1, 2), 0.5))[0, :, 0].tolist()
    [0.5, 0.75]
    """
    xp = namespace_of(y_s, s)
    y = xp.zeros_like(y_s[:, 0, :])
    out = []
    for t in range(y_s.shape[1]):
        s_t = s[:, t][:, None]
        if mode == "euler":
            # (5) y(t+1) = y(t) + (y_s(t) - y(t)) s(t)
            y = y + (y_s[:, t, :] - y) * s_t
        else:
            # Remark 3.1: y(t+1) = e^{-s} y(t) + (1 - e^{-s}) y_s(t)
            y = xp.exp(-s_t) * y + (-xp.expm1(-s_t)) * y_s[:, t, :]
        out.append(y)
    return xp.stack(out, axis=1)


def gate_forward(y_s, s, mode="euler"):
    """The gate Σ_g from y(0) = 0: y(t+1) = a(t) y(t) + b(t) y_s(t) (eq. (5) / Remark 3.1).

    Shapes: y_s (batch, L, m), s (batch, L) -> y (batch, L, m) = y(1..L), the same
    convention as ``rssm_ref.gate.gate``. A diagonal scan (doubling).

    >>> import numpy
    >>> gate_forward(numpy.ones((1, 3, 1)), numpy.full((1, 3), 0.5))[0, :, 0].tolist()
    [0.5, 0.75, 0.875]
    """
    a, b, _ = gate_coefficients(s, mode)
    return diag_scan(a[:, :, None], b[:, :, None] * y_s)


def gate_vjp(y_s, s, y, g, mode="euler"):
    """VJP of :func:`gate_forward`: (dy_s (batch, L, m), ds (batch, L)).

    With λ from the adjoint scan (``diag_scan_vjp``): dy_s = b λ and, since a = 1 - b,
    ds = (db/ds) sum_m λ (y_s(t) - y(t)), y(t) the value before the step.

    >>> import numpy
    >>> y_s = numpy.ones((1, 2, 1)); s = numpy.full((1, 2), 0.5)
    >>> dy_s, ds = gate_vjp(y_s, s, gate_forward(y_s, s), numpy.ones((1, 2, 1)))
    >>> dy_s[0, :, 0].tolist(), ds[0].tolist()
    ([0.75, 0.5], [1.5, 0.5])
    """
    xp = namespace_of(y_s, s, y, g)
    a, b, db_ds = gate_coefficients(s, mode)
    _, lam = diag_scan_vjp(xp.broadcast_to(a[:, :, None], y.shape), y, g)
    y_prev = shift_time(y, 1)
    ds = db_ds * xp.sum(lam * (y_s - y_prev), axis=2)
    return b[:, :, None] * lam, ds
