"""Tests of rssm_ref.discretize: phi1, Mamba's eq. (3), and cont2discrete vs scipy."""
from decimal import Decimal, getcontext

import autograd.numpy as np
import numpy as onp
import pytest
import scipy.linalg as sla
import scipy.signal as ssig
from autograd import grad
from autograd.test_util import check_grads
from hypothesis import given, settings
from hypothesis import strategies as st

from rssm_ref.discretize import cont2discrete, cont2discrete_ref, mamba_discretize, phi1
from rssm_ref.tolerances import TOLERANCES, assert_close

# check_grads uses finite differences with step TOLERANCES["check_grads_eps"] (1e-6)


# ------------------------------------------------------------ exact reference
def _J_exact(x, k):
    """int_0^1 t^k e^{x t} dt in 80-digit decimal arithmetic (k-th derivative of phi1)."""
    getcontext().prec = 80
    X = Decimal(float(x))
    if abs(X) < Decimal("0.5"):
        s, fact, power = Decimal(1) / (k + 1), Decimal(1), Decimal(1)
        for j in range(1, 70):
            fact *= j
            power *= X
            s += power / (fact * (j + k + 1))
        return s
    e = X.exp()
    J = (e - 1) / X
    for i in range(1, k + 1):  # cancellation is harmless with 80 digits
        J = (e - i * J) / X
    return J


def _max_rel_elementwise(actual, xs, k):
    worst = 0.0
    for a, x in zip(onp.ravel(actual), onp.ravel(xs)):
        ref = _J_exact(x, k)
        worst = max(worst, abs(float((Decimal(float(a)) - ref) / ref)))
    return worst


GRID = onp.concatenate([
    -onp.logspace(-300, 2.8, 300), onp.logspace(-300, 2.8, 300),
    [0.0, -1.0, 1.0, -1.0 + 2 ** -52, 1.0 - 2 ** -53, -0.5, 0.5, 5e-324, -5e-324]])


# ------------------------------------------------------------------------ phi1
def test_phi1_matches_decimal_reference_to_a_few_ulps():
    err = _max_rel_elementwise(phi1(GRID), GRID, 0)
    assert err <= TOLERANCES["special_function"], err


def test_phi1_derivative_matches_decimal_reference_to_a_few_ulps():
    d = grad(lambda x: np.sum(phi1(x)))(GRID)
    err = _max_rel_elementwise(d, GRID, 1)
    assert err <= TOLERANCES["special_function"], err


def test_phi1_tiny_arguments_equal_series_and_zero_is_one():
    x = -onp.logspace(-300, -12, 50)
    series = 1.0 + x / 2.0 + x * x / 6.0
    assert onp.all(onp.abs(phi1(x) - series) <= 2.0 ** -52 * series)
    assert float(phi1(0.0)) == 1.0
    # the naive formula (e^x - 1)/x loses every digit here: phi1 must not
    naive = (onp.exp(1e-13) - 1.0) / 1e-13
    assert abs(naive - 1.0) > 1e-4 and abs(float(phi1(1e-13)) - 1.0) < 1e-12


def test_phi1_large_arguments_finite_and_asymptotic():
    x = -onp.logspace(3, 300, 40)
    v = phi1(x)
    assert onp.all(onp.isfinite(v))
    assert_close(v, -1.0 / x, "special_function", "phi1(x) -> -1/x as x -> -inf")
    # positive side: finite until the true value leaves the float64 range
    assert onp.isfinite(phi1(715.0)) and onp.isinf(phi1(720.0))


def test_phi1_rejects_bad_input():
    with pytest.raises(ValueError, match="x: contains NaN"):
        phi1(onp.array([0.0, onp.nan]))
    with pytest.raises(TypeError, match="x: complex"):
        phi1(onp.array([1j]))


@pytest.mark.parametrize("x0", [0.0, 1e-300, -1e-12, 1e-8, -0.3, -0.999, -1.0, -1.7, 0.9, 3.0, -60.0])
def test_phi1_check_grads_including_zero(x0):
    check_grads(phi1, modes=["rev"], order=2)(onp.array([x0]))


