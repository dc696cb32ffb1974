"""rssm_ref.testing additions: params and inputs drawn together, a documented
threshold override in assert_matches_reference; verify's table on long names."""
import numpy as onp
import pytest
from hypothesis import given, settings

from rssm_ref.oracle import forward
from rssm_ref.oracle.verify import verify
from rssm_ref.testing import assert_matches_reference, params_and_inputs


@pytest.mark.parametrize("model", ["lti", "residual", "selective", "mamba", "mamba-block",
                                   "mamba2-block"])
def test_params_and_inputs_always_fit_together(model):
    seen, states = set(), set()
    x = "hidden_states" if model in ("mamba-block", "mamba2-block") else "u"
    # the Mamba-2 layer's shapes give only ngroups·d_state: the strategy's g is the option
    drawn, opts = ({"g": 2}, {"ngroups": 2}) if model == "mamba2-block" else ({}, {})

    @settings(max_examples=15, database=None, deadline=None)
    @given(params_and_inputs(model, L=8, **drawn))
    def check(case):
        P, U = case
        out = forward.compute(model, P, U, grads=True, **opts)   # refuses any shape mismatch
        assert out["y"].shape == U["dy"].shape
        assert out[f"grad_{x}"].shape == U[x].shape
        assert all(onp.isfinite(v).all() for v in out.values())
        seen.add(U[x].shape[2])
        states.add("conv_state" in U)
    check()
    assert len(seen) >= 2        # the width m varies, and the inputs follow it
    if model in ("mamba-block", "mamba2-block"):
        assert states == {True, False}     # with and without initial states


def _case():
    P = {"num": onp.array([[[1.0, 0.5]]]), "den": onp.array([[1.0, -0.9]])}
    U = {"u": onp.random.default_rng(0).standard_normal((1, 64, 1))}
    y = forward.compute("lti", P, U)["y"]
    return P, U, y


def test_assert_matches_reference_floor_override():
    P, U, y = _case()
    bumped = y + 1e-9 * onp.max(onp.abs(y))          # rel_err 1e-9 > the float64 floor 1e-12
    with pytest.raises(AssertionError, match="MISMATCH"):
        assert_matches_reference("lti", P, U, {"y": bumped})
    rep = assert_matches_reference("lti", P, U, {"y": bumped}, floor=1e-8)
    assert rep.passed and rep.floor == 1e-8 and "+ 1e-08" in rep.to_text()
    with pytest.raises(AssertionError):                # 1e-10 is still below 1e-9
        assert_matches_reference("lti", P, U, {"y": bumped}, floor=1e-10)
    with pytest.raises(ValueError, match="factor"):
        assert_matches_reference("lti", P, U, {"y": y}, factor=-1)


def test_verify_table_aligns_on_long_names():
    rng = onp.random.default_rng(1)
    m, n = 16, 4
    P = {"A": -onp.abs(rng.standard_normal((m, n))) - 0.1,
         "W_delta": rng.standard_normal((m, m)) / 4, "W_B": rng.standard_normal((n, m)) / 4,
         "W_C": rng.standard_normal((n, m)) / 4, "delta_bias": rng.standard_normal(m)}
    U = {"u": rng.standard_normal((1, 6, m))}
    opts = forward.resolve_options("selective", grads=True)
    out = forward.compute("selective", P, U, grads=True)
    ref = forward.bundle(opts, P, dict(U, dy=onp.ones(out["y"].shape)), out)
    lines = verify(ref, {k: out[k] for k in ("y", "grad_delta_bias", "grad_W_delta")}).to_text().splitlines()
    header = next(ln for ln in lines if ln.startswith("tensor"))
    col = header.index("shape")
    rows = [ln for ln in lines if ln.startswith(("y ", "grad_delta_bias", "grad_W_delta"))]
    assert len(rows) == 3
    for ln in rows:
        assert ln[col - 1] == " " and ln[col] == "(", ln       # the shape starts under 'shape'
    assert len({ln.index(" ok") for ln in rows}) == 1          # the verdicts line up


def test_ssd_case_feeds_the_oracle_and_covers_the_hard_steps():
    """ssd_case's draws are valid --model ssd inputs (the oracle refuses any mismatch), g
    divides h, and the step's |dt' A| spans the hard ends 1e-6 … 50."""
    from rssm_ref.testing import ssd_case
    seen = {"lo": 1.0, "hi": 0.0, "g<h": False}

    @settings(max_examples=25, database=None, deadline=None)
    @given(ssd_case())
    def check(case):
        P, U = case
        out = forward.compute("ssd", P, U, grads=True)
        assert out["y"].shape == U["x"].shape and onp.isfinite(out["y"]).all()
        h, g = U["x"].shape[2], U["B"].shape[2]
        assert h % g == 0
        A = P["A"] if "A" in P else -onp.exp(P["A_log"])
        step = onp.abs((U["dt"] + P.get("dt_bias", 0.0)) * A)
        seen["lo"], seen["hi"] = min(seen["lo"], step.min()), max(seen["hi"], step.max())
        seen["g<h"] |= g < h
    check()
    assert seen["lo"] < 1e-4 and seen["hi"] > 10 and seen["g<h"]
