"""What a systems user expects of the LTI objects, checked against scipy.signal (and
python-control where installed): zeros and poles, plain-tuple and continuous-time input
to from_scipy, dt through every conversion and interconnection, H(z) by calling the
system, the DC gain, and series / parallel / scalar composition (compared by impulse and
frequency response, never by realization)."""
import numpy as onp
import pytest
import scipy.signal as ssig

from rssm_ref.lti import StateSpace, TransferFunction, from_control, from_scipy
from rssm_ref.oracle.sample import ss_from_poles
from rssm_ref.tolerances import assert_close

W = onp.linspace(0.0, onp.pi, 9)          # z = e^{jw} on the upper unit circle
Z = onp.exp(1j * W)


def _rng(seed):
    return onp.random.default_rng(seed)


def _ss(seed, m, p, poles=(0.9, 0.5 + 0.3j, 0.5 - 0.3j), dt=1):
    return StateSpace(*ss_from_poles(_rng(seed), list(poles), m=m, p=p), dt=dt)


def _assert_same_roots(got, want, what):
    """Root sets equal: the monic polynomials they span agree (order-free)."""
    got, want = onp.asarray(got, complex), onp.asarray(want, complex)
    assert got.shape == want.shape, f"{what}: {got.size} roots, expected {want.size}"
    assert_close(onp.poly(got), onp.poly(want), "scipy_agreement", what)


def _conv_impulse(hG, hH):
    """h[t] = sum_s hG[s] hH[t - s], (L, p, q) x (L, q, m) -> (L, p, m): the impulse
    response of the series connection, by its definition."""
    L = hG.shape[0]
    return onp.stack([sum(hG[s] @ hH[t - s] for s in range(t + 1)) for t in range(L)])


# ------------------------------------------------------------------ 1. zeros and poles
def test_siso_tf_zeros_and_poles_match_tf2zpk():
    zeros, poles, gain = [0.2, -0.7, 0.4 + 0.5j, 0.4 - 0.5j], [0.9, -0.3, 0.1 + 0.6j, 0.1 - 0.6j, 0.5], 1.5
    b, a = gain * onp.real(onp.poly(zeros)), onp.real(onp.poly(poles))
    sys = TransferFunction(b, a)
    z_ref, p_ref, _ = ssig.tf2zpk(b, a)
    assert sys.zeros().shape == (4,) and sys.zeros().dtype == complex
    _assert_same_roots(sys.zeros(), zeros, "zeros vs construction")
    _assert_same_roots(sys.zeros(), z_ref, "zeros vs tf2zpk")
    _assert_same_roots(sys.poles(), p_ref, "poles vs tf2zpk")


def test_mimo_tf_zeros_per_channel_and_row_poles_match_tf2zpk():
    rng = _rng(1)
    den = onp.stack([onp.real(onp.poly([0.8, -0.4, 0.3])), onp.real(onp.poly([0.5 + 0.2j, 0.5 - 0.2j, -0.6]))])
    num = rng.standard_normal((2, 3, 4))
    num[1, 2, :2] = 0.0           # one channel of lower degree (leading zeros)
    num[0, 1] = 0.0               # one identically zero channel
    sys = TransferFunction(num, den)
    Z = sys.zeros()
    assert len(Z) == 2 and all(len(row) == 3 for row in Z)
    k = num.shape[2]
    for i in range(2):
        _assert_same_roots(sys.poles()[i * (k - 1):(i + 1) * (k - 1)], ssig.tf2zpk([1.0], den[i])[1],
                           f"poles of row {i}")
        for j in range(3):
            b = onp.trim_zeros(num[i, j], "f")
            if b.size == 0:
                assert Z[i][j].size == 0
                continue
            _assert_same_roots(Z[i][j], ssig.tf2zpk(b, den[i])[0], f"zeros of channel ({i}, {j})")
    assert Z[1][2].size == 1 and Z[0][1].size == 0


