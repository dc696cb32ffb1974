"""a Mamba layer's own parameters (--model mamba), the channel-first layout,
last_state, keys the reference lacks (unchecked), the reference's conventions in the
report, and ``diagnose`` (which conventions a candidate follows)."""
import json
import sys
from pathlib import Path

import autograd.numpy as anp
import numpy as onp
import pytest
from autograd import grad
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import main  # noqa: E402

from _helpers import check_all_grads  # noqa: E402
from rssm_ref.oracle import formats, forward, mamba, sample  # noqa: E402
from rssm_ref.oracle.diagnose import diagnose  # noqa: E402
from rssm_ref.oracle.precision import emulate  # noqa: E402
from rssm_ref.oracle.verify import verify  # noqa: E402
from rssm_ref.selective_ssm import selective_ssm  # noqa: E402
from rssm_ref.tolerances import TOLERANCES, assert_close  # noqa: E402

KEYS = ("A_log", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "D")


def _case(m=5, n=3, r=2, batch=2, L=12, seed=0):
    P = mamba.random_params(m=m, n=n, dt_rank=r, seed=seed)
    P["dt_proj.bias"] = P["dt_proj.bias"] + 2.0      # large steps: conventions differ clearly
    rng = onp.random.default_rng(seed + 1)
    U = {"u": rng.standard_normal((batch, L, m)), "dy": rng.standard_normal((batch, L, m))}
    return P, U


def _ref(model, P, U, **opts):
    """A forward file's arrays (inputs given in opts' layout)."""
    o = forward.resolve_options(model, **opts)
    out = forward.compute(model, P, U, **opts)
    return forward.bundle(o, P, U, out)


def _cf(U):
    return {k: onp.moveaxis(v, 1, -1) for k, v in U.items()}


# ------------------------------------------------------------------ the parameterisation
def test_mamba_is_the_selective_core_on_the_mapped_params_and_grads_follow_the_chain_rule():
    P, U = _case()
    out = forward.compute("mamba", P, U, grads=True, intermediates=True)
    S = mamba.to_selective(P)
    sel = forward.compute("selective", S, U, grads=True, intermediates=True,
                          discretization="euler", output="after")
    for k in ("y", "delta", "h", "last_state", "grad_u", "grad_D"):
        assert_close(out[k], sel[k], "fast_vs_ref", what=k)
    assert_close(out["grad_dt_proj.bias"], sel["grad_delta_bias"], "fast_vs_ref")
    # by hand: A = -exp(A_log) => dA/dA_log = A; W_delta = Wdt Wx[:r]; W_B, W_C = rows of Wx
    r, n = 2, 3
    Wx, Wdt = P["x_proj.weight"], P["dt_proj.weight"]
    assert_close(out["grad_A_log"], sel["grad_A"] * S["A"], "fast_vs_ref")
    assert_close(out["grad_dt_proj.weight"], sel["grad_W_delta"] @ Wx[:r].T, "fast_vs_ref")
    gx = onp.concatenate([Wdt.T @ sel["grad_W_delta"], sel["grad_W_B"], sel["grad_W_C"]])
    assert_close(out["grad_x_proj.weight"], gx, "fast_vs_ref")
    assert sorted(k for k in out if k.startswith("grad_")) == sorted(
        ["grad_u"] + ["grad_" + k for k in KEYS])


def test_mamba_gradients_match_finite_differences():
    P, U = _case(m=3, n=2, r=1, batch=1, L=6)
    out = forward.compute("mamba", P, U, grads=True)

    def objective(A_log, Wx, Wdt, b, D, u):
        S = mamba.to_selective({"A_log": A_log, "x_proj.weight": Wx, "dt_proj.weight": Wdt,
                                "dt_proj.bias": b, "D": D})
        y = selective_ssm(u, **S, discretization="euler", output="after")
        return anp.sum(y * U["dy"])

    args = [P[k] for k in KEYS] + [U["u"]]
    check_all_grads(objective, *args)                 # autograd vs finite differences
    g = grad(lambda a: objective(*a))(args)
    for k, gk in zip(KEYS + ("u",), g):
        assert_close(out["grad_" + k], gk, "fast_vs_ref", what=k)


