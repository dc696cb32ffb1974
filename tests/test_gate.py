"""Tests of rssm_ref.gate: eq. (5), Remark 3.1's ZOH gate, their VJP and streaming step."""
import autograd.numpy as np
import numpy as onp
import pytest
from autograd import grad
from autograd.test_util import check_grads
from hypothesis import given, settings
from hypothesis import strategies as st

import rssm_ref.kernels.gate as gate_kernels
from rssm_ref.gate import gate, gate_ref, gate_step
from rssm_ref.tolerances import TOLERANCES, assert_close

MODES = ["euler", "zoh"]
ULP = 2.0 ** -52


# ------------------------------------------------------------------ strategies
@st.composite
def gate_inputs(draw, max_L=48, s_lo=0.0, s_hi=1.0):
    """(y_s, s, y0) with s in [s_lo, s_hi], often at the hard ends (s -> 0, s -> 1)."""
    batch = draw(st.integers(1, 3))
    L = draw(st.integers(1, max_L))
    m = draw(st.integers(1, 3))
    rng = onp.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3]))
    y_s = scale * rng.standard_normal((batch, L, m))
    kind = draw(st.sampled_from(["uniform", "near0", "near1", "mixed"]))
    if kind == "uniform":
        s = rng.uniform(s_lo, s_hi, (batch, L))
    elif kind == "near0":
        s = s_lo + (s_hi - s_lo) * 10.0 ** rng.uniform(-12, -1, (batch, L))
    elif kind == "near1":
        s = s_hi - (s_hi - s_lo) * 10.0 ** rng.uniform(-12, -1, (batch, L))
    else:
        s = rng.choice([s_lo, s_hi, 0.5 * (s_lo + s_hi)], size=(batch, L))
    y0 = None if draw(st.booleans()) else scale * rng.standard_normal((batch, m))
    return y_s, s, y0


def _y0(y_s, y0):
    return onp.zeros((y_s.shape[0], y_s.shape[2])) if y0 is None else y0


def _assert_grads_close(fast, ref, what):
    """Compare (d y_s, d s, d y0). d y_s and d y0 are compared as one vector: with
    lam(0) the adjoint at t = 0, d y_s(0) = b(0) lam(0) and d y0 = a(0) lam(0) with
    a + b = 1, so their joint scale is at least |lam(0)|/2; alone, d y0 = (1 - s(0))
    lam(0) is tiny for s near 1, where the _ref loop's autograd forms 1 - s by
    cancellation (g - g s) and is itself only accurate to eps |lam(0)|."""
    lin = onp.concatenate([onp.ravel(fast[0]), onp.ravel(fast[2])])
    lin_ref = onp.concatenate([onp.ravel(ref[0]), onp.ravel(ref[2])])
    assert_close(lin, lin_ref, "vjp_vs_autograd", f"{what} d (y_s, y0)")
    assert_close(fast[1], ref[1], "vjp_vs_autograd", f"{what} d s")


# -------------------------------------------------------------- fast vs _ref
@pytest.mark.parametrize("mode", MODES)
@given(inp=gate_inputs())
def test_gate_matches_ref(mode, inp):
    y_s, s, y0 = inp
    y = gate(y_s, s, y0, mode)
    assert y.shape == y_s.shape and y.dtype == onp.float64
    assert_close(y, gate_ref(y_s, s, y0, mode), "fast_vs_ref", mode)


@pytest.mark.parametrize("mode", MODES)
def test_gate_matches_ref_across_lapack_groups(mode, monkeypatch):
    # small groups: several full groups plus a short last one, and L longer than a group
    monkeypatch.setattr(gate_kernels, "GROUP_ROWS", 64)
    rng = onp.random.default_rng(1)
    for batch, L, m in [(10, 20, 2), (3, 100, 1)]:
        y_s = rng.standard_normal((batch, L, m))
        s = rng.uniform(0, 1, (batch, L))
        y0 = rng.standard_normal((batch, m))
        assert_close(gate(y_s, s, y0, mode), gate_ref(y_s, s, y0, mode), "fast_vs_ref")
        g = rng.standard_normal((batch, L, m))
        f = grad(lambda a, b, c: np.sum(g * gate(a, b, c, mode)), (0, 1, 2))
        f_ref = grad(lambda a, b, c: np.sum(g * gate_ref(a, b, c, mode)), (0, 1, 2))
        _assert_grads_close(f(y_s, s, y0), f_ref(y_s, s, y0), mode)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=30)
