"""Residual SSM (Section 3.2.2, Fig. 3, eq. (5), Remarks 3.1-3.2): forms, paths, streaming, gradients."""
import autograd.numpy as np
import numpy as onp
import pytest
from autograd.test_util import check_grads
from hypothesis import given, settings
from hypothesis import strategies as st

from rssm_ref.lti import StateSpace, TransferFunction
from rssm_ref.residual_ssm import (ResidualSSM, param_count, residual_ssm_ref, residual_ssm_ss,
                                   residual_ssm_tf, sigmoid)
from rssm_ref.tolerances import assert_close


def _u(seed, batch=3, L=32, m=2, scale=1.0):
    return scale * onp.random.default_rng(seed).normal(size=(batch, L, m))


@pytest.mark.parametrize("gate", ["euler", "zoh"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_three_forms_agree(gate, seed):
    """TF on the FFT path, TF on the recurrent path and the SS realization (Remark 3.2)."""
    model = ResidualSSM.random(m=2, nu=4, nu_r=4, seed=seed, gate=gate, gate_bias=0.3)
    u = _u(seed, L=64)
    y_fft, mid_fft = model.forward(u, path="fft", return_intermediates=True)
    y_rec, mid_rec = model.forward(u, path="recurrent", return_intermediates=True)
    y_ss, mid_ss = model.to_ss().forward(u, return_intermediates=True)
    assert_close(y_fft, y_rec, "recurrent_vs_fft", "y")
    assert_close(y_ss, y_rec, "ss_vs_tf", "y")
    for key in ("y_s", "r", "s"):
        assert_close(mid_fft[key], mid_rec[key], "recurrent_vs_fft", key)
        assert_close(mid_ss[key], mid_rec[key], "ss_vs_tf", key)


@pytest.mark.parametrize("gate", ["euler", "zoh"])
def test_fast_vs_ref(gate):
    model = ResidualSSM.random(m=3, nu=3, nu_r=2, seed=7, gate=gate, gate_bias=-0.2)
    u = _u(7, batch=2, L=40, m=3)
    ss = model.to_ss()
    y_ref, mid_ref = residual_ssm_ref(*ss.ss_arrays(), u, gate=gate, return_intermediates=True)
    y, mid = ss.forward(u, return_intermediates=True)
    assert_close(y, y_ref, "fast_vs_ref", "y")
    for key in ("y_s", "r", "s"):
        assert_close(mid[key], mid_ref[key], "fast_vs_ref", key)
    assert_close(ss.forward(u, path="fft"), y_ref, "fast_vs_ref", "ss fft path")


def test_ss_fft_path_agrees():
    model = ResidualSSM.random(seed=11).to_ss()
    u = _u(11, L=50)
    assert_close(model.forward(u, path="fft"), model.forward(u, path="recurrent"), "recurrent_vs_fft")


def test_gate_equation_holds_on_outputs():
    """y(t+1) = y(t) + (y_s(t) - y(t)) s(t) with y(0) = 0 (eq. (5)), read off the intermediates."""
    model = ResidualSSM.random(seed=3, gate_bias=0.5)
    u = _u(3, L=20)
    y, mid = model.forward(u, return_intermediates=True)
    y_prev = onp.concatenate([onp.zeros_like(y[:, :1]), y[:, :-1]], axis=1)
    expected = y_prev + (mid["y_s"] - y_prev) * mid["s"][:, :, None]
    assert_close(y, expected, "fast_vs_ref")


@settings(max_examples=25)
@given(seed=st.integers(0, 10_000), L=st.integers(2, 40), data=st.data())
def test_streaming_split_anywhere(seed, L, data):
    split = data.draw(st.integers(1, L - 1))
    gate = data.draw(st.sampled_from(["euler", "zoh"]))
    model = ResidualSSM.random(seed=seed % 97, gate=gate)
    u = _u(seed, batch=2, L=L)
    whole = model.forward(u, path="recurrent")
    state = model.init_state(2)
    outs = []
    for lo, hi in ((0, split), (split, L)):
        for t in range(lo, hi):
            state, y_t = model.step(state, u[:, t])
            outs.append(y_t)
    assert_close(onp.stack(outs, axis=1), whole, "streaming_vs_batch")


def test_gate_in_open_interval_for_huge_residuals():
    model = ResidualSSM.random(seed=2, gate_bias=0.0)
    u = _u(2, L=16, scale=1e4)
    _, mid = model.forward(u, return_intermediates=True)
    assert onp.all(onp.isfinite(mid["s"]))
    assert onp.all((mid["s"] >= 0.0) & (mid["s"] <= 1.0))
    assert float(sigmoid(800.0)) == 1.0 and float(sigmoid(-800.0)) == 0.0


@pytest.mark.parametrize("path", ["fft", "recurrent"])
@pytest.mark.parametrize("gate", ["euler", "zoh"])
def test_grads_tf(path, gate):
    model = ResidualSSM.random(seed=5, gate=gate)
    arrays = list(model.tf_arrays())
    arrays[4] = onp.array(0.1)
    u = _u(5, batch=2, L=10)
    w = onp.random.default_rng(9).normal(size=(2, 10, 2))

    def loss(sn, sd, rn, rd, c, uu):
        return np.sum(w * residual_ssm_tf(sn, sd, rn, rd, c, uu, path=path, gate=gate))

    check_grads(loss, modes=["rev"], order=1)(*arrays, u)


@pytest.mark.parametrize("path", ["fft", "recurrent"])
def test_grads_ss(path):
    model = ResidualSSM.random(m=2, nu=2, nu_r=2, seed=6).to_ss()
    arrays = list(model.ss_arrays())
    arrays[8] = onp.array(-0.2)
    u = _u(6, batch=2, L=8)
    w = onp.random.default_rng(3).normal(size=(2, 8, 2))

    def loss(*args):
        return np.sum(w * residual_ssm_ss(*args, path=path))

    check_grads(loss, modes=["rev"], order=1)(*arrays, u)


def test_param_count_matches_arrays():
    model = ResidualSSM.random(m=2, nu=4, nu_r=4, seed=0)
    sn, sd, rn, rd, _ = model.tf_arrays()
    # monic denominators: the leading 1 is not learned
    learned = sn.size + sd[:, 1:].size + rn.size + rd[:, 1:].size
    assert param_count(2, 4, 4, "tf") == learned
    assert param_count(2, 4, 4, "tf", gate_bias=True) == learned + 1   # + c
    ss = model.to_ss()
    sA, sB, sC, sD, rA, rB, rC, rD, _ = ss.ss_arrays()
    assert param_count(2, 4, 4, "ss") == sum(a.size for a in (sA, sB, sC, sD, rA, rB, rC, rD))


def test_bad_input():
    model = ResidualSSM.random(seed=0)
    sn, sd, rn, rd, c = model.tf_arrays()
    u = _u(0, L=8)
    with pytest.raises(ValueError, match="sigma_den"):
        residual_ssm_tf(sn, sd[:1], rn, rd, c, u)
    with pytest.raises(ValueError, match="r_num"):
        residual_ssm_tf(sn, sd, onp.ones((2, 2, 5)), rd, c, u)
    with pytest.raises(ValueError, match="u"):
        residual_ssm_tf(sn, sd, rn, rd, c, u[:, :, :1])
    with pytest.raises(ValueError, match="NaN"):
        residual_ssm_tf(sn, sd, rn, rd, c, onp.where(u > 1, onp.nan, u))
    unstable = onp.array(sd)
    unstable[0] = [1.0, -2.5, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="pole"):
        residual_ssm_tf(sn, unstable, rn, rd, c, u)
    # the recurrent path can run an unstable system on request; the FFT path cannot be exact
    assert onp.all(onp.isfinite(residual_ssm_tf(sn, unstable, rn, rd, c, u, path="recurrent", allow_unstable=True)))
    with pytest.raises(ValueError, match="path"):
        residual_ssm_tf(sn, sd, rn, rd, c, u, path="magic")
    with pytest.raises(ValueError, match="gate"):
        residual_ssm_tf(sn, sd, rn, rd, c, u, gate="tanh")
    with pytest.raises(ValueError, match="r_sys"):
        ResidualSSM(model.sigma, model.sigma)
    with pytest.raises(TypeError):
        ResidualSSM(sn, model.r_sys)
