"""a check that cannot fail does not pass (INCONCLUSIVE), and the
precision comes from the candidate's dtype when --precision is not given."""
import json

import numpy as onp
import pytest
import scipy.signal as ss
from click.testing import CliRunner

from rssm_ref.app.cli import main
from rssm_ref.oracle import forward, golden
from rssm_ref.oracle.verify import TRIVIAL_REL_ERR, verify

F32 = onp.float32


def _pole0999(tmp_path, L=1024):
    """A pole at 0.999 over L = 1024: bfloat16 cannot resolve it (oracle error > 1)."""
    P = {"num": onp.array([[[0.4, -0.1, 0.05]]]), "den": onp.real(onp.poly([0.999, 0.5]))[None]}
    U = {"u": onp.random.default_rng(0).standard_normal((2, L, 1))}
    opts = forward.resolve_options("lti")
    ref = forward.bundle(opts, P, U, forward.compute("lti", P, U))
    onp.savez(tmp_path / "O.npz", **ref)
    return P, U, ref


def _lfilter32(P, u):
    num, den = P["num"][0, 0].astype(F32), P["den"][0].astype(F32)
    return ss.lfilter(num, den, u[..., 0].astype(F32), axis=1)[..., None]


def _verify(tmp_path, *args):
    return CliRunner().invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"), *args])


# ------------------------------------------------------------------ point 2
@pytest.mark.parametrize("trivial", ["zeros", "twice"])
def test_a_threshold_that_admits_a_trivial_candidate_is_inconclusive(tmp_path, trivial):
    _, _, ref = _pole0999(tmp_path)
    y = onp.zeros_like(ref["y"]) if trivial == "zeros" else 2 * ref["y"]
    onp.savez(tmp_path / "C.npz", y=y.astype(F32))
    res = _verify(tmp_path, "--candidate", str(tmp_path / "C.npz"), "--precision", "bfloat16")
    assert res.exit_code == 1, res.output
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("INCONCLUSIVE: at precision bfloat16 the threshold of y")
    assert "candidate of zeros or of twice the reference would pass" in last
    assert "--precision float32" in last and "smaller L" in last
    assert "PASS" not in res.stdout
    rep = json.loads(_verify(tmp_path, "--candidate", str(tmp_path / "C.npz"), "--precision",
                             "bfloat16", "--json").stdout)
    assert rep["verdict"] == "INCONCLUSIVE" and rep["passed"] is False
    t = rep["tensors"][0]
    assert t["inconclusive"] and t["threshold"] >= TRIVIAL_REL_ERR
    assert t["rel"] == pytest.approx(1.0, rel=1e-6)      # zeros or 2x: rel_err 1 (float32 file)


def test_the_same_case_at_float32_is_conclusive(tmp_path):
    P, U, ref = _pole0999(tmp_path)
    onp.savez(tmp_path / "Z.npz", y=onp.zeros_like(ref["y"], dtype=F32))
    onp.savez(tmp_path / "C.npz", y=_lfilter32(P, U["u"]))
    zeros = _verify(tmp_path, "--candidate", str(tmp_path / "Z.npz"), "--precision", "float32")
    assert zeros.exit_code == 1 and "MISMATCH" in zeros.stdout
    assert "INCONCLUSIVE" not in zeros.stdout
    good = _verify(tmp_path, "--candidate", str(tmp_path / "C.npz"), "--precision", "float32")
    assert good.exit_code == 0 and good.stdout.strip().endswith("PASS"), good.output


def test_a_mismatch_is_a_failure_even_where_another_tensor_is_inconclusive(tmp_path):
    P, U, ref = _pole0999(tmp_path)
    rep = verify(ref, {"y": onp.full(ref["y"].shape, onp.nan, F32)}, "bfloat16")
    assert rep.verdict == "FAIL" and not rep.passed and not rep.inconclusive


def test_verify_golden_reports_inconclusive_cases(tmp_path):
    cases = [c for c in golden.CASES if c.name == "lti_siso_tf_pole0999_L4096"]
    golden.write_golden(tmp_path / "g", cases=cases)
    (tmp_path / "mine").mkdir()
    ref = onp.load(tmp_path / "g" / cases[0].name / "reference.npz")
    onp.savez(tmp_path / "mine" / f"{cases[0].name}.npz", y=onp.zeros(ref["y"].shape, F32))
    res = CliRunner().invoke(main, ["verify", "--golden", str(tmp_path / "g"), "--candidates",
                                    str(tmp_path / "mine"), "--precision", "bfloat16"])
    assert res.exit_code == 1, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].split()[:2] == [cases[0].name, "INCONCLUSIVE"]
    assert "twice the reference would pass" in lines[1]
    assert lines[-1].startswith("INCONCLUSIVE: 0 of 1 cases pass at precision bfloat16, "
                                "1 inconclusive")


# ------------------------------------------------------------------ point 7
def test_precision_defaults_to_the_candidates_dtype(tmp_path):
    P, U, ref = _pole0999(tmp_path)
    onp.savez(tmp_path / "C.npz", y=_lfilter32(P, U["u"]))
    res = _verify(tmp_path, "--candidate", str(tmp_path / "C.npz"))
    assert res.exit_code == 0, res.output
    head = res.stdout.splitlines()[0]
    assert "at precision float32 (from the candidate's dtype float32; --precision overrides)" \
        in head
    rep = json.loads(_verify(tmp_path, "--candidate", str(tmp_path / "C.npz"), "--json").stdout)
    assert rep["precision"] == "float32" and rep["precision_from"].startswith("from the")
    # given explicitly, --precision wins
    assert _verify(tmp_path, "--candidate", str(tmp_path / "C.npz"), "--precision",
                   "float64").exit_code == 1


def test_float16_file_is_checked_at_float16(tmp_path):
    P, U, ref = _pole0999(tmp_path, L=64)
    onp.savez(tmp_path / "C.npz", y=ref["y"].astype(onp.float16))
    res = _verify(tmp_path, "--candidate", str(tmp_path / "C.npz"))
    assert res.exit_code == 0 and "at precision float16 (from the candidate's dtype float16" \
        in res.stdout, res.output


def test_float64_file_with_float32_errors_says_so(tmp_path):
    P, U, ref = _pole0999(tmp_path)
    onp.savez(tmp_path / "C.npz", y=_lfilter32(P, U["u"]).astype(onp.float64))
    res = _verify(tmp_path, "--candidate", str(tmp_path / "C.npz"))
    assert res.exit_code == 1
    assert res.stdout.strip().splitlines()[-1] == (
        "hint: every tensor would pass at --precision float32: the errors look like float32 "
        "rounding (a float32 computation saved as float64?); if so, verify with --precision "
        "float32")
    # a float64 candidate with a real bug gets no such hint
    onp.savez(tmp_path / "B.npz", y=ref["y"] * 1.01)
    bad = _verify(tmp_path, "--candidate", str(tmp_path / "B.npz"))
    assert bad.exit_code == 1 and "hint" not in bad.stdout
