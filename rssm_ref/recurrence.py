"""Recurrent (time-stepping) paths of LTI systems, differentiable through custom VJPs.

The recurrent half of the paper's "dual convolutional-recurrence perspective" (Section
4.1, Remark 3.2): the same LTI system run step by step, as a difference equation
(transfer-function form) or as the state recursion of eq. (2) (state-space form).

Transfer function (descending powers of z, row i shares den[i]):

    a_0 y_i(t) = sum_j sum_l b_ijl u_j(t - l) - sum_{l >= 1} a_il y_i(t - l)

State space (the time-invariant case of eq. (2), with feedthrough D):

    x(t+1) = A x(t) + B u(t),   y(t) = C x(t) + D u(t),   x(0) = x0 (default 0).

Hot loops over time are custom autograd primitives (``lfilter_prim``, ``state_scan``)
whose VJPs are the time-reversed (adjoint) recursions; the ``_ref`` twins are plain
loops written from the equations, differentiable by autograd itself.

Glossary (shapes)
-----------------
batch, L : sequences and their length      m, p, n : inputs, outputs, states
u (batch, L, m) -> y (batch, L, p)
num (p, m, k), den (p, k)                  transfer matrix (scipy's b, a per channel)
A (n, n), B (n, m), C (p, n), D (p, m)     state space; x0 (batch, n) or (n,)
b, a (k,), x (..., L)                      lfilter_prim: one filter along the last axis
g                                          adjoint (cotangent) sequence, same shape as y

>>> import autograd.numpy as np
>>> u = np.ones((1, 4, 1))
>>> tf_filter(np.array([[[0.0, 1.0]]]), np.array([[1.0, -0.5]]), u)[0, :, 0].tolist()
[0.0, 1.0, 1.5, 1.75]
>>> ss_filter([[0.5]], [[1.0]], [[1.0]], [[0.0]], u)[0, :, 0].tolist()
[0.0, 1.0, 1.5, 1.75]
"""
import autograd.numpy as np
import numpy as onp

from rssm_ref.kernels.recurrence import (impulse_kernel, lfilter_kernel, state_scan, take_rows,
                                         tf_filter_kernel)
from rssm_ref.realization import tf_impulse_ref
from rssm_ref.validation import check_array, check_state_space, is_traced

__all__ = ["lfilter_prim", "tf_filter", "tf_filter_ref", "ss_filter", "ss_filter_ref",
           "impulse_response", "impulse_response_ref"]


def lfilter_prim(b, a, x):
    """scipy.signal.lfilter(b, a, x) along the last axis, as an autograd primitive.

    Shapes: b (k,), a (k,) (equal lengths, a[0] != 0, descending powers of z as in
    scipy), x (..., L) -> y (..., L). The difference equation is

        a_0 y(t) = sum_j b_j x(t - j) - sum_{i >= 1} a_i y(t - i),  i.e. T_a y = T_b x,

    with T_c the lower-triangular Toeplitz (causal convolution) matrix of c. Its VJP for
    a cotangent dy, with g = T_a^-T dy (``lfilter([1], a)`` run backwards in time):

        dx = T_b^T g = T_a^-T T_b^T dy   (the time-reversed lfilter(b, a) of dy),
        db_j = sum_t g(t) x(t - j),       da_i = -sum_t g(t) y(t - i),

    summed over all leading axes (b and a are shared). The second form follows from
    differentiating T_a y = T_b x: T_a dy_ = (dT_b) x - (dT_a) y. The VJP of the VJP is
    not defined (autograd would need it only for second derivatives).

    >>> lfilter_prim(np.array([1.0, 0.0]), np.array([1.0, -0.5]), np.ones(3)).tolist()
    [1.0, 1.5, 1.75]
    """
    b = check_array("b", b, ndim=1)
    a = check_array("a", a, ndim=1)
    if onp.shape(b) != onp.shape(a) or onp.shape(a)[0] == 0:
        raise ValueError(f"b, a: expected two non-empty 1-D arrays of the same length (pad the "
                         f"shorter on the left), got shapes {onp.shape(b)} and {onp.shape(a)}")
    if not is_traced(a) and onp.asarray(a)[0] == 0.0:
        raise ValueError("a: zero leading coefficient a[0] (expected a[0] != 0)")
    x = check_array("x", x)
    if onp.ndim(x) < 1:
        raise ValueError("x: expected shape (..., L), got a scalar")
    return lfilter_kernel(b, a, x)


