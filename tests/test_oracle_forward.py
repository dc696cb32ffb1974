"""forward: the oracle's outputs agree with an independent float64 implementation,
across paths and forms; gradients match finite differences; files are self-describing."""
import os
import sys
from pathlib import Path

import numpy as onp
import pytest
from autograd.test_util import check_grads
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import main  # noqa: E402

from rssm_ref.oracle import formats, forward, precision, sample  # noqa: E402
from rssm_ref.tolerances import assert_close  # noqa: E402

CASES = [
    ("lti", "tf", {}), ("lti", "ss", {}),
    ("residual", "tf", {"gate": "euler"}), ("residual", "tf", {"gate": "zoh"}),
    ("residual", "ss", {"gate": "euler"}), ("residual", "ss", {"gate": "zoh"}),
    ("selective", None, {"discretization": "zoh", "output": "before"}),
    ("selective", None, {"discretization": "zoh", "output": "after"}),
    ("selective", None, {"discretization": "euler", "output": "before"}),
    ("selective", None, {"discretization": "euler", "output": "after"}),
]


def _case(model, form, seed=0, L=48):
    P = sample.init_params(model, seed=seed, form=form, m=2)
    if model == "selective":
        P["delta_bias"] = P["delta_bias"] + 1.0
    return P, sample.init_inputs(model, P, seed=seed + 1, batch=2, L=L)


@pytest.mark.parametrize("model,form,opts", CASES)
def test_oracle_agrees_with_the_independent_float64_emulation(model, form, opts):
    """The cores (fast paths, custom VJPs) against precision.py's plain loops in float64:
    two implementations written separately from the same equations."""
    P, U = _case(model, form)
    paths = ["recurrent"] if model == "selective" else ["recurrent", "fft"]
    emu = precision.emulate(model, P, U, opts, "float64", grads=True)
    for path in paths:
        out = forward.compute(model, P, U, path=path, grads=True, intermediates=True, **opts)
        assert set(out) == set(emu)
        key = "fast_vs_ref" if path == "recurrent" else "recurrent_vs_fft"
        for k in out:
            assert_close(out[k], emu[k], key, what=f"{model}/{form}/{path}/{k}")


def test_tokens_equal_embedded_inputs_and_embedding_gradient():
    P = sample.init_params("residual", seed=3, form="tf", m=2, vocab=6)
    U = sample.init_inputs("residual", P, seed=4, batch=2, L=30, tokens=True)
    out = forward.compute("residual", P, U, grads=True)
    u = P["embedding"][U["tokens"]]
    Pn = {k: v for k, v in P.items() if k != "embedding"}
    ref = forward.compute("residual", Pn, {"u": u, "dy": U["dy"]}, grads=True)
    assert_close(out["y"], ref["y"], "fast_vs_ref")
    assert_close(out["grad_u"], ref["grad_u"], "fast_vs_ref")
    # d/dE sum(y*dy) by finite differences on one embedding entry
    eps = 1e-6
    for (row, col) in [(U["tokens"][0, 0], 0), (U["tokens"][1, 5], 1)]:
        Pp, Pm = dict(P), dict(P)
        Pp["embedding"] = P["embedding"].copy(); Pp["embedding"][row, col] += eps
        Pm["embedding"] = P["embedding"].copy(); Pm["embedding"][row, col] -= eps
        fd = (onp.sum(forward.compute("residual", Pp, U)["y"] * U["dy"])
              - onp.sum(forward.compute("residual", Pm, U)["y"] * U["dy"])) / (2 * eps)
        assert abs(fd - out["grad_embedding"][row, col]) <= 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("model,form", [("lti", "tf"), ("residual", "ss"), ("selective", None)])