def test_ss_poles_and_siso_zeros_match_ss2zpk():
    sys = _ss(2, m=1, p=1, poles=(0.9, -0.5, 0.3 + 0.4j, 0.3 - 0.4j))
    z_ref, p_ref, _ = ssig.ss2zpk(sys.A, sys.B, sys.C, sys.D)
    _assert_same_roots(sys.poles(), p_ref, "poles vs ss2zpk")
    _assert_same_roots(sys.poles(), [0.9, -0.5, 0.3 + 0.4j, 0.3 - 0.4j], "poles vs construction")
    _assert_same_roots(sys.zeros(), z_ref, "zeros vs ss2zpk")
    # the zeros are where H vanishes
    assert onp.max(onp.abs(sys(sys.zeros()))) < 1e-10


def test_mimo_ss_zeros_refused_with_a_hint():
    with pytest.raises(ValueError, match=r"zeros: a 3 x 2 state space .*sys\.to_tf\(\)\.zeros\(\)"):
        _ss(0, m=2, p=3).zeros()


def test_zeros_and_poles_agree_with_python_control():
    control = pytest.importorskip("control", reason="python-control is optional")
    tf = TransferFunction([1.0, -0.5, 0.06], [1.0, -0.9, 0.2, 0.1])
    _assert_same_roots(tf.zeros(), tf.to_control().zeros(), "tf zeros vs control")
    _assert_same_roots(tf.poles(), tf.to_control().poles(), "tf poles vs control")
    ss = _ss(3, m=1, p=1)
    _assert_same_roots(ss.zeros(), ss.to_control().zeros(), "ss zeros vs control")
    _assert_same_roots(ss.poles(), control.ss(ss.A, ss.B, ss.C, ss.D, 1).poles(), "ss poles vs control")


# ------------------------------------------- 2. from_scipy: tuples, continuous time, dt
def test_from_scipy_plain_tuples_read_as_dlti_with_dt_one():
    b, a = [0.3, -0.2, 0.05], [1.0, -1.5, 0.56]
    tf = from_scipy((b, a))
    assert isinstance(tf, TransferFunction) and tf.dt == 1
    assert_close(tf.impulse(20)[:, 0, 0], ssig.dimpulse((b, a, 1), n=20)[1][0][:, 0], "scipy_agreement", "tf")
    A, B, C, D = ss_from_poles(_rng(4), [0.8, -0.3], m=2, p=1)
    ss = from_scipy((A, B, C, D))
    assert isinstance(ss, StateSpace) and ss.dt == 1 and ss.to_scipy().dt == 1
    for j in range(2):
        h_ref = ssig.dimpulse((A, B, C, D, 1), n=20)[1][j]
        assert_close(ss.impulse(20)[:, :, j], h_ref, "scipy_agreement", f"ss input {j}")
    zpk = from_scipy(([0.2], [0.5, -0.4], 2.0))
    assert_close(zpk.impulse(10), from_scipy(ssig.dlti([0.2], [0.5, -0.4], 2.0)).impulse(10),
                 "scipy_agreement", "zpk tuple vs zpk dlti")
    two_out = from_scipy(([[1.0, 0.0], [0.0, 1.0]], [1.0, -0.5]))    # scipy: 2-D num is (p, k)
    assert (two_out.n_outputs, two_out.n_inputs) == (2, 1)
    with pytest.raises(ValueError, match=r"sys: a tuple of 5 items .*scipy\.signal\.dlti\(\*sys, dt=dt\)"):
        from_scipy((A, B, C, D, 0.1))


@pytest.mark.filterwarnings("ignore::scipy.signal.BadCoefficients")   # scipy's own to_discrete
@pytest.mark.parametrize("sys", [ssig.lti([1.0], [1.0, 1.0]), ssig.lti([[-1.0]], [[1.0]], [[1.0]], [[0.0]]),
                                 ssig.lti([], [-1.0], 1.0)])
def test_from_scipy_refuses_continuous_lti_with_one_line_hint(sys):
    with pytest.raises(TypeError) as err:
        from_scipy(sys)
    msg = str(err.value)
    assert "\n" not in msg and "continuous-time" in msg
    assert "sys.to_discrete(dt)" in msg and "rssm_ref.discretize.cont2discrete" in msg
    # the hint is right: the discretized system is accepted and is scipy's
    d = from_scipy(sys.to_discrete(0.1))
    assert d.dt == 0.1 and d.to_scipy().dt == 0.1