def impulse_response_ref(num, den, L):
    """Twin of :func:`impulse_response`: the difference equation on an impulse, a loop
    (``rssm_ref.realization.tf_impulse_ref``).

    >>> impulse_response_ref([[[0.0, 1.0]]], [[1.0, -0.5]], 3)[:, 0, 0].tolist()
    [0.0, 1.0, 0.5]
    """
    return tf_impulse_ref(num, den, L)


def impulse_response(num, den, L):
    """The first L Markov parameters of a transfer matrix by its difference equation.

    Shapes: num (p, m, k), den (p, k) (descending powers of z, den[:, 0] != 0), L >= 1
    -> h (L, p, m), h[t] the response at time t to a unit impulse at 0 (Remark 3.2):

        g_i = lfilter([1], den_i, delta),   h[t, i, j] = sum_l num[i, j, l] g_i(t - l)

    p scipy calls and one small contraction: the training path's kernel. Its VJP
    (hand-written) runs one backward all-pole filter per row, as in :func:`lfilter_prim`:
    dnum_ijl = sum_t dh_ij(t) g_i(t - l), dden_il = -sum_j,t lam_ij(t) h_ij(t - l) with
    lam_ij = T_(a_i)^-T dh_ij. Twin: ``rssm_ref.convolution.tf_kernel_ref``.

    >>> impulse_response(np.array([[[0.0, 1.0]]]), np.array([[1.0, -0.5]]), 4)[:, 0, 0].tolist()
    [0.0, 1.0, 0.5, 0.25]
    """
    num, den, _ = _check_tf_filter_args(num, den, onp.zeros((1, 1, onp.shape(num)[1])))
    if int(L) != L or L < 1:
        raise ValueError(f"L: {L!r} (expected an integer >= 1)")
    return impulse_kernel(num, den, int(L))


# ------------------------------------------------------------- transfer function
def _check_nonempty(u):
    if onp.shape(u)[0] == 0 or onp.shape(u)[1] == 0:
        raise ValueError(f"u: expected batch >= 1 and L >= 1, got shape {onp.shape(u)}")


def _check_tf_filter_args(num, den, u):
    num = check_array("num", num, ndim=3)
    p, m, k = onp.shape(num)
    den = check_array("den", den, ndim=2)
    if onp.shape(den) != (p, k):
        raise ValueError(f"den: expected shape ({p}, {k}) (one denominator per output row of num "
                         f"{onp.shape(num)}, same length), got {onp.shape(den)}")
    if k == 0:
        raise ValueError("num, den: expected at least one coefficient, got an empty polynomial")
    if not is_traced(den) and onp.any(onp.asarray(den)[:, 0] == 0.0):
        raise ValueError("den: zero leading coefficient den[:, 0] (expected den[:, 0] != 0)")
    u = check_array("u", u, ndim=3)
    if onp.shape(u)[2] != m:
        raise ValueError(f"u: expected shape (batch, L, {m}) to match num {onp.shape(num)}, got {onp.shape(u)}")
    _check_nonempty(u)
    return num, den, u


