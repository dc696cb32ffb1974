"""Backends: the neutral kernels on every available array module.

Three comparisons, each keyed in rssm_ref.tolerances:
- ``neutral_vs_reference``: rssm_ref.xp.models on a backend vs the autograd NumPy
  oracle (rssm_ref.oracle.forward.compute), outputs, intermediates and gradients;
- ``backend_agreement``: the same neutral code on a backend vs on NumPy;
- ``fast_vs_ref``: each neutral fast kernel vs its ``_ref`` loop, on the backend.

Backends: numpy (always), array_api_strict (installed by ``.[test]``; it holds only what
the array API standard allows, so a NumPy-only call in the neutral code fails here), and
cupy (skipped with its reason unless CuPy sees a CUDA GPU).
"""
import numpy as onp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rssm_ref.xp import backend as B
from rssm_ref.xp import core as K
from rssm_ref.xp import models as XM
from rssm_ref.oracle.forward import compute
from rssm_ref.oracle.sample import init_inputs, init_params
from rssm_ref.tolerances import TOLERANCES, assert_close, rel_err


def _reason(name):
    try:
        B.namespace(name)
    except B.BackendUnavailable as exc:
        return str(exc)
    return None


BACKEND_PARAMS = [
    pytest.param(name, marks=[pytest.mark.skipif(_reason(name) is not None,
                                                  reason=_reason(name) or "")]
                 + ([pytest.mark.gpu] if name == "cupy" else []))
    for name in B.BACKENDS
]


@pytest.fixture(params=BACKEND_PARAMS)
def xp(request):
    return B.namespace(request.param)


def dev(a, xp):
    return B.to_backend(a, xp)


def host(x):
    return B.to_host(x)


# ------------------------------------------------------------------ the module chooser
def test_numpy_is_always_available_and_default(monkeypatch):
    monkeypatch.delenv(B.ENV_VAR, raising=False)
    assert B.available_backends()[0] == "numpy"
    assert B.get_backend_name() == "numpy"


def test_env_var_chooses_and_rejects(monkeypatch):
    monkeypatch.setenv(B.ENV_VAR, "array_api_strict")
    assert B.get_backend_name() == "array_api_strict"
    monkeypatch.setenv(B.ENV_VAR, "opencl")
    with pytest.raises(B.BackendUnavailable, match="RSSM_REF_BACKEND='opencl'"):
        B.get_backend_name()


@pytest.mark.skipif(_reason("cupy") is None, reason="CuPy is available here")
def test_cupy_absent_gives_a_clear_reason():
    with pytest.raises(B.BackendUnavailable, match=r"backend 'cupy': .*(install|device)"):
        B.namespace("cupy")
    assert "cupy" not in B.available_backends()


def test_mixed_backends_are_refused():
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match="different backends"):
        K.diag_scan(onp.ones((1, 2)), strict.ones((1, 2), dtype=strict.float64))


def test_round_trip_is_exact(xp):
    a = onp.random.default_rng(0).normal(size=(3, 5, 2))
    back = host(dev(a, xp))
    assert back.dtype == onp.float64 and onp.array_equal(back, a)


def test_strict_namespace_rejects_numpy_only_calls():
    """The strict module really is strict: the test that guards the neutral code bites."""
    strict = pytest.importorskip("array_api_strict")
    x = strict.ones((2, 3), dtype=strict.float64)
    assert not hasattr(strict, "einsum")
    with pytest.raises(TypeError):
        strict.fft.rfft(x, 8, axis=1)   # n is keyword-only in the standard
    assert rel_err(host(strict.fft.irfft(strict.fft.rfft(x, n=8, axis=1), n=8, axis=1))[:, :3],
                   onp.ones((2, 3))) < 1e-15


# ------------------------------------------------------------------ kernels vs their twins
def _rng(seed):
    return onp.random.default_rng(seed)


@pytest.mark.parametrize("L", [1, 2, 7, 64, 1000])
def test_diag_scan_vs_ref_and_numpy_core(xp, L):
    from rssm_ref.selective_ssm import linear_scan
    r = _rng(L)
    a = r.uniform(0.0, 1.0, size=(3, L, 2))
    a[:, :, 0] = 1.0 - 1e-4 * r.uniform(size=(3, L))       # near the unit circle
    x = r.normal(size=(3, L, 2))
    H = host(K.diag_scan(dev(a, xp), dev(x, xp)))
    assert_close(H, host(K.diag_scan_ref(dev(a, xp), dev(x, xp))), "fast_vs_ref")
    assert_close(H, linear_scan(a, x), "neutral_vs_reference")


