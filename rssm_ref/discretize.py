"""Discretization of continuous-time systems: Mamba's eq. (3) and the classic methods.

Mamba's selective SSM (Section 3.2.1) turns a continuous diagonal system into a
discrete one with a per-step sampling time Delta (zero-order hold, ZOH):

    A_t = exp(Delta A)                                                   (3a)
    B_t = A^{-1} (exp(Delta A) - I) B_bar = Delta phi1(Delta A) B_bar    (3b)

with phi1(x) = (e^x - 1) / x = integral_0^1 e^{x tau} d tau (phi1(0) = 1). Evaluated
as written, (3b) cancels catastrophically for small |Delta A| and divides 0 by 0 at
Delta A = 0; ``phi1`` has neither problem. mamba_ssm's kernels use the Euler rule
B_t = Delta B_bar instead (``convention="euler"``); it differs from (3b) by O(Delta^2).

``cont2discrete`` discretizes a full (non-diagonal) state space the way
``scipy.signal.cont2discrete`` does (ZOH by the exponential of a block matrix, forward
Euler, bilinear/Tustin). It uses ``scipy.linalg.expm`` and linear solves, so it is NOT
differentiable by autograd (not meant for a differentiated path); ``mamba_discretize``
and ``phi1`` are.

Glossary (shapes)
-----------------
x                        any shape; phi1(x) same shape (elementwise)
A, delta, B_bar          mamba_discretize: arrays broadcast together elementwise
                         (e.g. A (d, n), delta (batch, L, d, 1), B_bar (batch, L, 1, n));
                         A < 0 (diagonal of a Hurwitz matrix), delta > 0
A_t, B_t                 exp(delta A) (shape of A * delta), B_t (all three broadcast)
A (n, n), B (n, m)       cont2discrete: continuous state space ...
C (p, n), D (p, m)       ... and its output equation; dt > 0 scalar sampling time
Ad, Bd, Cd, Dd           the discrete system, same shapes
J_k(x)                   integral_0^1 t^k e^{x t} dt = k-th derivative of phi1 (J_0 = phi1)

>>> import autograd.numpy as np
>>> A_t, B_t = mamba_discretize(np.array([-1.0]), np.array([0.5]), np.array([2.0]))
>>> round(float(A_t[0]), 12), round(float(B_t[0]), 12)
(0.606530659713, 0.786938680575)
"""
import autograd.numpy as np
import numpy as onp
import scipy.linalg as sla
from autograd.extend import defvjp, primitive

from rssm_ref.kernels.selective import phi_deriv_np
from rssm_ref.validation import check_array, is_traced

__all__ = ["phi1", "mamba_discretize", "cont2discrete", "cont2discrete_ref"]


@primitive
def _phi_deriv(x, k):
    return phi_deriv_np(x, k)


# d/dx J_k = J_{k+1}: every order of derivative is available (and exact-formula based)
defvjp(_phi_deriv, lambda ans, x, k: lambda g: g * _phi_deriv(x, k + 1))


def phi1(x):
    """phi1(x) = expm1(x) / x with phi1(0) = 1, elementwise, differentiable.

    Shapes: x any shape -> same shape. This is the factor of eq. (3b):
    A^{-1}(exp(Delta A) - 1) = Delta phi1(Delta A). Accurate to a few ulps everywhere:
    no cancellation for tiny |x| (a power series there), no 0/0 at x = 0, no overflow
    or NaN for large negative x (phi1(x) -> -1/x); for x > ~716 the true value exceeds
    the float64 range and the result is inf. Its derivative phi1'(x) = J_1(x) =
    int_0^1 t e^{x t} dt (1/2 at x = 0) is computed by the same stable scheme, as are
    all higher derivatives, so autograd gradients are exact at and near x = 0.

    >>> [round(float(v), 12) for v in phi1(np.array([0.0, 1e-300, -1.0, -1e3]))]
    [1.0, 1.0, 0.632120558829, 0.001]
    >>> from autograd import grad
    >>> float(grad(lambda x: phi1(x))(0.0))
    0.5
    """
    x = check_array("x", x)
    return _phi_deriv(x, 0)


# --------------------------------------------------------------- Mamba eq. (3)
def _broadcast_shape(**arrays):
    shapes = {k: onp.shape(v) for k, v in arrays.items()}
    try:
        return onp.broadcast_shapes(*shapes.values())
    except ValueError:
        desc = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"{', '.join(shapes)}: shapes do not broadcast together ({desc}; "
                         "expected NumPy-broadcastable shapes)") from None


