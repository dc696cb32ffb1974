"""Tests of rssm_ref.lti: Markov parameters, reflection coefficients, ss <-> tf, scipy interop.

Systems are stable by construction (rssm_ref.testing: poles r e^{i theta}, r <= 0.999,
hard radii 0.99 .. 0.999 and repeated poles drawn on purpose). Expectations are
invariants (two routes to the same quantity, algebraic identities), never numbers
produced by the code under test.
"""
import numpy as onp
import pytest
import scipy.signal as ssig
from autograd.test_util import check_grads
from hypothesis import given
from hypothesis import strategies as st

from rssm_ref import lti
from rssm_ref.lti import (StateSpace, TransferFunction, den_from_reflection,
                          den_from_reflection_ref, from_scipy, markov_parameters,
                          markov_parameters_ref, ss2tf, tf2ss)
from rssm_ref.recurrence import ss_filter
from rssm_ref.testing import poles, reflection_coefficients, ss_arrays, tf_arrays
from rssm_ref.tolerances import TOLERANCES, assert_close, rel_err

from _helpers import check_all_grads as _check_all_grads
from _helpers import kappa as _kappa
from _helpers import rng as _rng

dims = st.integers(1, 3)




def assert_close_kappa(actual, desired, den, L, what="", key="ss_vs_tf"):
    """``key``, or, where larger, coefficient rounding amplified by kappa (tolerance key
    tf_coefficient_rounding): for converted systems and coefficient recursions near |z| = 1."""
    tol = max(TOLERANCES[key], TOLERANCES["tf_coefficient_rounding"] * _kappa(den, L))
    err = rel_err(actual, desired)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.3e} (kappa {_kappa(den, L):.3g})"


def _z_transform(h, z):
    """sum_t h[t] z^-t for each point z (the definition of H(z); converges for |z| > |poles|)."""
    t = onp.arange(h.shape[0])
    w = onp.asarray(z, dtype=complex)[:, None] ** (-t)  # (N, L)
    return onp.einsum("nt,tij->nij", w, h)


def _step_down(den):
    """Reflection coefficients of a monic polynomial by the step-down (Schur-Cohn)
    recursion, written independently of den_from_reflection: k_i = a^(i)[-1],
    a^(i-1)[j] = (a^(i)[j] - k_i a^(i)[i-j]) / (1 - k_i^2)."""
    a = list(onp.asarray(den, dtype=float))
    ks = []
    while len(a) > 1:
        k = a[-1]
        i = len(a) - 1
        ks.append(k)
        a = [(a[j] - k * a[i - j]) / (1.0 - k * k) for j in range(i)]
    return onp.array(ks[::-1])


# --------------------------------------------------------------- Markov parameters
@given(ss_arrays(n=st.integers(1, 5), m=dims, p=dims), st.integers(1, 70))
def test_markov_fast_vs_ref(sys, L):
    A, B, C, D = sys
    assert_close(markov_parameters(A, B, C, D, L), markov_parameters_ref(A, B, C, D, L), "fast_vs_ref")


@given(ss_arrays(n=st.integers(1, 4), m=dims, p=dims), st.integers(2, 40))
def test_markov_is_response_to_unit_impulses(sys, L):
    # column j of h is the output of dlsim for a unit impulse on input j
    A, B, C, D = sys
    h = markov_parameters(A, B, C, D, L)
    dsys = ssig.dlti(A, B, C, D, dt=1)
    for j in range(B.shape[1]):
        u = onp.zeros((L, B.shape[1]))
        u[0, j] = 1.0
        _, y, _ = ssig.dlsim(dsys, u)
        assert_close(h[:, :, j], y, "scipy_agreement", f"input {j}")


