"""Tests of the fused training-path primitives against their twins.

Every fused primitive has a hand-written VJP; each is checked three ways: its values
against its ``_ref`` twin (or the full-sequence core, last step) with ``fast_vs_ref``;
its gradients by finite differences (``check_grads``, reverse mode, order 1); and its
gradients against autograd's reverse mode through the twin with ``vjp_vs_autograd``.
Where a comparison runs a coefficient recursion near |z| = 1 the bound is, as in
test_lti / test_recurrence, max(key, tf_coefficient_rounding * kappa).

Hard cases on purpose: poles up to |k| = 0.999 and repeated poles, gate values at and
near 0 and 1, L = 1, long sequences (FFT branch of causal_conv, the LAPACK branch of
the gate's projected states, the recurrent residual path at L = 4096), the Selective
SSM's optional arrays absent, batch 1 and batch >= 32 (split in halves, threads).
"""
import os
import platform

import autograd.numpy as np
import numpy as onp
import pytest
from autograd import grad, value_and_grad
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rssm_ref.util.threads as threads_mod
from rssm_ref.util import alloc as _alloc, kept as _kept
from rssm_ref.convolution import causal_conv, fft_conv, fft_conv_ref
from rssm_ref.kernels.convolution import DIRECT_MAX_L
from rssm_ref.kernels.selective import final_kernel as selective_final_kernel
from rssm_ref.kernels.selective import final_vjp as selective_final_vjp
from rssm_ref.kernels.selective import j1_negative, phi_deriv_np
from rssm_ref.kernels.gate import projected_states
from rssm_ref.kernels.residual import final_kernel, final_kernel_vjp
from rssm_ref.gate import gate, gate_final, gate_final_ref, gate_ref
from rssm_ref.lti import den_from_reflection, den_from_reflection_ref, den_from_theta
from rssm_ref.training.head import (ModelConfig, cosine_logits, cross_entropy, embed, final_output,
                             final_output_ref, init_params, loss, loss_ref)
from rssm_ref.oracle.sample import den_from_poles
from rssm_ref.recurrence import impulse_response, impulse_response_ref
from rssm_ref.residual_ssm import residual_ssm_final, residual_ssm_final_ref, residual_ssm_tf
from rssm_ref.selective_ssm import (random_params, selective_ssm, selective_ssm_final, selective_ssm_final_ref)
from rssm_ref.training.tasks import make_batch
from rssm_ref.testing import reflection_coefficients
from rssm_ref.tolerances import TOLERANCES, assert_close, rel_err
from rssm_ref.training.train import DATA_STREAM, TrainConfig, _part, train

from _helpers import check_all_grads, kappa
from _helpers import rng as _rng

GATES = ["euler", "zoh"]
CONVENTIONS = [(d, o) for d in ("zoh", "euler") for o in ("before", "after")]


# ------------------------------------------------------------------ helpers
def _grads(f, args, dy):
    """Gradients of sum(f(*args) * dy) w.r.t. every argument, all traced at once (as in
    training, where the fused primitives park their intermediates for the VJP)."""
    return grad(lambda a: np.sum(f(*a) * dy))(tuple(args))


def _assert_kappa(actual, desired, key, dens, L, what=""):
    """``key``, or, where larger, coefficient rounding amplified by the largest kappa of
    the denominators ``dens`` over L steps (tolerance key tf_coefficient_rounding)."""
    kap = max(kappa(d, L) for d in dens)
    tol = max(TOLERANCES[key], TOLERANCES["tf_coefficient_rounding"] * kap)
    err = rel_err(actual, desired)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.3e} (kappa {kap:.3g})"


def _assert_grads(fast, ref, names, key="vjp_vs_autograd", dens=None, L=None):
    assert len(fast) == len(ref) == len(names)
    for a, b, name in zip(fast, ref, names):
        assert onp.shape(a) == onp.shape(b), f"d{name}: shape {onp.shape(a)} vs {onp.shape(b)}"
        if dens is None:
            assert_close(a, b, key, f"d{name}")
        else:
            _assert_kappa(a, b, key, dens, L, f"d{name}")


def _step_up_autograd(k):
    """The step-up recursion by concatenation only (the pre-primitive den_from_reflection):
    a^(0) = [1], a^(i+1) = [a^(i), 0] + k_i [0, reverse(a^(i))]; differentiated by autograd."""
    lead = onp.shape(k)[:-1]
    a = np.ones(lead + (1,))
    zero = np.zeros(lead + (1,))
    for i in range(onp.shape(k)[-1]):
        a = np.concatenate([a, zero], axis=-1) + k[..., i:i + 1] * np.concatenate(
            [zero, a[..., ::-1]], axis=-1)
    return a


def _tf(seed, p, m, order, k_max=0.8, monic=True):
    """A stable transfer matrix num (p, m, order+1), den (p, order+1) from reflection
    coefficients in [-k_max, k_max] (the first at +-k_max: a pole near |z| = k_max^(1/n)
    or beyond); den rows scaled by a0 in [0.5, 2] unless ``monic``."""
    rng = _rng(seed)
    k = rng.uniform(-k_max, k_max, size=(p, order))
    k[:, 0] = k_max * onp.sign(rng.uniform(-1, 1, size=p))
    den = onp.asarray(den_from_reflection(k))
    if not monic:
        den = den * rng.uniform(0.5, 2.0, size=(p, 1))
    return rng.normal(size=(p, m, order + 1)), den


def _conv_direct(h, u):
    """y[b, t, i] = sum_j (h[:, i, j] * u[b, :, j])[t] by numpy's direct convolution."""
    batch, L, m = u.shape
    Lh, p = h.shape[0], h.shape[1]
    y = onp.zeros((batch, L, p))
    for b in range(batch):
        for i in range(p):
            for j in range(m):
                y[b, :, i] += onp.convolve(h[:min(Lh, L), i, j], u[b, :, j])[:L]
    return y


# ------------------------------------------------------------ impulse_response
IMPULSE_CASES = [   # (p, m, order, k_max, monic, L)
    (1, 1, 1, 0.5, True, 1),
    (2, 3, 4, 0.8, False, 16),
    (2, 2, 4, 0.8, True, 2),        # L shorter than the numerator
    (3, 2, 3, 0.99, True, 60),
    (1, 2, 5, 0.999, False, 120),
]