def mamba_discretize(A, delta, B_bar, convention="zoh"):
    """Mamba's discretization, eqs. (3a)-(3b), elementwise with broadcasting.

    Shapes: A, delta, B_bar broadcast together (diagonal A as an array of its entries,
    e.g. A (d, n), delta (batch, L, d, 1), B_bar (batch, L, 1, n)). Returns
    A_t (broadcast of A and delta) and B_t (broadcast of all three). A must be < 0
    (the diagonal of a Hurwitz matrix) and delta > 0.

        A_t = exp(delta A)                                   (3a)
        B_t = delta phi1(delta A) B_bar                      (3b), convention="zoh"
            = A^{-1} (exp(delta A) - 1) B_bar                (the paper's form)
        B_t = delta B_bar                                    convention="euler"
                                                             (mamba_ssm's kernels)

    Differentiable (autograd) in A, delta and B_bar. Large delta: A_t -> 0 and
    B_t -> -B_bar / A; small delta: A_t -> 1, B_t -> delta B_bar (Section 3.2.1).

    >>> A_t, B_t = mamba_discretize(np.array([-2.0]), np.array([1e-13]), np.array([1.0]))
    >>> float(B_t[0]) == 1e-13 * (1 - 1e-13)
    True
    >>> _, B_e = mamba_discretize(np.array([-2.0]), np.array([0.1]), np.array([1.0]), "euler")
    >>> round(float(B_e[0]), 12)
    0.1
    """
    if convention not in ("zoh", "euler"):
        raise ValueError(f"convention: expected 'zoh' or 'euler', got {convention!r}")
    A = check_array("A", A)
    delta = check_array("delta", delta)
    B_bar = check_array("B_bar", B_bar)
    _broadcast_shape(A=A, delta=delta, B_bar=B_bar)
    if not is_traced(A) and onp.size(A) and not onp.all(A < 0):
        raise ValueError(f"A: expected strictly negative entries (the diagonal of a Hurwitz "
                         f"matrix), got max {float(onp.max(A)):.6g}")
    if not is_traced(delta) and onp.size(delta) and not onp.all(delta > 0):
        raise ValueError(f"delta: expected strictly positive step sizes, got min "
                         f"{float(onp.min(delta)):.6g}")
    dA = delta * A
    # (3a)
    A_t = np.exp(dA)
    if convention == "zoh":
        # (3b): A^{-1}(exp(delta A) - 1) = delta phi1(delta A), no cancellation, no 0/0
        B_t = delta * phi1(dA) * B_bar
    else:
        # forward Euler for the input matrix, as mamba_ssm's selective_scan does
        B_t = delta * B_bar
    return A_t, B_t


# ------------------------------------------------------ classic state-space methods
_METHODS = ("zoh", "euler", "bilinear")


def _check_ss(A, B, C, D, dt, method):
    if method not in _METHODS:
        raise ValueError(f"method: expected one of 'zoh', 'euler', 'bilinear', got {method!r}")
    A = check_array("A", A, ndim=2)
    n = A.shape[0]
    if A.shape != (n, n) or n == 0:
        raise ValueError(f"A: expected a non-empty square matrix (n, n), got shape {A.shape}")
    B = check_array("B", B, ndim=2)
    if B.shape[0] != n or B.shape[1] == 0:
        raise ValueError(f"B: expected shape ({n}, m) with m >= 1 to match A {A.shape}, got {B.shape}")
    m = B.shape[1]
    C = check_array("C", C, ndim=2)
    if C.shape[1] != n or C.shape[0] == 0:
        raise ValueError(f"C: expected shape (p, {n}) with p >= 1 to match A {A.shape}, got {C.shape}")
    p = C.shape[0]
    D = check_array("D", D, shape=(p, m))
    if isinstance(dt, (bool, onp.bool_)) or onp.ndim(dt) != 0:
        raise TypeError(f"dt: expected a real scalar sampling time, got {type(dt).__name__} "
                        f"of shape {onp.shape(dt)}")
    dt = float(check_array("dt", dt))
    if not dt > 0:
        raise ValueError(f"dt: expected a positive sampling time, got {dt!r}")
    return A, B, C, D, dt


def _tustin_matrix(A, dt):
    n = A.shape[0]
    ima = onp.eye(n) - 0.5 * dt * A
    # A pole at 2/dt makes the bilinear map singular (z = infinity)
    if onp.linalg.cond(ima) > 1.0 / onp.finfo(float).eps:
        raise ValueError(f"A, dt: I - dt/2 A is singular (A has an eigenvalue near 2/dt = "
                         f"{2.0 / dt:.6g}); expected no eigenvalue at 2/dt for the bilinear method")
    return ima