def test_mamba_defaults_are_mamba_ssm_conventions_and_paper_defaults_stay():
    o = forward.resolve_options("mamba")
    assert (o["discretization"], o["output"], o["layout"]) == ("euler", "after", "channel-last")
    s = forward.resolve_options("selective")
    assert (s["discretization"], s["output"]) == ("zoh", "before")
    P, U = _case()
    y_default = forward.compute("mamba", P, U)["y"]
    y_paper = forward.compute("mamba", P, U, discretization="zoh", output="before")["y"]
    assert formats_rel(y_default, y_paper) > 1e-2     # the conventions matter here


def formats_rel(a, b):
    return float(onp.max(onp.abs(a - b)) / onp.max(onp.abs(b)))


def test_mamba_emulation_matches_in_float64_and_float32():
    P, U = _case()
    ref = forward.compute("mamba", P, U, grads=True)
    opts = forward.resolve_options("mamba")
    e64 = emulate("mamba", P, U, opts, "float64", grads=True)
    e32 = emulate("mamba", P, U, opts, "float32", grads=True)
    for k in ref:
        assert formats_rel(e64[k], ref[k]) <= TOLERANCES["verify_floor_float64"], k
        err32 = formats_rel(e32[k], ref[k])
        # float32 arithmetic leaves float32-sized errors: more than float64's, within 1e3 ulps
        assert 1e-9 < err32 < 1e3 * 2.0 ** -24, (k, err32)


@pytest.mark.parametrize("edit, match", [
    (lambda P: P.update({"x_proj.weight": P["x_proj.weight"][:-1]}),
     r"key 'x_proj.weight': 7 rows \(expected dt_rank \+ 2 n = 2 \+ 2\*3 = 8"),
    (lambda P: P.update({"in_proj.weight": onp.zeros((10, 5))}),
     r"unexpected key 'in_proj.weight' .*keep only A_log"),
    (lambda P: P.update({"mixer.A_log": P.pop("A_log")}),
     r"unexpected key 'mixer.A_log' .*strip the prefix 'mixer.'"),
    (lambda P: P.update({"A_log": onp.full((5, 3), 800.0)}),
     r"key 'A_log': entry \(0, 0\) = 800 makes A = -exp\(A_log\) overflow"),
    (lambda P: P.pop("dt_proj.weight"), r"missing key 'dt_proj.weight'"),
    (lambda P: P.update({"D": onp.ones(4)}), r"key 'D': shape \(4,\) gives m = 4"),
])
def test_mamba_params_are_validated_with_one_line_naming_the_key(tmp_path, edit, match):
    P, U = _case()
    edit(P)
    onp.savez(tmp_path / "P.npz", **P)
    onp.savez(tmp_path / "U.npz", **U)
    res = CliRunner().invoke(main, ["forward", "--model", "mamba", "--params",
                                    str(tmp_path / "P.npz"), "--inputs", str(tmp_path / "U.npz"),
                                    "--out", str(tmp_path / "O.npz")])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().split("\n") if line]
    assert len(lines) == 1 and "P.npz" in lines[0], res.output
    import re
    assert re.search(match, lines[0]), lines[0]
    assert not (tmp_path / "O.npz").exists()


def test_init_writes_mamba_params_that_forward_accepts(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["init", "--model", "mamba", "--m", "6", "--n", "3", "--out",
                          str(tmp_path / "P.npz"), "--inputs-out", str(tmp_path / "U.npz"),
                          "--length", "10"])
    assert res.exit_code == 0, res.output
    P = formats.load_npz(tmp_path / "P.npz")
    assert P["x_proj.weight"].shape == (1 + 2 * 3, 6) and P["A_log"].shape == (6, 3)
    res = r.invoke(main, ["forward", "--model", "mamba", "--params", str(tmp_path / "P.npz"),
                          "--inputs", str(tmp_path / "U.npz"), "--out", str(tmp_path / "O.npz"),
                          "--grads"])
    assert res.exit_code == 0, res.output
    assert "grad_x_proj.weight" in res.output


# ------------------------------------------------------------------ layout, last_state
def test_channel_first_is_the_transpose_of_channel_last_for_every_output():
    P, U = _case()
    last = forward.compute("mamba", P, U, grads=True, intermediates=True)
    first = forward.compute("mamba", P, _cf(U), grads=True, intermediates=True,
                            layout="channel-first")
    assert set(first) == set(last)
    for k in last:
        want = onp.moveaxis(last[k], 1, -1) if k in ("y", "delta", "h", "grad_u") else last[k]
        assert first[k].shape == want.shape, k
        assert onp.array_equal(first[k], want), k
    assert first["h"].shape == (2, 5, 3, 12) and first["last_state"].shape == (2, 5, 3)
    assert onp.array_equal(first["last_state"], first["h"][..., -1])