def test_markov_definition_and_static_gain():
    rng = _rng(1)
    A = rng.normal(size=(3, 3)) * 0.3
    B, C, D = rng.normal(size=(3, 2)), rng.normal(size=(2, 3)), rng.normal(size=(2, 2))
    h = markov_parameters(A, B, C, D, 6)
    assert h.shape == (6, 2, 2)
    assert_close(h[0], D, "fast_vs_ref")
    assert_close(h[5], C @ onp.linalg.matrix_power(A, 4) @ B, "fast_vs_ref")
    # n = 0: a static gain D, then zeros
    h0 = markov_parameters(onp.zeros((0, 0)), onp.zeros((0, 2)), onp.zeros((2, 0)), D, 3)
    assert onp.array_equal(h0, onp.stack([D, 0 * D, 0 * D]))


def test_markov_grads():
    rng = _rng(2)
    A = rng.normal(size=(3, 3)) * 0.3
    B, C, D = rng.normal(size=(3, 2)), rng.normal(size=(2, 3)), rng.normal(size=(2, 2))
    _check_all_grads(lambda A, B, C, D: markov_parameters(A, B, C, D, 11), A, B, C, D)


# ------------------------------------------------------ reflection coefficients
@given(reflection_coefficients(st.integers(1, 8), k_max=0.9))
def test_reflection_gives_schur_stable_monic(k):
    den = den_from_reflection(k)
    assert den.shape == (k.size + 1,) and den[0] == 1.0
    assert_close(den, den_from_reflection_ref(k), "fast_vs_ref")
    # Schur-Cohn: |k| < 1 for all k  <=>  every root strictly inside the unit circle
    assert onp.all(onp.abs(onp.roots(den)) < 1.0)


@given(reflection_coefficients(st.integers(1, 8), k_max=0.5))
def test_step_down_inverts_step_up(k):
    # the step-down recursion divides by 1 - k^2 at every order: well conditioned only for
    # moderate |k| (amplification prod 1 / (1 - k_i^2) <= (4/3)^8 here)
    assert_close(_step_down(den_from_reflection(k)), k, "fast_vs_ref", "step-down")


@given(poles(st.integers(1, 6), r_max=0.95, repeated=False))
def test_reflection_of_stable_polynomial_round_trips(z):
    # any stable monic polynomial has |k| < 1 and is reproduced by the step-up recursion
    den = onp.real(onp.poly(z))
    k = _step_down(den)
    assert onp.all(onp.abs(k) < 1.0)
    assert_close(den_from_reflection(k), den, "fast_vs_ref")


def test_reflection_batched_and_closed_form():
    k = onp.array([[0.5, 0.2], [-0.3, 0.9], [0.0, 0.0]])
    den = den_from_reflection(k)
    assert den.shape == (3, 3)
    for row, kk in zip(den, k):
        assert_close(row, den_from_reflection_ref(kk), "fast_vs_ref")
    # order 2 by hand: [1, k0 + k0 k1, k1]
    assert_close(den[0], [1.0, 0.5 + 0.5 * 0.2, 0.2], "fast_vs_ref")
    assert onp.array_equal(den[2], [1.0, 0.0, 0.0])


def test_reflection_grads():
    k = _rng(3).uniform(-0.9, 0.9, size=(2, 4))
    _check_all_grads(den_from_reflection, k)


@pytest.mark.parametrize("bad, err, msg", [
    ([0.5, 1.0], ValueError, "|k| < 1"),
    ([0.5, -1.2], ValueError, "|k| < 1"),
    ([0.5, float("nan")], ValueError, "NaN"),
    (onp.array([0.5j]), TypeError, "complex"),
    (0.5, ValueError, "scalar"),
])
def test_reflection_bad_input(bad, err, msg):
    with pytest.raises(err, match=msg.replace("|", r"\|")):
        den_from_reflection(bad)


# ------------------------------------------------------------- ss <-> tf conversions
@given(ss_arrays(n=st.integers(1, 4), m=dims, p=dims))
def test_ss2tf_same_impulse_response(sys):
    A, B, C, D = sys
    num, den = ss2tf(A, B, C, D)
    n = A.shape[0]
    assert num.shape == (C.shape[0], B.shape[1], n + 1) and den.shape == (C.shape[0], n + 1)
    L = 48
    # exact coefficients would agree to rounding; ours are rounded, hence the kappa bound
    assert_close_kappa(TransferFunction(num, den).impulse(L), markov_parameters(A, B, C, D, L),
                           den, L, "ss2tf")