def cont2discrete_ref(A, B, C, D, dt, method="zoh"):
    """Slow twin of :func:`cont2discrete` by a different route (tests only).

    Shapes as :func:`cont2discrete`. ZOH from the series definitions, with scaling and
    squaring instead of scipy's Pade approximant of a block matrix:

        E(h) = e^{A h} = sum_k (A h)^k / k!,   F(h) = int_0^h e^{A s} ds = h sum_k (A h)^k / (k+1)!
        E(2h) = E(h)^2,                          F(2h) = F(h) + E(h) F(h)

    with h = dt / 2^q small enough that ||A h||_1 <= 1/2; then Ad = E(dt), Bd = F(dt) B.
    Euler and bilinear straight from their formulas with an explicit inverse.

    >>> Ad, Bd, _, _ = cont2discrete_ref([[-1.0]], [[1.0]], [[1.0]], [[0.0]], 0.5)
    >>> round(float(Ad[0, 0]), 12), round(float(Bd[0, 0]), 12)
    (0.606530659713, 0.393469340287)
    """
    A, B, C, D, dt = _check_ss(A, B, C, D, dt, method)
    n = A.shape[0]
    eye = onp.eye(n)
    if method == "euler":
        return eye + dt * A, dt * B, C.copy(), D.copy()
    if method == "bilinear":
        Minv = onp.linalg.inv(_tustin_matrix(A, dt))
        Ad = Minv @ (eye + 0.5 * dt * A)
        Bd = Minv @ (dt * B)
        Cd = C @ Minv
        Dd = D + 0.5 * dt * (C @ Minv @ B)
        return Ad, Bd, Cd, Dd
    norm = float(onp.max(onp.sum(onp.abs(A), axis=0))) * dt
    q = max(0, int(onp.ceil(onp.log2(norm / 0.5)))) if norm > 0.5 else 0
    h = dt / 2.0 ** q
    Ah = A * h
    E = eye.copy()
    F = eye.copy()  # F / h, summed as sum (A h)^k / (k+1)!
    term = eye.copy()
    for k in range(1, 40):
        term = term @ Ah / k                 # (A h)^k / k!
        E = E + term
        F = F + term / (k + 1)               # (A h)^k / (k+1)!
        if onp.max(onp.abs(term)) < 1e-20:
            break
    F = h * F
    for _ in range(q):
        E, F = E @ E, F + E @ F
    return E, F @ B, C.copy(), D.copy()


def cont2discrete(A, B, C, D, dt, method="zoh"):
    """Discretize x' = A x + B u, y = C x + D u with sampling time dt (as scipy does).

    Shapes: A (n, n), B (n, m), C (p, n), D (p, m), dt > 0 scalar ->
    (Ad (n, n), Bd (n, m), Cd (p, n), Dd (p, m)), all float64. Matches
    ``scipy.signal.cont2discrete((A, B, C, D), dt, method)[:4]``:

      zoh       expm(dt [[A, B], [0, 0]]) = [[Ad, Bd], [0, I]]: Ad = e^{A dt},
                Bd = int_0^dt e^{A s} ds B (the general-A form of eq. (3)); Cd = C, Dd = D.
      euler     forward difference: Ad = I + dt A, Bd = dt B, Cd = C, Dd = D.
      bilinear  Tustin, s = (2/dt)(z - 1)/(z + 1): with M = I - dt/2 A,
                Ad = M^{-1}(I + dt/2 A), Bd = M^{-1} dt B, Cd = C M^{-1},
                Dd = D + dt/2 C M^{-1} B = D + C Bd / 2.

    Not differentiable by autograd (uses scipy.linalg.expm and solves); keep it off
    differentiated paths. For a diagonal A use :func:`mamba_discretize`.

    >>> Ad, Bd, Cd, Dd = cont2discrete([[-1.0]], [[1.0]], [[1.0]], [[0.0]], 0.5)
    >>> round(float(Ad[0, 0]), 12), round(float(Bd[0, 0]), 12)
    (0.606530659713, 0.393469340287)
    """
    A, B, C, D, dt = _check_ss(A, B, C, D, dt, method)
    n, m = B.shape
    if method == "zoh":
        # d/dt [x; u] = [[A, B], [0, 0]] [x; u] with u held constant over the step
        em = onp.zeros((n + m, n + m))
        em[:n, :n] = A
        em[:n, n:] = B
        ms = sla.expm(dt * em)
        return ms[:n, :n].copy(), ms[:n, n:].copy(), C.copy(), D.copy()
    if method == "euler":
        # x(t+dt) ~ x(t) + dt (A x(t) + B u(t))
        return onp.eye(n) + dt * A, dt * B, C.copy(), D.copy()
    # bilinear (Tustin): generalized bilinear transform with alpha = 1/2, as scipy
    ima = _tustin_matrix(A, dt)
    Ad = sla.solve(ima, onp.eye(n) + 0.5 * dt * A)
    Bd = sla.solve(ima, dt * B)
    Cd = sla.solve(ima.T, C.T).T
    Dd = D + 0.5 * (C @ Bd)
    return Ad, Bd, Cd, Dd


