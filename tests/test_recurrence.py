"""Tests of rssm_ref.recurrence: lfilter_prim, tf_filter, ss_filter and their VJPs.

Systems are stable by construction (rssm_ref.testing: poles r e^{i theta}, r <= 0.999,
hard radii and repeated poles drawn on purpose), MIMO up to 3 x 3. Expectations are
invariants: agreement with the `_ref` loops and with scipy, linearity, time invariance,
causality, and finite-difference gradient checks.
"""
import autograd.numpy as np
import numpy as onp
import pytest
import scipy.signal as ssig
from autograd import grad
from autograd.test_util import check_grads
from hypothesis import given, settings
from hypothesis import strategies as st

from rssm_ref import recurrence
from rssm_ref.lti import den_from_reflection, markov_parameters, tf2ss
from rssm_ref.recurrence import (lfilter_prim, ss_filter, ss_filter_ref, tf_filter,
                                 tf_filter_ref)
from rssm_ref.testing import ss_arrays, tf_arrays
from rssm_ref.tolerances import TOLERANCES, assert_close, rel_err

from _helpers import check_all_grads as _check_all_grads
from _helpers import kappa as _kappa
from _helpers import rng as _rng

dims = st.integers(1, 3)




def assert_close_kappa(actual, desired, den, L, what=""):
    """ss_vs_tf, or, where larger, coefficient rounding amplified by kappa (tolerance key
    tf_coefficient_rounding): for converted systems and coefficient recursions near |z| = 1."""
    tol = max(TOLERANCES["ss_vs_tf"], TOLERANCES["tf_coefficient_rounding"] * _kappa(den, L))
    err = rel_err(actual, desired)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.3e} (kappa {_kappa(den, L):.3g})"


def _kappa_ss(A, L):
    """Condition number of a state recursion over L steps: sum_{t<L} ||A^t||_2."""
    P, total = onp.eye(A.shape[0]), 0.0
    for _ in range(L):
        total += onp.linalg.norm(P, 2)
        P = A @ P
    return total


def assert_close_kappa_ss(actual, desired, A, L, key, what=""):
    """``key``, or, where larger, rounding amplified by the state recursion's kappa
    (tolerance key tf_coefficient_rounding; Jordan blocks near |z| = 1)."""
    tol = max(TOLERANCES[key], TOLERANCES["tf_coefficient_rounding"] * _kappa_ss(A, L))
    err = rel_err(actual, desired)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.3e} (kappa {_kappa_ss(A, L):.3g})"


def _inputs(seed, batch, L, m):
    return _rng(seed).normal(size=(batch, L, m))


def _small_tf(seed, p, m, order=3, scale=1.0):
    """A stable (p, m) transfer matrix with den[:, 0] != 1 (the code must normalize)."""
    rng = _rng(seed)
    den = onp.stack([den_from_reflection(rng.uniform(-0.8, 0.8, order)) for _ in range(p)])
    den = den * rng.uniform(0.5, 2.0, size=(p, 1)) * scale
    return rng.normal(size=(p, m, order + 1)), den


def _small_ss(seed, n, m, p):
    rng = _rng(seed)
    Q, _ = onp.linalg.qr(rng.normal(size=(n, n)))
    A = Q @ onp.diag(rng.uniform(-0.9, 0.9, n)) @ Q.T + onp.triu(rng.normal(size=(n, n)) * 0.1, 1)
    return A, rng.normal(size=(n, m)), rng.normal(size=(p, n)), rng.normal(size=(p, m))


def _impulse_conv(h, u):
    """y(t) = sum_s h[s] u(t - s): the convolution form, written directly (float64)."""
    batch, L, m = u.shape
    y = onp.zeros((batch, L, h.shape[1]))
    for s in range(L):
        y[:, s:] += onp.einsum("pm,blm->blp", h[s], u[:, :L - s])
    return y


# ------------------------------------------------------------------- lfilter_prim
def test_lfilter_prim_is_lfilter():
    b, a = onp.array([0.5, -0.2, 0.1]), onp.array([2.0, -0.6, 0.2])
    x = _rng(1).normal(size=(2, 3, 25))
    assert_close(lfilter_prim(b, a, x), ssig.lfilter(b, a, x, axis=-1), "scipy_agreement")