def test_diag_scan_long_sequence(xp):
    r = _rng(1)
    L = 1 << 14
    a = 1.0 - 10.0 ** r.uniform(-6, -1, size=(2, L))
    x = r.normal(size=(2, L))
    from rssm_ref.selective_ssm import linear_scan
    assert_close(host(K.diag_scan(dev(a, xp), dev(x, xp))), linear_scan(a, x), "neutral_vs_reference")


def test_state_scan_and_ss_forward_vs_ref(xp):
    from rssm_ref.oracle.sample import random_poles, ss_from_poles
    from rssm_ref.recurrence import ss_filter
    r = _rng(2)
    A, Bm, C, D = ss_from_poles(r, random_poles(r, 4, r_max=0.99), m=3, p=2, jordan=True)
    u = r.normal(size=(2, 50, 3))
    M = [dev(v, xp) for v in (A, Bm, C, D)]
    y, _ = K.ss_forward(*M, dev(u, xp))
    assert_close(host(y), host(K.ss_forward_ref(*M, dev(u, xp))), "fast_vs_ref")
    assert_close(host(y), ss_filter(A, Bm, C, D, u), "neutral_vs_reference")


def test_causal_conv_vs_direct_sum(xp):
    r = _rng(3)
    h = r.normal(size=(33, 2, 3)) * 0.9 ** onp.arange(33)[:, None, None]
    u = r.normal(size=(2, 33, 3))
    assert_close(host(K.causal_conv(dev(h, xp), dev(u, xp))),
                 host(K.causal_conv_ref(dev(h, xp), dev(u, xp))), "fast_vs_ref")


def test_gate_forward_vs_ref_and_numpy_core(xp):
    from rssm_ref.gate import gate
    r = _rng(4)
    y_s = r.normal(size=(2, 40, 3))
    s = r.uniform(size=(2, 40))
    for mode in ("euler", "zoh"):
        y = host(K.gate_forward(dev(y_s, xp), dev(s, xp), mode))
        assert_close(y, host(K.gate_forward_ref(dev(y_s, xp), dev(s, xp), mode)), "fast_vs_ref")
        assert_close(y, gate(y_s, s, mode=mode), "neutral_vs_reference")


# ------------------------------------------------------------------ hand-written VJPs
def _dot(a, b):
    return float(onp.sum(a * b))


def test_linear_vjps_pass_the_dot_product_test(xp):
    """<g, J v> = <J^T g, v> for the maps linear in u (conv, state space, scan in x)."""
    r = _rng(5)
    L = 24
    h = r.normal(size=(L, 2, 3)) * 0.8 ** onp.arange(L)[:, None, None]
    u, v = r.normal(size=(2, L, 3)), r.normal(size=(2, L, 3))
    g = r.normal(size=(2, L, 2))
    dh, du = K.causal_conv_vjp(dev(h, xp), dev(u, xp), dev(g, xp))
    Jv = host(K.causal_conv(dev(h, xp), dev(v, xp)))
    assert abs(_dot(g, Jv) - _dot(host(du), v)) <= 1e-12 * abs(_dot(g, Jv))
    # linear in h as well: <g, conv(k, u)> = <dh, k>
    k = r.normal(size=h.shape)
    Jk = host(K.causal_conv(dev(k, xp), dev(u, xp)))
    assert abs(_dot(g, Jk) - _dot(host(dh), k)) <= 1e-12 * abs(_dot(g, Jk))
    a = r.uniform(size=(2, L, 3))
    H = K.diag_scan(dev(a, xp), dev(u, xp))
    _, dx = K.diag_scan_vjp(dev(a, xp), H, dev(v, xp))
    Jx = host(K.diag_scan(dev(a, xp), dev(g[:, :, :1] * onp.ones(3), xp)))
    assert abs(_dot(v, Jx) - _dot(host(dx), g[:, :, :1] * onp.ones(3))) <= 1e-12 * abs(_dot(v, Jx))