def test_cli_channel_first_files_verify_and_point_at_the_first_bad_step(tmp_path):
    P, U = _case()
    onp.savez(tmp_path / "P.npz", **P)
    onp.savez(tmp_path / "U.npz", **_cf(U))
    r = CliRunner()
    res = r.invoke(main, ["forward", "--model", "mamba", "--params", str(tmp_path / "P.npz"),
                          "--inputs", str(tmp_path / "U.npz"), "--out", str(tmp_path / "O.npz"),
                          "--layout", "channel-first", "--grads", "--intermediates"])
    assert res.exit_code == 0, res.output
    O = formats.load_npz(tmp_path / "O.npz")
    assert O["y"].shape == (2, 5, 12) and O["input__u"].shape == (2, 5, 12)
    cand = {k: O[k].astype(onp.float32) for k in ("y", "last_state", "grad_u", "grad_A_log")}
    cand["y"][:, :, 7:] += 1e-3                                # a bug from t = 7 on
    onp.savez(tmp_path / "C.npz", **cand)
    res = r.invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"), "--candidate",
                          str(tmp_path / "C.npz"), "--precision", "float32", "--json"])
    assert res.exit_code == 1, res.output
    rep = json.loads(res.output)
    by = {t["name"]: t for t in rep["tensors"]}
    assert not by["y"]["passed"] and by["y"]["first_bad_t"] == 7
    assert by["y"]["worst_index"][2] >= 7
    assert by["last_state"]["passed"] and by["grad_A_log"]["passed"]
    # the candidate in the other layout is refused with the flag that fixes it
    onp.savez(tmp_path / "T.npz", y=onp.moveaxis(O["y"], -1, 1))
    res = r.invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"), "--candidate",
                          str(tmp_path / "T.npz")])
    assert res.exit_code == 2 and "--layout channel-last" in res.output, res.output
    # inputs in the wrong layout: the hint names the flag
    res = r.invoke(main, ["forward", "--model", "mamba", "--params", str(tmp_path / "P.npz"),
                          "--inputs", str(tmp_path / "U.npz"), "--out", str(tmp_path / "X.npz")])
    assert res.exit_code == 2 and "pass --layout channel-first" in res.output, res.output


def test_last_state_is_checkable_and_a_wrong_one_fails():
    P, U = _case()
    ref = _ref("mamba", P, U, intermediates=True)
    good = {"last_state": ref["last_state"].astype(onp.float32)}
    assert verify(ref, good, "float32").passed
    bad = {"last_state": ref["h"][:, -2].astype(onp.float32)}      # one step short
    rep = verify(ref, bad, "float32")
    assert not rep.passed and rep.tensors[0].rel > 100 * rep.tensors[0].threshold


# ------------------------------------------------------------------ subsets both ways, report
def test_keys_the_reference_lacks_are_unchecked_not_refused(tmp_path):
    P, U = _case()
    full = forward.compute("mamba", P, U, grads=True)
    y_only = _ref("mamba", P, U)
    onp.savez(tmp_path / "O.npz", **y_only)
    onp.savez(tmp_path / "C.npz", **{k: v for k, v in full.items()})
    r = CliRunner()
    res = r.invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"), "--candidate",
                          str(tmp_path / "C.npz")])
    assert res.exit_code == 0, res.output
    assert "grad_A_log" in res.output and "unchecked: not in the reference (rerun forward " \
        "with --grads)" in res.output
    res = r.invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"), "--candidate",
                          str(tmp_path / "C.npz"), "--json"])
    rep = json.loads(res.output)
    assert [t["name"] for t in rep["tensors"]] == ["y"]
    assert sorted(u["name"] for u in rep["unchecked"]) == sorted(
        k for k in full if k.startswith("grad_"))
    # a wrong y still fails with the grads unchecked
    onp.savez(tmp_path / "W.npz", y=full["y"] * 1.001, grad_D=full["grad_D"])
    res = r.invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"), "--candidate",
                          str(tmp_path / "W.npz")])
    assert res.exit_code == 1, res.output
    # only unchecked keys, or a key no forward file can hold: bad input
    for bad, msg in (({"grad_D": full["grad_D"]}, "no tensor to compare"),
                     ({"y": full["y"], "grad_A": full["grad_D"]}, "key 'grad_A' is not in")):
        onp.savez(tmp_path / "B.npz", **bad)
        res = r.invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"), "--candidate",
                              str(tmp_path / "B.npz")])
        assert res.exit_code == 2 and msg in res.output, res.output


