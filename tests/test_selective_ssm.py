"""Selective SSM (Section 3.2.1, eqs. (2)-4): fast vs ref, conventions, limits, gradients."""
import autograd.numpy as np
import numpy as onp
import pytest
from autograd.test_util import check_grads

from rssm_ref.selective_ssm import (A_from_log, linear_scan, linear_scan_ref, param_count,
                                    random_params, selective_ssm, selective_ssm_ref)
from rssm_ref.tolerances import assert_close, rel_err

CONVENTIONS = [(d, o) for d in ("zoh", "euler") for o in ("before", "after")]


def _u(seed, batch=2, L=12, m=4):
    return onp.random.default_rng(seed).normal(size=(batch, L, m))


@pytest.mark.parametrize("disc,out", CONVENTIONS)
@pytest.mark.parametrize("with_D,with_bias", [(False, True), (True, False), (True, True)])
def test_fast_vs_ref(disc, out, with_D, with_bias):
    P = random_params(m=4, n=3, seed=1, D=with_D, delta_bias=with_bias)
    u = _u(1)
    y, mid = selective_ssm(u, **P, discretization=disc, output=out, return_intermediates=True)
    y_r, mid_r = selective_ssm_ref(u, **P, discretization=disc, output=out, return_intermediates=True)
    assert_close(y, y_r, "fast_vs_ref", "y")
    assert_close(mid["delta"], mid_r["delta"], "fast_vs_ref", "delta")
    assert_close(mid["h"], mid_r["h"], "fast_vs_ref", "h")


def test_linear_scan_vs_ref_and_grads():
    rng = onp.random.default_rng(0)
    a, x = rng.uniform(0.1, 0.99, size=(3, 20, 2)), rng.normal(size=(3, 20, 2))
    assert_close(linear_scan(a, x), linear_scan_ref(a, x), "fast_vs_ref")
    check_grads(lambda aa: np.sum(np.sin(linear_scan(aa, x))), modes=["rev"], order=1)(a)
    check_grads(lambda xx: np.sum(np.sin(linear_scan(a, xx))), modes=["rev"], order=1)(x)


def test_after_is_before_shifted_when_C_reads_one_state():
    """'after' reads h(t+1), 'before' reads h(t): with the same C̄ at every step (u_0 fixed
    component), y_after(t) = y_before(t+1) - D-free. Built with W_C reading only a constant
    input channel."""
    P = random_params(m=3, n=2, seed=4)
    u = _u(4, m=3)
    u[:, :, 0] = 1.0                         # a constant channel ...
    P["W_C"] = onp.zeros((2, 3))
    P["W_C"][:, 0] = [0.7, -1.3]             # ... so C̄_t is the same at every t
    y_b = selective_ssm(u, **P, output="before")
    y_a = selective_ssm(u, **P, output="after")
    assert_close(y_a[:, :-1], y_b[:, 1:], "fast_vs_ref")


def test_matches_mamba_selective_scan_ref_conventions():
    """mamba_ssm's selective_scan_ref in its (batch, d, L) layout: deltaA = exp(Δ A),
    deltaB_u = Δ B u (Euler B), x = deltaA x + deltaB_u, y = C·x (after), out = y + D u."""
    P = random_params(m=3, n=4, seed=5, D=True)
    u = _u(5, L=9, m=3)
    delta = onp.logaddexp(0, u @ P["W_delta"].T + P["delta_bias"])       # (b, L, d)
    Bm, Cm = u @ P["W_B"].T, u @ P["W_C"].T                               # (b, L, n)
    uu, dd = u.transpose(0, 2, 1), delta.transpose(0, 2, 1)               # (b, d, L)
    deltaA = onp.exp(onp.einsum("bdl,dn->bdln", dd, P["A"]))
    deltaB_u = onp.einsum("bdl,bln,bdl->bdln", dd, Bm, uu)
    x = onp.zeros((2, 3, 4))
    ys = []
    for i in range(9):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(onp.einsum("bdn,bn->bd", x, Cm[:, i]))
    out = onp.stack(ys, axis=2) + uu * P["D"][None, :, None]
    ours = selective_ssm(u, **P, discretization="euler", output="after")
    assert_close(ours, out.transpose(0, 2, 1), "fast_vs_ref")


def test_euler_vs_zoh_is_second_order_in_delta():
    P = random_params(m=2, n=2, seed=6)
    u = _u(6, m=2)
    errs = []
    for bias in (-6.0, -7.0):
        P["delta_bias"] = onp.full(2, bias)   # Δ ≈ e^bias: halving-ish steps
        errs.append(rel_err(selective_ssm(u, **P, discretization="euler"),
                            selective_ssm(u, **P, discretization="zoh")))
    # Δ shrinks by e, the relative gap by about e (O(Δ²) per step over O(Δ) outputs)
    assert 1.5 < errs[0] / errs[1] < 4.5


def test_large_delta_forgets():
    P = random_params(m=2, n=2, seed=7)
    P["delta_bias"] = onp.full(2, 60.0)       # Δ ≈ 60: A_t = exp(60 A) ≈ 0
    u = _u(7, m=2)
    _, mid = selective_ssm(u, **P, return_intermediates=True, output="after")
    # the state after step t depends on u(t) only: h(t+1) ≈ -A^{-1} B̄_t u_i(t)
    Bbar = u @ P["W_B"].T
    expected = -(Bbar[:, :, None, :] / P["A"][None, None]) * u[:, :, :, None]
    assert_close(mid["h"], expected, "fast_vs_ref")


@pytest.mark.parametrize("disc,out", CONVENTIONS)
def test_grads_every_argument(disc, out):
    P = random_params(m=3, n=2, seed=8, D=True)
    keys = sorted(P)
    u = _u(8, L=5, m=3)
    w = onp.random.default_rng(1).normal(size=(2, 5, 3))

    def loss(uu, *vals):
        return np.sum(w * selective_ssm(uu, **dict(zip(keys, vals)), discretization=disc, output=out))

    check_grads(loss, modes=["rev"], order=1)(u, *[P[k] for k in keys])


def test_grads_through_A_log():
    P = random_params(m=2, n=2, seed=9)
    A_log = onp.log(-P.pop("A"))
    u = _u(9, L=6, m=2)
    check_grads(lambda al: np.sum(selective_ssm(u, A_from_log(al), **P) ** 2), modes=["rev"], order=1)(A_log)


def test_long_sequence_finite():
    P = random_params(m=2, n=2, seed=10)
    y = selective_ssm(_u(10, batch=1, L=4096, m=2), **P)
    assert onp.all(onp.isfinite(y))


def test_param_count():
    P = random_params(m=16, n=8, seed=0)
    assert param_count(16, 8) == sum(v.size for v in P.values())


def test_bad_input():
    P = random_params(m=2, n=2, seed=0)
    u = _u(0, m=2)
    bad = dict(P, A=-P["A"])
    with pytest.raises(ValueError, match="A: expected strictly negative"):
        selective_ssm(u, **bad)
    with pytest.raises(ValueError, match="W_B"):
        selective_ssm(u, **dict(P, W_B=onp.ones((3, 3))))
    with pytest.raises(ValueError, match="u"):
        selective_ssm(u[:, :, :1], **P)
    with pytest.raises(ValueError, match="NaN"):
        selective_ssm(onp.full_like(u, onp.nan), **P)
    with pytest.raises(ValueError, match="discretization"):
        selective_ssm(u, **P, discretization="bilinear")
    with pytest.raises(ValueError, match="output"):
        selective_ssm(u, **P, output="during")
    with pytest.raises(TypeError, match="complex"):
        selective_ssm(u.astype(complex), **P)
