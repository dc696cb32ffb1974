"""The gating mechanism Sigma_g of the Residual SSM: eq. (5) and Remark 3.1's ZOH form.

Eq. (5) (``mode="euler"``), one gate value s(t) per time step shared by the m channels:

    y(t+1) = y(t) + (y_s(t) - y(t)) s(t)                                  (5)

Remark 3.1 reads (5) as the forward-Euler (first-order Taylor) discretization of
y' = -y + y_s (eq. (6)) with sampling time s(t); the exact zero-order hold (eq. (7)'s
starting point, ``mode="zoh"``) is

    y(t+1) = e^{-s(t)} y(t) + (1 - e^{-s(t)}) y_s(t),   1 - e^{-s} computed as -expm1(-s).

Both are the first-order linear recurrence y(t+1) = a(t) y(t) + b(t) y_s(t) with
(a, b) = (1 - s, s) or (e^{-s}, -expm1(-s)); a + b = 1, so with 0 <= s <= 1 (euler) or
s >= 0 (zoh) every y(t+1) is a convex combination of y(t) and y_s(t). Since
e^{-s} - (1 - s) lies in [0, s^2/2], one step of (5) and of the ZOH gate from the same
y(t), y_s(t) differ by at most s^2/2 |y(t) - y_s(t)| (Remark 3.1's Taylor bound).

Fast path: the whole batch is one lower-bidiagonal unit-triangular system
(I - diag(a) S) y = b y_s + (a(0) y0 at t = 0), S the shift by one step, solved by
forward substitution in LAPACK (``dtbtrs``): the same sequential scan as the loop, at
C speed, no cumulative products (which overflow or underflow over long sequences), so
L = 65536 with s near 0 or 1 is fine. Its VJP is the reverse-time adjoint scan (the
transposed solve). ``gate_ref`` is the plain loop of the equations.

Glossary (shapes)
-----------------
batch, L, m      sequences, length, channels
y_s (batch, L, m)  gate input y_s(0..L-1);  s (batch, L) gate values s(0..L-1)
y0 (batch, m)      initial value y(0) (default 0)
y (batch, L, m)    output y(1..L): y[:, t] = y(t+1)
a, b (batch, L)    recurrence coefficients: euler (1 - s, s), zoh (e^{-s}, 1 - e^{-s})
lam (batch, L, m)  adjoint sequence: lam(t) = g(t) + a(t+1) lam(t+1), g the cotangent of y

>>> import autograd.numpy as np
>>> y = gate(np.ones((1, 3, 1)), np.full((1, 3), 0.5))
>>> y[0, :, 0].tolist()
[0.5, 0.75, 0.875]
>>> y = gate(np.ones((1, 2, 1)), np.full((1, 2), 0.5), mode="zoh")
>>> [round(float(v), 12) for v in y[0, :, 0]]
[0.393469340287, 0.632120558829]
"""
import autograd.numpy as np
import numpy as onp

from rssm_ref.kernels.gate import gate_final_kernel, gate_kernel
from rssm_ref.validation import check_array, check_option, GATES, is_traced

__all__ = ["gate", "gate_ref", "gate_step", "gate_final", "gate_final_ref"]


# ---------------------------------------------------------------- validation


def _check_s_values(name, s, mode):
    if is_traced(s) or onp.size(s) == 0:
        return
    lo = float(onp.min(s))
    hi = float(onp.max(s))
    if mode == "euler" and not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"{name}: expected gate values in [0, 1] for mode='euler' (eq. (5)), "
                         f"got values in [{lo:.6g}, {hi:.6g}]")
    if mode == "zoh" and not lo >= 0.0:
        raise ValueError(f"{name}: expected nonnegative gate values (sampling times) for "
                         f"mode='zoh', got min {lo:.6g}")


def _check_gate_args(y_s, s, y0, mode):
    check_option("mode", mode, GATES)
    y_s = check_array("y_s", y_s, ndim=3)
    batch, L, m = onp.shape(y_s)
    if batch == 0 or L == 0 or m == 0:
        raise ValueError(f"y_s: expected shape (batch, L, m) with every size >= 1, got "
                         f"{onp.shape(y_s)}")
    s = check_array("s", s, shape=(batch, L))
    _check_s_values("s", s, mode)
    if y0 is None:
        y0 = onp.zeros((batch, m))
    else:
        y0 = check_array("y0", y0, shape=(batch, m))
    return y_s, s, y0