def test_report_shows_the_reference_model_and_conventions():
    P, U = _case()
    ref = _ref("mamba", P, _cf(U), layout="channel-first")
    rep = verify(ref, {"y": ref["y"]}, "float64")
    assert "reference: model mamba (discretization euler, output after, D yes, layout " \
        "channel-first)" in rep.to_text()
    d = json.loads(rep.to_json())
    assert d["model"] == "mamba" and d["options"] == {
        "discretization": "euler", "output": "after", "D": "yes", "layout": "channel-first"}
    assert d["unchecked"] == []


# ------------------------------------------------------------------ residual output before
def test_residual_output_before_is_y_0_to_L_minus_1_with_consistent_gradients():
    P = sample.init_params("residual", seed=0, m=2, order=2, order_r=2)
    U = sample.init_inputs("residual", P, seed=1, batch=1, L=8)
    after = forward.compute("residual", P, U, grads=True)
    before = forward.compute("residual", P, U, grads=True, output="before")
    assert onp.array_equal(before["y"][:, 0], onp.zeros((1, 2)))
    assert onp.array_equal(before["y"][:, 1:], after["y"][:, :-1])
    # d/d gate_bias of sum(y_before * dy) by central differences
    h = TOLERANCES["check_grads_eps"]

    def f(b):
        Q = dict(P, gate_bias=onp.array(b))
        return float(onp.sum(forward.compute("residual", Q, U, output="before")["y"] * U["dy"]))
    fd = (f(float(P["gate_bias"]) + h) - f(float(P["gate_bias"]) - h)) / (2 * h)
    assert abs(fd - float(before["grad_gate_bias"])) <= 1e-6 * max(1.0, abs(fd))
    assert abs(fd - float(after["grad_gate_bias"])) > 1e-3        # not the "after" gradient


# ------------------------------------------------------------------ diagnose
def test_diagnose_names_mamba_ssm_conventions_and_precision_from_the_cli(tmp_path):
    P, U = _case()
    Ucf = _cf(U)
    # a reference made with the paper's defaults: the forgotten-flag case of the issue
    onp.savez(tmp_path / "O.npz", **_ref("mamba", P, Ucf, grads=True, layout="channel-first",
                                         discretization="zoh", output="before"))
    good = forward.compute("mamba", P, Ucf, grads=True, layout="channel-first")
    onp.savez(tmp_path / "C.npz", **{k: good[k].astype(onp.float32) for k in
                                     ("y", "grad_u", "grad_A_log", "grad_x_proj.weight")})
    r = CliRunner()
    res = r.invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"), "--candidate",
                          str(tmp_path / "C.npz"), "--precision", "float32"])
    assert res.exit_code == 1 and "rssm-ref diagnose" in res.output, res.output
    res = r.invoke(main, ["diagnose", "--reference", str(tmp_path / "O.npz"), "--candidate",
                          str(tmp_path / "C.npz")])
    assert res.exit_code == 0, res.output
    assert ("matches discretization=euler, output=after, D=yes, layout=channel-first "
            "(mamba_ssm's and mambapy's conventions) at float32 precision; rerun forward with "
            "--discretization euler --output after") in res.output
    res = r.invoke(main, ["diagnose", "--reference", str(tmp_path / "O.npz"), "--candidate",
                          str(tmp_path / "C.npz"), "--json"])
    rep = json.loads(res.output)
    assert rep["precision"] == "float32" and rep["passed"]
    assert rep["best"] == {"discretization": "euler", "output": "after", "D": "yes",
                           "layout": "channel-first"}
    assert len(rep["rows"]) == 8            # 2 x 2 x D yes/no; channel-last does not fit
    rows = {json.dumps(x["conventions"], sort_keys=True): x["rel_err"] for x in rep["rows"]}
    best = rows[json.dumps(rep["best"], sort_keys=True)]
    assert all(v > 1e4 * best for k, v in rows.items()
               if k != json.dumps(rep["best"], sort_keys=True))