@pytest.mark.parametrize("p, m, order, k_max, monic, L", IMPULSE_CASES)
def test_impulse_response_vs_ref_and_grads(p, m, order, k_max, monic, L):
    num, den = _tf(10 + L, p, m, order, k_max, monic)
    h = impulse_response(num, den, L)
    assert h.shape == (L, p, m)
    _assert_kappa(h, impulse_response_ref(num, den, L), "fast_vs_ref", [den], L, "h")
    dy = _rng(1).normal(size=(L, p, m))
    fast = _grads(lambda n, d: impulse_response(n, d, L), (num, den), dy)
    ref = _grads(lambda n, d: impulse_response_ref(n, d, L), (num, den), dy)
    _assert_grads(fast, ref, ["num", "den"], dens=[den], L=L)
    if L <= 16:
        check_all_grads(lambda n, d: impulse_response(n, d, L), num, den)


@pytest.mark.parametrize("poles", [[0.9, 0.9, 0.9], [0.999, 0.999], [-0.95, -0.95, 0.5, 0.5]])
def test_impulse_response_repeated_poles(poles):
    den = den_from_poles(poles)[None]
    L = 200
    num = _rng(2).normal(size=(1, 2, den.shape[1]))
    _assert_kappa(impulse_response(num, den, L), impulse_response_ref(num, den, L),
                  "fast_vs_ref", [den], L, "h")
    dy = _rng(3).normal(size=(L, 1, 2))
    fast = _grads(lambda n, d: impulse_response(n, d, L), (num, den), dy)
    ref = _grads(lambda n, d: impulse_response_ref(n, d, L), (num, den), dy)
    _assert_grads(fast, ref, ["num", "den"], dens=[den], L=L)


@given(k=reflection_coefficients(st.integers(1, 5), k_max=0.999), p=st.integers(1, 2),
       m=st.integers(1, 2), L=st.integers(1, 80), seed=st.integers(0, 2 ** 32 - 1))
def test_impulse_response_property(k, p, m, L, seed):
    rng = _rng(seed)
    den = onp.asarray(den_from_reflection(onp.stack([k] + [rng.uniform(-0.9, 0.9, k.size)
                                                           for _ in range(p - 1)])))
    num = rng.normal(size=(p, m, k.size + 1))
    _assert_kappa(impulse_response(num, den, L), impulse_response_ref(num, den, L),
                  "fast_vs_ref", [den], L, "h")
    dy = rng.normal(size=(L, p, m))
    fast = _grads(lambda n, d: impulse_response(n, d, L), (num, den), dy)
    ref = _grads(lambda n, d: impulse_response_ref(n, d, L), (num, den), dy)
    _assert_grads(fast, ref, ["num", "den"], dens=[den], L=L)


# ----------------------------------------------------------------- causal_conv
@pytest.mark.parametrize("L, Lh", [(1, 1), (1, 4), (5, 2), (16, 16), (16, 20),
                                   (DIRECT_MAX_L, DIRECT_MAX_L), (DIRECT_MAX_L + 1, DIRECT_MAX_L + 1),
                                   (100, 7), (70, 75)])
def test_causal_conv_vs_ref_and_grads(L, Lh):
    rng = _rng(L + Lh)
    h, u = rng.normal(size=(Lh, 2, 3)), rng.normal(size=(2, L, 3))
    y = causal_conv(h, u)
    assert y.shape == (2, L, 2)
    assert_close(y, fft_conv_ref(h, u), "fast_vs_ref", "y")
    dy = rng.normal(size=(2, L, 2))
    fast = _grads(causal_conv, (h, u), dy)
    ref = _grads(fft_conv_ref, (h, u), dy)
    _assert_grads(fast, ref, ["h", "u"])
    if L <= DIRECT_MAX_L + 1:
        check_all_grads(causal_conv, h, u)


@pytest.mark.parametrize("L", [100, 333, 1000, 2000])
def test_causal_conv_fft_branch_long(L):
    """The FFT branch against numpy's direct convolution (values) and autograd through
    the FFT twin ``fft_conv`` (gradients: fft_conv_ref's loop is O(L^2) nodes); kernels
    that decay slowly (poles up to 0.999) as in training."""
    assert L > DIRECT_MAX_L
    num, den = _tf(L, 2, 2, 3, k_max=0.999)
    h = impulse_response(num, den, L)
    u = _rng(L).normal(size=(2, L, 2))
    y = causal_conv(h, u)
    assert_close(y, _conv_direct(h, u), "fast_vs_ref", "y vs direct")
    assert_close(y, fft_conv(h, u), "fast_vs_ref", "y vs fft_conv")
    dy = _rng(L + 1).normal(size=(2, L, 2))
    _assert_grads(_grads(causal_conv, (h, u), dy), _grads(fft_conv, (h, u), dy), ["h", "u"])
    if L <= 333:
        check_all_grads(causal_conv, h, u)


def test_causal_conv_short_kernel_grad_is_zero_padded():
    """A kernel longer than L: samples beyond L are unused, their gradient exactly 0."""
    rng = _rng(4)
    for L in (8, 100):
        h, u = rng.normal(size=(L + 6, 1, 2)), rng.normal(size=(1, L, 2))
        dh = grad(lambda hh: np.sum(causal_conv(hh, u) ** 2))(h)
        assert dh.shape == h.shape and onp.all(dh[L:] == 0.0) and onp.any(dh[:L] != 0.0)


# ------------------------------------------------------------------ gate_final
def _gate_case(seed, batch, L, m, kind):
    rng = _rng(seed)
    y_s = rng.normal(size=(batch, L, m))
    if kind == "uniform":
        s = rng.uniform(0.0, 1.0, (batch, L))
    elif kind == "near0":
        s = 10.0 ** rng.uniform(-12, -1, (batch, L))
    elif kind == "near1":
        s = 1.0 - 10.0 ** rng.uniform(-12, -1, (batch, L))
    else:                       # exact 0 and 1 mixed with interior values
        s = rng.choice([0.0, 1.0, 0.3, 0.7], size=(batch, L))
    return y_s, s


