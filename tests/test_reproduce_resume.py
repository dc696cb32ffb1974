"""``reproduce --resume`` never continues or evaluates another run's
model, and each task has its own default run folder."""
import json
import os

import numpy as onp
from click.testing import CliRunner

from rssm_ref.app.cli import main
from rssm_ref.experiments.reproduce import read_run_config
from rssm_ref.training.train import save_checkpoint

TINY = ["--steps", "2", "--eval-n", "1"]


def _run(*args):
    return CliRunner().invoke(main, ["reproduce", *TINY, *args])


def _bytes(folder):
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


def _one_error_line(res):
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output
    return lines[0]


def test_checkpoint_stores_the_whole_run_config(tmp_path):
    out = str(tmp_path / "run")
    assert _run("--model", "residual", "--gate", "zoh", "--out", out).exit_code == 0
    rc = read_run_config(os.path.join(out, "residual-seed0.npz"))
    assert rc["task"] == "induction" and rc["model"] == "residual" and rc["gate"] == "zoh"
    assert rc["seed"] == 0 and rc["L"] == 16 and rc["lr"] == 0.02
    assert "discretization" not in rc            # a selective convention: not this model's
    assert oct(os.stat(os.path.join(out, "residual-seed0.npz")).st_mode & 0o777) == \
        oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_resume_refuses_a_checkpoint_of_another_task(tmp_path):
    out = str(tmp_path / "run")
    assert _run("--model", "selective", "--task", "induction", "--out", out).exit_code == 0
    before = _bytes(out)
    res = _run("--model", "selective", "--task", "extended", "--resume", "--out", out)
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert line.startswith(f"error: --resume: {out}/selective-seed0.npz was trained with task = "
                           "'induction', this run asks for task = 'extended' (--task)")
    assert _bytes(out) == before                  # results.json still says induction
    assert json.load(open(os.path.join(out, "results.json")))["task"] == "induction"


def test_resume_refuses_another_gate_and_another_recipe(tmp_path):
    out = str(tmp_path / "run")
    assert _run("--model", "residual", "--out", out).exit_code == 0
    before = _bytes(out)
    res = _run("--model", "residual", "--gate", "zoh", "--resume", "--out", out)
    assert res.exit_code == 2
    assert "gate = 'euler', this run asks for gate = 'zoh' (--gate)" in _one_error_line(res)
    res = CliRunner().invoke(main, ["reproduce", "--steps", "3", "--eval-n", "1", "--model",
                                    "residual", "--resume", "--out", out])
    assert res.exit_code == 2 and "(--steps)" in _one_error_line(res)
    assert _bytes(out) == before
    # the same run resumes (here: already trained, evaluated again)
    ok = _run("--model", "residual", "--resume", "--out", out)
    assert ok.exit_code == 0, ok.output


def test_resume_refuses_a_checkpoint_without_run_config(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    p = {"A_log": onp.zeros((2, 2))}
    save_checkpoint(str(out / "selective-seed0.npz"), p, p, p, 5, 0)     # as older versions
    res = _run("--model", "selective", "--resume", "--out", str(out))
    assert res.exit_code == 2 and "holds no run config" in _one_error_line(res)


def test_each_task_has_its_own_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _run("--model", "selective", "--task", "induction").exit_code == 0
    induction = _bytes("results-induction")
    res = _run("--model", "selective", "--task", "extended")
    assert res.exit_code == 0, res.output
    assert "wrote results-extended/results.json" in res.stdout
    assert _bytes("results-induction") == induction
    assert json.load(open("results-extended/results.json"))["task"] == "extended"


def test_another_task_into_the_same_folder_is_refused(tmp_path):
    out = str(tmp_path / "run")
    assert _run("--model", "selective", "--out", out).exit_code == 0
    before = _bytes(out)
    res = _run("--model", "selective", "--task", "extended", "--out", out)
    assert res.exit_code == 2
    assert _one_error_line(res).startswith(
        f"error: --task: {out} holds a run of the induction task")
    assert _bytes(out) == before


def test_workers_give_bit_identical_results(tmp_path):
    """--workers 2 trains and evaluates each (model, seed) in its own process: the same
    checkpoints byte for byte and the same results.json but for the timings."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--steps", "40", "--eval-n", "20", "--seeds", "0,1"]
    r1 = CliRunner().invoke(main, ["reproduce", *args, "--workers", "1", "--out", str(one), "--json"])
    r2 = CliRunner().invoke(main, ["reproduce", *args, "--workers", "2", "--out", str(two), "--json"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    assert "4 runs in 2 processes" in r2.stderr and "processes" not in r1.stderr
    npz = sorted(f for f in os.listdir(one) if f.endswith(".npz"))
    assert len(npz) == 4 and npz == sorted(f for f in os.listdir(two) if f.endswith(".npz"))
    for f in npz:
        assert open(one / f, "rb").read() == open(two / f, "rb").read(), f

    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if not k.endswith("_seconds")}
        return [strip(v) for v in d] if isinstance(d, list) else d
    assert strip(json.loads(r1.stdout)) == strip(json.loads(r2.stdout))
    # every run's progress reached the log, from the workers too
    log = open(two / "progress.log").read()
    for run in ("residual/seed 0", "residual/seed 1", "selective/seed 0", "selective/seed 1"):
        assert f"[train {run}] done" in log and f"[evaluate {run}] done" in log
    bad = _run("--workers", "-1", "--out", str(tmp_path / "bad"))
    assert bad.exit_code == 2 and "--workers" in _one_error_line(bad)
    assert not os.path.exists(tmp_path / "bad")
