"""The sampling time dt survives every conversion (scipy's dlti, python-control), and a
continuous-time dt is refused with one line."""
import numpy as onp
import pytest
import scipy.signal as ssig

from rssm_ref.lti import StateSpace, TransferFunction, from_control, from_scipy


@pytest.mark.parametrize("dt", [0.1, 2.5, True])
def test_scipy_tf_round_trip_keeps_dt(dt):
    sys = from_scipy(ssig.dlti([1.0, 0.2], [1.0, -0.5], dt=dt))
    assert sys.dt == dt and sys.to_scipy().dt == dt
    assert sys.to_ss().dt == dt and sys.to_ss().to_scipy().dt == dt
    assert sys.to_ss().to_tf().to_scipy().dt == dt
    # the system itself is unchanged by the conversions
    onp.testing.assert_allclose(sys.to_ss().impulse(8), sys.impulse(8), atol=1e-14)


def test_scipy_ss_and_zpk_forms_keep_dt():
    ss = from_scipy(ssig.dlti([[0.5]], [[1.0]], [[1.0]], [[0.0]], dt=0.1))
    assert isinstance(ss, StateSpace) and ss.dt == 0.1 and ss.to_tf().dt == 0.1
    assert ss.to_scipy().dt == 0.1
    z = from_scipy(ssig.dlti([0.3], [0.5], 2.0, dt=0.05))
    assert z.dt == 0.05


def test_python_control_round_trip_keeps_dt():
    control = pytest.importorskip("control", reason="python-control is optional")
    for dt in (0.25, True):
        g = from_control(control.tf([1.0, 0.5], [1.0, -0.9], dt))
        assert g.dt == dt and g.to_control().dt == dt and g.to_ss().to_control().dt == dt
        s = from_control(control.ss([[0.5]], [[1.0]], [[1.0]], [[0.0]], dt))
        assert s.dt == dt and s.to_control().dt == dt and s.to_tf().to_control().dt == dt


def test_default_dt_is_one_step_and_bad_dt_is_refused():
    assert TransferFunction([1.0], [1.0, -0.5]).to_scipy().dt == 1
    for bad in (0, -1.0, None, False, float("nan")):
        with pytest.raises(ValueError, match="dt: "):
            StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]], dt=bad)
