"""`rssm-ref explain`: trace, figures and trace files from a trained model, a reproduce
checkpoint or any params file in the oracle's format; bad input exits 2."""
import json
import os

import numpy as onp
from click.testing import CliRunner

from cli import main
from rssm_ref.training.head import ModelConfig, init_params
from rssm_ref.oracle import forward
from rssm_ref.training.train import save_checkpoint


def test_explain_residual_trace_figures_and_progress(tmp_path):
    res = CliRunner().invoke(main, ["explain", "--steps", "20", "--length", "12", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split()[:5] == ["t", "token", "y_s", "r", "s"]
    assert sum(1 for ln in lines if ln.strip().split(" ")[0].isdigit()) == 12
    for name in ("gate-induction.png", "poles-zeros-induction.png", "impulse-induction.png"):
        assert os.path.getsize(tmp_path / name) > 1000
    # training progress: on stderr (not a terminal: one line per tenth) and in the log
    assert "[train residual/seed 0] step 20/20 (100%)" in res.stderr
    assert "[train residual/seed 0] done: 20 steps" in (tmp_path / "progress.log").read_text()
    doc = json.loads((tmp_path / "trace.json").read_text())
    assert len(doc["rows"]) == 12 and doc["answer_position"] == doc["trigger_position"] + 1
    assert doc["tokens"][doc["answer_position"]] == doc["target"]


def test_explain_any_oracle_params_file_trace_recomputes(tmp_path):
    r = CliRunner()
    P = str(tmp_path / "P.npz")
    assert r.invoke(main, ["init", "--model", "residual", "--vocab", "9", "--seed", "4",
                           "--out", P]).exit_code == 0
    out = tmp_path / "ex"
    res = r.invoke(main, ["explain", "--params", P, "--length", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "oracle format" in res.stdout and "target" in res.stdout
    with onp.load(out / "trace.npz", allow_pickle=False) as z:
        T = {k: z[k] for k in z.files}
    params = {k[len("param__"):]: v for k, v in T.items() if k.startswith("param__")}
    core = {k: v for k, v in params.items() if k != "embedding"}
    # the traced u is the embedding of the traced tokens, and y is the oracle's y for it
    assert onp.array_equal(T["u"], params["embedding"][T["tokens"]])
    again = forward.compute("residual", core, {"u": T["u"][None]}, intermediates=True)
    for k in ("y", "y_s", "r", "s"):
        assert onp.array_equal(again[k][0], T[k]), k


def test_explain_state_space_params_without_embedding_uses_gaussian_u(tmp_path):
    r = CliRunner()
    P, U = str(tmp_path / "P.npz"), str(tmp_path / "U.npz")
    assert r.invoke(main, ["init", "--model", "residual", "--form", "ss", "--out", P,
                           "--inputs-out", U]).exit_code == 0
    res = r.invoke(main, ["explain", "--params", P, "--out", str(tmp_path / "a"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["sequence"].startswith("u ~ N(0, 1)") and doc["tokens"] is None
    assert doc["target"] is None and len(doc["rows"]) == 32
    assert os.path.exists(tmp_path / "a" / "gate-input.png")
    # an inputs file: its first sequence is traced
    res = r.invoke(main, ["explain", "--params", P, "--inputs", U, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    with onp.load(tmp_path / "b" / "trace.npz", allow_pickle=False) as z, \
            onp.load(U, allow_pickle=False) as u:
        assert onp.array_equal(z["u"], u["u"][0])


def test_explain_lti_params(tmp_path):
    r = CliRunner()
    P = str(tmp_path / "P.npz")
    assert r.invoke(main, ["init", "--model", "lti", "--m", "2", "--p", "2", "--out", P]).exit_code == 0
    res = r.invoke(main, ["explain", "--model", "lti", "--params", P, "--length", "8",
                          "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    assert {"poles-zeros-lti.png", "impulse-lti.png", "trace.json", "trace.npz"} <= set(
        os.listdir(tmp_path / "x"))


def test_explain_selective_from_checkpoint(tmp_path):
    cfg = ModelConfig("selective", "extended")
    p = init_params(cfg, seed=0)
    ck = str(tmp_path / "sel.npz")
    save_checkpoint(ck, p, p, p, 1, 0)
    res = CliRunner().invoke(main, ["explain", "--model", "selective", "--task", "extended",
                                    "--params", ck, "--length", "16", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "mean delta" in res.stdout and os.path.exists(tmp_path / "delta-extended.png")
    assert "reproduce checkpoint" in res.stdout


def test_explain_rejects_wrong_checkpoint_and_unused_options(tmp_path):
    cfg = ModelConfig("selective", "induction")
    p = init_params(cfg, seed=0)
    ck = str(tmp_path / "sel.npz")
    save_checkpoint(ck, p, p, p, 1, 0)
    r = CliRunner()
    res = r.invoke(main, ["explain", "--model", "residual", "--checkpoint", ck,
                          "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "do not describe a residual model" in res.output
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    res = r.invoke(main, ["explain", "--params", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    res = r.invoke(main, ["explain", "--params", ck, "--steps", "5", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--steps" in res.stderr
    res = r.invoke(main, ["explain", "--model", "selective", "--gate", "zoh"])
    assert res.exit_code == 2 and "--gate" in res.stderr
    res = r.invoke(main, ["explain", "--params", ck, "--out", str(tmp_path / "no" / "such")])
    assert res.exit_code == 2 and "parent folder" in res.stderr
    assert not os.path.exists(tmp_path / "no")
