"""`python cli.py reproduce --quick`: pipeline, schema, determinism (not accuracy)."""
import json
import os

from click.testing import CliRunner

from cli import main
from rssm_ref.experiments import LENGTHS, PAPER_TABLES


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if not k.endswith("_seconds")}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def test_reproduce_quick_schema_and_bit_identical(tmp_path):
    runner = CliRunner()
    outs = []
    for name in ("a", "b"):
        out = str(tmp_path / name)
        res = runner.invoke(main, ["reproduce", "--task", "extended", "--quick", "--out", out])
        assert res.exit_code == 0, res.output
        assert "Table 2" in res.output and "paper" in res.output
        outs.append(out)
    data = [json.load(open(os.path.join(o, "results.json"))) for o in outs]
    assert _strip_times(data[0]) == _strip_times(data[1])
    d = data[0]
    assert d["task"] == "extended" and d["lengths"] == list(LENGTHS)
    assert {r["model"] for r in d["runs"]} == {"residual", "selective"}
    for r in d["runs"]:
        assert len(r["accuracy"]) == 7 and all(0 <= a <= 100 for a in r["accuracy"])
        assert r["paper_accuracy"] == PAPER_TABLES["extended"][r["model"]]
        assert r["param_count"]["total"] > 0 and r["steps"] > 0
        assert os.path.exists(os.path.join(outs[0], r["checkpoint"]))
    assert set(d["versions"]) >= {"numpy", "scipy", "autograd", "rssm_ref"}
    assert os.path.getsize(os.path.join(outs[0], "accuracy.png")) > 1000
    assert not [f for f in os.listdir(outs[0]) if f.startswith(".tmp-")]


def test_reproduce_bad_options(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["reproduce", "--seeds", "0,x", "--quick", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "seeds" in res.output
    res = runner.invoke(main, ["reproduce", "--task", "copying"])
    assert res.exit_code == 2