def test_scan_vjp_in_a_vs_central_differences(xp):
    r = _rng(6)
    a = r.uniform(0.2, 0.8, size=(2, 16, 2))
    x = r.normal(size=(2, 16, 2))
    g = r.normal(size=(2, 16, 2))
    d = r.normal(size=a.shape)
    da, _ = K.diag_scan_vjp(dev(a, xp), K.diag_scan(dev(a, xp), dev(x, xp)), dev(g, xp))
    eps = TOLERANCES["check_grads_eps"]
    fd = (_dot(g, host(K.diag_scan(dev(a + eps * d, xp), dev(x, xp))))
          - _dot(g, host(K.diag_scan(dev(a - eps * d, xp), dev(x, xp))))) / (2 * eps)
    assert abs(fd - _dot(host(da), d)) <= 1e-8 * max(1.0, abs(fd))


def test_phi1_prime_matches_the_numpy_core(xp):
    from rssm_ref.kernels.selective import phi_deriv_np
    x = -onp.concatenate([10.0 ** onp.linspace(-300, 2.8, 400), [0.0, 0.999999, 1.0, 1.000001]])
    assert_close(host(XM.phi1_prime(dev(x, xp))), phi_deriv_np(x, 1), "special_function")


# ------------------------------------------------------------------ whole models vs the oracle
MODEL_CASES = (
    [("lti", dict(form=f, m=3, p=2, order=3), dict(path=pa))
     for f in ("tf", "ss") for pa in ("recurrent", "fft")]
    + [("residual", dict(form=f, m=2, order=3, order_r=2), dict(path=pa, gate=g))
       for f in ("tf", "ss") for pa in ("recurrent", "fft") for g in ("euler", "zoh")]
    + [("selective", dict(m=3, n=4), dict(discretization=d, output=o))
       for d in ("zoh", "euler") for o in ("before", "after")]
)


def _case_id(case):
    model, sizes, opts = case
    return "-".join([model] + [str(v) for v in sizes.values()][:1] + list(opts.values()))


def _run_both(xp, model, sizes, opts, seed=0, batch=2, L=40):
    P = init_params(model, seed, **sizes)
    U = init_inputs(model, P, seed + 1, batch=batch, L=L)
    ref = compute(model, P, U, grads=True, intermediates=True, **opts)
    full = {"path": None, "gate": None, "discretization": None, "output": None}
    full.update(opts)
    from rssm_ref.oracle.forward import resolve_options
    resolved = resolve_options(model, **full)
    out = XM.compute_xp(model, P, dev(U["u"], xp), resolved, dy=dev(U["dy"], xp))
    return ref, {k: host(v) if not isinstance(v, onp.ndarray) else v for k, v in out.items()}


@pytest.mark.parametrize("case", MODEL_CASES, ids=[_case_id(c) for c in MODEL_CASES])
def test_model_outputs_and_gradients_match_the_oracle(xp, case):
    model, sizes, opts = case
    ref, got = _run_both(xp, model, sizes, opts)
    assert set(ref) == set(got), (sorted(ref), sorted(got))
    for key in sorted(ref):
        assert_close(got[key], ref[key], "neutral_vs_reference", what=f"{model} {opts} {key}")


@pytest.mark.parametrize("case", MODEL_CASES, ids=[_case_id(c) for c in MODEL_CASES])
def test_backend_agrees_with_numpy_running_the_same_code(xp, case):
    model, sizes, opts = case
    _, on_numpy = _run_both(B.namespace("numpy"), model, sizes, opts, seed=3)
    _, on_xp = _run_both(xp, model, sizes, opts, seed=3)
    for key in sorted(on_numpy):
        assert_close(on_xp[key], on_numpy[key], "backend_agreement", what=f"{model} {key}")


def _blocks_and_vjps(xp, seed=9):
    """Every kernel's output and VJP on ``xp`` (host copies), for the same inputs."""
    r = _rng(seed)
    L = 37
    a = r.uniform(size=(2, L, 3))
    x, g3 = r.normal(size=(2, L, 3)), r.normal(size=(2, L, 3))
    A = 0.3 * r.normal(size=(4, 4))
    Bm, C, D = r.normal(size=(4, 3)), r.normal(size=(2, 4)), r.normal(size=(2, 3))
    g2 = r.normal(size=(2, L, 2))
    h = r.normal(size=(L, 2, 3)) * 0.9 ** onp.arange(L)[:, None, None]
    s = r.uniform(size=(2, L))
    d = {k: dev(v, xp) for k, v in dict(a=a, x=x, g3=g3, A=A, B=Bm, C=C, D=D, g2=g2, h=h, s=s).items()}
    out = {}
    H = K.diag_scan(d["a"], d["x"])
    out["diag_scan"] = H
    out["diag_scan_da"], out["diag_scan_dx"] = K.diag_scan_vjp(d["a"], H, d["g3"])
    y, S = K.ss_forward(d["A"], d["B"], d["C"], d["D"], d["x"])
    out["ss_forward"] = y
    for k, v in K.ss_vjp(d["A"], d["B"], d["C"], d["D"], d["x"], S, d["g2"]).items():
        out[f"ss_vjp_{k}"] = v
    out["causal_conv"] = K.causal_conv(d["h"], d["x"])
    out["causal_conv_dh"], out["causal_conv_du"] = K.causal_conv_vjp(d["h"], d["x"], d["g2"])
    for mode in ("euler", "zoh"):
        yg = K.gate_forward(d["x"], d["s"], mode)
        out[f"gate_{mode}"] = yg
        out[f"gate_{mode}_dys"], out[f"gate_{mode}_ds"] = K.gate_vjp(d["x"], d["s"], yg, d["g3"], mode)
    return {k: host(v) for k, v in out.items()}


