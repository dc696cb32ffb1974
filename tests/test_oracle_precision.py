"""The emulated low-precision oracle: rounding is right, float64 emulation is exact,
errors grow as the precision shrinks, and no float64 leaks into a low-precision run."""
import numpy as onp
import pytest
import scipy.signal as ss
from autograd.test_util import check_grads
from hypothesis import given, settings, strategies as st

from rssm_ref.oracle import precision as pr
from rssm_ref.oracle import sample
from rssm_ref.tolerances import assert_close, rel_err


def test_bfloat16_rounding_is_nearest_even_on_8_bits():
    # 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even mantissa (1.0) wins;
    # 1 + 3*2^-8 ties between 1+2^-7 and 1+2^-6: even is 1 + 2^-6.
    x = onp.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-12, -3.0, 0.0, onp.inf])
    got = pr.round_to(x, "bfloat16")
    assert got.tolist() == [1.0, 1 + 2**-6, 1 + 2**-7, -3.0, 0.0, onp.inf]


@settings(max_examples=60)
@given(st.floats(-1e30, 1e30, allow_nan=False))
def test_bfloat16_rounding_error_is_at_most_half_ulp(v):
    r = pr.round_to([v], "bfloat16")[0]
    assert pr.round_to([r], "bfloat16")[0] == r                       # idempotent
    if abs(v) > 1e-30:
        # 8 significand bits: |r - v| <= 2^-8 |v|  (half an ulp, relative)
        assert abs(r - onp.float32(v)) <= 2.0**-8 * abs(float(onp.float32(v))) * (1 + 1e-6)


def test_float16_rounding_matches_numpy_half():
    x = onp.random.default_rng(0).standard_normal(1000) * 100
    assert onp.array_equal(pr.round_to(x, "float16"), x.astype(onp.float16).astype(float))


def _lti_tf(seed=0, p=2, m=3, order=3):
    return sample.init_params("lti", seed=seed, form="tf", m=m, p=p, order=order)


def test_float64_tf_scan_matches_scipy_lfilter():
    P = _lti_tf()
    u = onp.random.default_rng(1).standard_normal((2, 200, 3))
    y = pr.emulate("lti", P, {"u": u}, {}, "float64")["y"]
    want = onp.zeros((2, 200, 2))
    for i in range(2):
        for j in range(3):
            want[:, :, i] += ss.lfilter(P["num"][i, j], P["den"][i], u[:, :, j], axis=1)
    assert_close(y, want, "scipy_agreement")


def test_float64_ss_scan_matches_scipy_dlsim():
    P = sample.init_params("lti", seed=2, form="ss", m=2, p=2, order=4)
    u = onp.random.default_rng(1).standard_normal((1, 150, 2))
    y = pr.emulate("lti", P, {"u": u}, {}, "float64")["y"]
    _, want, _ = ss.dlsim((P["A"], P["B"], P["C"], P["D"], 1.0), u[0])
    assert_close(y[0], want, "scipy_agreement")


def test_float64_emulated_gradients_match_finite_differences():
    ar = pr.Arith("float64")
    P = _lti_tf(p=1, m=2, order=2)
    u = onp.random.default_rng(3).standard_normal((1, 12, 2))
    check_grads(lambda num: pr.tf_scan(ar, num, P["den"], u), modes=["rev"], order=1)(P["num"])
    check_grads(lambda den: pr.tf_scan(ar, P["num"], den, u), modes=["rev"], order=1)(P["den"])
    S = sample.init_params("selective", seed=1, m=2, n=3)
    for disc in ("zoh", "euler"):
        for out in ("before", "after"):
            check_grads(lambda A: pr.selective_scan(ar, dict(S, A=A), u, disc, out)[0],
                        modes=["rev"], order=1)(S["A"])
    R = sample.init_params("residual", seed=4, form="ss", m=2, order=2, order_r=2)
    for gate in ("euler", "zoh"):
        check_grads(lambda b: pr.residual_scan(ar, dict(R, gate_bias=b), u, gate)[0],
                    modes=["rev"], order=1)(R["gate_bias"])


@pytest.mark.parametrize("model,opts", [("lti", {}), ("residual", {"gate": "zoh"}),
                                        ("selective", {"discretization": "zoh"})])
def test_error_grows_as_precision_shrinks_and_stays_in_dtype(model, opts):
    P = sample.init_params(model, seed=5, m=2)
    U = sample.init_inputs(model, P, seed=6, batch=2, L=64)
    ref = pr.emulate(model, P, U, opts, "float64", grads=True)
    errs = {}
    for prec in ("float32", "float16", "bfloat16"):
        # emulate raises if any result leaks out of the working dtype
        out = pr.emulate(model, P, U, opts, prec, grads=True)
        assert set(out) == set(ref)
        assert all(out[k].shape == ref[k].shape for k in ref)     # 0-d gate_bias included
        errs[prec] = max(rel_err(out[k], ref[k]) for k in ("y", "grad_u"))
    u = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
    for prec, e in errs.items():
        # a few unit roundoffs to a few hundred: rounding happens, and is not wild
        assert u[prec] / 4 < e < 1000 * u[prec], (prec, e)
    assert errs["float32"] < errs["float16"] < errs["bfloat16"]


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision: 'fp8'"):
        pr.emulate("lti", _lti_tf(), {"u": onp.zeros((1, 2, 3))}, {}, "fp8")


@pytest.mark.parametrize("prec", ["float64", "float32", "bfloat16"])
def test_scan_primitives_match_their_ref_loops(prec):
    """Forward: the same rounded operations, so bitwise equal in every precision.
    VJP (float64): the adjoint recursion against autograd through the `_ref` loop."""
    from autograd import grad
    ar = pr.Arith(prec)
    rng = onp.random.default_rng(7)
    a = ar.cast(rng.uniform(0.5, 1.0, (2, 30, 3, 2)))
    b = ar.cast(rng.standard_normal((2, 30, 3, 2)))
    A = ar.cast(sample.init_params("lti", seed=1, form="ss", order=4)["A"])
    w = ar.cast(rng.standard_normal((2, 30, 4)))
    c = ar.cast(-sample.init_params("lti", seed=2, p=2, order=3)["den"][:, 1:])
    v = ar.cast(rng.standard_normal((2, 30, 2)))
    pairs = [(lambda x, y: pr.diag_scan(x, y, ar.qn), lambda x, y: pr.diag_scan_ref(ar, x, y),
              a, b),
             (lambda x, y: pr.state_scan(x, y, ar.qn), lambda x, y: pr.state_scan_ref(ar, x, y),
              A, w),
             (lambda x, y: pr.iir_scan(x, y, ar.qn), lambda x, y: pr.iir_scan_ref(ar, x, y),
              c, v)]
    for fast, ref, x, y in pairs:
        assert onp.array_equal(fast(x, y), ref(x, y))
        if prec == "float64":
            G = rng.standard_normal(fast(x, y).shape)
            for argnum in (0, 1):
                gf = grad(lambda *z: (fast(*z) * G).sum(), argnum)(x, y)
                gr = grad(lambda *z: (ref(*z) * G).sum(), argnum)(x, y)
                assert_close(gf, gr, "vjp_vs_autograd")


def test_long_sequences_are_fast():
    import time
    P = sample.init_params("lti", seed=0, form="ss", order=2)
    U = sample.init_inputs("lti", P, seed=1, batch=1, L=4096)
    t0 = time.perf_counter()
    pr.emulate("lti", P, U, {}, "bfloat16", grads=True)
    assert time.perf_counter() - t0 < 2.0