@pytest.mark.parametrize("mode", GATES)
@pytest.mark.parametrize("kind", ["uniform", "near0", "near1", "edges"])
@pytest.mark.parametrize("batch, L", [(1, 1), (3, 2), (2, 16), (1, 64), (2, 65), (2, 300)])
def test_gate_final_vs_ref_and_grads(mode, kind, batch, L):
    y_s, s = _gate_case(L + batch, batch, L, 2, kind)
    y = gate_final(y_s, s, mode)
    assert y.shape == (batch, 2)
    assert_close(y, gate_final_ref(y_s, s, mode), "fast_vs_ref", "y(L)")
    assert_close(y, gate(y_s, s, mode=mode)[:, -1], "fast_vs_ref", "y(L) vs gate")
    dy = _rng(5).normal(size=(batch, 2))
    fast = _grads(lambda a, b: gate_final(a, b, mode), (y_s, s), dy)
    ref = _grads(lambda a, b: gate_final_ref(a, b, mode), (y_s, s), dy)
    _assert_grads(fast, ref, ["y_s", "s"])


@pytest.mark.parametrize("mode", GATES)
@pytest.mark.parametrize("L", [1, 7, 80])
def test_gate_final_check_grads(mode, L):
    # interior s: the finite differences step s by 1e-6 and must stay in [0, 1]
    rng = _rng(L)
    y_s, s = rng.normal(size=(2, L, 3)), rng.uniform(0.05, 0.95, (2, L))
    check_all_grads(lambda a, b: gate_final(a, b, mode), y_s, s)


def test_gate_final_exact_edges():
    """s = 0 everywhere: y(L) = 0; s = 1 everywhere (euler): y(L) = y_s(L-1); s = 0 after
    a 1 at t0: y(L) = y_s(t0). Exact by eq. (5)."""
    y_s = _rng(6).normal(size=(2, 9, 3))
    zeros, ones = onp.zeros((2, 9)), onp.ones((2, 9))
    assert onp.array_equal(gate_final(y_s, zeros), onp.zeros((2, 3)))
    assert onp.array_equal(gate_final(y_s, ones), y_s[:, -1])
    s = zeros.copy()
    s[:, 4] = 1.0
    assert onp.array_equal(gate_final(y_s, s), y_s[:, 4])
    # zoh: s = 0 holds the state; s huge (e^-s underflows) copies y_s
    assert onp.array_equal(gate_final(y_s, zeros, "zoh"), onp.zeros((2, 3)))
    assert_close(gate_final(y_s, onp.full((2, 9), 800.0), "zoh"), y_s[:, -1], "fast_vs_ref")
    # gradients at the edges: d y_s(t) = b(t) prod_{k>t} a(k) g, exact for s in {0, 1}
    g = _rng(7).normal(size=(2, 3))
    d_ys, d_s = _grads(gate_final, (y_s, s), g)
    expect = onp.zeros_like(y_s)
    expect[:, 4] = g
    assert onp.array_equal(d_ys, expect)
    ref = _grads(gate_final_ref, (y_s, s), g)
    assert_close(d_s, ref[1], "vjp_vs_autograd", "ds at the edges")


def _long_gate_case():
    L = 4096
    rng = _rng(8)
    y_s = rng.normal(size=(2, L, 2))
    s = onp.concatenate([rng.uniform(0.0, 0.02, (2, L - 50)), rng.uniform(0.0, 1.0, (2, 50))], axis=1)
    s[0, 100] = 1.0
    s[1, 2000:2010] = 0.0
    return y_s, s, rng.normal(size=(2, 2))


@pytest.mark.parametrize("s_big", [20.0, 40.0])
def test_gate_final_zoh_grad_large_s(s_big):
    """zoh with s >> 1: a = e^-s must be accurate relative to itself (1 - b is not: it
    is off by u / e^-s, and exactly 0 for s > ~37). Reference: the closed form for L = 2,
    d y(2)/d s(1) = e^-s1 (y_s(1) - y(1)), d y(2)/d s(0) = e^-s1 e^-s0 y_s(0), with
    y(1) = (1 - e^-s0) y_s(0) -- not autograd through gate_final_ref, whose VJP of expm1
    forms e^x as expm1(x) + 1 (relative error u e^s: 5e-8 at s = 20)."""
    y_s, s = _rng(33).normal(size=(1, 2, 1)), onp.array([[s_big, s_big + 0.5]])
    d_ys, d_s = _grads(lambda a, b: gate_final(a, b, "zoh"), (y_s, s), onp.ones((1, 1)))
    b0, a0, b1, a1 = -onp.expm1(-s[0, 0]), onp.exp(-s[0, 0]), -onp.expm1(-s[0, 1]), onp.exp(-s[0, 1])
    y1 = b0 * y_s[0, 0, 0]
    assert_close(d_s, [[a1 * a0 * y_s[0, 0, 0], a1 * (y_s[0, 1, 0] - y1)]], "vjp_vs_autograd", "ds")
    assert_close(d_ys, [[[b0 * a1], [b1]]], "vjp_vs_autograd", "dy_s")