def test_phi1_second_derivative_at_zero_is_one_third():
    d2 = grad(grad(lambda x: phi1(x)))(0.0)
    assert abs(float(d2) - 1.0 / 3.0) <= 2.0 ** -52


# ------------------------------------------------------------ mamba_discretize
@st.composite
def diag_systems(draw, delta_range=(1e-2, 10.0)):
    n = draw(st.integers(1, 6))
    A = -onp.array(draw(st.lists(st.floats(0.05, 5.0), min_size=n, max_size=n)))
    if draw(st.booleans()):  # repeated poles
        A[:] = A[0]
    delta = draw(st.floats(*delta_range))
    B = onp.array(draw(st.lists(st.floats(-3.0, 3.0), min_size=n, max_size=n)))
    return A, delta, B


@given(diag_systems())
def test_mamba_zoh_equals_matrix_formula_and_block_expm(sys_):
    A, delta, B = sys_
    A_t, B_t = mamba_discretize(A, delta, B)
    Am = onp.diag(A)
    # eq. (3) in the paper's matrix form, and scipy's block-matrix ZOH
    E = sla.expm(delta * Am)
    assert_close(onp.diag(A_t), E, "discretize_vs_scipy", "A_t vs expm")
    assert_close(B_t, onp.linalg.solve(Am, (E - onp.eye(len(A))) @ B), "discretize_vs_scipy",
                 "B_t vs A^-1 (expm - I) B")
    Ad, Bd, _, _, _ = ssig.cont2discrete((Am, B[:, None], onp.ones((1, len(A))), [[0.0]]), delta)
    assert_close(B_t, Bd[:, 0], "discretize_vs_scipy", "B_t vs scipy zoh")


def test_mamba_tiny_delta_matches_series():
    A = onp.array([-1.0, -3.0, -0.5])
    B = onp.array([1.0, -2.0, 0.25])
    for delta in onp.logspace(-300, -12, 30):
        A_t, B_t = mamba_discretize(A, delta, B)
        x = delta * A
        series = delta * (1.0 + x / 2.0 + x * x / 6.0) * B
        assert onp.all(onp.abs(B_t - series) <= 4 * 2.0 ** -52 * onp.abs(series))
        assert onp.all(onp.abs(A_t - (1.0 + x)) <= 2.0 ** -52)


def test_mamba_large_delta_limits():
    A = -onp.linspace(1.0, 10.0, 7)
    B = onp.linspace(-2.0, 3.0, 7)
    A_t, B_t = mamba_discretize(A, 1e3, B)
    assert onp.all(A_t <= onp.exp(-1e3)) and onp.all(onp.isfinite(B_t))
    # B_t = -B/A (1 - e^{delta A}); e^{-1000} is far below one ulp
    assert_close(B_t, -B / A, "discretize_vs_scipy", "B_t -> -B/A")
    A_t, B_t = mamba_discretize(A, 1e300, B)
    assert onp.all(A_t == 0.0) and onp.all(onp.isfinite(B_t))


@given(diag_systems(delta_range=(1e-6, 1e-1)))
def test_mamba_euler_differs_from_zoh_by_order_delta_squared(sys_):
    A, delta, B = sys_
    _, Bz = mamba_discretize(A, delta, B, "zoh")
    _, Be = mamba_discretize(A, delta, B, "euler")
    assert onp.all(Be == delta * B)
    # |phi1(x) - 1| <= |x|/2 for x <= 0, so |Be - Bz| <= delta^2 |A| |B| / 2 ...
    bound = delta ** 2 * onp.abs(A) * onp.abs(B) / 2.0
    assert onp.all(onp.abs(Be - Bz) <= bound * (1 + 1e-9) + 1e-300)
    # ... and the leading term is exactly that (ratio -> 1 as delta -> 0)
    nz = onp.abs(B) > 0.1
    if onp.any(nz) and delta * onp.max(-A) < 1e-3:
        ratio = (Be - Bz)[nz] / (-(delta ** 2) * A * B / 2.0)[nz]
        assert onp.all(onp.abs(ratio - 1.0) <= 2.0 * delta * onp.max(-A))


