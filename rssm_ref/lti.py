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

            return back(tf_fft_filter(self.num, self.den, u3))

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
