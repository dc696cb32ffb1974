"""The library API: top-level exports, StateSpace/TransferFunction.filter on
both paths against scipy, python-control round trips."""
import numpy as onp
import pytest
import scipy.signal as ssig
from autograd import grad

import rssm_ref
from rssm_ref.lti import StateSpace, TransferFunction, from_scipy
from rssm_ref.oracle import sample
from rssm_ref.tolerances import assert_close


def test_top_level_exports():
    from rssm_ref import StateSpace as S, TransferFunction as T, compute, reproduce  # noqa: F401
    for name in rssm_ref.__all__:
        assert getattr(rssm_ref, name) is not None, name
    assert rssm_ref.StateSpace is StateSpace and rssm_ref.TransferFunction is TransferFunction


def _mimo(seed=0):
    rng = onp.random.default_rng(seed)
    A, B, C, D = sample.ss_from_poles(rng, [0.95, 0.5 + 0.3j, 0.5 - 0.3j], m=2, p=3)
    return StateSpace(A, B, C, D), rng


def test_state_space_filter_matches_dlsim_with_initial_state():
    sys_, rng = _mimo()
    u = rng.standard_normal((40, 2))
    x0 = rng.standard_normal(3)
    _, y_ref, _ = ssig.dlsim((sys_.A, sys_.B, sys_.C, sys_.D, 1), u, x0=x0)
    assert sys_.filter(u, x0=x0).shape == (40, 3)
    assert_close(sys_.filter(u, x0=x0), y_ref, "scipy_agreement", "recurrent, x0")
    _, y0, _ = ssig.dlsim((sys_.A, sys_.B, sys_.C, sys_.D, 1), u)
    assert_close(sys_.filter(u, path="fft"), y0, "scipy_agreement", "fft")
    ub = rng.standard_normal((3, 40, 2))
    yb = sys_.filter(ub)
    assert yb.shape == (3, 40, 3)
    assert_close(yb[1], sys_.filter(ub[1]), "fast_vs_ref", "batch row")
    with pytest.raises(ValueError, match="x0: given with path 'fft'"):
        sys_.filter(u, path="fft", x0=x0)
    with pytest.raises(ValueError, match=r"u: expected shape \(batch, L, 2\)"):
        sys_.filter(onp.ones(5))
    with pytest.raises(ValueError, match="path: 'direct'"):
        sys_.filter(u, path="direct")


def test_transfer_function_filter_matches_lfilter_both_paths():
    b, a = [0.3, -0.2, 0.05], [1.0, -1.5, 0.56]
    sys_ = TransferFunction(b, a)
    u = onp.random.default_rng(1).standard_normal(200)
    y = ssig.lfilter(b, a, u)
    assert sys_.filter(u).shape == (200,)
    assert_close(sys_.filter(u), y, "scipy_agreement", "recurrent")
    assert_close(sys_.filter(u, path="fft"), y, "recurrent_vs_fft", "fft")
    # differentiable: d/du sum(filter(u)) equals the running sum of the impulse response
    g = grad(lambda v: sys_.filter(v).sum())(u)
    h = sys_.impulse(200)[:, 0, 0]
    assert_close(g, onp.cumsum(h)[::-1], "vjp_vs_autograd")


def test_from_scipy_names_from_control_for_a_control_system():
    control = pytest.importorskip("control")
    with pytest.raises(TypeError, match="use rssm_ref.lti.from_control"):
        from_scipy(control.tf([1.0], [1.0, -0.5], True))


def test_control_round_trip_and_distinct_denominators():
    control = pytest.importorskip("control")
    from rssm_ref.lti import from_control
    sys_, rng = _mimo(2)
    back = from_control(sys_.to_control())
    assert isinstance(back, StateSpace)
    assert onp.array_equal(back.A, sys_.A) and onp.array_equal(back.D, sys_.D)
    tf = sys_.to_tf()
    again = from_control(tf.to_control())
    assert_close(again.impulse(30), tf.impulse(30), "ss_vs_tf", "tf round trip")
    # a 1 x 2 transfer matrix whose channels have different denominators: one common
    # denominator per row, same impulse response as python-control's own
    ctf = control.tf([[[1.0, 0.2], [0.5]]], [[[1.0, -0.5], [1.0, 0.3]]], 1)
    ours = from_control(ctf)
    assert ours.num.shape == (1, 2, 3)
    for j in range(2):
        _, h = control.impulse_response(ctf[0, j], T=onp.arange(20))
        assert_close(ours.impulse(20)[:, 0, j], onp.ravel(h), "scipy_agreement", f"channel {j}")
    with pytest.raises(ValueError, match="continuous-time"):
        from_control(control.tf([1.0], [1.0, 1.0]))
    with pytest.raises(TypeError, match="python-control StateSpace or TransferFunction"):
        from_control(ssig.dlti([1.0], [1.0, -0.5], dt=1))


def test_top_level_names_do_not_shadow_submodules():
    import importlib
    for name in rssm_ref.__all__:
        assert importlib.util.find_spec(f"rssm_ref.{name}") is None, name