# ---------------------------------------------------------------- public API
def gate_ref(y_s, s, y0=None, mode="euler"):
    """Plain loop twin of :func:`gate`, straight from eq. (5) / Remark 3.1.

    Same shapes and arguments as :func:`gate`. Differentiable by autograd itself
    (collects the steps and stacks them). Slow: for tests.

    >>> gate_ref(np.ones((1, 3, 1)), np.full((1, 3), 0.5))[0, :, 0].tolist()
    [0.5, 0.75, 0.875]
    """
    y_s, s, y0 = _check_gate_args(y_s, s, y0, mode)
    L = onp.shape(y_s)[1]
    y = y0
    ys = []
    for t in range(L):
        s_t = s[:, t][:, None]
        if mode == "euler":
            # (5)
            y = y + (y_s[:, t] - y) * s_t
        else:
            # Remark 3.1: y(t+1) = e^{-s} y(t) + (1 - e^{-s}) y_s(t)
            y = np.exp(-s_t) * y + (-np.expm1(-s_t)) * y_s[:, t]
        ys.append(y)
    return np.stack(ys, axis=1)


def gate(y_s, s, y0=None, mode="euler"):
    """Run the gate of eq. (5) (mode="euler") or Remark 3.1's ZOH gate (mode="zoh").

    Shapes: y_s (batch, L, m), s (batch, L) (one gate value per step, shared by the m
    channels), y0 (batch, m) or None (zeros) -> y (batch, L, m) = y(1..L).

        euler  y(t+1) = y(t) + (y_s(t) - y(t)) s(t)                        (5)
        zoh    y(t+1) = e^{-s(t)} y(t) + (1 - e^{-s(t)}) y_s(t)            (Remark 3.1)

    s must lie in [0, 1] for "euler" (the paper's s = sigma(r) is in (0, 1)) and be >= 0
    for "zoh". A LAPACK forward-substitution scan; differentiable with autograd in y_s,
    s and y0 through a custom VJP (the reverse-time adjoint scan).

    >>> y = gate(np.ones((1, 2, 1)), np.array([[0.5, 1.0]]), y0=np.array([[3.0]]))
    >>> y[0, :, 0].tolist()
    [2.0, 1.0]
    """
    y_s, s, y0 = _check_gate_args(y_s, s, y0, mode)
    return gate_kernel(y_s, s, y0, mode)


def gate_final_ref(y_s, s, mode="euler"):
    """Twin of :func:`gate_final`: the loop of eq. (5) / Remark 3.1, last step kept.

    >>> gate_final_ref(np.ones((1, 3, 1)), np.full((1, 3), 0.5)).tolist()
    [[0.875]]
    """
    return gate_ref(y_s, s, None, mode)[:, -1]


def gate_final(y_s, s, mode="euler"):
    """The gate's last output y(L) only, from y(0) = 0: what the models' readout uses.

    Shapes: y_s (batch, L, m), s (batch, L) -> y(L) (batch, m). Eq. (5) (or Remark 3.1
    with ``mode="zoh"``) unrolled:

        y(L) = sum_{t<L} b(t) [prod_{t<k<L} a(k)] y_s(t),   (a, b) as in :func:`gate`

    one reversed cumulative product and one weighted sum, O(batch L m) with no scan and
    no (batch, L, m) output. Its VJP (hand-written) needs the states y(t), recomputed by
    the LAPACK scan of :func:`gate`. Same checks as :func:`gate`; equal to
    ``gate(y_s, s, mode=mode)[:, -1]`` to rounding (tests: ``fast_vs_ref``).

    >>> gate_final(np.ones((1, 3, 1)), np.full((1, 3), 0.5)).tolist()
    [[0.875]]
    """
    y_s, s, _ = _check_gate_args(y_s, s, None, mode)
    return gate_final_kernel(y_s, s, mode)


def gate_step(y, y_s_t, s_t, mode="euler"):
    """One step of the gate for streaming inference: y(t) -> y(t+1).

    Shapes: y (batch, m) = y(t), y_s_t (batch, m) = y_s(t), s_t (batch,) = s(t)
    -> y(t+1) (batch, m). Same equations and value checks as :func:`gate`; running it
    for t = 0..L-1 from y(0) = y0 reproduces ``gate(y_s, s, y0, mode)``.

    >>> gate_step(np.array([[0.0]]), np.array([[1.0]]), np.array([0.25]))[0].tolist()
    [0.25]
    """
    check_option("mode", mode, GATES)
    y = check_array("y", y, ndim=2)
    batch, m = onp.shape(y)
    y_s_t = check_array("y_s_t", y_s_t, shape=(batch, m))
    s_t = check_array("s_t", s_t, shape=(batch,))
    _check_s_values("s_t", s_t, mode)
    s_c = s_t[:, None]
    if mode == "euler":
        # (5)
        return y + (y_s_t - y) * s_c
    # Remark 3.1
    return np.exp(-s_c) * y + (-np.expm1(-s_c)) * y_s_t