@given(tf_arrays(p=dims, m=dims, order=st.integers(1, 4)))
def test_tf2ss_same_impulse_response(tf):
    num, den = tf
    A, B, C, D = tf2ss(num, den)
    p, m, k = num.shape
    assert A.shape == (p * (k - 1),) * 2 and B.shape == (p * (k - 1), m) and C.shape == (p, p * (k - 1))
    L = 48
    # B = b[1:] - b_0 a[1:] is rounded: kappa-scaled bound where that is larger
    assert_close_kappa(markov_parameters(A, B, C, D, L), TransferFunction(num, den).impulse(L), den, L,
                       "tf2ss")
    # det(zI - A) is the product of the (normalized) denominator rows: checked at points
    # |z| = 1.5 by LU determinants, not by (ill-conditioned) multiple roots
    z = 1.5 * onp.exp(1j * onp.array([0.3, 1.7, 2.9]))
    det = onp.array([onp.linalg.det(zz * onp.eye(A.shape[0]) - A) for zz in z])
    prod = onp.prod([onp.polyval(row / row[0], z) for row in den], axis=0)
    assert_close(det, prod, "ss_vs_tf", "characteristic polynomial")


@given(tf_arrays(p=dims, m=dims, order=st.integers(1, 3)))
def test_tf_ss_tf_round_trip(tf):
    # tf -> ss -> tf: the common denominator becomes the product of the rows' denominators
    sys = TransferFunction(*tf)
    back = sys.to_ss().to_tf()
    assert back.n_inputs == sys.n_inputs and back.n_outputs == sys.n_outputs
    assert_close_kappa(back.impulse(40), sys.impulse(40), back.den, 40, "tf -> ss -> tf")


def test_ss2tf_matches_scipy_siso():
    rng = _rng(4)
    A = rng.normal(size=(3, 3)) * 0.4
    B, C, D = rng.normal(size=(3, 1)), rng.normal(size=(1, 3)), rng.normal(size=(1, 1))
    num, den = ss2tf(A, B, C, D)
    bs, as_ = ssig.ss2tf(A, B, C, D)
    assert_close(den[0], as_, "scipy_agreement", "den")
    assert_close(num[0, 0], bs[0], "scipy_agreement", "num")


def test_tf2ss_observable_companion_by_hand():
    # H(z) = (2 z^2 + 1) / (z^2 - 0.5 z + 0.25): D = 2, B = b[1:] - b0 a[1:] = [1, 0.5]
    A, B, C, D = tf2ss([2.0, 0.0, 1.0], [1.0, -0.5, 0.25])
    assert onp.array_equal(A, [[0.5, 1.0], [-0.25, 0.0]])
    assert onp.array_equal(B, [[1.0], [0.5]])
    assert onp.array_equal(C, [[1.0, 0.0]]) and onp.array_equal(D, [[2.0]])


# ------------------------------------------------------------- frequency response
@given(ss_arrays(n=st.integers(1, 4), m=dims, p=dims), st.floats(0, 2 * onp.pi))
def test_freqresp_is_z_transform_of_impulse_response(sys, theta):
    # outside the unit circle, |z| = 1.5 >= 1.5 |pole|: the series converges as (2/3)^t
    A, B, C, D = sys
    z = 1.5 * onp.exp(1j * onp.array([theta, theta + 1.0, 0.0]))
    h = markov_parameters(A, B, C, D, 200)
    ss = StateSpace(A, B, C, D)
    assert_close(ss.freqresp(z), _z_transform(h, z), "ss_vs_tf", "ss")
    assert_close(ss.to_tf().freqresp(z), _z_transform(h, z), "ss_vs_tf", "tf")