def test_continuous_refusals_share_one_wording():
    control = pytest.importorskip("control", reason="python-control is optional")
    with pytest.raises(TypeError) as e_scipy:
        from_scipy(ssig.lti([1.0], [1.0, 1.0]))
    with pytest.raises(ValueError) as e_control:
        from_control(control.tf([1.0], [1.0, 1.0]))
    tail = "(expected a discrete-time system: discretize it with"
    assert tail in str(e_scipy.value) and tail in str(e_control.value)
    assert str(e_scipy.value).endswith("or rssm_ref.discretize.cont2discrete)")
    assert str(e_control.value).endswith("or rssm_ref.discretize.cont2discrete)")


@pytest.mark.parametrize("dt", [0.1, True])
def test_dt_kept_through_conversions_and_interconnections(dt):
    G = from_scipy(ssig.dlti([1.0, 0.2], [1.0, -0.5], dt=dt))
    H = from_scipy(ssig.dlti([[0.5]], [[1.0]], [[1.0]], [[0.0]], dt=dt))
    assert G.to_scipy().dt == dt and G.to_ss().to_scipy().dt == dt and H.to_tf().to_scipy().dt == dt
    for sys in (G * G, G + G, G * H, H * G, G + H, H - G, H * H, 2.0 * G, H * 3, -H, -G):
        assert sys.dt == dt, sys
        assert sys.to_scipy().dt == dt and sys.to_ss().dt == dt and sys.to_tf().dt == dt


def test_dt_kept_by_to_control():
    pytest.importorskip("control", reason="python-control is optional")
    G = TransferFunction([1.0, 0.2], [1.0, -0.5], dt=0.25)
    for sys in (G * G, G + G.to_ss(), 2 * G):
        assert sys.to_control().dt == 0.25


def test_different_dt_refused_unspecified_dt_takes_the_other():
    G = TransferFunction([1.0, 0.2], [1.0, -0.5], dt=0.1)
    H = TransferFunction([0.0, 1.0], [1.0, 0.3], dt=0.2)
    for combine in (lambda: G * H, lambda: G + H, lambda: G - H, lambda: G.to_ss() * H,
                    lambda: G + H.to_ss(), lambda: G.to_ss() * H.to_ss()):
        with pytest.raises(ValueError, match=r"dt: the systems have different sampling periods \(0\.1 and 0\.2"):
            combine()
    U = TransferFunction([0.0, 1.0], [1.0, 0.3], dt=True)
    assert (G * U).dt == 0.1 and (U + G).dt == 0.1 and (U * U).dt is True
    assert (U.to_ss() * G).dt == 0.1


def test_unspecified_dt_rule_is_python_controls():
    control = pytest.importorskip("control", reason="python-control is optional")
    G = TransferFunction([1.0, 0.2], [1.0, -0.5], dt=0.1)
    U = TransferFunction([0.0, 1.0], [1.0, 0.3], dt=True)
    assert (G * U).dt == (G.to_control() * U.to_control()).dt
    with pytest.raises(ValueError):
        G.to_control() * TransferFunction([1.0], [1.0], dt=0.2).to_control()


# ------------------------------------------------------------------ 3. sys(z) = H(z)
def test_call_siso_matches_freqz_in_the_shape_of_z():
    b, a = [0.3, -0.2, 0.05], [1.0, -1.5, 0.56]
    _, h_ref = ssig.freqz(b, a, worN=W)
    for sys in (TransferFunction(b, a), TransferFunction(b, a).to_ss()):
        assert sys(Z).shape == Z.shape
        assert_close(sys(Z), h_ref, "scipy_agreement", type(sys).__name__)
        assert_close(sys(Z.reshape(3, 3)), h_ref.reshape(3, 3), "scipy_agreement", "2-D z")
        h0 = sys(Z[2])
        assert onp.ndim(h0) == 0 and isinstance(h0, onp.complexfloating)
        assert_close(h0, h_ref[2], "scipy_agreement", "scalar z")
    _, h_d = ssig.dfreqresp(ssig.dlti(b, a, dt=0.5), W)
    assert_close(TransferFunction(b, a, dt=0.5)(Z), h_d, "scipy_agreement", "dfreqresp")


