"""verify catches candidates with known defects, lets correct low-precision arithmetic
pass at its own precision, and points at where a sequence goes wrong."""
import json
import sys
from pathlib import Path

import numpy as onp
import pytest
import scipy.signal as ss
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import main  # noqa: E402

from rssm_ref.oracle import forward, formats, sample  # noqa: E402
from rssm_ref.oracle.verify import verify  # noqa: E402
from rssm_ref.tolerances import TOLERANCES  # noqa: E402

F32 = onp.float32


def reference(model, P, U, **opts):
    opts = forward.resolve_options(model, **opts)
    P, sizes = formats.check_params(model, P, allow_unstable=opts["allow_unstable"])
    U, _ = formats.check_inputs(model, U, sizes)
    out = forward.compute_checked(model, P, U, opts)
    if opts["grads"] and "dy" not in U:
        U = dict(U, dy=onp.ones(out["y"].shape))
    return forward.bundle(opts, P, U, out)


def slow_pole_tf(L=1024, batch=2):
    # poles 0.999 and 0.5: the impulse response has not decayed after 2L samples
    den = onp.real(onp.poly([0.999, 0.5]))[None, :]
    num = onp.array([[[0.4, -0.1, 0.05]]])
    u = onp.random.default_rng(0).standard_normal((batch, L, 1))
    return {"num": num, "den": den}, {"u": u}


# --------------------------------------------------- independent float32 candidates
def lti_float32(P, u):
    """scipy's transposed direct form II in float32 (not the oracle's direct form)."""
    num, den = P["num"].astype(F32), P["den"].astype(F32)
    y = onp.zeros(u.shape[:2] + (num.shape[0],), F32)
    for i in range(num.shape[0]):
        for j in range(num.shape[1]):
            y[:, :, i] += ss.lfilter(num[i, j], den[i], u[:, :, j].astype(F32), axis=1)
    return y


def lti_grad_u_float32(P, dy):
    """grad_u of sum(y * dy) for SISO: the time-reversed filter of dy, in float32."""
    num, den = P["num"][0, 0].astype(F32), P["den"][0].astype(F32)
    rev = ss.lfilter(num, den, dy[:, ::-1, 0].astype(F32), axis=1)
    return rev[:, ::-1, None]


def residual_float32(P, u, gate):
    u = u.astype(F32)
    y_s = lti_float32({"num": P["sigma_num"], "den": P["sigma_den"]}, u)
    r = lti_float32({"num": P["r_num"], "den": P["r_den"]}, y_s - u)[:, :, 0]
    s = (F32(1) / (F32(1) + onp.exp(-(r + F32(P["gate_bias"]))))).astype(F32)
    y = onp.zeros(u.shape[0::2], F32)
    out = []
    for t in range(u.shape[1]):
        st = s[:, t, None]
        # (1 - s) y + s y_s for eq. (5); e^{-s} y + (1 - e^{-s}) y_s for the ZOH gate
        keep = (F32(1) - st) if gate == "euler" else onp.exp(-st)
        y = keep * y + (F32(1) - keep) * y_s[:, t]
        out.append(y)
    return onp.stack(out, axis=1)


def selective_float32(P, u, discretization, output):
    u = u.astype(F32)
    A = P["A"].astype(F32)
    z = u @ P["W_delta"].T.astype(F32) + P.get("delta_bias", onp.zeros(A.shape[0])).astype(F32)
    delta = onp.logaddexp(F32(0), z).astype(F32)
    dA = delta[..., None] * A
    Bb = u @ P["W_B"].T.astype(F32)
    Cb = u @ P["W_C"].T.astype(F32)
    if discretization == "zoh":
        # (e^{ΔA} - 1)/A * B̄ written as Δ·B̄·expm1(ΔA)/(ΔA): same value, other rounding
        Bt = delta[..., None] * Bb[:, :, None, :] * (onp.expm1(dA) / dA)
    else:
        Bt = delta[..., None] * Bb[:, :, None, :]
    h = onp.zeros(A.shape[:1] + A.shape[1:], F32)[None].repeat(u.shape[0], 0)
    ys = []
    for t in range(u.shape[1]):
        new = onp.exp(dA[:, t]) * h + Bt[:, t] * u[:, t, :, None]
        ys.append(onp.einsum("bmn,bn->bm", h if output == "before" else new, Cb[:, t]))
        h = new
    y = onp.stack(ys, axis=1)
    return y + P["D"].astype(F32) * u if "D" in P else y