def test_diagnose_finds_a_forgotten_D_and_the_other_layout():
    P, U = _case()
    ref = _ref("mamba", P, U)                            # channel-last, with D
    noD = {k: v for k, v in P.items() if k != "D"}
    cand = forward.compute("mamba", noD, _cf(U), layout="channel-first")
    rep = diagnose(ref, {"y": cand["y"]})
    assert rep.best == {"discretization": "euler", "output": "after", "D": "no",
                        "layout": "channel-first"}
    assert rep.precision == "float64" and rep.rerun_flags == "--layout channel-first"
    assert rep.advice.endswith("rerun forward with --layout channel-first and without the key "
                               "'D' in the params (your tensors leave out the skip D u(t); or "
                               "add it to your code)"), rep.advice


def test_diagnose_residual_gate_and_alignment():
    P = sample.init_params("residual", seed=2, m=2, order=3, order_r=2)
    U = sample.init_inputs("residual", P, seed=3, batch=2, L=20)
    ref = _ref("residual", P, U, grads=True)
    cand = forward.compute("residual", P, U, grads=True, gate="zoh", output="before")
    rep = diagnose(ref, {k: v.astype(onp.float32) for k, v in cand.items()})
    assert rep.best["gate"] == "zoh" and rep.best["output"] == "before"
    assert rep.precision == "float32"
    assert rep.rerun_flags == "--gate zoh --output before"
    assert "y(0..L-1)" in rep.advice


def test_diagnose_reports_no_match_for_a_bug_beyond_conventions(tmp_path):
    P, U = _case()
    onp.savez(tmp_path / "O.npz", **_ref("mamba", P, U))
    y = forward.compute("mamba", P, U)["y"]
    onp.savez(tmp_path / "C.npz", y=y + 0.3 * onp.sin(onp.arange(y.size)).reshape(y.shape))
    res = CliRunner().invoke(main, ["diagnose", "--reference", str(tmp_path / "O.npz"),
                                    "--candidate", str(tmp_path / "C.npz")])
    assert res.exit_code == 1, res.output
    assert "no combination of the conventions the oracle knows matches" in res.output


def test_diagnose_bad_input_is_one_line(tmp_path):
    P, U = _case()
    onp.savez(tmp_path / "O.npz", **_ref("mamba", P, U))
    onp.savez(tmp_path / "C.npz", y=onp.zeros((2, 7, 7)))
    res = CliRunner().invoke(main, ["diagnose", "--reference", str(tmp_path / "O.npz"),
                                    "--candidate", str(tmp_path / "C.npz")])
    assert res.exit_code == 2, res.output
    assert res.output.strip().count("\n") == 0 and "fits neither layout" in res.output


def test_assert_matches_reference_takes_mamba_keys_in_the_channel_first_layout():
    from rssm_ref.testing import assert_matches_reference
    P, U = _case()
    out = forward.compute("mamba", P, _cf(U), grads=True, layout="channel-first")
    cand = {k: v.astype(onp.float32) for k, v in out.items()}
    assert assert_matches_reference("mamba", P, _cf(U), cand, "float32",
                                    layout="channel-first").passed
    cand["grad_A_log"] = cand["grad_A_log"] * onp.float32(1.001)
    with pytest.raises(AssertionError, match="grad_A_log"):
        assert_matches_reference("mamba", P, _cf(U), cand, "float32", layout="channel-first")


def test_mamba_and_residual_before_run_on_the_array_api_strict_backend():
    pytest.importorskip("array_api_strict")
    P, U = _case()
    ref = forward.compute("mamba", P, _cf(U), grads=True, intermediates=True,
                          layout="channel-first")
    got = forward.compute("mamba", P, _cf(U), grads=True, intermediates=True,
                          layout="channel-first", backend="array_api_strict")
    assert set(got) == set(ref)
    for k in ref:
        assert_close(got[k], ref[k], "backend_agreement", what=k)
    Pr = sample.init_params("residual", seed=0, m=2)
    Ur = sample.init_inputs("residual", Pr, seed=1, L=10)
    ref = forward.compute("residual", Pr, Ur, grads=True, output="before")
    got = forward.compute("residual", Pr, Ur, grads=True, output="before",
                          backend="array_api_strict")
    for k in ref:
        assert_close(got[k], ref[k], "backend_agreement", what=k)