@given(tf_arrays(p=dims, m=dims, order=st.integers(1, 4)))
def test_freqresp_on_unit_circle_is_dft(tf):
    num, den = tf
    # contract the poles to |p| <= 0.9 (a_i -> a_i 0.9^i) so that 2048 samples have
    # decayed to 0.9^2048 ~ 1e-94 and the DFT of h is H on the unit circle
    den = den * 0.9 ** onp.arange(den.shape[1])
    sys = TransferFunction(num, den)
    L = 2048
    h = sys.impulse(L)
    k = onp.arange(0, L, 97)
    z = onp.exp(2j * onp.pi * k / L)
    dft = onp.fft.fft(h, axis=0)[k]
    # h comes from the lfilter recursion (backward stable: exact for coefficients a few ulps
    # off), and the realization's B is rounded (b_j - b_0 a_j); both are bounded through
    # |delta H| / |H| <= eps ||a||_1 / |a(z)| <= eps kappa on the unit circle
    assert_close_kappa(sys.freqresp(z), dft, sys.den, L, "tf")
    assert_close_kappa(sys.to_ss().freqresp(z), dft, sys.den, L, "ss")


def test_freqresp_by_hand():
    # H(z) = 1 / (z - 0.5) at z = 1 and z = -1
    sys = TransferFunction([0.0, 1.0], [1.0, -0.5])
    got = sys.freqresp(onp.array([1.0, -1.0]))
    assert got.shape == (2, 1, 1)
    assert_close(got[:, 0, 0], [2.0, -1.0 / 1.5], "ss_vs_tf")


# ---------------------------------------------------------------- scipy interop
@given(ss_arrays(n=st.integers(1, 4), m=dims, p=dims))
def test_scipy_round_trip_ss(sys):
    ss = StateSpace(*sys)
    back = from_scipy(ss.to_scipy())
    assert isinstance(back, StateSpace)
    assert_close(back.impulse(30), ss.impulse(30), "scipy_agreement")


@given(tf_arrays(p=dims, m=dims, order=st.integers(1, 4)))
def test_scipy_round_trip_tf(tf):
    sys = TransferFunction(*tf)
    back = from_scipy(sys.to_scipy())
    # MIMO goes through tf2ss (rounded B): kappa-scaled where that is larger
    assert_close_kappa(back.impulse(30), sys.impulse(30), sys.den, 30, "round trip", "scipy_agreement")


@given(tf_arrays(order=st.integers(1, 4)))
def test_scipy_impulse_agrees_siso(tf):
    sys = TransferFunction(*tf)
    _, (h,) = ssig.dimpulse(sys.to_scipy(), n=30)
    # scipy converts tf -> ss (rounded coefficients) and runs dlsim: kappa-scaled bound
    assert_close_kappa(sys.impulse(30)[:, 0, 0], h[:, 0], sys.den, 30, "dimpulse", "scipy_agreement")


def test_from_scipy_zpk_and_simo_tf():
    zpk = ssig.dlti([0.2], [0.5, -0.3], 2.0, dt=1)
    got = from_scipy(zpk)
    want = from_scipy(zpk.to_tf())
    assert_close(got.impulse(20), want.impulse(20), "scipy_agreement")
    # 2 (z - 0.2) / ((z - 0.5)(z + 0.3)) = (2 z - 0.4) / (z^2 - 0.2 z - 0.15), run by lfilter
    delta = onp.zeros(20)
    delta[0] = 1.0
    b, a = onp.array([0.0, 2.0, -0.4]), onp.array([1.0, -0.2, -0.15])
    assert_close(got.impulse(20)[:, 0, 0], ssig.lfilter(b, a, delta), "scipy_agreement")
    # scipy's 2-D numerator: one input, two outputs, common denominator
    simo = ssig.dlti([[1.0, 0.0], [0.0, 1.0]], [1.0, -0.5], dt=1)
    sys = from_scipy(simo)
    assert (sys.n_outputs, sys.n_inputs) == (2, 1)
    assert_close(sys.impulse(5)[:, :, 0], [[1.0, 0.0], [0.5, 1.0], [0.25, 0.5], [0.125, 0.25],
                                           [0.0625, 0.125]], "scipy_agreement")