def test_call_mimo_is_z_shape_then_outputs_by_inputs():
    sys = _ss(5, m=2, p=3)
    z = Z.reshape(3, 3)
    H = sys(z)
    assert H.shape == (3, 3, 3, 2)
    for j in range(2):
        b, a = ssig.ss2tf(sys.A, sys.B, sys.C, sys.D, input=j)
        for i in range(3):
            _, h_ref = ssig.freqz(b[i], a, worN=W)
            assert_close(H[..., i, j], h_ref.reshape(3, 3), "scipy_agreement", f"ss ({i}, {j})")
            assert_close(sys.to_tf()(z)[..., i, j], h_ref.reshape(3, 3), "scipy_agreement", f"tf ({i}, {j})")
    assert sys(0.3).shape == (3, 2)


def test_call_agrees_with_python_control():
    pytest.importorskip("control", reason="python-control is optional")
    sys = _ss(6, m=2, p=3)
    # python-control puts the points last: (p, m, N)
    assert_close(sys(Z), onp.moveaxis(sys.to_control()(Z), -1, 0), "third_party_float64", "ss")
    assert_close(sys.to_tf()(Z), onp.moveaxis(sys.to_tf().to_control()(Z), -1, 0), "third_party_float64", "tf")
    siso = TransferFunction([0.3, -0.2, 0.05], [1.0, -1.5, 0.56])
    assert_close(siso(Z), siso.to_control()(Z), "third_party_float64", "siso")


def test_call_at_a_pole_is_refused():
    with pytest.raises(ValueError, match=r"z: \(0\.5\+0j\) is a pole of the system"):
        TransferFunction([0.0, 1.0], [1.0, -0.5])([0.1, 0.5])
    with pytest.raises(ValueError, match="z: a point is a pole of the system"):
        StateSpace([[0.5]], [[1.0]], [[1.0]], [[0.0]])(0.5)
    with pytest.raises(TypeError, match="z: dtype"):
        TransferFunction([1.0], [1.0])("1")


# ------------------------------------------------------------------ 4. dcgain = H(1)
def test_dcgain_is_h_of_one_and_the_sum_of_the_impulse_response():
    b, a = [0.3, -0.2, 0.05], [1.0, -1.5, 0.56]
    _, h1 = ssig.freqz(b, a, worN=[0.0])
    for sys in (TransferFunction(b, a), TransferFunction(b, a).to_ss()):
        g = sys.dcgain()
        assert onp.ndim(g) == 0 and isinstance(g, onp.floating)
        assert_close(g, h1[0].real, "scipy_agreement", type(sys).__name__)
    mimo = _ss(7, m=2, p=3, poles=(0.5, 0.2 + 0.3j, 0.2 - 0.3j))
    h_sum = mimo.impulse(400).sum(axis=0)          # H(1) = sum_t h[t] for a stable system
    assert mimo.dcgain().shape == (3, 2) and mimo.dcgain().dtype == float
    assert_close(mimo.dcgain(), h_sum, "scipy_agreement", "ss")
    assert_close(mimo.to_tf().dcgain(), h_sum, "ss_vs_tf", "tf")


def test_dcgain_with_a_pole_at_one_is_inf():
    assert TransferFunction([0.0, 1.0], [1.0, -1.0]).dcgain() == onp.inf
    assert TransferFunction([0.0, -1.0], [1.0, -1.0]).dcgain() == -onp.inf
    assert onp.isnan(TransferFunction([1.0, -1.0], [1.0, -1.0]).dcgain())     # 0 / 0
    # state space: every entry inf once I - A is singular, also a channel that is finite
    ss = StateSpace(onp.diag([1.0, 0.5]), onp.eye(2), onp.eye(2), onp.zeros((2, 2)))
    assert onp.array_equal(ss.dcgain(), onp.full((2, 2), onp.inf))
    tf = TransferFunction([[[0.0, 1.0]], [[0.0, 1.0]]], [[1.0, -1.0], [1.0, -0.5]])
    assert onp.array_equal(tf.dcgain(), [[onp.inf], [2.0]])