def test_lfilter_prim_grads_batched():
    # a[0] != 1 on purpose: the VJP in a[0] must account for lfilter's normalization
    b, a = onp.array([0.5, -0.2, 0.1, 0.3]), onp.array([1.7, -0.6, 0.2, -0.1])
    x = _rng(2).normal(size=(2, 3, 20))
    _check_all_grads(lfilter_prim, b, a, x)
    _check_all_grads(lfilter_prim, b, a, x[0, 0])


def test_lfilter_prim_vjp_vs_autograd_through_loop():
    b, a = onp.array([0.5, -0.2, 0.1]), onp.array([1.3, -0.6, 0.2])
    x = _rng(3).normal(size=(2, 17))
    w = _rng(4).normal(size=(2, 17))

    def loop(b, a, x):
        # a0 y(t) = sum_j b_j x(t-j) - sum_{i>=1} a_i y(t-i), by autograd through Python
        ys = []
        for t in range(x.shape[-1]):
            acc = sum(b[j] * x[..., t - j] for j in range(3) if t - j >= 0)
            acc = acc - sum(a[i] * ys[t - i] for i in range(1, 3) if t - i >= 0)
            ys.append(acc / a[0])
        return np.stack(ys, axis=-1)

    loss_p = lambda b, a, x: np.sum(w * np.sin(lfilter_prim(b, a, x)))
    loss_l = lambda b, a, x: np.sum(w * np.sin(loop(b, a, x)))
    for i in range(3):
        assert_close(grad(loss_p, i)(b, a, x), grad(loss_l, i)(b, a, x), "vjp_vs_autograd", f"arg {i}")


def test_lfilter_prim_scale_invariance_of_grads():
    # y is invariant under (b, a) -> c (b, a), so sum_j b_j db_j + sum_i a_i da_i = 0
    b, a = onp.array([0.5, -0.2, 0.1]), onp.array([1.3, -0.6, 0.2])
    x = _rng(5).normal(size=(30,))
    loss = lambda b, a: np.sum(lfilter_prim(b, a, x) ** 2)
    gb, ga = grad(loss, 0)(b, a), grad(loss, 1)(b, a)
    scale = abs(b) @ abs(gb) + abs(a) @ abs(ga)
    assert abs(b @ gb + a @ ga) <= TOLERANCES["vjp_vs_autograd"] * scale


# ---------------------------------------------------------------- tf_filter
@given(tf_arrays(p=dims, m=dims, order=st.integers(1, 4)), st.integers(1, 3), st.integers(1, 30),
       st.floats(0.25, 4.0))
@settings(max_examples=30)
def test_tf_filter_fast_vs_ref(tf, batch, L, scale):
    num, den = tf
    u = _inputs(L, batch, L, num.shape[1])
    # scaling a row's num and den together leaves the system unchanged
    y = tf_filter(num * scale, den * scale, u)
    assert y.shape == (batch, L, num.shape[0])
    assert_close(y, tf_filter_ref(num, den, u), "fast_vs_ref")


@given(tf_arrays(p=dims, m=dims, order=st.integers(1, 4)), st.integers(1, 300))
def test_tf_filter_vs_scipy_and_convolution(tf, L):
    num, den = tf
    u = _inputs(L, 2, L, num.shape[1])
    y = tf_filter(num, den, u)
    want = sum(onp.stack([ssig.lfilter(num[i, j], den[i], u[:, :, j], axis=-1)
                          for i in range(num.shape[0])], axis=-1) for j in range(num.shape[1]))
    assert_close(y, want, "scipy_agreement", "lfilter")
    # the convolution form with the state-space Markov parameters of the same system
    h = markov_parameters(*tf2ss(num, den), L)
    assert_close_kappa(y, _impulse_conv(h, u), den, L, "convolution")


@given(tf_arrays(p=dims, m=dims, order=st.integers(1, 4)), st.integers(2, 40), st.data())
def test_tf_filter_linear_time_invariant_causal(tf, L, data):
    num, den = tf
    m = num.shape[1]
    u1, u2 = _inputs(1, 2, L, m), _inputs(2, 2, L, m)
    c1, c2 = data.draw(st.floats(-3, 3)), data.draw(st.floats(-3, 3))
    y1, y2 = tf_filter(num, den, u1), tf_filter(num, den, u2)
    assert_close(tf_filter(num, den, c1 * u1 + c2 * u2), c1 * y1 + c2 * y2, "fast_vs_ref", "linearity")
    # time invariance: delaying u by d delays y by d (zero initial conditions)
    d = data.draw(st.integers(1, L - 1))
    u_d = onp.concatenate([onp.zeros((2, d, m)), u1[:, :L - d]], axis=1)
    assert_close(tf_filter(num, den, u_d)[:, d:], y1[:, :L - d], "fast_vs_ref", "shift")
    assert onp.all(tf_filter(num, den, u_d)[:, :d] == 0.0)
    # causality: changing u from t0 on leaves y before t0 bit-for-bit unchanged
    t0 = data.draw(st.integers(0, L - 1))
    u_c = u1.copy()
    u_c[:, t0:] += 1.0
    assert onp.array_equal(tf_filter(num, den, u_c)[:, :t0], y1[:, :t0])