def test_forward_gradients_pass_check_grads(model, form):
    P, U = _case(model, form, L=12)
    key = sorted(k for k in P if k != "embedding")[0]
    opts = forward.resolve_options(model)
    fn = forward._model_call(model, opts, next(iter(formats.param_form(model, P).values())))
    check_grads(lambda x: fn(dict(P, **{key: x}), U["u"])[0], modes=["rev"], order=1)(P[key])
    check_grads(lambda u: fn(P, u)[0], modes=["rev"], order=1)(U["u"])


def test_dy_defaults_to_ones_and_is_embedded(tmp_path):
    P, U = _case("lti", "tf", L=10)
    U.pop("dy")
    onp.savez(tmp_path / "P.npz", **P)
    onp.savez(tmp_path / "U.npz", **U)
    forward.run_forward(forward.ForwardConfig("lti", grads=True), tmp_path / "P.npz",
                        tmp_path / "U.npz", tmp_path / "O.npz")
    out = formats.load_npz(tmp_path / "O.npz")
    assert onp.array_equal(out["input__dy"], onp.ones(out["y"].shape))
    ones = forward.compute("lti", P, dict(U, dy=onp.ones(out["y"].shape)), grads=True)
    assert onp.array_equal(out["grad_num"], ones["grad_num"])


@pytest.mark.parametrize("model", ["lti", "residual", "selective"])
def test_cli_init_then_forward_writes_a_self_describing_file(tmp_path, model):
    r = CliRunner()
    res = r.invoke(main, ["init", "--model", model, "--seed", "3", "--out", str(tmp_path / "P.npz"),
                          "--inputs-out", str(tmp_path / "U.npz"), "--length", "20"])
    assert res.exit_code == 0, res.output
    inter = ["--intermediates"] if model != "lti" else []   # lti has none: refused below
    res = r.invoke(main, ["forward", "--model", model, "--params", str(tmp_path / "P.npz"),
                          "--inputs", str(tmp_path / "U.npz"), "--out", str(tmp_path / "O.npz"),
                          "--grads"] + inter)
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path)) == ["O.npz", "P.npz", "U.npz"]
    with onp.load(tmp_path / "O.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    opts, P, U, outs = formats.check_reference(arrays, "O.npz")
    assert opts["model"] == model and opts["grads"] and opts["intermediates"] == bool(inter)
    assert set(outs) == formats.allowed_output_keys(model, P)
    # the embedded copy recomputes the file exactly
    again = forward.compute_checked(model, P, U, opts)
    assert all(onp.array_equal(again[k], outs[k]) for k in outs)


def test_options_reach_the_model():
    P, U = _case("selective", None)
    a = forward.compute("selective", P, U, output="before")["y"]
    b = forward.compute("selective", P, U, output="after")["y"]
    assert onp.max(onp.abs(a - b)) > 1e-3 * onp.max(onp.abs(a))
    P, U = _case("residual", "tf")
    a = forward.compute("residual", P, U, gate="euler")["y"]
    b = forward.compute("residual", P, U, gate="zoh")["y"]
    assert onp.max(onp.abs(a - b)) > 1e-3 * onp.max(onp.abs(a))


def test_examples_shipped_in_the_repo_run(tmp_path):
    root = Path(__file__).resolve().parents[1] / "examples"
    for model in ("lti", "residual", "selective"):
        res = CliRunner().invoke(main, ["forward", "--model", model, "--params",
                                        str(root / f"{model}_params.npz"), "--inputs",
                                        str(root / f"{model}_inputs.npz"), "--out",
                                        str(tmp_path / f"{model}.npz"), "--grads"])
        assert res.exit_code == 0, res.output


def test_allow_unstable_runs_the_recurrence(tmp_path):
    P = {"num": onp.array([[[1.0, 0.0]]]), "den": onp.array([[1.0, -1.1]])}   # pole 1.1
    U = {"u": onp.zeros((1, 20, 1))}
    U["u"][0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="modulus 1.1"):
        forward.compute("lti", P, U)
    y = forward.compute("lti", P, U, allow_unstable=True)["y"][0, :, 0]
    assert onp.allclose(y, 1.1 ** onp.arange(20), rtol=1e-13)