def test_every_kernel_and_its_vjp_agree_with_numpy(xp):
    on_numpy = _blocks_and_vjps(B.namespace("numpy"))
    on_xp = _blocks_and_vjps(xp)
    assert sorted(on_xp) == sorted(on_numpy)
    for key in sorted(on_numpy):
        assert_close(on_xp[key], on_numpy[key], "backend_agreement", what=key)


# ------------------------------------------------------------------ properties (Hypothesis)
@given(st.data())
def test_property_recurrent_and_fft_paths_agree_on_the_backend(data):
    """LTI identity on the neutral path: state recursion == convolution with the kernel."""
    from rssm_ref.testing import ss_arrays
    A, Bm, C, D = data.draw(ss_arrays(m=2, p=2))
    L = data.draw(st.sampled_from([1, 5, 64, 300]))
    u = onp.random.default_rng(data.draw(st.integers(0, 2 ** 16))).normal(size=(2, L, 2))
    P = {"A": A, "B": Bm, "C": C, "D": D}
    y_rec = host(XM.lti_xp(P, u, path="recurrent")["y"])
    y_fft = host(XM.lti_xp(P, u, path="fft")["y"])
    # two state recursions with different summation orders differ by ulps amplified by
    # kappa = sum_t ||A^t||_2 (Jordan-coupled poles near |z| = 1 reach 1e6): the documented
    # rule of rssm_ref.tolerances, max(key, tf_coefficient_rounding * kappa)
    power, kap = onp.eye(A.shape[0]), 0.0
    for _ in range(L):
        kap += onp.linalg.norm(power, 2)
        power = power @ A
    tol = max(TOLERANCES["recurrent_vs_fft"], TOLERANCES["tf_coefficient_rounding"] * kap)
    assert rel_err(y_fft, y_rec) <= tol, f"kappa {kap:.3g}"


@given(st.integers(1, 300), st.floats(0.0, 1.0), st.integers(0, 2 ** 16))
def test_property_gate_scan_matches_its_loop(L, s_max, seed):
    r = onp.random.default_rng(seed)
    y_s = r.normal(size=(2, L, 2))
    s = s_max * r.uniform(size=(2, L))
    xp = B.namespace("numpy")
    for mode in ("euler", "zoh"):
        assert_close(host(K.gate_forward(dev(y_s, xp), dev(s, xp), mode)),
                     host(K.gate_forward_ref(dev(y_s, xp), dev(s, xp), mode)), "fast_vs_ref")


# ------------------------------------------------------------------ bad input
def test_bad_u_is_refused_clearly(xp):
    P = init_params("lti", 0)
    with pytest.raises(ValueError, match=r"u: expected shape \(batch >= 1, L >= 1, 1\)"):
        XM.lti_xp(P, dev(onp.ones((2, 3, 2)), xp))
    with pytest.raises(ValueError, match="NaN or inf"):
        XM.lti_xp(P, dev(onp.full((1, 3, 1), onp.nan), xp))