def test_tf_filter_grads_every_argument():
    num, den = _small_tf(6, 2, 3)
    u = _inputs(7, 2, 12, 3)
    _check_all_grads(tf_filter, num, den, u)


def test_tf_filter_vjp_vs_autograd_through_ref():
    num, den = _small_tf(8, 2, 2, order=2)
    u = _inputs(9, 2, 10, 2)
    w = _inputs(10, 2, 10, 2)
    for i in range(3):
        g_fast = grad(lambda *a: np.sum(w * np.tanh(tf_filter(*a))), i)(num, den, u)
        g_ref = grad(lambda *a: np.sum(w * np.tanh(tf_filter_ref(*a))), i)(num, den, u)
        assert_close(g_fast, g_ref, "vjp_vs_autograd", f"arg {i}")


def test_tf_filter_by_hand():
    # y(t) = u(t) + 0.5 y(t-1) for u = 1: 1, 1.5, 1.75, 1.875 (den[0] = 2 normalized)
    y = tf_filter([[[2.0, 0.0]]], [[2.0, -1.0]], onp.ones((1, 4, 1)))
    assert_close(y[0, :, 0], [1.0, 1.5, 1.75, 1.875], "fast_vs_ref")


# ---------------------------------------------------------------- ss_filter
@given(ss_arrays(n=st.integers(1, 4), m=dims, p=dims), st.integers(1, 3), st.integers(1, 25),
       st.booleans())
@settings(max_examples=30)
def test_ss_filter_fast_vs_ref(sys, batch, L, with_x0):
    A, B, C, D = sys
    u = _inputs(L, batch, L, B.shape[1])
    x0 = _rng(L + 1).normal(size=(batch, A.shape[0])) if with_x0 else None
    y, xL = ss_filter(A, B, C, D, u, x0=x0, return_state=True)
    y_r, xL_r = ss_filter_ref(A, B, C, D, u, x0=x0, return_state=True)
    assert y.shape == (batch, L, C.shape[0]) and xL.shape == (batch, A.shape[0])
    assert_close(y, y_r, "fast_vs_ref", "y")
    assert_close(xL, xL_r, "fast_vs_ref", "x(L)")


@given(ss_arrays(n=st.integers(1, 4), m=dims, p=dims), st.integers(1, 200))
def test_ss_filter_traced_and_untraced_paths_agree(sys, L):
    # the untraced forward works in blocks of _CHUNK steps; L up to 200 crosses them
    A, B, C, D = sys
    u = _inputs(L, 2, L, B.shape[1])
    x0 = _rng(L).normal(size=(2, A.shape[0]))
    y_fast = ss_filter(A, B, C, D, u, x0)
    captured = []

    def traced(A):
        y = ss_filter(A, B, C, D, u, x0)
        captured.append(y._value)
        return np.sum(y)

    grad(traced)(A)
    assert_close(y_fast, captured[0], "fast_vs_ref")


@given(ss_arrays(n=st.integers(1, 4), m=dims, p=dims), st.integers(2, 200))
def test_ss_filter_vs_dlsim(sys, L):
    A, B, C, D = sys
    u = _inputs(L, 1, L, B.shape[1])
    x0 = _rng(L).normal(size=A.shape[0])
    y = ss_filter(A, B, C, D, u, x0=x0)
    _, y_s, x_s = ssig.dlsim(ssig.dlti(A, B, C, D, dt=1), u[0], x0=x0)
    # dlsim sums in another order: equal up to ulps amplified by sum_t ||A^t||
    assert_close_kappa_ss(y[0], y_s.reshape(L, -1), A, L, "scipy_agreement", "y")
    # x_s holds x(0) .. x(L-1): the final state after the first L-1 inputs
    _, x_last = ss_filter(A, B, C, D, u[:, :L - 1], x0=x0, return_state=True)
    assert_close_kappa_ss(x_last[0], x_s[-1], A, L, "scipy_agreement", "x(L-1)")


