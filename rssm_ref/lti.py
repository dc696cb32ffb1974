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
z (...) complex                                 points of sys(z): H (...) SISO, (..., p, m) MIMO
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
sys.poles(), sys.zeros()                       (roots of den and num, scipy's tf2zpk / ss2zpk)
sys(z) -> H(z);  sys.dcgain() -> H(1)
G * H (series: H feeds G), G + H (parallel), k * G, -G, G - H   (python-control's rules)

>>> sys = TransferFunction([1.0, 0.0], [1.0, -0.5])      # H(z) = z / (z - 0.5)
>>> sys.impulse(4)[:, 0, 0].tolist()
[1.0, 0.5, 0.25, 0.125]
>>> bool(np.allclose(sys.to_ss().impulse(4), sys.impulse(4)))
True
"""
import functools

import autograd.numpy as np
import numpy as onp
import scipy.signal as ssig

from rssm_ref.convolution import ss_fft_filter, tf_fft_filter
from rssm_ref.realization import (den_from_reflection, den_from_reflection_ref, den_from_theta,
                                  markov_parameters, markov_parameters_ref, normalize_tf,
                                  observable_realization, ss2tf, tf2ss, tf_impulse)
from rssm_ref.recurrence import ss_filter, tf_filter
from rssm_ref.validation import (check_array, check_length, check_option, check_state_space,
                                 check_tf, PATHS)

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
def _check_z(z):
    arr = onp.atleast_1d(onp.asarray(z))
    if arr.dtype.kind not in "fiuc":
        raise TypeError(f"z: dtype {arr.dtype} (expected real or complex numbers)")
    if arr.ndim != 1:
        raise ValueError(f"z: expected a scalar or a 1-D array of points, got shape {arr.shape}")
    if not onp.all(onp.isfinite(arr)):
        raise ValueError("z: contains NaN or inf (expected finite complex values)")
    return arr.astype(complex)


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


def _roots(c):
    """Roots of one polynomial (descending powers; leading zeros dropped), complex: none
    for a constant or an identically zero polynomial."""
    return onp.roots(c).astype(complex)


def _gain(k):
    """A real scalar gain as a float, or None when ``k`` is not one (the operator then
    answers NotImplemented, so Python raises its own TypeError)."""
    if isinstance(k, (bool, onp.bool_)) or not isinstance(k, (int, float, onp.integer, onp.floating)):
        return None
    return float(check_array("k", k, ndim=0))


def _common_dt(dt1, dt2):
    """The sampling period of an interconnection: equal periods, or the given one when
    the other is True (unspecified), as python-control's common_timebase.

    >>> _common_dt(0.1, True), _common_dt(True, True)
    (0.1, True)
    """
    if dt1 is True or dt2 is True:
        return dt2 if dt1 is True else dt1
    if dt1 != dt2:
        raise ValueError(f"dt: the systems have different sampling periods ({dt1!r} and {dt2!r}; "
                         "expected equal dt, or True for unspecified)")
    return dt1


def _same_poly(a, b):
    return a.shape == b.shape and onp.array_equal(a, b)


def _polyprod(polys):
    # convolve, not polymul: polymul drops leading zeros, the padded layout needs them
    return functools.reduce(onp.convolve, polys, onp.ones(1))


def _common_den(dens):
    """d, the product of the distinct polynomials among ``dens``, and cof[l] = d / dens[l]
    (the product of the others), so that sum_l b_l / dens[l] = (sum_l b_l cof[l]) / d.
    Equal denominators are kept once (equal rows do not square the order)."""
    distinct = []
    for a in dens:
        if not any(_same_poly(a, d) for d in distinct):
            distinct.append(a)
    return _polyprod(distinct), [_polyprod([d for d in distinct if not _same_poly(a, d)]) for a in dens]


def _tf_from_rows(nums, dens, dt):
    """TransferFunction from p rows of m numerator polynomials and p row denominators
    of any lengths (each padded on the left to the longest)."""
    p, m = len(nums), len(nums[0])
    k = max(max(len(d) for d in dens), max(len(b) for row in nums for b in row))
    num = onp.zeros((p, m, k))
    den = onp.zeros((p, k))
    for i in range(p):
        den[i, k - len(dens[i]):] = dens[i]
        for j in range(m):
            num[i, j, k - len(nums[i][j]):] = nums[i][j]
    return TransferFunction(num, den, dt=dt)


def _continuous_time(what, how):
    """The one message refusing a continuous-time system (from_scipy: TypeError, a scipy
    lti is another class; from_control: ValueError, dt = 0 on the same class)."""
    return (f"sys: a continuous-time {what} (expected a discrete-time system: "
            f"discretize it with {how} or rssm_ref.discretize.cont2discrete)")


def _series_dt(G, H):
    if G.n_inputs != H.n_outputs:
        raise ValueError(f"G * H: G has {G.n_inputs} inputs but H has {H.n_outputs} outputs "
                         "(series: the output of H feeds G, expected G.n_inputs == H.n_outputs)")
    return _common_dt(G.dt, H.dt)


def _parallel_dt(G, H):
    if (G.n_outputs, G.n_inputs) != (H.n_outputs, H.n_inputs):
        raise ValueError(f"G + H: G is {G.n_outputs} x {G.n_inputs} but H is {H.n_outputs} x "
                         f"{H.n_inputs} (parallel: expected the same outputs x inputs)")
    return _common_dt(G.dt, H.dt)


def _same_form(G, H):
    """(G, H) as two TransferFunctions, or as two StateSpaces when either is one
    (python-control's rule); (None, None) when H is not a system."""
    if not isinstance(H, _LTI):
        return None, None
    if isinstance(G, TransferFunction) and isinstance(H, TransferFunction):
        return G, H
    return G.to_ss(), H.to_ss()


# ----------------------------------------------------------------------- classes
class _LTI:
    """What StateSpace and TransferFunction share: H(z) at any points, and the
    interconnections of python-control (series G * H, parallel G + H, scalar gains).
    Mixed StateSpace / TransferFunction operands give a StateSpace."""

    __array_ufunc__ = None   # numpy scalars and arrays defer to us: onp.float64(2) * G is a system

    def __call__(self, z):
        """H(z) at complex points z of any shape (see freqresp for the formula).

        Returns the shape of z for a SISO system (a complex scalar for a scalar z) and
        z.shape + (p, m) otherwise (the (N, p, m) layout of freqresp and impulse). A pole
        among the points is refused (ValueError); dcgain reports a pole at 1 as inf.

        >>> sys = TransferFunction([0.0, 1.0], [1.0, -0.5])          # H(z) = 1 / (z - 0.5)
        >>> complex(sys(2.0)), sys(onp.ones((2, 3))).shape
        ((0.6666666666666666+0j), (2, 3))
        >>> w = onp.linspace(0.0, onp.pi, 5)                           # z = e^{jw}: scipy's freqz
        >>> bool(onp.allclose(sys(onp.exp(1j * w)), ssig.freqz([0.0, 1.0], [1.0, -0.5], worN=w)[1]))
        True
        >>> StateSpace(onp.eye(2) * 0.5, onp.eye(2), onp.ones((3, 2)), onp.zeros((3, 2)))([1.0, 2.0]).shape
        (2, 3, 2)
        """
        z = onp.asarray(z)
        return self._squeeze(self.freqresp(z.reshape(-1)).reshape(z.shape + self._pm))

    @property
    def _pm(self):
        return (self.n_outputs, self.n_inputs)

    def _squeeze(self, H):
        return H[..., 0, 0][()] if self._pm == (1, 1) else H

    def __mul__(self, other):
        """G * H, series: H(z) = G(z) H(z) (u -> H -> G, a matrix product for MIMO);
        G * k scales the inputs. StateSpace when either operand is one.

        >>> G, H = TransferFunction([1.0, 0.0], [1.0, -0.5]), TransferFunction([0.0, 1.0], [1.0, 0.2])
        >>> bool(onp.allclose((G * H)(2.0), G(2.0) * H(2.0))), (G * H).den.tolist()
        (True, [[1.0, -0.3, -0.1]])
        >>> h = ssig.dimpulse(([1.0, 0.0], onp.polymul([1.0, -0.5], [1.0, 0.2]), 1), n=6)[1][0]
        >>> bool(onp.allclose((G.to_ss() * H).impulse(6)[:, 0], h))    # scipy: z / ((z - 0.5)(z + 0.2))
        True
        """
        k = _gain(other)
        if k is not None:
            return self._scaled(k, "inputs")
        G, H = _same_form(self, other)
        return NotImplemented if G is None else G._series(H)

    def __rmul__(self, other):
        """k * G: the outputs scaled by a real scalar k."""
        k = _gain(other)
        return NotImplemented if k is None else self._scaled(k, "outputs")

    def __add__(self, other):
        """G + H, parallel: H(z) = G(z) + H(z) (same input, outputs summed).

        >>> G, H = TransferFunction([1.0, 0.0], [1.0, -0.5]), TransferFunction([0.0, 1.0], [1.0, 0.2])
        >>> bool(onp.allclose((G + H).impulse(8), G.impulse(8) + H.impulse(8)))
        True
        >>> bool(onp.allclose((2 * G - H.to_ss())(3.0), 2 * G(3.0) - H(3.0)))
        True
        """
        G, H = _same_form(self, other)
        return NotImplemented if G is None else G._parallel(H)

    def __neg__(self):
        """-G = (-1) G."""
        return -1.0 * self

    def __sub__(self, other):
        """G - H = G + (-H)."""
        return self + (-other) if isinstance(other, _LTI) else NotImplemented


class StateSpace(_LTI):
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

    def zeros(self):
        """Zeros of a SISO system, (r,) complex: the roots of the numerator of :meth:`to_tf`
        (as scipy.signal.ss2zpk; finite zeros only, no cancellation against the poles).

        A MIMO system is refused (ValueError): its transmission zeros are not computed;
        ``sys.to_tf().zeros()`` gives the zeros of every channel instead.

        >>> sys = StateSpace([[0.5]], [[1.0]], [[1.0]], [[2.0]])     # H(z) = (2z)/(z - 0.5)
        >>> sys.zeros().tolist(), ssig.ss2zpk(sys.A, sys.B, sys.C, sys.D)[0].tolist()
        ([0j], [0.0])
        """
        if self._pm != (1, 1):
            raise ValueError(f"zeros: a {self.n_outputs} x {self.n_inputs} state space (the transmission "
                             "zeros of a MIMO system are not computed; sys.to_tf().zeros() gives "
                             "the zeros of each channel)")
        return self.to_tf().zeros()

    def is_stable(self):
        """True when every pole has modulus < 1 (Schur stability).

        >>> StateSpace([[1.0]], [[1.0]], [[1.0]], [[0.0]]).is_stable()
        False
        """
        return bool(onp.all(onp.abs(self.poles()) < 1.0))

    def freqresp(self, z):
        """H(z) = C (zI - A)^-1 B + D at the points z (N,) -> (N, p, m) complex (a point
        where zI - A is singular is refused).

        >>> complex(StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]]).freqresp([1.0])[0, 0, 0])
        (2+0j)
        """
        z = _check_z(z)
        n = self.order
        if n == 0:
            return onp.broadcast_to(self.D.astype(complex), (z.size,) + self.D.shape).copy()
        M = z[:, None, None] * onp.eye(n) - self.A
        try:
            X = onp.linalg.solve(M, onp.broadcast_to(self.B.astype(complex), (z.size,) + self.B.shape))
        except onp.linalg.LinAlgError:
            raise ValueError("z: a point is a pole of the system (zI - A singular there; H(z) is "
                             "infinite)") from None
        return onp.matmul(self.C, X) + self.D

    def dcgain(self):
        """H(1) = C (I - A)^-1 B + D, real: a float for a SISO system, else (p, m).

        With 1 an eigenvalue of A (I - A singular) every entry is inf, as python-control's
        StateSpace.dcgain (the transfer-function form tells the channels apart).

        >>> sys = StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]])
        >>> b, a = ssig.ss2tf(sys.A, sys.B, sys.C, sys.D)
        >>> float(sys.dcgain()), float(ssig.freqz(b[0], a, worN=[0.0])[1][0].real)
        (2.0, 2.0)
        >>> float(StateSpace([[1.0]], [[1.0]], [[1.0]], [[0.0]]).dcgain())
        inf
        """
        try:
            X = onp.linalg.solve(onp.eye(self.order) - self.A, self.B)
        except onp.linalg.LinAlgError:
            return self._squeeze(onp.full(self._pm, onp.inf))
        return self._squeeze(self.C @ X + self.D)

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

            return back(ss_fft_filter(self.A, self.B, self.C, self.D, u3))

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

    def _series(self, H):
        """G H (self after H), state x = [x_G; x_H]:
        A = [[A_G, B_G C_H], [0, A_H]], B = [[B_G D_H], [B_H]], C = [C_G, D_G C_H], D = D_G D_H."""
        dt = _series_dt(self, H)
        A = onp.block([[self.A, self.B @ H.C], [onp.zeros((H.order, self.order)), H.A]])
        return StateSpace(A, onp.vstack([self.B @ H.D, H.B]), onp.hstack([self.C, self.D @ H.C]),
                          self.D @ H.D, dt=dt)

    def _parallel(self, H):
        """G + H, state x = [x_G; x_H]: A = diag(A_G, A_H), B = [[B_G], [B_H]], C = [C_G, C_H],
        D = D_G + D_H."""
        dt = _parallel_dt(self, H)
        A = onp.block([[self.A, onp.zeros((self.order, H.order))],
                       [onp.zeros((H.order, self.order)), H.A]])
        return StateSpace(A, onp.vstack([self.B, H.B]), onp.hstack([self.C, H.C]), self.D + H.D, dt=dt)

    def _scaled(self, k, side):
        """k G: (C, D) -> (k C, k D) on the outputs; G k: (B, D) -> (k B, k D) on the inputs."""
        if side == "outputs":
            return StateSpace(self.A, self.B, k * self.C, k * self.D, dt=self.dt)
        return StateSpace(self.A, k * self.B, self.C, k * self.D, dt=self.dt)

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


class TransferFunction(_LTI):
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
        self.num, self.den = normalize_tf(num, den)
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
        return tf_impulse(self.num, self.den, L)

    def poles(self):
        """Roots of every denominator row, concatenated: (p (k - 1),) complex.

        >>> TransferFunction([0.0, 1.0], [1.0, -0.5]).poles().tolist()
        [(0.5+0j)]
        """
        roots = [onp.roots(row).astype(complex) if onp.any(row[1:]) else onp.zeros(row.size - 1, complex)
                 for row in self.den]
        return onp.concatenate(roots) if roots else onp.zeros(0, complex)

    def zeros(self):
        """Roots of the numerators, complex, finite zeros only (no cancellation against the
        poles; an identically zero channel has none): (r,) for a SISO system (scipy.signal.
        tf2zpk's z), else a p x m nested list, ``zeros()[i][j]`` the roots of num[i, j]
        (channel u_j -> y_i, whose poles are those of den[i]: ``poles()[i (k-1):(i+1)(k-1)]``).

        >>> sys = TransferFunction([1.0, -0.5, 0.06], [1.0, -0.9, 0.2])   # (z - 0.2)(z - 0.3) / ...
        >>> onp.sort(sys.zeros().real).tolist()
        [0.2, 0.3]
        >>> z, p, _ = ssig.tf2zpk([1.0, -0.5, 0.06], [1.0, -0.9, 0.2])
        >>> bool(onp.allclose(onp.sort(z), onp.sort(sys.zeros())))
        True
        """
        Z = [[_roots(self.num[i, j]) for j in range(self.n_inputs)] for i in range(self.n_outputs)]
        return Z[0][0] if self._pm == (1, 1) else Z

    def is_stable(self):
        """True when every pole has modulus < 1.

        >>> TransferFunction([0.0, 1.0], [1.0, -1.5]).is_stable()
        False
        """
        return bool(onp.all(onp.abs(self.poles()) < 1.0))

    def freqresp(self, z):
        """H(z) = num(z) / den(z) at the points z (N,) -> (N, p, m) complex (a root of a
        den row among the points is refused).

        >>> complex(TransferFunction([0.0, 1.0], [1.0, -0.5]).freqresp([1.0])[0, 0, 0])
        (2+0j)
        """
        z = _check_z(z)
        k = self.num.shape[2]
        zp = z[:, None] ** onp.arange(k - 1, -1, -1)  # (N, k) descending powers
        bn = onp.einsum("ijk,nk->nij", self.num, zp)
        an = onp.einsum("ik,nk->ni", self.den, zp)
        if onp.any(an == 0):
            bad = z[onp.flatnonzero(onp.any(an == 0, axis=1))[0]]
            raise ValueError(f"z: {bad} is a pole of the system (den(z) = 0 there; H(z) is infinite)")
        return bn / an[:, :, None]

    def dcgain(self):
        """H(1) = num(1) / den(1) entry by entry, real: a float for a SISO system, else (p, m).

        A pole at z = 1 gives +-inf (nan when num(1) = 0 as well), as python-control's
        TransferFunction.dcgain.

        >>> sys = TransferFunction([0.0, 1.0], [1.0, -0.5])
        >>> float(sys.dcgain()), float(ssig.freqz([1.0], [1.0, -0.5], worN=[0.0])[1][0].real)
        (2.0, 2.0)
        >>> float(TransferFunction([0.0, -1.0], [1.0, -1.0]).dcgain())
        -inf
        """
        with onp.errstate(divide="ignore", invalid="ignore"):
            return self._squeeze(self.num.sum(axis=2) / self.den.sum(axis=1)[:, None])

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

            return back(tf_fft_filter(self.num, self.den, u3))

        return back(tf_filter(self.num, self.den, u3))

    def to_tf(self):
        """Itself (a copy).

        >>> TransferFunction([1.0], [1.0]).to_tf().order
        0
        """
        return TransferFunction(self.num, self.den, dt=self.dt)

    def _series(self, H):
        """G H with G's rows over a_i and H's over c_l:
        (G H)_ij = sum_l (g_il / a_i)(h_lj / c_l) = (sum_l g_il h_lj cof_l) / (a_i c),
        c the product of H's distinct row denominators and cof_l = c / c_l (_common_den)."""
        dt = _series_dt(self, H)
        c, cof = _common_den(list(H.den))
        num = [[sum(_polyprod([self.num[i, l], H.num[l, j], cof[l]]) for l in range(H.n_outputs))
                for j in range(H.n_inputs)] for i in range(self.n_outputs)]
        return _tf_from_rows(num, [onp.convolve(a, c) for a in self.den], dt)

    def _parallel(self, H):
        """G + H row by row: g_ij / a_i + h_ij / c_i = (g_ij cof_a + h_ij cof_c) / d_i,
        d_i = a_i c_i (a_i once when a_i = c_i), cof = d_i / a_i, d_i / c_i (_common_den)."""
        dt = _parallel_dt(self, H)
        rows = [_common_den([a, c]) for a, c in zip(self.den, H.den)]
        num = [[onp.convolve(self.num[i, j], cof[0]) + onp.convolve(H.num[i, j], cof[1])
                for j in range(self.n_inputs)] for i, (_, cof) in enumerate(rows)]
        return _tf_from_rows(num, [d for d, _ in rows], dt)

    def _scaled(self, k, side):
        """k G = G k: every numerator times k."""
        return TransferFunction(k * self.num, self.den, dt=self.dt)

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
    """StateSpace or TransferFunction from a discrete scipy.signal.dlti (ss, tf or zpk form),
    or from a plain tuple read as ``scipy.signal.dlti(*sys, dt=1)``: (num, den),
    (zeros, poles, gain) or (A, B, C, D).

    A dlti in state-space form (or a 4-tuple) gives a StateSpace; tf form gives a
    TransferFunction (a 2-D scipy numerator (p, k) is a single-input, p-output system with
    a common denominator); zpk form is turned into tf form first. The sampling period
    ``sys.dt`` (1 for a tuple) is kept on the result (``.dt``) and given back by
    ``to_scipy``. A continuous-time scipy.signal.lti is refused: discretize it first.

    >>> from_scipy(ssig.dlti([1.0], [1.0, -0.5], dt=0.1)).to_scipy().dt
    0.1
    >>> from_scipy(([1.0], [1.0, -0.5])).impulse(3)[:, 0, 0].tolist()
    [0.0, 1.0, 0.5]
    >>> from_scipy(([[0.5]], [[1.0]], [[1.0]], [[0.0]])).dt
    1
    """
    if isinstance(sys, tuple):
        if len(sys) == 4:
            return StateSpace(*sys)
        if len(sys) == 3:
            sys = ssig.zpk2tf(*sys)
        if len(sys) == 2:
            return _scipy_tf(*sys, dt=1)
        raise ValueError(f"sys: a tuple of {len(sys)} items (expected (num, den), (zeros, poles, "
                         "gain) or (A, B, C, D), read with dt = 1; for another dt pass "
                         "scipy.signal.dlti(*sys, dt=dt))")
    if type(sys).__module__.split(".")[0] == "control":
        raise TypeError(f"sys: a python-control {type(sys).__name__} (expected a scipy.signal.dlti; "
                        "use rssm_ref.lti.from_control for python-control systems)")
    if isinstance(sys, ssig.lti):
        raise TypeError(_continuous_time("scipy.signal.lti", "sys.to_discrete(dt)"))
    if not isinstance(sys, ssig.dlti):
        raise TypeError(f"sys: expected a discrete-time scipy.signal.dlti or a tuple (num, den) or "
                        f"(A, B, C, D), got {type(sys).__name__}")
    if isinstance(sys, ssig.StateSpace):
        return StateSpace(sys.A, sys.B, sys.C, sys.D, dt=sys.dt)
    if isinstance(sys, ssig.ZerosPolesGain):
        sys = sys.to_tf()
    if isinstance(sys, ssig.TransferFunction):
        return _scipy_tf(sys.num, sys.den, sys.dt)
    raise TypeError(f"sys: unsupported dlti form {type(sys).__name__} (expected ss, tf or zpk)")


def _scipy_tf(num, den, dt):
    """scipy's tf layout: num (k,) or (p, k) (one input, p outputs), one den (k,)."""
    num = onp.atleast_2d(onp.real_if_close(onp.asarray(num)))
    den = onp.real_if_close(onp.asarray(den))
    if onp.iscomplexobj(num) or onp.iscomplexobj(den):
        raise TypeError("sys: complex transfer-function coefficients (expected a real system)")
    return TransferFunction(num[:, None, :], onp.tile(onp.atleast_1d(den), (num.shape[0], 1)), dt=dt)


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
        raise ValueError(_continuous_time("python-control system (dt = 0)", "control.sample_system"))
    if isinstance(sys, control.StateSpace):
        return StateSpace(sys.A, sys.B, sys.C, sys.D, dt=sys.dt)
    nums, dens = [], []
    for i in range(sys.noutputs):
        row_den = [onp.trim_zeros(onp.asarray(sys.den[i][j], dtype=float), "f") for j in range(sys.ninputs)]
        row_num = [_trim(sys.num[i][j]) / a[0] for j, a in enumerate(row_den)]
        common, cof = _common_den([a / a[0] for a in row_den])
        nums.append([onp.convolve(b, c) for b, c in zip(row_num, cof)])
        dens.append(common)
    return _tf_from_rows(nums, dens, sys.dt)