def test_mamba_broadcasting_shapes():
    rng = onp.random.default_rng(0)
    A = -rng.uniform(0.1, 2.0, size=(3, 4))          # (d, n)
    delta = rng.uniform(0.01, 1.0, size=(2, 5, 3, 1))  # (batch, L, d, 1)
    B = rng.standard_normal((2, 5, 1, 4))              # (batch, L, 1, n)
    A_t, B_t = mamba_discretize(A, delta, B)
    assert A_t.shape == (2, 5, 3, 4) and B_t.shape == (2, 5, 3, 4)
    j = (1, 3, 2, 0)
    a1, b1 = mamba_discretize(A[2, 0], delta[1, 3, 2, 0], B[1, 3, 0, 0])
    assert A_t[j] == a1 and B_t[j] == b1


@pytest.mark.parametrize("convention", ["zoh", "euler"])
@pytest.mark.parametrize("scale", [1.0, 1e-9])
def test_mamba_check_grads(convention, scale):
    # delta = scale * d: with scale = 1e-9, delta A is near 0 and a finite-difference
    # step in d stays a relative one, so phi1's gradient near 0 is exercised
    A = onp.array([-0.5, -2.0, -1.3])
    d = onp.array([0.7, 0.2, 1.1])
    B = onp.array([1.0, -0.4, 2.0])

    def f(A, d, B):
        A_t, B_t = mamba_discretize(A, scale * d, B, convention)
        return np.concatenate([A_t, B_t / scale])

    check_grads(f, (0, 1, 2), modes=["rev"], order=1)(A, d, B)


def test_mamba_gradient_at_vanishing_step_is_analytic():
    # d B_t / d A = delta^2 phi1'(delta A) B -> delta^2 / 2 B as delta A -> 0
    delta, B = 1e-7, 3.0
    g = grad(lambda A: mamba_discretize(A, delta, B)[1])(-1e-9)
    assert abs(float(g) - delta ** 2 * B / 2.0) <= 1e-9 * delta ** 2 * B


@pytest.mark.parametrize("args, exc, msg", [
    ((onp.array([0.0]), 1.0, 1.0), ValueError, "A: expected strictly negative"),
    ((onp.array([-1.0]), onp.array([0.0]), 1.0), ValueError, "delta: expected strictly positive"),
    ((onp.array([-1.0, -2.0]), onp.ones(3), 1.0), ValueError, "shapes do not broadcast"),
    ((onp.array([-1.0]), onp.nan, 1.0), ValueError, "delta: contains NaN"),
    ((onp.array([-1.0]), 1.0, "x"), TypeError, "B_bar: dtype"),
])
def test_mamba_rejects_bad_input(args, exc, msg):
    with pytest.raises(exc, match=msg):
        mamba_discretize(*args)
    with pytest.raises(ValueError, match="convention"):
        mamba_discretize(-1.0, 1.0, 1.0, "bilinear")


# --------------------------------------------------------------- cont2discrete
@st.composite
def hurwitz_systems(draw):
    """(A, B, C, D, dt) with A Hurwitz by construction: real eigenvalues -sigma, complex
    pairs -sigma +- i omega (2x2 blocks), optional Jordan blocks (repeated poles), in a
    random basis of bounded condition number."""
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 3))
    p = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = onp.random.default_rng(seed)
    J = onp.zeros((n, n))
    i = 0
    while i < n:
        sigma = draw(st.floats(1e-3, 4.0))
        kind = draw(st.sampled_from(["real", "pair", "jordan"]))
        if kind == "pair" and i + 1 < n:
            omega = draw(st.floats(0.0, 6.0))
            J[i:i + 2, i:i + 2] = [[-sigma, omega], [-omega, -sigma]]
            i += 2
        else:
            J[i, i] = -sigma
            if kind == "jordan" and i + 1 < n:  # repeated pole, defective
                J[i + 1, i + 1] = -sigma
                J[i, i + 1] = 1.0
                i += 1
            i += 1
    Q, _ = onp.linalg.qr(rng.standard_normal((n, n)))
    T = Q @ onp.diag(rng.uniform(0.5, 2.0, n))
    A = T @ J @ onp.linalg.inv(T)
    B, C, D = rng.standard_normal((n, m)), rng.standard_normal((p, n)), rng.standard_normal((p, m))
    dt = draw(st.floats(1e-3, 2.0))
    return A, B, C, D, dt