@given(tf_arrays(p=dims, m=dims, order=st.integers(1, 4)), st.integers(1, 300))
def test_ss_filter_vs_tf_filter(tf, L):
    # the same system in both forms (observable-companion realization of the tf); B of the
    # realization is rounded (b_j - b_0 a_j), hence the kappa-scaled bound
    num, den = tf
    u = _inputs(L, 2, L, num.shape[1])
    assert_close_kappa(ss_filter(*tf2ss(num, den), u), tf_filter(num, den, u), den, L, "ss vs tf")


@given(ss_arrays(n=st.integers(1, 4), m=dims, p=dims), st.integers(2, 40), st.data())
def test_ss_filter_linear_time_invariant_causal(sys, L, data):
    A, B, C, D = sys
    m = B.shape[1]
    u1, u2 = _inputs(1, 2, L, m), _inputs(2, 2, L, m)
    c1, c2 = data.draw(st.floats(-3, 3)), data.draw(st.floats(-3, 3))
    y1, y2 = ss_filter(A, B, C, D, u1), ss_filter(A, B, C, D, u2)
    assert_close(ss_filter(A, B, C, D, c1 * u1 + c2 * u2), c1 * y1 + c2 * y2, "fast_vs_ref", "linearity")
    d = data.draw(st.integers(1, L - 1))
    u_d = onp.concatenate([onp.zeros((2, d, m)), u1[:, :L - d]], axis=1)
    y_d = ss_filter(A, B, C, D, u_d)
    assert_close(y_d[:, d:], y1[:, :L - d], "fast_vs_ref", "shift")
    assert onp.all(y_d[:, :d] == 0.0)
    t0 = data.draw(st.integers(0, L - 1))
    u_c = u1.copy()
    u_c[:, t0:] += 1.0
    assert onp.array_equal(ss_filter(A, B, C, D, u_c)[:, :t0], y1[:, :t0])
    # the initial state's response adds: y(u, x0) = y(u, 0) + C A^t x0
    x0 = _rng(3).normal(size=A.shape[0])
    zx = ss_filter(A, B, C, D, onp.zeros_like(u1), x0=x0)
    assert_close(ss_filter(A, B, C, D, u1, x0=x0), y1 + zx, "fast_vs_ref", "x0 superposition")


def test_ss_filter_grads_every_argument():
    A, B, C, D = _small_ss(11, 3, 2, 2)
    u = _inputs(12, 2, 9, 2)
    x0 = _rng(13).normal(size=(2, 3))
    _check_all_grads(ss_filter, A, B, C, D, u, x0)
    # the final state as an output too (its cotangent enters the adjoint at t = L)
    both = lambda *a: np.concatenate([ss_filter(*a, return_state=True)[1],
                                      ss_filter(*a, return_state=True)[0][:, -1]], axis=1)
    _check_all_grads(both, A, B, C, D, u, x0)
    # a shared x0 (n,) broadcast over the batch
    _check_all_grads(lambda x0: ss_filter(A, B, C, D, u, x0), x0[0])


def test_ss_filter_vjp_vs_autograd_through_ref():
    A, B, C, D = _small_ss(14, 3, 2, 2)
    u = _inputs(15, 2, 12, 2)
    x0 = _rng(16).normal(size=(2, 3))
    w = _inputs(17, 2, 12, 2)
    for i in range(6):
        g_fast = grad(lambda *a: np.sum(w * np.tanh(ss_filter(*a))), i)(A, B, C, D, u, x0)
        g_ref = grad(lambda *a: np.sum(w * np.tanh(ss_filter_ref(*a))), i)(A, B, C, D, u, x0)
        assert_close(g_fast, g_ref, "vjp_vs_autograd", f"arg {i}")