def test_from_scipy_refuses_continuous_and_other_objects():
    with pytest.raises(TypeError, match="discrete-time"):
        from_scipy(ssig.lti([1.0], [1.0, 1.0]))
    with pytest.raises(TypeError, match="discrete-time"):
        from_scipy({"num": [1.0], "den": [1.0, -0.5]})


# ------------------------------------------------------------------ the classes
def test_properties_poles_stability():
    rng = _rng(5)
    z = onp.array([0.9, -0.5, 0.3 + 0.4j, 0.3 - 0.4j])
    from rssm_ref.oracle.sample import realize_poles
    A = realize_poles(z)
    ss = StateSpace(A, rng.normal(size=(4, 2)), rng.normal(size=(3, 4)), onp.zeros((3, 2)))
    assert (ss.n_inputs, ss.n_outputs, ss.order) == (2, 3, 4)
    assert_close(onp.sort_complex(ss.poles()), onp.sort_complex(z), "ss_vs_tf")
    assert ss.is_stable()
    tf = ss.to_tf()
    assert (tf.n_inputs, tf.n_outputs, tf.order) == (2, 3, 12)
    # every output row has the characteristic polynomial of A: each pole appears p times
    assert_close(onp.sort_complex(tf.poles()), onp.sort_complex(onp.repeat(z, 3)), "ss_vs_tf")
    assert tf.is_stable()
    assert not StateSpace([[1.0]], [[1.0]], [[1.0]], [[0.0]]).is_stable()
    assert not TransferFunction([1.0, 0.0, 0.0], [1.0, 0.0, -1.0001]).is_stable()


def test_transfer_function_normalization():
    # scaling num and den by the same constant leaves H unchanged; stored den[:, 0] = 1
    a = TransferFunction([[[2.0, 1.0]]], [[4.0, -2.0]])
    b = TransferFunction([[[0.5, 0.25]]], [[1.0, -0.5]])
    assert onp.array_equal(a.num, b.num) and onp.array_equal(a.den, b.den)
    # shorter numerator padded on the left (descending powers): 1 / (z - 0.5)
    c = TransferFunction([1.0], [1.0, -0.5])
    assert onp.array_equal(c.num, [[[0.0, 1.0]]])
    # leading zeros shifted out of den (H multiplied by z / z): z / (z - 0.5)
    d = TransferFunction([0.0, 1.0, 0.0], [0.0, 1.0, -0.5])
    assert_close(d.impulse(6), TransferFunction([1.0, 0.0], [1.0, -0.5]).impulse(6), "ss_vs_tf")
    assert d.den[0, 0] == 1.0
    # a numerator longer than the denominator with zero leading terms is still proper
    e = TransferFunction([0.0, 0.0, 1.0], [1.0, -0.5])
    assert_close(e.impulse(5), c.impulse(5), "ss_vs_tf")


@given(ss_arrays(n=st.integers(1, 4), m=dims, p=dims), st.integers(1, 3), st.integers(1, 20))
def test_step_streaming_matches_batch(sys, batch, L):
    A, B, C, D = sys
    ss = StateSpace(A, B, C, D)
    rng = _rng(L)
    u = rng.normal(size=(batch, L, B.shape[1]))
    x0 = rng.normal(size=(batch, A.shape[0]))
    x, ys = x0, []
    for t in range(L):
        x, y_t = ss.step(x, u[:, t])
        ys.append(y_t)
    y_batch, x_L = ss_filter(A, B, C, D, u, x0=x0, return_state=True)
    assert_close(onp.stack(ys, axis=1), y_batch, "streaming_vs_batch", "outputs")
    assert_close(x, x_L, "streaming_vs_batch", "state")