# ------------------------------------------------------------------------- tests
def test_float64_candidate_from_the_other_path_passes_tightly():
    P, U = slow_pole_tf()
    ref = reference("lti", P, U)
    cand = forward.compute("lti", P, U, path="fft")
    rep = verify(ref, cand, "float64")
    assert rep.passed, rep.to_text()
    t = rep.tensors[0]
    assert t.threshold <= TOLERANCES["verify_floor_float64"] * 1.5
    assert t.rel <= TOLERANCES["recurrent_vs_fft"]


def test_float32_arithmetic_fails_at_float64_and_passes_at_float32_lti():
    P, U = slow_pole_tf()
    U["dy"] = onp.random.default_rng(1).standard_normal((2, 1024, 1))
    ref = reference("lti", P, U, grads=True)
    cand = {"y": lti_float32(P, U["u"]), "grad_u": lti_grad_u_float32(P, U["dy"])}
    r64 = verify(ref, cand, "float64")
    assert not r64.passed
    assert all(t.rel > 1e3 * t.threshold for t in r64.tensors), r64.to_text()
    r32 = verify(ref, cand, "float32")
    assert r32.passed, r32.to_text()
    # the candidate's float32 error is a real float32 error, not far below the yardstick
    assert all(t.rel > 0.05 * t.oracle_rel for t in r32.tensors), r32.to_text()
    assert verify(ref, cand, "float16").passed
    # bfloat16 cannot resolve this pole over L = 1024 (oracle error > 1): its thresholds
    # admit a candidate of zeros, so the verdict is INCONCLUSIVE, not PASS
    assert verify(ref, cand, "bfloat16").verdict == "INCONCLUSIVE"


@pytest.mark.parametrize("gate", ["euler", "zoh"])
def test_float32_residual_passes_at_float32_only(gate):
    P = sample.init_params("residual", seed=2, form="tf", m=2, order=3, order_r=2)
    U = sample.init_inputs("residual", P, seed=3, batch=2, L=200, dy=False)
    ref = reference("residual", P, U, gate=gate)
    cand = {"y": residual_float32(P, U["u"], gate)}
    assert not verify(ref, cand, "float64").passed
    rep = verify(ref, cand, "float32")
    assert rep.passed, rep.to_text()


@pytest.mark.parametrize("disc,out", [("zoh", "before"), ("euler", "after")])
def test_float32_selective_passes_at_float32_only(disc, out):
    P = sample.init_params("selective", seed=4, m=3, n=4)
    P["delta_bias"] += 2.0
    U = sample.init_inputs("selective", P, seed=5, batch=2, L=100, dy=False)
    ref = reference("selective", P, U, discretization=disc, output=out)
    cand = {"y": selective_float32(P, U["u"], disc, out)}
    assert not verify(ref, cand, "float64").passed
    rep = verify(ref, cand, "float32")
    assert rep.passed, rep.to_text()


def _selective_case():
    P = sample.init_params("selective", seed=6, m=3, n=4)
    P["delta_bias"] += 2.0          # Δ ~ 2: ZOH and Euler B differ by O(1)
    U = sample.init_inputs("selective", P, seed=7, batch=2, L=64, dy=False)
    return P, U


@pytest.mark.parametrize("precision", ["float64", "float32", "bfloat16"])
def test_euler_B_where_zoh_was_asked_is_caught(precision):
    P, U = _selective_case()
    ref = reference("selective", P, U, discretization="zoh", intermediates=True)
    bad = forward.compute("selective", P, U, discretization="euler", intermediates=True)
    rep = verify(ref, {"y": bad["y"], "h": bad["h"], "delta": bad["delta"]}, precision)
    by = {t.name: t for t in rep.tensors}
    assert not by["y"].passed and not by["h"].passed
    assert by["delta"].passed                      # Δ does not depend on the convention
    # y(0) = C h(0) + D u(0) with h(0) = 0 agrees; the first state h(1) is already wrong
    # (in bfloat16 the first small differences may still be within its threshold)
    if precision != "bfloat16":
        assert by["y"].first_bad_t == 1 and by["h"].first_bad_t == 0
    else:
        assert 1 <= by["y"].first_bad_t <= 4 and by["h"].first_bad_t <= 3