@given(inp=gate_inputs(max_L=24))
def test_vjp_matches_autograd_through_ref(mode, inp):
    y_s, s, y0 = inp
    y0 = _y0(y_s, y0)
    g = onp.random.default_rng(0).standard_normal(y_s.shape)
    args = (y_s, s, y0)
    fast = grad(lambda a, b, c: np.sum(g * gate(a, b, c, mode)), (0, 1, 2))(*args)
    ref = grad(lambda a, b, c: np.sum(g * gate_ref(a, b, c, mode)), (0, 1, 2))(*args)
    for d, a in zip(fast, args):
        assert d.shape == a.shape
    _assert_grads_close(fast, ref, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("m", [1, 2])
def test_check_grads_fast_gate(mode, m):
    rng = onp.random.default_rng(2)
    y_s = rng.standard_normal((2, 7, m))
    s = rng.uniform(0.05, 0.95, (2, 7))  # finite-difference steps stay inside [0, 1]
    y0 = rng.standard_normal((2, m))
    check_grads(lambda a, b, c: gate(a, b, c, mode), (0, 1, 2), modes=["rev"], order=1)(
        y_s, s, y0)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_wrt_single_arguments(mode):
    # autograd asks the VJP for one argument at a time here (argnums of length 1)
    rng = onp.random.default_rng(3)
    y_s, s, y0 = rng.standard_normal((2, 5, 2)), rng.uniform(0, 1, (2, 5)), rng.standard_normal((2, 2))
    for k in range(3):
        fast = grad(lambda *a: np.sum(gate(*a, mode=mode) ** 2), k)(y_s, s, y0)
        ref = grad(lambda *a: np.sum(gate_ref(*a, mode=mode) ** 2), k)(y_s, s, y0)
        assert_close(fast, ref, "vjp_vs_autograd", f"argnum {k}")


# ------------------------------------------------------------- Remark 3.1
@given(st.one_of(st.floats(0.0, 1.0), st.floats(0.0, 1e-6), st.sampled_from([0.0, 1.0, 5e-324])))
def test_taylor_gap_of_exponential(s):
    # e^{-s} - (1 - s) in [0, s^2/2] for s in [0, 1] (alternating Taylor series)
    gap = onp.expm1(-s) + s
    assert -ULP * s <= gap <= s * s / 2.0 + ULP * s


@pytest.mark.parametrize("mode", MODES)
@given(inp=gate_inputs(max_L=16))
def test_one_step_euler_vs_zoh_within_taylor_bound(mode, inp):
    y_s, s, _ = inp
    rng = onp.random.default_rng(4)
    for t in range(y_s.shape[1]):
        y = rng.standard_normal(y_s[:, t].shape) * onp.max(onp.abs(y_s))
        e = gate_step(y, y_s[:, t], s[:, t], "euler")
        z = gate_step(y, y_s[:, t], s[:, t], "zoh")
        bound = (s[:, t] ** 2 / 2.0)[:, None] * onp.abs(y - y_s[:, t])
        slack = 4 * ULP * (onp.abs(y) + onp.abs(y_s[:, t]))
        assert onp.all(onp.abs(e - z) <= bound + slack)


@pytest.mark.parametrize("mode", MODES)
@given(inp=gate_inputs())
def test_output_stays_in_convex_hull(mode, inp):
    # y(t+1) = a y(t) + (1 - a) y_s(t) with a in [0, 1]: y(t+1) lies between the
    # running min and max of {y0, y_s(0..t)}, componentwise
    y_s, s, y0 = inp
    y0 = _y0(y_s, y0)
    y = gate(y_s, s, y0, mode)
    both = onp.concatenate([y0[:, None], y_s], axis=1)
    lo = onp.minimum.accumulate(both, axis=1)[:, 1:]
    hi = onp.maximum.accumulate(both, axis=1)[:, 1:]
    slack = 8 * ULP * onp.max(onp.abs(both))
    assert onp.all(y >= lo - slack) and onp.all(y <= hi + slack)


@pytest.mark.parametrize("mode", MODES)
def test_extreme_gate_values(mode):
    rng = onp.random.default_rng(5)
    y_s, y0 = rng.standard_normal((2, 6, 3)), rng.standard_normal((2, 3))
    # s = 0 holds the state (both modes)
    assert onp.array_equal(gate(y_s, onp.zeros((2, 6)), y0, mode), onp.repeat(y0[:, None], 6, 1))
    if mode == "euler":
        # s = 1 copies the input: y(t+1) = y_s(t)
        assert onp.array_equal(gate(y_s, onp.ones((2, 6)), y0, mode), y_s)


def test_constant_input_closed_form():
    # y_s = c: y(t) - c = (y0 - c) prod_{k<t} a(k)
    rng = onp.random.default_rng(6)
    s = rng.uniform(0, 1, (2, 30))
    c, y0 = 0.7, onp.array([[2.0], [-1.0]])
    for mode, a in [("euler", 1.0 - s), ("zoh", onp.exp(-s))]:
        y = gate(onp.full((2, 30, 1), c), s, y0, mode)
        expect = c + (y0 - c) * onp.cumprod(a, axis=1)
        assert_close(y[:, :, 0], expect, "fast_vs_ref", mode)


# --------------------------------------------------------- long sequences
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("regime", ["near0", "near1", "mixed"])
def test_long_sequence_finite_and_equal_to_ref_on_slices(mode, regime):
    L = 65536
    rng = onp.random.default_rng(7)
    y_s = rng.standard_normal((2, L, 1))
    if regime == "near0":
        s = 10.0 ** rng.uniform(-9, -4, (2, L))
    elif regime == "near1":
        s = 1.0 - 10.0 ** rng.uniform(-16, -4, (2, L))
    else:
        s = rng.choice([0.0, 1e-12, 0.5, 1.0 - 1e-12, 1.0], size=(2, L))
    y0 = onp.array([[3.0], [-2.0]])
    y = gate(y_s, s, y0, mode)
    assert onp.all(onp.isfinite(y))
    # a prefix, and a slice far in, restarted from the fast path's own state
    n = 400
    assert_close(y[:, :n], gate_ref(y_s[:, :n], s[:, :n], y0, mode), "fast_vs_ref", "prefix")
    t0 = L - n
    assert_close(y[:, t0:], gate_ref(y_s[:, t0:], s[:, t0:], y[:, t0 - 1], mode),
                 "fast_vs_ref", "last slice")
    # gradient in y0 of y(L): prod_t a(t), a tiny product that must not be inf/NaN
    dy0 = grad(lambda c: np.sum(gate(y_s, s, c, mode)[:, -1]))(y0)
    with onp.errstate(divide="ignore"):  # log1p(-1) = -inf where s = 1: product 0
        log_a = onp.log1p(-s) if mode == "euler" else -s
        expect = onp.exp(onp.sum(log_a, axis=1))[:, None]
    assert onp.all(onp.isfinite(dy0))
    assert onp.allclose(dy0, expect, rtol=1e-10, atol=1e-300)


# ------------------------------------------------------------- streaming
@pytest.mark.parametrize("mode", MODES)
@given(inp=gate_inputs(max_L=32))
def test_streaming_steps_equal_batch(mode, inp):
    y_s, s, y0 = inp
    y = _y0(y_s, y0)
    steps = []
    for t in range(y_s.shape[1]):
        y = gate_step(y, y_s[:, t], s[:, t], mode)
        steps.append(y)
    assert_close(onp.stack(steps, 1), gate(y_s, s, y0, mode), "streaming_vs_batch", mode)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(mode="tustin"), ValueError, "mode: 'tustin' \\(expected one of 'euler', 'zoh'\\)"),
    (dict(y_s=onp.ones((2, 4))), ValueError, "y_s: expected 3 dimensions"),
    (dict(y_s=onp.ones((2, 0, 1)), s=onp.ones((2, 0))), ValueError, "y_s: expected shape"),
    (dict(s=onp.ones((2, 3))), ValueError, r"s: expected shape \(2, 4\)"),
    (dict(s=onp.full((2, 4), 1.5)), ValueError, r"s: expected gate values in \[0, 1\]"),
    (dict(s=onp.full((2, 4), -0.1), mode="zoh"), ValueError, "s: expected nonnegative"),
    (dict(s=onp.full((2, 4), onp.nan)), ValueError, "s: contains NaN"),
    (dict(y0=onp.ones((2,))), ValueError, r"y0: expected shape \(2, 1\)"),
    (dict(y_s=onp.ones((2, 4, 1), dtype=complex)), TypeError, "y_s: complex"),
])
def test_gate_rejects_bad_input(kwargs, exc, msg):
    args = dict(y_s=onp.ones((2, 4, 1)), s=onp.full((2, 4), 0.5), y0=None, mode="euler")
    args.update(kwargs)
    for fn in (gate, gate_ref):
        with pytest.raises(exc, match=msg):
            fn(**args)


def test_gate_step_rejects_bad_input():
    y = onp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"y_s_t: expected shape \(2, 3\)"):
        gate_step(y, onp.zeros((2, 2)), onp.full(2, 0.5))
    with pytest.raises(ValueError, match=r"s_t: expected shape \(2\)"):
        gate_step(y, y, onp.full((2, 1), 0.5))
    with pytest.raises(ValueError, match=r"s_t: expected gate values in \[0, 1\]"):
        gate_step(y, y, onp.full(2, 2.0))
    with pytest.raises(ValueError, match="mode"):
        gate_step(y, y, onp.full(2, 0.5), mode="bilinear")
