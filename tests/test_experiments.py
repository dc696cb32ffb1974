"""`python cli.py reproduce --quick`: pipeline, schema, determinism (not accuracy)."""
import json
import os

from click.testing import CliRunner

from cli import main
from rssm_ref.experiments.reproduce import LENGTHS, PAPER_TABLES


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


def test_split_steps_counts_restarts_within_the_total():
    from rssm_ref.experiments.reproduce import split_steps
    from rssm_ref.training.train import TrainConfig
    for total in (1, 3, 4, 5, 6, 7, 100, 2000, 4999, 27000, 40000):
        for restarts in (1, 2, 4):
            cfg = TrainConfig(**split_steps(total, restarts, 1000))
            assert cfg.total_steps == total, (total, restarts)
            if restarts > 1 and cfg.restarts > 1:
                assert cfg.steps >= 2 * cfg.restart_steps
    assert split_steps(27000, 4, 1000) == {"steps": 24000, "restarts": 4, "restart_steps": 1000}


def test_reproduce_steps_is_what_runs_and_quick_is_marked(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["reproduce", "--model", "residual", "--quick", "--steps", "40",
                                    "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)                      # --json: only JSON on stdout
    assert d["quick"] is True and d["note"].startswith("SMOKE RUN")
    run = d["runs"][0]
    assert run["total_steps"] == 40 and run["train_config"]["steps"] == 40
    # progress: periodic lines on stderr (not a terminal) and the same in progress.log
    assert "[train residual/seed 0] step 40/40 (100%)" in res.stderr
    assert "[evaluate residual/seed 0] done" in res.stderr
    log = (out / "progress.log").read_text()
    assert "train residual seed 0 at L = 16: 40 steps" in log and "step 40/40" in log
    text = CliRunner().invoke(main, ["reproduce", "--model", "residual", "--quick", "--steps", "40",
                                     "--out", str(tmp_path / "run2")]).stdout
    assert text.splitlines()[1].startswith("SMOKE RUN") and "smoke run" in text
    assert "(seed 0, 40 steps)" in text and "chance level" in text


def test_reproduce_flag_vocabulary(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["reproduce", "--model", "residual", "--discretization", "euler"])
    assert res.exit_code == 2 and "--discretization: does nothing" in res.stderr
    res = r.invoke(main, ["reproduce", "--quick", "--eval-n", "10"])
    assert res.exit_code == 2 and "--eval-n" in res.stderr
    res = r.invoke(main, ["reproduce", "--model", "selective", "--selective-output", "after",
                          "--output", "before", "--quick"])
    assert res.exit_code == 2 and "disagrees with --output" in res.stderr
    # the run folder is created, its parent is not; nothing is written on refusal
    res = r.invoke(main, ["reproduce", "--quick", "--out", str(tmp_path / "a" / "b"), "--json"])
    assert res.exit_code == 2 and "parent folder" in res.stderr
    assert json.loads(res.stdout)["exit_code"] == 2 and not (tmp_path / "a").exists()


def test_reproduce_deprecated_selective_flag_still_works(tmp_path):
    res = CliRunner().invoke(main, ["reproduce", "--model", "selective", "--quick", "--steps", "2",
                                    "--selective-output", "after", "--out", str(tmp_path / "r"),
                                    "--json"])
    assert res.exit_code == 0, res.output
    assert "--selective-output is deprecated; use --output" in res.stderr
    assert json.loads(res.stdout)["runs"][0]["model_config"]["output"] == "after"