def test_long_sequence_near_the_unit_circle(xp):
    """L = 65536, Σ and Σ_r with a pole pair at radius 0.999: both paths of the neutral
    Residual SSM against the NumPy reference, outputs and gradients.

    Σ_r's numerator is scaled so that r stays O(1): with |r| in the thousands (gain
    ~1/(1-0.999)^2), s = σ(r + c) amplifies r's rounding (relative 1e-14 of 5e3) to 4e-11
    in s, and the reference's own two paths then differ by 7e-11 -- an ill-posed
    comparison, not a defect of either path (measured)."""
    from rssm_ref.oracle.sample import den_from_poles
    r = _rng(7)
    poles = [0.999 * onp.exp(1j * 0.3), 0.999 * onp.exp(-1j * 0.3), 0.5]
    den = onp.real(den_from_poles(poles))
    P = {"sigma_num": r.normal(size=(1, 1, 4)) * 1e-2, "sigma_den": den[None, :],
         "r_num": r.normal(size=(1, 1, 4)) * 1e-3, "r_den": den[None, :],
         "gate_bias": onp.array(-1.0)}
    L = 1 << 16
    U = {"u": r.normal(size=(1, L, 1)), "dy": r.normal(size=(1, L, 1))}
    ref = compute("residual", P, U, path="fft", grads=True)
    for path in ("fft", "recurrent") if B.backend_name_of(xp.ones(1)) == "numpy" else ("fft",):
        out = XM.residual_ssm_xp(P, dev(U["u"], xp), path=path, dy=dev(U["dy"], xp))
        for key in ref:
            got = host(out[key]) if not isinstance(out[key], onp.ndarray) else out[key]
            assert_close(got, ref[key], "neutral_vs_reference", what=f"{path} {key}")


def test_backend_arrays_passed_to_the_model_entry_points(xp):
    """residual_ssm_tf / _ss and selective_ssm given a backend array run on that backend."""
    from rssm_ref.residual_ssm import ResidualSSM, residual_ssm_ss, residual_ssm_tf
    from rssm_ref.selective_ssm import random_params, selective_ssm
    r = _rng(8)
    M = ResidualSSM.random(seed=4)
    u = r.normal(size=(2, 30, 2))
    y, mid = residual_ssm_tf(*M.tf_arrays(), dev(u, xp), return_intermediates=True)
    assert B.backend_name_of(y) == B.backend_name_of(dev(u, xp))
    assert_close(host(y), M.forward(u), "neutral_vs_reference")
    assert_close(host(mid["s"]), residual_ssm_tf(*M.tf_arrays(), u, return_intermediates=True)[1]["s"],
                 "neutral_vs_reference")
    S = M.to_ss()
    assert_close(host(residual_ssm_ss(*S.ss_arrays(), dev(u, xp))), S.forward(u), "neutral_vs_reference")
    P = random_params(m=3, n=2, seed=1, D=True)
    u3 = r.normal(size=(2, 20, 3))
    assert_close(host(selective_ssm(dev(u3, xp), **P, discretization="euler", output="after")),
                 selective_ssm(u3, **P, discretization="euler", output="after"), "neutral_vs_reference")


def test_a_backend_array_in_a_numpy_core_is_a_clear_error():
    strict = pytest.importorskip("array_api_strict")
    from rssm_ref.gate import gate
    with pytest.raises(TypeError, match="y_s: an array from array_api_strict given to a NumPy core"):
        gate(strict.ones((1, 2, 1), dtype=strict.float64), onp.full((1, 2), 0.5))


def test_bad_params_get_the_numpy_cores_messages(xp):
    u = dev(onp.ones((1, 4, 1)), xp)
    with pytest.raises(ValueError, match=r"den: zero leading coefficient"):
        XM.lti_xp({"num": onp.ones((1, 1, 2)), "den": onp.array([[0.0, 1.0]])}, u, path="recurrent")
    with pytest.raises(ValueError, match=r"den: expected shape \(1, 2\)"):
        XM.lti_xp({"num": onp.ones((1, 1, 2)), "den": onp.ones((1, 3))}, u)
    with pytest.raises(ValueError, match="spectral radius"):
        XM.lti_xp({k: onp.array([[v]]) for k, v in zip("ABCD", (1.5, 1.0, 1.0, 0.0))}, u, path="fft")
    with pytest.raises(ValueError, match="missing key 'den'"):
        XM.lti_xp({"num": onp.ones((1, 1, 2))}, u)
    P = init_params("residual", 0, m=1)
    P["sigma_den"] = onp.array([[1.0, -1.5, 0.5, 0.0, 0.0]])      # a pole at z = 1
    with pytest.raises(ValueError, match="sigma_den"):
        XM.residual_ssm_xp(P, u, path="recurrent")
    y = XM.residual_ssm_xp(P, u, path="recurrent", allow_unstable=True)["y"]
    assert host(y).shape == (1, 4, 1)