def tf_filter_ref(num, den, u):
    """Plain loop twin of :func:`tf_filter`, straight from the difference equation.

        a_i0 y_i(t) = sum_j sum_l num[i, j, l] u_j(t - l) - sum_{l >= 1} den[i, l] y_i(t - l)

    Loops over batch, time and output rows; differentiable by autograd (lists, no
    assignment). Slow: for tests only.

    >>> tf_filter_ref([[[1.0, 0.0]]], [[1.0, -0.5]], np.ones((1, 3, 1)))[0, :, 0].tolist()
    [1.0, 1.5, 1.75]
    """
    num, den, u = _check_tf_filter_args(num, den, u)
    p, m, k = onp.shape(num)
    batch, L, _ = onp.shape(u)
    out = []
    for bi in range(batch):
        ys = []  # ys[t] has shape (p,)
        for t in range(L):
            row_vals = []
            for i in range(p):
                acc = 0.0
                for l in range(k):
                    if t - l >= 0:
                        acc = acc + np.dot(num[i, :, l], u[bi, t - l])
                for l in range(1, k):
                    if t - l >= 0:
                        acc = acc - den[i, l] * ys[t - l][i]
                row_vals.append(acc / den[i, 0])
            ys.append(np.stack(row_vals))
        out.append(np.stack(ys))
    return np.stack(out)


def tf_filter(num, den, u):
    """Run a transfer matrix over batched sequences by its difference equation (fast path).

    Shapes: num (p, m, k), den (p, k) (descending powers of z, den[:, 0] != 0, need not
    be 1), u (batch, L, m) -> y (batch, L, p), zero initial conditions:

        y_i = sum_j lfilter(num[i, j], den[i], u_j)      (Remark 3.2, recurrent form)

    p * m scipy lfilter calls (SISO is exactly one) in one custom primitive; its VJP runs
    p backward all-pole filters g_i = T_(a_i)^-T dy_i and p * m backward FIR filters
    (see :func:`lfilter_prim` for the formulas). Differentiable in num, den and u.

    >>> tf_filter([[[1.0, 0.0]]], [[1.0, -0.5]], np.ones((1, 3, 1)))[0, :, 0].tolist()
    [1.0, 1.5, 1.75]
    """
    num, den, u = _check_tf_filter_args(num, den, u)
    return tf_filter_kernel(num, den, u)


_CHUNK = 64  # time steps per block of the untraced forward: blocks stay in cache


def _ss_forward_np(A, B, C, D, u, x0):
    """Untraced forward of ss_filter in plain NumPy: same arithmetic, less memory traffic.

    Time is processed in blocks of ``_CHUNK`` steps; B u, C x and D u are block matrix
    products, and no (batch, L, n) state array is ever allocated (fresh large arrays cost
    page faults comparable to the recursion itself). Returns y (batch, L, p), x(L).
    """
    batch, L, m = u.shape
    n = A.shape[0]
    p = C.shape[0]
    AT, BT, CT, DT = (onp.ascontiguousarray(M.T) for M in (A, B, C, D))
    y = onp.empty((L, batch, p))
    Xc = onp.empty((_CHUNK + 1, batch, n))
    Xc[0] = x0
    for s in range(0, L, _CHUNK):
        w = min(_CHUNK, L - s)
        uc = onp.ascontiguousarray(onp.swapaxes(u[:, s:s + w], 0, 1)).reshape(w * batch, m)
        # v(t) = B u(t) for the block
        vc = onp.dot(uc, BT).reshape(w, batch, n)
        for t in range(w):
            # x(t+1) = A x(t) + v(t)
            onp.matmul(Xc[t], AT, out=Xc[t + 1])
            Xc[t + 1] += vc[t]
        # y(t) = C x(t) + D u(t)
        y[s:s + w] = (onp.dot(Xc[:w].reshape(w * batch, n), CT) + onp.dot(uc, DT)).reshape(w, batch, p)
        Xc[0] = Xc[w]
    return onp.swapaxes(y, 0, 1), Xc[0].copy()


def _check_ss_filter_args(A, B, C, D, u, x0):
    A, B, C, D = check_state_space(A, B, C, D)
    n, m = onp.shape(B)
    u = check_array("u", u, ndim=3)
    if onp.shape(u)[2] != m:
        raise ValueError(f"u: expected shape (batch, L, {m}) to match B {onp.shape(B)}, got {onp.shape(u)}")
    _check_nonempty(u)
    batch = onp.shape(u)[0]
    if x0 is None:
        x0 = onp.zeros((batch, n))
    else:
        x0 = check_array("x0", x0)
        if onp.shape(x0) == (n,):
            x0 = x0 + onp.zeros((batch, n))  # broadcast (differentiable)
        elif onp.shape(x0) != (batch, n):
            raise ValueError(f"x0: expected shape ({batch}, {n}) or ({n},), got {onp.shape(x0)}")
    return A, B, C, D, u, x0