@given(hurwitz_systems(), st.sampled_from(["zoh", "euler", "bilinear"]))
def test_cont2discrete_matches_scipy(sys_, method):
    A, B, C, D, dt = sys_
    ours = cont2discrete(A, B, C, D, dt, method)
    ref = ssig.cont2discrete((A, B, C, D), dt, method=method)[:4]
    for name, a, r in zip("ABCD", ours, ref):
        assert a.dtype == onp.float64 and a.shape == r.shape
        assert_close(a, r, "discretize_vs_scipy", f"{method} {name}d")


@given(hurwitz_systems(), st.sampled_from(["zoh", "euler", "bilinear"]))
def test_cont2discrete_matches_ref(sys_, method):
    A, B, C, D, dt = sys_
    for name, a, r in zip("ABCD", cont2discrete(A, B, C, D, dt, method),
                          cont2discrete_ref(A, B, C, D, dt, method)):
        assert_close(a, r, "fast_vs_ref", f"{method} {name}d")


@given(hurwitz_systems())
def test_zoh_of_hurwitz_is_schur_stable(sys_):
    A, B, C, D, dt = sys_
    Ad = cont2discrete(A, B, C, D, dt, "zoh")[0]
    rho = float(onp.max(onp.abs(onp.linalg.eigvals(Ad))))
    assert rho < 1.0
    # the spectral map z = e^{s dt}: spectral radius e^{dt max Re(s)}; eigenvalues of a
    # Jordan block are only accurate to ~sqrt(eps), hence the loose comparison
    alpha = float(onp.max(onp.linalg.eigvals(A).real))
    assert abs(rho - onp.exp(dt * alpha)) <= 1e-6


@given(hurwitz_systems())
def test_bilinear_of_hurwitz_is_schur_stable(sys_):
    A, B, C, D, dt = sys_
    Ad = cont2discrete(A, B, C, D, dt, "bilinear")[0]
    assert float(onp.max(onp.abs(onp.linalg.eigvals(Ad)))) < 1.0


def test_cont2discrete_zoh_diagonal_agrees_with_mamba():
    A = onp.array([-0.3, -1.0, -7.0])
    B = onp.array([[1.0], [-2.0], [0.5]])
    Ad, Bd, _, _ = cont2discrete(onp.diag(A), B, onp.ones((1, 3)), [[0.0]], 0.4)
    A_t, B_t = mamba_discretize(A, 0.4, B[:, 0])
    assert_close(onp.diag(Ad), A_t, "discretize_vs_scipy")
    assert_close(Bd[:, 0], B_t, "discretize_vs_scipy")


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(method="foh"), ValueError, "method: expected one of"),
    (dict(A=onp.ones((2, 3))), ValueError, "A: expected a non-empty square"),
    (dict(B=onp.ones((3, 1))), ValueError, r"B: expected shape \(2, m\)"),
    (dict(C=onp.ones((1, 3))), ValueError, r"C: expected shape \(p, 2\)"),
    (dict(D=onp.ones((2, 1))), ValueError, r"D: expected shape \(1, 1\)"),
    (dict(dt=0.0), ValueError, "dt: expected a positive"),
    (dict(dt=onp.array([0.1])), TypeError, "dt: expected a real scalar"),
    (dict(dt=onp.inf), ValueError, "dt: contains NaN or inf"),
    (dict(A=onp.array([[onp.nan, 0.0], [0.0, -1.0]])), ValueError, "A: contains NaN"),
    (dict(A=onp.array([[4.0, 0.0], [0.0, -1.0]]), dt=0.5, method="bilinear"), ValueError,
     "singular"),
])
def test_cont2discrete_rejects_bad_input(kwargs, exc, msg):
    args = dict(A=-onp.eye(2), B=onp.ones((2, 1)), C=onp.ones((1, 2)), D=onp.zeros((1, 1)),
                dt=0.1, method="zoh")
    args.update(kwargs)
    with pytest.raises(exc, match=msg):
        cont2discrete(**args)
