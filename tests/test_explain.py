"""`python cli.py explain`: trace and figures from a model; bad checkpoints exit 2."""
import os

from click.testing import CliRunner

from cli import main
from rssm_ref.models import ModelConfig, init_params
from rssm_ref.train import save_checkpoint


def test_explain_residual_trace_and_figures(tmp_path):
    res = CliRunner().invoke(main, ["explain", "--steps", "20", "--length", "12", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:5] == ["t", "token", "y_s", "r", "s"]
    assert sum(1 for ln in lines if ln.strip().split(" ")[0].isdigit()) == 12
    for name in ("gate-induction.png", "poles-zeros-induction.png", "impulse-induction.png"):
        assert os.path.getsize(tmp_path / name) > 1000


def test_explain_selective_from_checkpoint(tmp_path):
    cfg = ModelConfig("selective", "extended")
    p = init_params(cfg, seed=0)
    ck = str(tmp_path / "sel.npz")
    save_checkpoint(ck, p, p, p, 1, 0)
    res = CliRunner().invoke(main, ["explain", "--model", "selective", "--task", "extended",
                                    "--checkpoint", ck, "--length", "16", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "mean delta" in res.output and os.path.exists(tmp_path / "delta-extended.png")


def test_explain_rejects_wrong_checkpoint(tmp_path):
    cfg = ModelConfig("selective", "induction")
    p = init_params(cfg, seed=0)
    ck = str(tmp_path / "sel.npz")
    save_checkpoint(ck, p, p, p, 1, 0)
    res = CliRunner().invoke(main, ["explain", "--model", "residual", "--checkpoint", ck])
    assert res.exit_code == 2 and "do not describe a residual model" in res.output
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    res = CliRunner().invoke(main, ["explain", "--checkpoint", str(bad)])
    assert res.exit_code == 2 and "Traceback" not in res.output