def test_dcgain_matches_python_control_including_poles_at_one():
    control = pytest.importorskip("control", reason="python-control is optional")
    cases = [TransferFunction([0.3, -0.2, 0.05], [1.0, -1.5, 0.56]), TransferFunction([0.0, 1.0], [1.0, -1.0]),
             TransferFunction([0.0, -1.0], [1.0, -1.0]), TransferFunction([1.0, -1.0], [1.0, -1.0]),
             TransferFunction([[[0.0, 1.0]], [[0.0, 1.0]]], [[1.0, -1.0], [1.0, -0.5]]),
             StateSpace([[1.0]], [[1.0]], [[-1.0]], [[0.0]]), _ss(8, m=2, p=3),
             StateSpace(onp.diag([1.0, 0.5]), onp.eye(2), onp.eye(2), onp.zeros((2, 2)))]
    for sys in cases:
        got, want = onp.asarray(sys.dcgain()), onp.asarray(control.dcgain(sys.to_control()))
        finite = onp.isfinite(want)
        assert onp.array_equal(got[~finite], want[~finite], equal_nan=True), repr(sys)   # inf, -inf, nan
        assert_close(got[finite], want[finite], "third_party_float64", repr(sys))


# ------------------------------------------------------------------ 5. composition
def _tf(seed, p, m, order):
    rng = _rng(seed)
    den = onp.stack([onp.real(onp.poly(0.9 * rng.uniform(-1, 1, order))) for _ in range(p)])
    return TransferFunction(rng.standard_normal((p, m, order + 1)), den)


def _forms(sys):
    return [sys, sys.to_ss()] if isinstance(sys, TransferFunction) else [sys, sys.to_tf()]


def test_siso_series_and_parallel_match_convolution_and_sum_of_impulse_responses():
    G = TransferFunction([1.0, 0.4], [1.0, -0.5])
    H = TransferFunction([0.2, 0.0, 1.0], [1.0, 0.3, 0.4])
    L = 40
    hG, hH = ssig.dimpulse(([1.0, 0.4], [1.0, -0.5], 1), n=L)[1][0], ssig.dimpulse(([0.2, 0.0, 1.0], [1.0, 0.3, 0.4], 1), n=L)[1][0]
    series, parallel = onp.convolve(hG[:, 0], hH[:, 0])[:L], hG[:, 0] + hH[:, 0]
    for g in _forms(G):
        for h in _forms(H):
            what = f"{type(g).__name__}, {type(h).__name__}"
            assert_close((g * h).impulse(L)[:, 0, 0], series, "scipy_agreement", "series " + what)
            assert_close((h * g).impulse(L)[:, 0, 0], series, "scipy_agreement", "series reversed " + what)
            assert_close((g + h).impulse(L)[:, 0, 0], parallel, "scipy_agreement", "parallel " + what)
            assert_close((g - h)(Z), G(Z) - H(Z), "ss_vs_tf", "difference " + what)
    # SISO tf series is the polynomial product, parallel n1 d2 + n2 d1 over d1 d2
    assert_close((G * H).den[0], onp.polymul([1.0, -0.5], [1.0, 0.3, 0.4]), "scipy_agreement", "den")
    assert_close((G + H).num[0, 0], onp.polyadd(onp.polymul([1.0, 0.4], [1.0, 0.3, 0.4]),
                                                onp.polymul([0.2, 0.0, 1.0], [1.0, -0.5])), "scipy_agreement", "num")


def test_mimo_series_is_the_matrix_product_in_every_form():
    G, H = _tf(9, p=2, m=3, order=2), _ss(10, m=2, p=3)         # G: 3 -> 2, H: 2 -> 3
    L = 30
    h_ref = _conv_impulse(G.impulse(L), H.impulse(L))
    for g in _forms(G):
        for h in _forms(H):
            what = f"{type(g).__name__} * {type(h).__name__}"
            GH = g * h
            assert (GH.n_outputs, GH.n_inputs) == (2, 2)
            assert_close(GH.impulse(L), h_ref, "ss_vs_tf", what)
            assert_close(GH(Z), onp.matmul(G(Z), H(Z)), "ss_vs_tf", what + " H(z)")
    # H's tf rows share det(zI - A): kept once, so each row has order 2 + 3, not 2 + 3 * 3
    assert (G * H.to_tf()).den.shape == (2, 6)