def test_step_unbatched():
    ss = StateSpace([[0.5]], [[1.0]], [[2.0]], [[3.0]])
    x, y = ss.step(onp.array([1.0]), onp.array([1.0]))
    assert x.shape == (1,) and y.shape == (1,)
    assert_close(onp.r_[x, y], [1.5, 5.0], "streaming_vs_batch")


# ------------------------------------------------------------------- bad input
GOOD = dict(A=onp.eye(2) * 0.5, B=onp.ones((2, 1)), C=onp.ones((1, 2)), D=onp.zeros((1, 1)))


@pytest.mark.parametrize("name, value, err, msg", [
    ("A", onp.ones((2, 3)), ValueError, "A: expected a square"),
    ("A", onp.ones(2), ValueError, "A: expected 2 dimensions"),
    ("B", onp.ones((3, 1)), ValueError, "B: expected shape"),
    ("C", onp.ones((1, 3)), ValueError, "C: expected shape"),
    ("D", onp.ones((2, 1)), ValueError, "D: expected shape"),
    ("A", onp.array([[0.5, onp.nan], [0.0, 0.5]]), ValueError, "A: contains NaN"),
    ("B", onp.ones((2, 1)) * 1j, TypeError, "B: complex"),
    ("C", onp.array([["a", "b"]]), TypeError, "C: dtype"),
])
def test_state_space_bad_input(name, value, err, msg):
    args = dict(GOOD, **{name: value})
    with pytest.raises(err, match=msg):
        StateSpace(**args)
    with pytest.raises(err, match=msg):
        markov_parameters(args["A"], args["B"], args["C"], args["D"], 4)


@pytest.mark.parametrize("num, den, err, msg", [
    (onp.ones((2, 1, 3)), onp.ones((1, 3)), ValueError, "den: expected 2 rows"),
    (onp.ones((1, 1, 3)), onp.array([[1.0, onp.inf, 0.0]]), ValueError, "den: contains NaN or inf"),
    (onp.ones((1, 1, 3)), onp.ones((1, 3)) * 1j, TypeError, "den: complex"),
    (onp.ones((1, 3)), onp.ones((1, 3)), ValueError, "num: expected 3 dimensions"),
    (onp.ones((1, 1, 3)), onp.ones(3), ValueError, "den: expected 2 dimensions"),
    (onp.ones(3), onp.ones((1, 3)), ValueError, "den: expected 1 dimension"),
    (onp.ones((1, 1, 3)), onp.ones((1, 2)), ValueError, "improper"),
    (onp.ones((1, 1, 2)), onp.zeros((1, 2)), ValueError, "identically zero"),
    (onp.ones((1, 1, 0)), onp.ones((1, 0)), ValueError, "empty"),
])
def test_transfer_function_bad_input(num, den, err, msg):
    with pytest.raises(err, match=msg):
        TransferFunction(num, den)
    with pytest.raises(err, match=msg):
        tf2ss(num, den)


@pytest.mark.parametrize("call, err, msg", [
    (lambda s: s.impulse(0), ValueError, "L: expected an integer >= 1"),
    (lambda s: s.impulse(2.0), TypeError, "L: expected an int"),
    (lambda s: s.freqresp(onp.ones((2, 2))), ValueError, "z: expected a scalar or a 1-D"),
    (lambda s: s.freqresp([onp.nan]), ValueError, "z: contains NaN"),
    (lambda s: s.step(onp.zeros((3, 1)), onp.zeros((3, 1))), ValueError, "x: expected shape"),
    (lambda s: s.step(onp.zeros((3, 2)), onp.zeros((2, 1))), ValueError, "u_t: expected shape"),
])
def test_method_bad_input(call, err, msg):
    with pytest.raises(err, match=msg):
        call(StateSpace(**GOOD))


def test_module_exports():
    assert set(lti.__all__) >= {"markov_parameters", "den_from_reflection", "ss2tf", "tf2ss",
                                "StateSpace", "TransferFunction", "from_scipy"}
