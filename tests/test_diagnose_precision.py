"""``diagnose`` passes a candidate only at the precision its dtype (or ``--precision``)
claims: a float64 file that matches only at bfloat16 is a defect, not a PASS
(docs/verify.md: the candidate's precision is read from its dtype)."""
import json

import numpy as onp
import pytest
from click.testing import CliRunner

from rssm_ref.app.cli import main
from rssm_ref.oracle import forward, mamba
from rssm_ref.oracle.diagnose import diagnose
from rssm_ref.oracle.precision import round_to

KEYS = ("y", "grad_u", "grad_A_log", "grad_x_proj.weight", "grad_dt_proj.weight")


def _case():
    P = mamba.random_params(m=4, n=3, seed=3)
    U = {"u": onp.random.default_rng(5).standard_normal((2, 12, 4))}
    ref = forward.bundle(forward.resolve_options("mamba", grads=True), P, U,
                         forward.compute("mamba", P, U, grads=True))
    out = forward.compute("mamba", P, U, grads=True)
    return ref, {k: out[k] for k in KEYS}


def _noisy(cand, rel=1e-2, seed=0):
    rng = onp.random.default_rng(seed)
    return {k: v * (1 + rel * rng.standard_normal(v.shape)) for k, v in cand.items()}


def _cli(tmp_path, ref, cand, *extra):
    onp.savez(tmp_path / "O.npz", **ref)
    onp.savez(tmp_path / "C.npz", **cand)
    res = CliRunner().invoke(main, ["diagnose", "--reference", str(tmp_path / "O.npz"),
                                    "--candidate", str(tmp_path / "C.npz"), "--json", *extra])
    return res.exit_code, json.loads(res.output)


@pytest.mark.parametrize("dtype", [onp.float64, onp.float32])
def test_one_percent_noise_fails_at_the_files_precision(tmp_path, dtype):
    ref, cand = _case()
    code, rep = _cli(tmp_path, ref, {k: v.astype(dtype) for k, v in _noisy(cand).items()})
    name = onp.dtype(dtype).name
    assert code == 1 and not rep["passed"], rep["advice"]
    assert rep["allowed_precision"] == name
    # a match, if any, is only at a coarser precision, and the message says so
    if rep["precision"] is not None:
        assert rep["precision"] in ("float16", "bfloat16")
        assert f"your {name} tensors agree only to {rep['precision']} precision" in rep["advice"]


def test_y_plus_1e2_with_exact_gradients_fails_in_float64(tmp_path):
    ref, cand = _case()
    cand = dict(cand, y=cand["y"] + 1e-2)
    code, rep = _cli(tmp_path, ref, cand)
    assert code == 1 and not rep["passed"] and rep["allowed_precision"] == "float64"


def test_bfloat16_candidate_passes_only_when_claimed(tmp_path):
    ref, cand = _case()
    bf = {k: round_to(v, "bfloat16").astype(onp.float32) for k, v in cand.items()}
    code, rep = _cli(tmp_path, ref, bf)                      # float32 file: claims float32
    assert code == 1 and rep["allowed_precision"] == "float32"
    assert rep["precision"] == "bfloat16" or rep["precision"] == "float16"
    assert "rerun with --precision" in rep["advice"]
    code, rep = _cli(tmp_path, ref, bf, "--precision", "bfloat16")
    assert code == 0 and rep["passed"] and rep["precision_from"] == "given by --precision"
    # 1 % noise on bfloat16 values claimed as bfloat16: never a PASS at a finer precision
    code, rep = _cli(tmp_path, ref, {k: v.astype(onp.float32) for k, v in
                                     _noisy({k: round_to(v, "bfloat16") for k, v in
                                             cand.items()}).items()}, "--precision", "bfloat16")
    assert rep["precision"] in (None, "bfloat16")
    assert (code == 0) == (rep["precision"] == "bfloat16")


@pytest.mark.parametrize("dtype", [onp.float64, onp.float32])
def test_exact_values_pass_at_their_precision(tmp_path, dtype):
    ref, cand = _case()
    code, rep = _cli(tmp_path, ref, {k: v.astype(dtype) for k, v in cand.items()})
    name = onp.dtype(dtype).name
    assert code == 0 and rep["passed"] and rep["allowed_precision"] == name
    assert onp.dtype(rep["precision"]).itemsize >= onp.dtype(dtype).itemsize


def test_a_wrong_convention_is_named_not_passed_as_the_references():
    P = mamba.random_params(m=4, n=3, seed=3)
    U = {"u": onp.random.default_rng(5).standard_normal((2, 12, 4))}
    ref = forward.bundle(forward.resolve_options("mamba", discretization="zoh"), P, U,
                         forward.compute("mamba", P, U, discretization="zoh"))
    y = forward.compute("mamba", P, U)["y"]               # euler: mamba_ssm's
    rep = diagnose(ref, {"y": y})
    assert rep.passed and rep.best["discretization"] == "euler"
    assert rep.rerun_flags == "--discretization euler"
    rep = diagnose(ref, _noisy({"y": y}))
    assert not rep.passed