def test_mimo_parallel_is_the_sum_in_every_form():
    G, H = _tf(11, p=3, m=2, order=2), _ss(12, m=2, p=3)
    L = 30
    h_ref = G.impulse(L) + H.impulse(L)
    for g in _forms(G):
        for h in _forms(H):
            assert_close((g + h).impulse(L), h_ref, "ss_vs_tf", f"{type(g).__name__} + {type(h).__name__}")
    assert (G + G).den.shape == G.den.shape    # equal row denominators kept once


def test_composition_matches_python_control():
    pytest.importorskip("control", reason="python-control is optional")
    G, H = _tf(13, p=2, m=3, order=2), _ss(14, m=2, p=3)
    g, h = TransferFunction([1.0, 0.4], [1.0, -0.5]), TransferFunction([0.2, 0.0, 1.0], [1.0, 0.3, 0.4])
    # MIMO on ss forms only: python-control without slycot turns no MIMO tf into ss, and its
    # MIMO tf product (one denominator per channel) was measured 1e-7 off G(z) H(z) here
    Gs = G.to_ss().to_control()
    pairs = [(g * h, g.to_control() * h.to_control()), (g + h, g.to_control() + h.to_control()),
             (G.to_ss() * H, Gs * H.to_control()), (H * G.to_ss(), H.to_control() * Gs),
             (G.to_ss() + G, Gs + Gs), (2.0 * G, 2.0 * G.to_control()), (G * -1.5, G.to_control() * -1.5)]
    for mine, ref in pairs:
        want = ref(Z) if (mine.n_outputs, mine.n_inputs) == (1, 1) else onp.moveaxis(ref(Z), -1, 0)
        assert_close(mine(Z), want, "third_party_float64", repr(mine))


def test_mixed_forms_give_a_state_space():
    G, H = TransferFunction([1.0, 0.4], [1.0, -0.5]), StateSpace([[0.3]], [[1.0]], [[1.0]], [[0.5]])
    assert isinstance(G * G, TransferFunction) and isinstance(G + G, TransferFunction)
    for sys in (G * H, H * G, G + H, H + G, G - H, H - G):
        assert isinstance(sys, StateSpace)
    assert isinstance(2 * G, TransferFunction) and isinstance(2 * H, StateSpace)


def test_scalar_gains_scale_the_response():
    G, H = _tf(15, p=2, m=3, order=2), _ss(16, m=2, p=3)
    for sys in (G, H):
        for scaled, k in ((2.5 * sys, 2.5), (sys * 2.5, 2.5), (onp.float64(-3.0) * sys, -3.0),
                          (sys * onp.int64(4), 4.0), (-sys, -1.0)):
            assert type(scaled) is type(sys)
            assert_close(scaled.impulse(20), k * sys.impulse(20), "ss_vs_tf", repr(scaled))
    assert_close((0 * G).impulse(5), onp.zeros((5, 2, 3)), "ss_vs_tf")


def test_static_gains_compose():
    K = StateSpace(onp.zeros((0, 0)), onp.zeros((0, 3)), onp.zeros((2, 0)), [[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]])
    H = _ss(17, m=2, p=3)
    assert_close((K * H).impulse(10), onp.matmul(K.D, H.impulse(10)), "ss_vs_tf", "K H")
    assert (K * H).order == H.order and (K + K).order == 0
    assert_close((K + K).dcgain(), 2 * K.D, "ss_vs_tf")


def test_composition_refuses_mismatched_shapes_and_non_systems():
    G, H = _tf(18, p=2, m=3, order=1), _ss(19, m=2, p=3)
    with pytest.raises(ValueError, match=r"G \* H: G has 3 inputs but H has 2 outputs"):
        G * G
    with pytest.raises(ValueError, match=r"G \+ H: G is 2 x 3 but H is 3 x 2"):
        G + H
    with pytest.raises(ValueError, match=r"G \+ H: G is 2 x 3 but H is 3 x 2"):
        G.to_ss() + H
    for bad in ("2", 1j, True, onp.ones(3), [1.0]):
        with pytest.raises(TypeError):
            G * bad
        with pytest.raises(TypeError):
            bad * H
    with pytest.raises(TypeError):
        G + 1.0
    with pytest.raises(ValueError, match="k: contains NaN"):
        float("nan") * G