def ss_filter_ref(A, B, C, D, u, x0=None, return_state=False):
    """Plain loop twin of :func:`ss_filter`: over batch and time, straight from eq. (2).

    >>> ss_filter_ref([[0.5]], [[1.0]], [[1.0]], [[1.0]], np.ones((1, 3, 1)))[0, :, 0].tolist()
    [1.0, 2.0, 2.5]
    """
    A, B, C, D, u, x0 = _check_ss_filter_args(A, B, C, D, u, x0)
    batch, L, _ = onp.shape(u)
    ys, xs = [], []
    for bi in range(batch):
        x = x0[bi]
        yb = []
        for t in range(L):
            # y(t) = C x(t) + D u(t);  x(t+1) = A x(t) + B u(t)
            yb.append(np.dot(C, x) + np.dot(D, u[bi, t]))
            x = np.dot(A, x) + np.dot(B, u[bi, t])
        ys.append(np.stack(yb) if L else np.zeros((0, onp.shape(C)[0])))
        xs.append(x)
    y = np.stack(ys)
    if return_state:
        return y, np.stack(xs)
    return y


def ss_filter(A, B, C, D, u, x0=None, return_state=False):
    """Run a state-space system over batched sequences (fast path, eq. (2) with D).

    Shapes: A (n, n), B (n, m), C (p, n), D (p, m), u (batch, L, m), x0 (batch, n) or
    (n,) or None (zeros) -> y (batch, L, p); with ``return_state`` also x(L) (batch, n).

        x(t+1) = A x(t) + B u(t),   y(t) = C x(t) + D u(t),   t = 0 .. L-1.

    B u and C x, D u are batched matrix products; only x(t+1) = A x(t) + v(t) is a loop,
    vectorized over the batch, in a custom primitive whose VJP is the adjoint recursion
    lam(t) = A^T lam(t+1) + C^T dy(t) run backwards (dA = sum_t lam(t+1) x(t)^T,
    dv(t) = lam(t+1), dx0 = lam(0)). Differentiable in A, B, C, D, u and x0. When no
    argument is being differentiated, a blocked plain-NumPy forward that never stores the
    states is used instead (same arithmetic).

    >>> y, xL = ss_filter([[0.5]], [[1.0]], [[1.0]], [[1.0]], np.ones((1, 3, 1)), return_state=True)
    >>> y[0, :, 0].tolist(), xL.tolist()
    ([1.0, 2.0, 2.5], [[1.75]])
    """
    A, B, C, D, u, x0 = _check_ss_filter_args(A, B, C, D, u, x0)
    if not any(is_traced(z) for z in (A, B, C, D, u, x0)):
        y, xL = _ss_forward_np(A, B, C, D, u, x0)
        return (y, xL) if return_state else y
    n = onp.shape(A)[0]
    batch, L, m = onp.shape(u)
    p = onp.shape(C)[0]
    # time-major rows (L * batch, m): one copy of u, then plain 2-D matrix products
    u_tm = np.reshape(np.transpose(u, (1, 0, 2)), (L * batch, m))
    # v(t) = B u(t) for every t at once
    v = np.reshape(np.dot(u_tm, np.transpose(B)), (L, batch, n))
    X = state_scan(A, v, x0)  # (L+1, batch, n): x(0) .. x(L)
    # y(t) = C x(t) + D u(t)
    y_tm = np.dot(np.reshape(take_rows(X, 0, L), (L * batch, n)), np.transpose(C)) + np.dot(u_tm, np.transpose(D))
    y = np.transpose(np.reshape(y_tm, (L, batch, p)), (1, 0, 2))
    if return_state:
        return y, take_rows(X, L, L + 1)[0]
    return y