@pytest.mark.parametrize("precision", ["float64", "float32", "bfloat16"])
def test_output_after_instead_of_before_is_caught(precision):
    P, U = _selective_case()
    ref = reference("selective", P, U, output="before")
    bad = forward.compute("selective", P, U, output="after")
    rep = verify(ref, {"y": bad["y"]}, precision)
    assert not rep.passed
    fb = rep.tensors[0].first_bad_t
    assert fb == 0 if precision != "bfloat16" else fb <= 3


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_uncorrected_aliased_kernel_is_caught(precision):
    from rssm_ref.convolution import tf_fft_filter
    P, U = slow_pole_tf()
    ref = reference("lti", P, U)
    bad = tf_fft_filter(P["num"], P["den"], U["u"], corrected=False)
    rep = verify(ref, {"y": onp.asarray(bad)}, precision)
    assert not rep.passed
    assert rep.tensors[0].rel > 100 * rep.tensors[0].threshold


def test_first_bad_time_step_points_at_the_injected_bug():
    P, U = slow_pole_tf(L=300)
    ref = reference("lti", P, U)
    y = ref["y"].copy()
    scale = onp.max(onp.abs(y))
    y[1, 137:, 0] += 1e-7 * scale                  # a scan bug from t = 137 on
    rep = verify(ref, {"y": y}, "float64")
    t = rep.tensors[0]
    assert not t.passed and t.first_bad_t == 137
    assert t.worst_index[0] == 1 and t.worst_index[1] >= 137
    assert abs(t.max_abs - 1e-7 * scale) < 1e-9 * scale
    assert verify(ref, {"y": y}, "float32").passed   # 1e-7 is float32 rounding level


def test_nan_in_candidate_is_a_mismatch_not_bad_input():
    P, U = slow_pole_tf(L=50)
    ref = reference("lti", P, U)
    y = ref["y"].copy()
    y[0, 20, 0] = onp.nan
    rep = verify(ref, {"y": y}, "bfloat16")
    assert not rep.passed and rep.tensors[0].worst_index == (0, 20, 0)
    assert rep.tensors[0].first_bad_t == 20


def test_thresholds_follow_the_precision():
    P, U = slow_pole_tf(L=200)
    ref = reference("lti", P, U)
    th = {p: verify(ref, {"y": ref["y"]}, p).tensors[0].threshold
          for p in ("float64", "float32", "float16", "bfloat16")}
    assert th["float64"] < 1e-11
    assert th["float64"] < th["float32"] < th["float16"] < th["bfloat16"]
    for p in th:
        assert th[p] >= TOLERANCES["verify_floor_" + p]


def test_gradients_are_verified_per_parameter():
    P = sample.init_params("residual", seed=8, form="ss", m=2, order=2, order_r=2)
    U = sample.init_inputs("residual", P, seed=9, batch=1, L=40)
    ref = reference("residual", P, U, grads=True, gate="zoh")
    good = {k: ref[k] for k in ref if k.startswith("grad_")}
    rep = verify(ref, good, "float64")
    assert rep.passed and len(rep.tensors) == len(P) + 1
    bad = dict(good, grad_r_B=good["grad_r_B"] * (1 + 1e-9))
    rep = verify(ref, bad, "float64")
    assert [t.name for t in rep.tensors if not t.passed] == ["grad_r_B"]


def test_cli_exit_codes_and_json(tmp_path):
    P, U = slow_pole_tf(L=100)
    ref = reference("lti", P, U)
    onp.savez(tmp_path / "O.npz", **ref)
    onp.savez(tmp_path / "good.npz", y=ref["y"].astype(F32))
    onp.savez(tmp_path / "bad.npz", y=lti_float32(P, U["u"]) * F32(1.001))
    run = lambda *a: CliRunner().invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"),
                                               *a])
    ok = run("--candidate", str(tmp_path / "good.npz"), "--precision", "float32", "--json")
    assert ok.exit_code == 0, ok.output
    rep = json.loads(ok.stdout)
    assert rep["passed"] and rep["precision"] == "float32" and rep["factor"] == 2.0
    t = rep["tensors"][0]
    assert t["name"] == "y" and t["shape"] == [2, 100, 1] and t["first_bad_t"] is None
    assert t["rel"] <= t["threshold"]
    bad = run("--candidate", str(tmp_path / "bad.npz"), "--precision", "float32")
    assert bad.exit_code == 1
    assert "MISMATCH" in bad.stdout and "FAIL" in bad.stdout
    # float32 held to float64 is caught; without --precision the file's dtype (float32) is used
    assert run("--candidate", str(tmp_path / "good.npz"), "--precision", "float64").exit_code == 1