@given(ss_arrays(n=st.integers(1, 4), m=dims, p=dims), st.integers(2, 25))
@settings(max_examples=20)
def test_ss_filter_vjp_vs_autograd_hard_poles(sys, L):
    # poles up to 0.999 and Jordan blocks: the adjoint scan against autograd on the loop
    A, B, C, D = sys
    u = _inputs(L, 2, L, B.shape[1])
    w = _inputs(L + 1, 2, L, C.shape[0])
    loss = lambda f: (lambda A, B: np.sum(w * f(A, B, C, D, u)))
    for i in range(2):
        assert_close(grad(loss(ss_filter), i)(A, B), grad(loss(ss_filter_ref), i)(A, B),
                     "vjp_vs_autograd", f"arg {i}")


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, err, msg", [
    (dict(num=onp.ones((2, 1, 3))), ValueError, "den: expected shape \\(2, 3\\)"),
    (dict(den=onp.ones((1, 2))), ValueError, "den: expected shape \\(1, 3\\)"),
    (dict(den=onp.zeros((1, 3))), ValueError, "den: zero leading coefficient"),
    (dict(u=onp.ones((4, 1))), ValueError, "u: expected 3 dimensions"),
    (dict(u=onp.ones((1, 4, 2))), ValueError, "u: expected shape \\(batch, L, 1\\)"),
    (dict(u=onp.full((1, 4, 1), onp.nan)), ValueError, "u: contains NaN"),
    (dict(u=onp.ones((1, 0, 1))), ValueError, "u: expected batch >= 1 and L >= 1"),
    (dict(num=onp.ones((1, 1, 3)) * 1j), TypeError, "num: complex"),
    (dict(num=onp.ones((1, 3))), ValueError, "num: expected 3 dimensions"),
])
def test_tf_filter_bad_input(kw, err, msg):
    args = dict(num=onp.ones((1, 1, 3)), den=onp.array([[1.0, -0.5, 0.1]]), u=onp.ones((1, 4, 1)))
    args.update(kw)
    for f in (tf_filter, tf_filter_ref):
        with pytest.raises(err, match=msg):
            f(args["num"], args["den"], args["u"])


@pytest.mark.parametrize("kw, err, msg", [
    (dict(A=onp.ones((2, 3))), ValueError, "A: expected a square"),
    (dict(B=onp.ones((3, 1))), ValueError, "B: expected shape"),
    (dict(C=onp.ones((1, 3))), ValueError, "C: expected shape"),
    (dict(D=onp.ones((1, 2))), ValueError, "D: expected shape"),
    (dict(u=onp.ones((1, 4, 2))), ValueError, "u: expected shape \\(batch, L, 1\\)"),
    (dict(u=onp.ones((4, 1))), ValueError, "u: expected 3 dimensions"),
    (dict(u=onp.ones((0, 4, 1))), ValueError, "u: expected batch >= 1 and L >= 1"),
    (dict(x0=onp.ones((2, 2))), ValueError, "x0: expected shape \\(1, 2\\) or \\(2,\\)"),
    (dict(x0=onp.array([1.0, onp.inf])), ValueError, "x0: contains NaN"),
    (dict(A=onp.eye(2) * 1j), TypeError, "A: complex"),
])
def test_ss_filter_bad_input(kw, err, msg):
    args = dict(A=onp.eye(2) * 0.5, B=onp.ones((2, 1)), C=onp.ones((1, 2)), D=onp.zeros((1, 1)),
                u=onp.ones((1, 4, 1)), x0=None)
    args.update(kw)
    for f in (ss_filter, ss_filter_ref):
        with pytest.raises(err, match=msg):
            f(**args)


@pytest.mark.parametrize("b, a, x, err, msg", [
    ([1.0], [1.0, -0.5], onp.ones(3), ValueError, "same length"),
    ([1.0, 0.0], [0.0, 1.0], onp.ones(3), ValueError, "a: zero leading coefficient"),
    ([[1.0, 0.0]], [1.0, 0.5], onp.ones(3), ValueError, "b: expected 1 dimensions"),
    ([1.0, 0.0], [1.0, 0.5], 1.0, ValueError, "x: expected shape"),
    ([1.0, 0.0], [1.0, 0.5], [1.0, onp.nan], ValueError, "x: contains NaN"),
    ([1.0, 0.0], [1.0, 0.5j], onp.ones(3), TypeError, "a: complex"),
])
def test_lfilter_prim_bad_input(b, a, x, err, msg):
    with pytest.raises(err, match=msg):
        lfilter_prim(b, a, x)


def test_module_exports():
    assert set(recurrence.__all__) == {"lfilter_prim", "tf_filter", "tf_filter_ref", "ss_filter",
                                       "ss_filter_ref", "impulse_response", "impulse_response_ref"}
