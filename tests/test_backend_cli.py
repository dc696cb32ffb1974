"""`--backend` on the commands that compute, through click's CliRunner.

Without CuPy, array_api_strict stands in for a second array module: the same neutral
code, so a file computed there must pass `verify` against the NumPy reference at float64.
"""
import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import main  # noqa: E402

from rssm_ref.xp import backend as B  # noqa: E402
from rssm_ref.oracle import formats  # noqa: E402

strict = pytest.mark.skipif("array_api_strict" not in B.available_backends(),
                            reason="array_api_strict not installed (pip install '.[test]')")
no_cupy = pytest.mark.skipif("cupy" in B.available_backends(), reason="CuPy is available here")


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _init(tmp_path, model, *extra):
    P, U = tmp_path / f"{model}-p.npz", tmp_path / f"{model}-u.npz"
    res = _invoke("init", "--model", model, "--seed", 3, "--out", P, "--inputs-out", U,
                  "--length", 48, *extra)
    assert res.exit_code == 0, res.output
    return P, U


@strict
@pytest.mark.parametrize("model, init_extra, fwd_extra", [
    ("lti", ("--form", "ss", "--m", 2, "--p", 3), ("--path", "recurrent")),
    ("lti", ("--form", "tf", "--m", 2, "--p", 2), ("--path", "fft")),
    ("residual", ("--form", "tf", "--vocab", 5, "--tokens"), ("--path", "fft", "--gate", "zoh")),
    ("residual", ("--form", "ss",), ("--path", "recurrent",)),
    ("selective", ("--m", 3, "--n", 2), ("--discretization", "euler", "--output", "after")),
])
def test_forward_on_strict_backend_verifies_against_numpy(tmp_path, model, init_extra, fwd_extra):
    P, U = _init(tmp_path, model, *init_extra)
    ref, cand = tmp_path / "ref.npz", tmp_path / "cand.npz"
    inter = ("--intermediates",) if model != "lti" else ()     # lti has none (refused)
    common = ("forward", "--model", model, "--params", P, "--inputs", U, "--grads") + inter
    res = _invoke(*common, "--out", ref, *fwd_extra)
    assert res.exit_code == 0, res.output
    res = _invoke(*common, "--out", cand, *fwd_extra, "--backend", "array_api_strict")
    assert res.exit_code == 0, res.output
    assert "backend array_api_strict" in res.output
    opts = formats.decode_options(formats.load_npz(cand, "cand")[formats.OPTIONS_KEY], "cand")
    assert opts["backend"] == "array_api_strict"
    res = _invoke("verify", "--reference", ref, "--candidate", cand, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["passed"] is True


@strict
def test_env_var_selects_the_backend(tmp_path, monkeypatch):
    P, U = _init(tmp_path, "lti")
    monkeypatch.setenv(B.ENV_VAR, "array_api_strict")
    res = _invoke("forward", "--model", "lti", "--params", P, "--inputs", U, "--out", tmp_path / "o.npz")
    assert res.exit_code == 0 and "backend array_api_strict" in res.output, res.output


@no_cupy
def test_cupy_without_cupy_exits_2_and_writes_nothing(tmp_path):
    P, U = _init(tmp_path, "lti")
    out = tmp_path / "o.npz"
    res = _invoke("forward", "--model", "lti", "--params", P, "--inputs", U, "--out", out,
                  "--backend", "cupy")
    assert res.exit_code == 2
    assert "backend 'cupy'" in res.output and "Traceback" not in res.output
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    res = _invoke("bench", "--quick", "--backend", "cupy")
    assert res.exit_code == 2 and "backend 'cupy'" in res.output


def test_bad_env_var_is_one_clear_line(tmp_path, monkeypatch):
    P, U = _init(tmp_path, "lti")
    monkeypatch.setenv(B.ENV_VAR, "tpu")
    res = _invoke("forward", "--model", "lti", "--params", P, "--inputs", U, "--out", tmp_path / "o.npz")
    assert res.exit_code == 2 and "RSSM_REF_BACKEND='tpu'" in res.output


@strict
def test_golden_check_on_strict_backend(tmp_path):
    d = tmp_path / "suite"
    assert _invoke("golden", "--out", d).exit_code == 0
    res = _invoke("golden", "--check", d, "--backend", "array_api_strict", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    # the Mamba-1 and Mamba-2 layers have no array-API twin: recomputed on NumPy, and the
    # report says so
    assert rep["backend"] == "array_api_strict"
    layers = ("mamba_block", "mamba2_block")
    assert rep["numpy_only"] == [c for c in rep["errors"] if c.startswith(layers)]
    assert len(rep["numpy_only"]) == 3
    res = _invoke("golden", "--out", tmp_path / "other", "--backend", "array_api_strict")
    assert res.exit_code == 2 and "--check" in res.output


@strict
def test_bench_backend_figure(tmp_path):
    from rssm_ref.app.bench import run_bench
    row = run_bench(quick=True, only=("backend_forward",), backend="array_api_strict",
                    backend_size=(2, 256))[0]
    assert row["detail"]["backend"] == "array_api_strict" and row["detail"]["L"] == 256
    assert row["detail"]["rel_err_vs_reference"] <= 1e-12
    assert _invoke("bench", "--quick", "--backend-size", "10y3").exit_code == 2


@strict
def test_reproduce_quick_evaluates_on_the_backend(tmp_path):
    accs = {}
    for backend in ("numpy", "array_api_strict"):
        out = tmp_path / backend
        res = _invoke("reproduce", "--model", "residual", "--quick", "--out", out, "--backend", backend)
        assert res.exit_code == 0, res.output
        run = json.load(open(out / "results.json"))["runs"][0]
        assert run["eval_backend"] == backend
        accs[backend] = run["accuracy"]
    assert accs["numpy"] == accs["array_api_strict"]


def test_bench_only_runs_the_named_figures(tmp_path):
    out = tmp_path / "b.json"
    res = _invoke("bench", "--quick", "--only", "backend_forward", "--backend-size", "2x128",
                  "--json-out", out)
    assert res.exit_code == 0, res.output
    rows = json.load(open(out))["rows"]
    assert [r["figure"] for r in rows] == ["backend_forward"]
    assert rows[0]["detail"]["rel_err_vs_reference"] <= 1e-12
    assert _invoke("bench", "--only", "nope").exit_code == 2