@pytest.mark.parametrize("mode", GATES)
def test_gate_final_long(mode):
    """L = 4096, small batch: the LAPACK branch of _projected_states in the VJP. Values
    against the loop twin; gradients against autograd through the full-sequence gate
    (autograd through the loop is O(L^2) here: see the slow test below)."""
    y_s, s, dy = _long_gate_case()
    y = gate_final(y_s, s, mode)
    assert_close(y, gate_final_ref(y_s, s, mode), "fast_vs_ref", "y(L)")
    fast = _grads(lambda a, b: gate_final(a, b, mode), (y_s, s), dy)
    _assert_grads(fast, _grads(lambda a, b: gate(a, b, mode=mode)[:, -1], (y_s, s), dy), ["y_s", "s"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", GATES)
def test_gate_final_long_vs_autograd_through_loop(mode):
    y_s, s, dy = _long_gate_case()
    fast = _grads(lambda a, b: gate_final(a, b, mode), (y_s, s), dy)
    _assert_grads(fast, _grads(lambda a, b: gate_final_ref(a, b, mode), (y_s, s), dy), ["y_s", "s"])


@pytest.mark.parametrize("L", [1, 64, 65, 500])
def test_projected_states_both_branches(L):
    """z[:, t] = g . y(t) with y(0) = 0 and y(1..L-1) the gate's states (loop for L <= 64,
    the LAPACK scan above)."""
    rng = _rng(L)
    y_s, s, g = rng.normal(size=(3, L, 2)), rng.uniform(0, 1, (3, L)), rng.normal(size=(3, 2))
    states = onp.concatenate([onp.zeros((3, 1, 2)), gate_ref(y_s, s)[:, :-1]], axis=1)
    z = projected_states(y_s, s, 1.0 - s, g)
    assert_close(z, onp.einsum("btm,bm->bt", states, g), "fast_vs_ref")


@st.composite
def gate_final_inputs(draw):
    """(y_s, s, mode): s in [0, 1] with exact and near edges; y_s > 0, so y(L) is a sum
    of nonnegative terms (no cancellation: fast_vs_ref is the honest bound for any s)."""
    batch, L, m = draw(st.integers(1, 3)), draw(st.integers(1, 80)), draw(st.integers(1, 3))
    mode = draw(st.sampled_from(GATES))
    edges = [0.0, 1.0, 5e-324, 1e-300, 1e-17, 1.0 - 2.0 ** -53, 0.5]
    s = draw(hnp.arrays(onp.float64, (batch, L),
                        elements=st.one_of(st.floats(0.0, 1.0), st.sampled_from(edges))))
    rng = _rng(draw(st.integers(0, 2 ** 32 - 1)))
    return 0.5 + rng.uniform(size=(batch, L, m)), s, mode, rng.normal(size=(batch, m))


@given(gate_final_inputs())
def test_gate_final_property(case):
    y_s, s, mode, dy = case
    y = gate_final(y_s, s, mode)
    assert_close(y, gate_final_ref(y_s, s, mode), "fast_vs_ref", "y(L)")
    fast = _grads(lambda a, b: gate_final(a, b, mode), (y_s, s), dy)
    ref = _grads(lambda a, b: gate_final_ref(a, b, mode), (y_s, s), dy)
    _assert_grads(fast, ref, ["y_s", "s"])


# ---------------------------------------------------------- residual_ssm_final
RES_NAMES = ["sigma_num", "sigma_den", "r_num", "r_den", "gate_bias", "u"]


def _residual(seed, m=2, nu=4, nu_r=3, batch=2, L=16, k_max=0.8, monic=True, bias=0.3):
    sn, sd = _tf(seed, m, m, nu, k_max, monic)
    rn, rd = _tf(seed + 1, 1, m, nu_r, k_max, monic)
    u = _rng(seed + 2).normal(size=(batch, L, m))
    return [sn, sd, 0.5 * rn, rd, bias, u]


def _res_twin(path, gate):
    return lambda *a: residual_ssm_tf(*a, path=path, gate=gate)[:, -1]


@pytest.mark.parametrize("path", ["auto", "kernel", "recurrent", "fft"])
@pytest.mark.parametrize("gate_mode", GATES)
@pytest.mark.parametrize("batch, L, monic", [(1, 1, True), (3, 16, False), (2, 40, True)])
def test_residual_final_vs_twins_and_grads(path, gate_mode, batch, L, monic):
    args = _residual(L + batch, batch=batch, L=L, monic=monic)
    dens = [args[1], args[3]]
    f = lambda *a: residual_ssm_final(*a, path=path, gate=gate_mode)
    y = f(*args)
    assert y.shape == (batch, 2)
    _assert_kappa(y, residual_ssm_final_ref(*args, gate=gate_mode), "fast_vs_ref", dens, L, "vs _ref")
    for twin in ("recurrent", "fft"):
        _assert_kappa(y, _res_twin(twin, gate_mode)(*args), "fast_vs_ref", dens, L, f"vs tf {twin}")
    dy = _rng(9).normal(size=(batch, 2))
    fast = _grads(f, args, dy)
    ref = _grads(_res_twin("recurrent", gate_mode), args, dy)
    _assert_grads(fast, ref, RES_NAMES, dens=dens, L=L)
    if L <= 16:
        check_all_grads(f, *args)


def _gate_input_scaled(args, r_max):
    """args with r_num rescaled so that max |r| = r_max (r is linear in r_num)."""
    _, mid = residual_ssm_tf(*args, path="recurrent", return_intermediates=True)
    out = list(args)
    out[2] = args[2] * (r_max / onp.max(onp.abs(mid["r"])))
    return out


@pytest.mark.parametrize("bias", [-40.0, -8.0, 8.0, 40.0])
@pytest.mark.parametrize("gate_mode", GATES)
def test_residual_final_gate_saturated(bias, gate_mode):
    """s = sigma(r + c) next to 0 and 1 (|c| = 8, |r| <= 0.1), and exactly 0 or 1
    (|c| = 40: tanh(20 +- 0.05) rounds to +-1). Where s is exactly 0 or 1 every path
    through sigma' is e^-40-small, which the kernel path now keeps (see the test
    below): compared there are only the gradients that do not go through sigma' (s = 1:
    sigma_num, sigma_den, u through y_s; s = 0: none, y(L) = 0)."""
    args = _gate_input_scaled(_residual(21, L=12, bias=bias), 0.1)
    f = lambda *a: residual_ssm_final(*a, path="kernel", gate=gate_mode)
    y = f(*args)
    assert_close(y, _res_twin("recurrent", gate_mode)(*args), "fast_vs_ref")
    if bias == -40.0:
        assert onp.array_equal(y, onp.zeros_like(y))        # y(L) = 0 when the gate never opens
    if bias == 40.0 and gate_mode == "euler":               # s = 1: y(L) = y_s(L-1)
        y_s = residual_ssm_tf(*args, return_intermediates=True)[1]["y_s"]
        assert_close(y, y_s[:, -1], "fast_vs_ref")
    dy = _rng(10).normal(size=y.shape)
    fast = _grads(f, args, dy)
    ref = _grads(_res_twin("recurrent", gate_mode), args, dy)
    keep = {-40.0: [], 40.0: [0, 1, 5]}.get(bias, range(6))
    _assert_grads([fast[i] for i in keep], [ref[i] for i in keep], [RES_NAMES[i] for i in keep])


def test_residual_kernel_gate_derivative_near_saturation():
    args = _gate_input_scaled(_residual(22, L=12, bias=25.0), 0.1)
    dy = _rng(11).normal(size=(2, 2))
    # the recurrent path differentiates sigmoid with autograd: accurate there
    ref = _grads(_res_twin("recurrent", "euler"), args, dy)
    _assert_grads(_grads(lambda *a: residual_ssm_final(*a, path="recurrent"), args, dy), ref, RES_NAMES)
    _assert_grads(_grads(lambda *a: residual_ssm_final(*a, path="kernel"), args, dy), ref, RES_NAMES)


@pytest.mark.parametrize("case", ["k0.99", "k0.999", "repeated"])
def test_residual_final_poles_near_unit_circle(case):
    L = 200
    args = _residual(31, L=L, k_max=0.9)
    if case == "repeated":
        args[1] = onp.stack([den_from_poles([0.95, 0.95, 0.95, 0.2]), den_from_poles([0.9, 0.9, -0.9, -0.9])])
    else:
        kmax = float(case[1:])
        k = onp.array([[kmax, 0.5, -0.3, 0.2], [-kmax, kmax, 0.1, 0.0]])
        args[1] = onp.asarray(den_from_reflection(k))
    # Σ's gain is large here (|y_s| up to 1e4): keep the gate in its working range, |r| <= 3
    args = _gate_input_scaled(args, 3.0)
    dens = [args[1], args[3]]
    dy = _rng(11).normal(size=(2, 2))
    ref_y = _res_twin("recurrent", "euler")(*args)
    ref_g = _grads(_res_twin("recurrent", "euler"), args, dy)
    for path in ("kernel", "recurrent", "fft"):
        f = lambda *a: residual_ssm_final(*a, path=path)
        _assert_kappa(f(*args), ref_y, "fast_vs_ref", dens, L, path)
        _assert_grads(_grads(f, args, dy), ref_g, RES_NAMES, dens=dens, L=L)


@pytest.mark.parametrize("gate_mode", GATES)
def test_residual_final_long_recurrent(gate_mode):
    """L = 4096: 'auto' is the recurrent path (bit-identical), against residual_ssm_tf
    (values, gradients) and the state-space loop twin (values)."""
    L = 4096
    args = _residual(41, batch=2, L=L, k_max=0.9)
    dens = [args[1], args[3]]
    f = lambda *a: residual_ssm_final(*a, path="recurrent", gate=gate_mode)
    y = f(*args)
    assert onp.array_equal(y, residual_ssm_final(*args, path="auto", gate=gate_mode))
    _assert_kappa(y, _res_twin("recurrent", gate_mode)(*args), "fast_vs_ref", dens, L, "vs tf")
    _assert_kappa(y, residual_ssm_final_ref(*args, gate=gate_mode), "fast_vs_ref", dens, L, "vs _ref")
    dy = _rng(12).normal(size=(2, 2))
    _assert_grads(_grads(f, args, dy), _grads(_res_twin("recurrent", gate_mode), args, dy),
                  RES_NAMES, dens=dens, L=L)


def test_residual_final_auto_is_kernel_up_to_direct_max():
    for L in (1, DIRECT_MAX_L):
        args = _residual(51, L=L)
        assert onp.array_equal(residual_ssm_final(*args), residual_ssm_final(*args, path="kernel"))


def test_residual_kernel_vjp_without_cache_recomputes_the_same():
    """The VJP maker with nothing parked (rssm_ref.util.kept) recomputes the forward: same
    gradients, bit for bit, as with the parked intermediates."""
    args = _residual(61, L=20)
    dy = _rng(13).normal(size=(2, 2))
    traced = _grads(lambda *a: residual_ssm_final(*a, path="kernel"), args, dy)
    full = tuple(args) + ("euler", False)
    ans = final_kernel(*full)
    assert _kept.take(ans) is None
    again = final_kernel_vjp(tuple(range(6)), ans, full, {})(dy)
    for a, b, name in zip(traced, again, RES_NAMES):
        assert onp.array_equal(a, b), name


def test_two_fused_calls_in_one_graph():
    """Two traced calls of each fused primitive in one loss: each VJP gets its own
    intermediates (rssm_ref.util.kept keeps one entry, taken right after the forward)."""
    a1, a2 = _residual(71, L=10), _residual(72, L=10)
    u2 = a2[5]
    dy1, dy2 = _rng(14).normal(size=(2, 2)), _rng(15).normal(size=(2, 2))

    def two(fn):
        return lambda *a: np.sum(fn(*a) * dy1) + np.sum(fn(*a[:5], u2 * 2.0) * dy2)
    fast = grad(lambda a: two(lambda *b: residual_ssm_final(*b, path="kernel"))(*a))(tuple(a1))
    ref = grad(lambda a: two(_res_twin("recurrent", "euler"))(*a))(tuple(a1))
    _assert_grads(fast, ref, RES_NAMES)

    P = random_params(m=3, n=2, seed=3)
    keys = ["A", "W_delta", "W_B", "W_C", "delta_bias"]
    u = _rng(16).normal(size=(2, 6, 3))
    g1, g2 = _rng(17).normal(size=(2, 3)), _rng(18).normal(size=(2, 3))

    def sel(fn):
        return lambda p: (np.sum(fn(p[0], *p[1:]) * g1) + np.sum(fn(p[0] * -0.5, *p[1:]) * g2))
    vals = (u,) + tuple(P[k] for k in keys)
    fast = grad(sel(selective_ssm_final))(vals)
    ref = grad(sel(lambda *a: selective_ssm(*a)[:, -1]))(vals)
    _assert_grads(fast, ref, ["u"] + keys)


# ------------------------------------------------------- selective_ssm_final
SEL_OPT = [(True, True), (True, False), (False, True), (False, False)]   # (delta_bias, D)


def _selective(seed, m=3, n=2, batch=2, L=7, with_bias=True, with_D=True, bias_shift=0.0):
    P = random_params(m=m, n=n, seed=seed, delta_bias=with_bias, D=with_D)
    if with_bias:
        P["delta_bias"] = P["delta_bias"] + bias_shift
    u = _rng(seed + 100).normal(size=(batch, L, m))
    names = ["u", "A", "W_delta", "W_B", "W_C"] + (["delta_bias"] if with_bias else []) + (
        ["D"] if with_D else [])
    return names, [u] + [P[k] for k in names[1:]]


def _sel_fns(names, disc, out):
    """fast, twin (selective_ssm last step, autograd-differentiable), _ref (loops), all
    taking the arrays named in ``names`` positionally."""
    def call(fn):
        return lambda *a: fn(**dict(zip(names, a)), discretization=disc, output=out)
    return (call(selective_ssm_final), lambda *a: call(selective_ssm)(*a)[:, -1],
            call(selective_ssm_final_ref))


@pytest.mark.parametrize("disc, out", CONVENTIONS)
@pytest.mark.parametrize("with_bias, with_D", SEL_OPT)
@pytest.mark.parametrize("batch, L", [(1, 1), (2, 2), (3, 7)])
def test_selective_final_vs_twins_and_grads(disc, out, with_bias, with_D, batch, L):
    names, args = _selective(L + 7 * batch, batch=batch, L=L, with_bias=with_bias, with_D=with_D)
    fast, twin, ref = _sel_fns(names, disc, out)
    y = fast(*args)
    assert y.shape == (batch, 3)
    assert_close(y, ref(*args), "fast_vs_ref", "vs _ref")
    assert_close(y, twin(*args), "fast_vs_ref", "vs selective_ssm")
    dy = _rng(19).normal(size=(batch, 3))
    _assert_grads(_grads(fast, args, dy), _grads(twin, args, dy), names)
    if batch == 2 or L == 7:
        check_all_grads(fast, *args)


def test_selective_before_at_L1_is_skip_only():
    """output="before", L = 1: y(0) = C̄ h(0) + D u(0) = D u(0) exactly; only u and D
    have nonzero gradients."""
    for disc in ("zoh", "euler"):
        names, args = _selective(5, batch=2, L=1)
        fast = _sel_fns(names, disc, "before")[0]
        assert onp.array_equal(fast(*args), args[-1] * args[0][:, -1])
        dy = _rng(20).normal(size=(2, 3))
        grads = dict(zip(names, _grads(fast, args, dy)))
        assert onp.array_equal(grads["u"][:, 0], dy * args[-1])
        assert onp.array_equal(grads["D"], onp.sum(dy * args[0][:, 0], axis=0))
        for k in ("A", "W_delta", "W_B", "W_C", "delta_bias"):
            assert onp.array_equal(grads[k], onp.zeros_like(args[names.index(k)])), k


@pytest.mark.parametrize("disc", ["zoh", "euler"])
@pytest.mark.parametrize("shift", [-7.0, 6.0])
def test_selective_final_extreme_delta(disc, shift):
    """Delta = softplus(.) small (~1e-4 .. 1e-6: Delta A deep in the series branch of
    phi1') and large (exp(Delta A) underflowing over a few steps)."""
    names, args = _selective(6, L=9, bias_shift=shift)
    fast, twin, ref = _sel_fns(names, disc, "after")
    y = fast(*args)
    assert_close(y, ref(*args), "fast_vs_ref")
    dy = _rng(21).normal(size=y.shape)
    _assert_grads(_grads(fast, args, dy), _grads(twin, args, dy), names)


def test_selective_final_grads_tiny_delta():
    names, args = _selective(6, L=9, bias_shift=-30.0)        # pre ~ -30: Delta ~ 1e-13
    fast, twin, _ = _sel_fns(names, "zoh", "after")
    dy = _rng(21).normal(size=(2, 3))
    _assert_grads(_grads(fast, args, dy), _grads(twin, args, dy), names)


def test_J1_negative_vs_phi_deriv():
    """phi1'(x) = J_1(x) for x <= 0: series about -1/4 for x > -1/2, closed form below;
    relative to each value (it is about 1/2 at 0 and 1/x^2 far out)."""
    x = -onp.concatenate([[0.0, 5e-324, 1e-300, 1e-17, 1e-8, 0.25, 0.5 - 1e-16, 0.5, 0.5 + 1e-16],
                          onp.linspace(0.0, 0.75, 301), onp.logspace(-12, 3, 301), [700.0, 1e5]])
    got, want = j1_negative(x), phi_deriv_np(x, 1)
    err = onp.max(onp.abs(got - want) / onp.abs(want))
    assert err <= TOLERANCES["fast_vs_ref"], err
    # and the regimes meet: no jump across x = -1/2
    edge = j1_negative(onp.array([-0.5 - 1e-15, -0.5 + 1e-15]))
    assert abs(edge[0] - edge[1]) <= TOLERANCES["fast_vs_ref"] * edge[0]


@pytest.mark.parametrize("disc, out", CONVENTIONS)
def test_selective_batch_split_is_bit_identical(disc, out):
    """batch 64 runs as two halves of 32: the same numbers as the halves run alone, and
    the values and gradients agree with the twin."""
    names, args = _selective(7, m=3, n=2, batch=64, L=6)
    fast, twin, _ = _sel_fns(names, disc, out)
    u = args[0]
    y = fast(*args)
    halves = [fast(u[:32], *args[1:]), fast(u[32:], *args[1:])]
    assert onp.array_equal(y, onp.concatenate(halves, axis=0))
    assert_close(y, twin(*args), "fast_vs_ref")
    dy = _rng(22).normal(size=(64, 3))
    g = _grads(fast, args, dy)
    _assert_grads(g, _grads(twin, args, dy), names)
    g_a = _grads(fast, [u[:32]] + args[1:], dy[:32])
    g_b = _grads(fast, [u[32:]] + args[1:], dy[32:])
    assert_close(g[0], onp.concatenate([g_a[0], g_b[0]], axis=0), "fast_vs_ref", "du by rows")
    for k in range(1, len(names)):
        assert_close(g[k], g_a[k] + g_b[k], "fast_vs_ref", f"d{names[k]} summed over halves")


def test_selective_threads_bit_identical(monkeypatch):
    names, args = _selective(8, m=3, n=2, batch=40, L=5)
    fast = _sel_fns(names, "zoh", "before")[0]
    dy = _rng(23).normal(size=(40, 3))
    out = {}
    for n in ("1", "2"):
        monkeypatch.setenv("RSSM_REF_THREADS", n)
        assert threads_mod.workers() == int(n)
        out[n] = (fast(*args), _grads(fast, args, dy))
    assert onp.array_equal(out["1"][0], out["2"][0])
    for a, b, name in zip(out["1"][1], out["2"][1], names):
        assert onp.array_equal(a, b), name


def test_selective_vjp_without_cache_recomputes_the_same():
    names, args = _selective(9, batch=40, L=6)
    fast = _sel_fns(names, "zoh", "after")[0]
    dy = _rng(24).normal(size=(40, 3))
    traced = _grads(fast, args, dy)
    full = tuple(args) + ("zoh", "after", False)
    ans = selective_final_kernel(*full)
    assert _kept.take(ans) is None
    again = selective_final_vjp(tuple(range(7)), ans, full, {})(dy)
    for a, b, name in zip(traced, again, names):
        assert onp.array_equal(a, b), name


# ------------------------------------------------- den_from_reflection / theta
@pytest.mark.parametrize("shape, k_max", [((1,), 0.5), ((4,), 0.999), ((3, 5), 0.99),
                                          ((2, 2, 3), 0.999)])
def test_den_from_reflection_primitive(shape, k_max):
    k = _rng(len(shape)).uniform(-k_max, k_max, size=shape)
    k.reshape(-1)[0] = k_max
    den = den_from_reflection(k)
    assert den.shape == shape[:-1] + (shape[-1] + 1,)
    for row, kk in zip(den.reshape(-1, shape[-1] + 1), k.reshape(-1, shape[-1])):
        assert_close(row, den_from_reflection_ref(kk), "fast_vs_ref")
    dy = _rng(25).normal(size=den.shape)
    _assert_grads(_grads(den_from_reflection, (k,), dy), _grads(_step_up_autograd, (k,), dy), ["k"])
    check_all_grads(den_from_reflection, k)


@pytest.mark.parametrize("bound", [0.5, 0.999, 1.0])
def test_den_from_theta(bound):
    theta = _rng(26).normal(0.0, 2.0, size=(3, 4))
    theta[0, 0] = 30.0                  # tanh saturated: the pole at the bound
    den = den_from_theta(theta, bound)
    assert_close(den, _step_up_autograd(bound * onp.tanh(theta)), "fast_vs_ref")
    for row, kk in zip(den, bound * onp.tanh(theta)):
        assert_close(row, den_from_reflection_ref(kk), "fast_vs_ref")
    dy = _rng(27).normal(size=den.shape)
    fast = _grads(lambda t: den_from_theta(t, bound), (theta,), dy)
    ref = _grads(lambda t: _step_up_autograd(bound * np.tanh(t)), (theta,), dy)
    _assert_grads(fast, ref, ["theta"])
    check_all_grads(lambda t: den_from_theta(t, bound), theta)


def test_den_from_theta_bound_one_stays_stable():
    den = den_from_theta(onp.array([0.3, 20.0]), 1.0)
    assert onp.max(onp.abs(onp.roots(den))) < 1.0


# ------------------------------------------------------------------ models
def test_embed():
    rng = _rng(28)
    E, tok = rng.normal(size=(5, 3)), onp.array([[0, 4, 4, 2], [4, 4, 1, 0]])
    assert onp.array_equal(embed(E, tok), E[tok])
    g = rng.normal(size=(2, 4, 3))
    fast = grad(lambda e: np.sum(embed(e, tok) * g))(E)
    ref = grad(lambda e: np.sum(e[tok] * g))(E)
    assert_close(fast, ref, "vjp_vs_autograd")
    assert onp.array_equal(fast[3], onp.zeros(3))      # token 3 unused
    check_all_grads(lambda e: embed(e, tok), E)


def _cosine_ref(y, E, scale, n_rows=None):
    E = E[:n_rows]
    y_n = y / np.sqrt(np.sum(y * y, axis=1, keepdims=True) + 1e-12)
    E_n = E / np.sqrt(np.sum(E * E, axis=1, keepdims=True) + 1e-12)
    return scale * np.dot(y_n, E_n.T)


@pytest.mark.parametrize("n_rows", [None, 4])
def test_cosine_logits(n_rows):
    rng = _rng(29)
    y, E = rng.normal(size=(4, 3)), rng.normal(size=(6, 3))
    y[1] = 0.0                                  # ||y|| = 0: the epsilon keeps it finite
    y[2] *= 1e-7
    z = cosine_logits(y, E, 10.0, n_rows)
    assert z.shape == (4, 6 if n_rows is None else n_rows)
    assert_close(z, _cosine_ref(y, E, 10.0, n_rows), "fast_vs_ref")
    dz = rng.normal(size=z.shape)
    fast = _grads(lambda a, b, c: cosine_logits(a, b, c, n_rows), (y, E, 10.0), dz)
    ref = _grads(lambda a, b, c: _cosine_ref(a, b, c, n_rows), (y, E, 10.0), dz)
    _assert_grads(fast, ref, ["y", "E", "scale"])
    if n_rows is not None:
        assert onp.array_equal(fast[1][n_rows:], onp.zeros((6 - n_rows, 3)))
    # finite differences (step 1e-6) only away from y = 0, where 1/||y||_eps varies on a 1e-6 scale
    check_all_grads(lambda a, b, c: cosine_logits(a, b, c, n_rows), y[[0, 3]], E, 10.0)


def test_cross_entropy():
    rng = _rng(30)
    z, tgt = rng.normal(size=(5, 4)) * 3.0, onp.array([0, 3, 3, 1, 2])
    z[2] += 800.0                               # exp overflows without the max shift

    def ref(zz):
        zmax = np.max(zz, axis=1, keepdims=True)
        lse = zmax[:, 0] + np.log(np.sum(np.exp(zz - zmax), axis=1))
        return np.mean(lse - zz[onp.arange(5), tgt])
    assert_close(cross_entropy(z, tgt), ref(z), "fast_vs_ref")
    assert_close(grad(lambda zz: cross_entropy(zz, tgt))(z), grad(ref)(z), "vjp_vs_autograd")
    check_all_grads(lambda zz: cross_entropy(zz, tgt), z)


MODEL_CASES = ([("residual", dict(path=p, gate=g)) for p in ("auto", "kernel", "recurrent", "fft")
                for g in GATES]
               + [("selective", dict(discretization=d, output=o, m=4, n=2)) for d, o in CONVENTIONS])


@pytest.mark.parametrize("model, kw", MODEL_CASES)
def test_loss_vs_loss_ref(model, kw):
    cfg = ModelConfig(model, "induction", **kw)
    params = init_params(cfg, seed=2)
    tok, tgt = make_batch("induction", _rng(31), 6, 12, cfg.n_tokens)
    assert_close(final_output(cfg, params, tok), final_output_ref(cfg, params, tok), "fast_vs_ref")
    keys = sorted(params)
    v, g = value_and_grad(lambda p: loss(cfg, p, tok, tgt))(params)
    v_ref, g_ref = value_and_grad(lambda p: loss_ref(cfg, p, tok, tgt))(params)
    assert_close(v, v_ref, "fast_vs_ref", "loss")
    _assert_grads([g[k] for k in keys], [g_ref[k] for k in keys], keys)


def test_loss_vs_loss_ref_long_auto_and_batch_split():
    """L = 80 ('auto' is the recurrent path) and a selective batch of 48 (split)."""
    for cfg, batch, L in ((ModelConfig("residual", "extended"), 4, 80),
                          (ModelConfig("selective", "extended", m=4, n=2), 48, 10)):
        params = init_params(cfg, seed=3)
        tok, tgt = make_batch("extended", _rng(32), batch, L, cfg.n_tokens)
        v, g = value_and_grad(lambda p: loss(cfg, p, tok, tgt))(params)
        v_ref, g_ref = value_and_grad(lambda p: loss_ref(cfg, p, tok, tgt))(params)
        assert_close(v, v_ref, "fast_vs_ref", "loss")
        _assert_grads([g[k] for k in sorted(g)], [g_ref[k] for k in sorted(g)], sorted(g))


# ------------------------------------------------------------------ training
def test_part_reads_a_slice_and_scatters_its_gradient():
    theta = _rng(34).normal(size=11)
    assert onp.array_equal(_part(theta, 2, 8, (2, 3)), theta[2:8].reshape(2, 3))
    g = _rng(35).normal(size=(2, 3))
    d = grad(lambda th: np.sum(_part(th, 2, 8, (2, 3)) * g))(theta)
    assert onp.array_equal(d, onp.concatenate([onp.zeros(2), g.reshape(-1), onp.zeros(3)]))
    check_all_grads(lambda th: _part(th, 2, 8, (2, 3)), theta)


def _adam_reference(model_cfg, tc):
    """Adam as the rssm_ref.training.train docstring writes it, on a dict of arrays, with the
    same batches (default_rng([seed, DATA_STREAM, k])) and the same loss."""
    params = {k: onp.array(v, dtype=float) for k, v in init_params(model_cfg, seed=tc.seed).items()}
    m = {k: onp.zeros_like(v) for k, v in params.items()}
    v = {k: onp.zeros_like(v) for k, v in params.items()}
    vg = value_and_grad(lambda p, tok, tgt: loss(model_cfg, p, tok, tgt))
    losses, norms = [], []
    for k in range(tc.steps):
        rng = onp.random.default_rng([tc.seed, DATA_STREAM, k])
        tok, tgt = make_batch(model_cfg.task, rng, tc.batch, tc.L, model_cfg.n_tokens)
        value, g = vg(params, tok, tgt)
        losses.append(float(value))
        norm = onp.sqrt(sum(onp.sum(gi * gi) for gi in g.values()))
        norms.append(norm)
        scale = min(1.0, tc.clip / norm)
        if k < tc.warmup:
            lr = tc.lr * (k + 1) / tc.warmup
        else:
            lr = tc.lr * 0.5 * (1.0 + onp.cos(onp.pi * (k - tc.warmup) / (tc.steps - tc.warmup)))
        for name in params:
            gi = g[name] * scale
            m[name] = tc.beta1 * m[name] + (1 - tc.beta1) * gi
            v[name] = tc.beta2 * v[name] + (1 - tc.beta2) * gi * gi
            m_hat = m[name] / (1 - tc.beta1 ** (k + 1))
            v_hat = v[name] / (1 - tc.beta2 ** (k + 1))
            params[name] = params[name] - lr * m_hat / (onp.sqrt(v_hat) + tc.eps)
    return params, losses, norms


@pytest.mark.parametrize("model_cfg", [ModelConfig("residual", "induction"),
                                       ModelConfig("selective", "induction", m=4, n=2)],
                         ids=["residual", "selective"])
def test_flat_adam_matches_dict_adam(model_cfg):
    tc = TrainConfig(steps=5, batch=8, L=10, lr=0.05, warmup=2, clip=10.0, seed=4)
    params, hist = train(model_cfg, tc)
    ref, ref_losses, norms = _adam_reference(model_cfg, tc)
    # clip = 10: some steps are clipped and some are not, so both branches are compared
    assert min(norms) < tc.clip < max(norms), norms
    assert sorted(params) == sorted(ref)
    for k in ref:
        assert params[k].shape == ref[k].shape
        assert_close(params[k], ref[k], "fast_vs_ref", k)
        init = init_params(model_cfg, seed=tc.seed)[k]
        assert not onp.array_equal(params[k], init), f"{k} never moved"
    assert_close(hist["loss"], ref_losses, "fast_vs_ref", "loss history")


def test_train_same_seed_bit_identical():
    """Twice with the same seed, selective with batch 32 (split in halves on threads):
    the same bits."""
    cfg = ModelConfig("selective", "induction", m=4, n=2)
    tc = TrainConfig(steps=4, batch=32, L=8, warmup=2, seed=5)
    p1, h1 = train(cfg, tc)
    p2, h2 = train(cfg, tc)
    assert h1["loss"] == h2["loss"]
    for k in p1:
        assert onp.array_equal(p1[k], p2[k]), k
    p3, _ = train(cfg, TrainConfig(steps=4, batch=32, L=8, warmup=2, seed=6))
    assert not all(onp.array_equal(p1[k], p3[k]) for k in p1)


# ------------------------------------------------- _kept, _threads, _alloc
def test_kept_park_take():
    a, b = onp.zeros(2), onp.zeros(2)
    _kept.park(a, "cache a")
    assert _kept.take(b) is None            # another array: nothing, and a's entry stays
    assert _kept.take(a) == "cache a"
    assert _kept.take(a) is None            # taken once
    _kept.park(a, 1)
    _kept.park(b, 2)                        # one at a time: a's entry is dropped
    assert _kept.take(a) is None and _kept.take(b) == 2


def test_threads_workers_and_parts(monkeypatch):
    monkeypatch.setenv("RSSM_REF_THREADS", "3")
    assert threads_mod.workers() == 3
    for bad in ("0", "", "two", "-1"):
        monkeypatch.setenv("RSSM_REF_THREADS", bad)
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        assert threads_mod.workers() == max(1, min(2, cores)), bad
    for batch in (1, 31, 32, 33, 64, 101):
        parts = threads_mod.batch_halves(batch)
        covered = onp.concatenate([onp.arange(batch)[p] for p in parts])
        assert onp.array_equal(covered, onp.arange(batch))
        assert len(parts) == (2 if batch >= 32 else 1)
        assert parts[0].stop - parts[0].start == (batch // 2 if batch >= 32 else batch)
    monkeypatch.setenv("RSSM_REF_THREADS", "2")
    assert threads_mod.map_parts(lambda a, b: a * b, [(1, 2), (3, 4), (5, 6)]) == [2, 12, 30]


def test_keep_freed_memory_idempotent():
    first = _alloc.keep_freed_memory()
    assert _alloc.keep_freed_memory() is first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first is True
