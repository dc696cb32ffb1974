"""`python cli.py experiment NAME --quick`: pipeline and results.json schema of
each experiment (not their accuracies), the leak prediction, and the extended task's
construction at long L."""
import json
import math
import os
import shutil

import numpy as onp
import pytest
from click.testing import CliRunner

from cli import main
from rssm_ref.experiments.common import LEAK_STREAM, SCHEMA, ExperimentConfig
from rssm_ref.experiments.lengths import leak_statistics, measure_leak, predict_accuracy
from rssm_ref.experiments.nu_sweep import nu_answer
from rssm_ref.gate import gate as gate_scan
from rssm_ref.training.head import ModelConfig, init_params
from rssm_ref.training.tasks import (DEFAULT_TRIGGER, count_occurrences, extended_induction_head,
                            extended_method)
from rssm_ref.tolerances import assert_close

COMMON = {"schema", "experiment", "title", "quick", "note", "seeds", "steps", "paper_exact",
          "settings", "runs", "table", "figure", "versions", "wall_seconds"}
RUN_KEYS = {"task", "model", "seed", "model_config", "lengths", "accuracy", "eval_sequences",
            "generator", "param_count", "total_steps", "checkpoint", "train_seconds",
            "eval_seconds"}


def _run(args):
    res = CliRunner().invoke(main, ["experiment", *args])
    assert res.exit_code == 0, res.output
    return res


def _load(out):
    with open(os.path.join(out, "results.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _check_common(d, out, name):
    assert COMMON <= set(d), COMMON - set(d)
    assert d["schema"] == SCHEMA and d["experiment"] == name
    assert d["quick"] is True and d["note"].startswith("SMOKE RUN") and d["seeds"] == [0]
    png = os.path.join(out, d["figure"])
    assert d["figure"] == f"{name}.png"
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"           # a PNG, written whole
    assert os.path.getsize(png) > 5000
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    assert f"experiment {name}" in open(os.path.join(out, "progress.log")).read()


def _check_run(r):
    assert RUN_KEYS <= set(r), RUN_KEYS - set(r)
    assert len(r["accuracy"]) == len(r["lengths"]) == len(r["generator"])
    assert all(0.0 <= a <= 100.0 for a in r["accuracy"])
    assert r["param_count"]["total"] > 0 and os.path.isfile(r["checkpoint"])


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not k.endswith("_seconds")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def window_out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("beyond") / "results-window")
    res = _run(["window", "--quick", "--steps", "4", "--out", out])
    return out, res


# ------------------------------------------------------------------ the five experiments
def test_lengths_quick_trains_absent_checkpoints_and_predicts(tmp_path):
    out = str(tmp_path / "L")
    res = _run(["lengths", "--quick", "--steps", "8", "--out", out,
                "--checkpoints", str(tmp_path / "none-{task}")])
    assert "SMOKE RUN" in res.stdout and "  leak law" in res.stdout
    d = _load(out)
    _check_common(d, out, "lengths")
    assert d["settings"]["lengths"] == [2048, 16384]
    assert len(d["runs"]) == 2                                   # 2 tasks x seed 0
    for r in d["runs"]:
        _check_run(r)
        assert r["eval_sequences"] == 20 and r["total_steps"] == 8
        assert r["checkpoint"] == os.path.join(out, f"train-{r['task']}", "residual-seed0.npz")
        # 20 traced sequences of 1024 reach 2048, not 16384 (a quarter of their ~2e4 steps)
        a2048, a16384 = r["predicted_accuracy"]
        assert 0.0 <= a2048 <= 100.0 and a16384 is None
        leak = r["leak"]
        assert leak["leak_per_step"] > 0 and leak["L"] == 1024 and leak["n"] == 20
        assert len(leak["store"]) == r["model_config"]["n_tokens"]
        assert math.isclose(sum(leak["answer_weights"]), 1.0)
    gens = {r["task"]: r["generator"] for r in d["runs"]}
    assert gens == {"induction": ["construct", "construct"],
                    "extended": ["reject", "resample"]}    # 16384: rejection is infeasible
    for task in ("induction", "extended"):
        t = d["table"][task]
        assert len(t["mean"]) == len(t["predicted"]) == 2 and t["seeds"] == [0]
        c = d["prediction_curve"][task]
        assert c["lengths"][0] == 16 and len(c["predicted"]) == len(c["lengths"])
    assert set(d["answer"]["first_below_target"]) == {"induction", "extended"}


def test_lengths_evaluates_reproduce_checkpoints_and_refuses_wrong_ones(tmp_path):
    for task in ("induction", "extended"):
        r = CliRunner().invoke(main, ["reproduce", "--model", "residual", "--task", task,
                                      "--steps", "3", "--eval-n", "1",
                                      "--out", str(tmp_path / f"results-{task}")])
        assert r.exit_code == 0, r.output
    tmpl = str(tmp_path / "results-{task}")
    out = str(tmp_path / "L")
    _run(["lengths", "--quick", "--checkpoints", tmpl, "--out", out])
    d = _load(out)
    assert {r["checkpoint"] for r in d["runs"]} == {
        str(tmp_path / f"results-{t}" / "residual-seed0.npz") for t in ("induction", "extended")}
    assert {r["total_steps"] for r in d["runs"]} == {3}
    assert not [f for f in os.listdir(out) if f.startswith("train-")]     # nothing trained
    # --out onto a checkpoint folder would overwrite reproduce's results.json
    bad = CliRunner().invoke(main, ["experiment", "lengths", "--quick", "--checkpoints", tmpl,
                                    "--out", str(tmp_path / "results-induction")])
    assert bad.exit_code == 2 and "--out" in bad.stderr and "--checkpoints" in bad.stderr
    # an extended model where the induction one is expected
    shutil.copy(tmp_path / "results-extended" / "residual-seed0.npz",
                tmp_path / "results-induction" / "residual-seed0.npz")
    bad = CliRunner().invoke(main, ["experiment", "lengths", "--quick", "--checkpoints", tmpl,
                                    "--out", str(tmp_path / "L2")])
    assert bad.exit_code == 2 and "extended task" in bad.stderr
    assert "Traceback" not in bad.output and not os.path.exists(tmp_path / "L2")


def test_nu_sweep_quick_schema_answer_and_reuse(tmp_path):
    out = str(tmp_path / "nu")
    first = _run(["nu_sweep", "--quick", "--steps", "6", "--out", out, "--json"])
    d = json.loads(first.stdout)                              # --json: only JSON on stdout
    _check_common(d, out, "nu_sweep")
    t = d["table"]
    assert t["nu_r"] == [1, 4] and t["n_trig"] == [1, 4] and t["lengths"] == [16, 64]
    assert onp.array(t["mean"]).shape == (2, 2, 2)
    assert ((onp.array(t["min"]) >= 0) & (onp.array(t["max"]) <= 100)).all()
    for r in d["runs"]:
        _check_run(r)
    cells = {(r["model_config"]["nu_r"], r["model_config"]["n_trig"]) for r in d["runs"]}
    assert cells == {(1, 1), (4, 1), (1, 4), (4, 4)}
    assert [r["generator"] for r in d["runs"] if r["model_config"]["n_trig"] == 1][0] == \
        ["reject", "resample"]                                # N_trig = 1 at L = 64
    a = d["answer"]
    assert a["criterion"] == "solves: mean accuracy >= 99 % at L = 16"
    assert len(a["smallest_nu_r"]) == len(a["equals_n_trig"]) == 2
    mean16 = onp.array(t["mean"])[:, :, 0]
    assert a == {**nu_answer(mean16, t["nu_r"], t["n_trig"]), "at_length": 16}
    # the same command again: every checkpoint reused, the same results
    again = _run(["nu_sweep", "--quick", "--steps", "6", "--out", out, "--json"])
    assert again.stderr.count("not trained again") == 4
    assert _strip(json.loads(again.stdout)) == _strip(d)
    # another recipe into the same folder is refused, naming the field
    bad = CliRunner().invoke(main, ["experiment", "nu_sweep", "--quick", "--steps", "5",
                                    "--out", out])
    assert bad.exit_code == 2 and "steps = 6" in bad.stderr and "--out" in bad.stderr


def test_nu_sweep_workers_give_the_same_numbers_and_resume(tmp_path):
    """--workers 2 trains in two processes: the same accuracies and bit-identical
    checkpoints as one process; a sweep stopped half-way continues from its checkpoints."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    d1 = json.loads(_run(["nu_sweep", "--quick", "--steps", "30", "--out", one, "--json"]).stdout)
    d2 = json.loads(_run(["nu_sweep", "--quick", "--steps", "30", "--out", two, "--workers", "2",
                          "--json"]).stdout)
    assert _strip(d1)["table"] == _strip(d2)["table"]
    for r1, r2 in zip(d1["runs"], d2["runs"]):
        with onp.load(r1["checkpoint"]) as a, onp.load(r2["checkpoint"]) as b:
            assert set(a.files) == set(b.files)
            for k in a.files:
                assert onp.array_equal(a[k], b[k]), k
    # a "killed" sweep: one training never finished (its checkpoint gone)
    three = str(tmp_path / "three")
    shutil.copytree(two, three)
    names = sorted(f for f in os.listdir(three) if f.endswith(".npz"))
    os.remove(os.path.join(three, names[0]))
    res = _run(["nu_sweep", "--quick", "--steps", "30", "--out", three, "--workers", "2",
                "--json"])
    assert "train 1 of 4 runs in 2 processes (3 already trained)" in res.stderr
    assert _strip(json.loads(res.stdout))["table"] == _strip(d1)["table"]
    bad = CliRunner().invoke(main, ["experiment", "lengths", "--quick", "--workers", "2",
                                    "--out", str(tmp_path / "L")])
    assert bad.exit_code == 2 and "--workers" in bad.stderr and "nu_sweep and window" in bad.stderr
    bad = CliRunner().invoke(main, ["experiment", "nu_sweep", "--quick", "--workers", "0",
                                    "--out", str(tmp_path / "z")])
    assert bad.exit_code == 2 and "--workers" in bad.stderr
    assert not os.path.exists(tmp_path / "z")


def test_window_quick_schema(window_out):
    out, res = window_out
    assert "window w" in res.stdout and "answer:" in res.stdout
    d = _load(out)
    _check_common(d, out, "window")
    t = d["table"]
    assert t["windows"] == [1, 4] and t["lengths"] == [16, 64]
    assert onp.array(t["mean"]).shape == (2, 2) and t["paper_selective"] == [69, 22]
    for r in d["runs"]:
        _check_run(r)
        assert r["model"] == "selective"
    assert {r["model_config"]["window"] for r in d["runs"]} == {1, 4}
    w4 = [r for r in d["runs"] if r["model_config"]["window"] == 4][0]
    w1 = [r for r in d["runs"] if r["model_config"]["window"] == 1][0]
    assert w4["param_count"]["total"] == w1["param_count"]["total"] + 4 * 16   # the kernel
    assert d["answer"]["n_trig"] == 4 and len(d["answer"]["lifted"]) == 2


def test_zoh_gate_quick_schema_and_write_bound(tmp_path):
    out = str(tmp_path / "zoh")
    _run(["zoh_gate", "--quick", "--steps", "6", "--out", out])
    d = _load(out)
    _check_common(d, out, "zoh_gate")
    t = d["table"]
    assert t["lengths"] == [16, 32, 64, 128, 256, 512, 1024]
    for task in ("induction", "extended"):
        for gate in ("euler", "zoh"):
            g = t[task][gate]
            assert len(g["mean"]) == 7 and all(0 <= v <= 100 for v in g["mean"])
            assert os.path.isfile(os.path.join(out, f"{task}-{gate}", "residual-seed0.npz"))
        # Remark 3.1: with s in (0, 1) one ZOH step writes less than 1 - e^-1 of y_s
        assert all(0 < f < 1 - math.exp(-1) for f in t[task]["zoh"]["store_fraction"])
    assert {(r["task"], r["model_config"]["gate"]) for r in d["runs"]} == {
        (a, b) for a in ("induction", "extended") for b in ("euler", "zoh")}
    for r in d["runs"]:
        _check_run(r)
    assert d["answer"]["zoh_max_write"] == pytest.approx(1 - math.exp(-1), rel=1e-15)


def test_cost_quick_joins_accuracies(window_out, tmp_path):
    win, _ = window_out
    out = str(tmp_path / "cost")
    res = _run(["cost", "--quick", "--out", out,
                "--results-from", os.path.join(os.path.dirname(win), "results-{name}")])
    assert "ms/step" in res.stdout
    d = _load(out)
    _check_common(d, out, "cost")
    rows = d["table"]["rows"]
    labels = [r["label"] for r in rows]
    assert len(labels) == len(set(labels))
    for r in rows:
        assert r["per_step_seconds"] > 0 and r["param_count"]["total"] > 0
        assert r["train_estimate_seconds"] == pytest.approx(
            r["per_step_seconds"] * r["recipe_total_steps"], abs=0.06)
    by = {r["label"]: r for r in rows}
    # window = 1 is the paper's Selective SSM: one row, both experiments
    assert by["selective extended (paper's)"]["experiments"] == ["tables", "window"]
    w4 = by["selective window=4"]
    win_d = _load(win)
    assert set(w4["accuracy"]) == {"16", "64"} and w4["accuracy_quick"] is True
    assert w4["accuracy_total_steps"] == [4]
    mine = [r for r in win_d["runs"] if r["model_config"]["window"] == 4][0]
    assert w4["accuracy"]["16"] == pytest.approx(mine["accuracy"][0])
    assert by["residual nu_r=1 N_trig=1"]["accuracy"] is None            # not run here


def test_experiment_bad_input_exits_2_with_one_line(tmp_path):
    runner = CliRunner()
    cases = [(["nope"], "NAME"), (["window", "--seeds", "0,x"], "--seeds"),
             (["window", "--steps", "-1"], "--steps"), (["cost", "--eval-n", "5"], "--eval-n"),
             (["window", "--checkpoints", "a-{task}"], "--checkpoints"),
             (["lengths", "--checkpoints", "runs"], "--checkpoints"),
             (["nu_sweep", "--results-from", "x-{name}"], "--results-from"),
             (["window", "--quick", "--out", str(tmp_path / "no" / "x")], "--out")]
    for args, flag in cases:
        res = runner.invoke(main, ["experiment", *args])
        assert res.exit_code == 2, (args, res.output)
        assert flag in res.stderr and "Traceback" not in res.output
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    f = tmp_path / "file"
    f.write_text("x")
    res = runner.invoke(main, ["experiment", "window", "--quick", "--out", str(f)])
    assert res.exit_code == 2 and "--out" in res.stderr and f.read_text() == "x"


def test_config_defaults():
    c = ExperimentConfig("lengths")
    assert c.seeds == (0, 1, 2) and c.lengths == (2048, 4096, 16384, 65536) and c.eval_n == 1000
    assert ExperimentConfig("nu_sweep").nu_rs == (1, 2, 3, 4, 6, 8)
    assert ExperimentConfig("nu_sweep").n_trigs == (1, 2, 3, 4, 6)
    assert ExperimentConfig("window").windows == (1, 2, 4, 8)
    assert ExperimentConfig("zoh-gate", seeds=(3,)).seeds == (3,)


# ------------------------------------------------------------------ the leak prediction
def _two_class(lam):
    return {"leak_per_step": lam, "store": [[1.0, 0.0], [0.0, 1.0]],
            "answer_weights": [0.5, 0.5], "mu": [1.0, 0.0], "final_a": 1.0,
            "final_b": [0.0, 0.0], "n_trig": 1}


def test_predict_accuracy_counts_the_surviving_holds():
    # answer 1 survives d holding steps iff e^{-lam d} > 1/2; d uniform on 0..L-3
    lam = math.log(2) / 37.5
    ident = lambda y: y
    for L in (3, 20, 40, 41, 100, 1000, 65536):
        D = L - 3
        survive = sum(1 for d in range(D + 1) if math.exp(-lam * d) > 0.5)
        assert predict_accuracy(_two_class(lam), L, ident) == pytest.approx(
            100 * (0.5 + 0.5 * survive / (D + 1)), abs=1e-9), L
    assert predict_accuracy(_two_class(0.0), 65536, ident) == 100.0       # no leak
    # an unseen answer (weight 0) does not count; the longer the sequence the lower
    lk = dict(_two_class(lam), answer_weights=[0.0, 1.0])
    accs = [predict_accuracy(lk, L, ident) for L in (16, 64, 256, 1024)]
    assert accs == sorted(accs, reverse=True) and accs[0] == 100.0 and accs[-1] < 10.0


def test_leak_statistics_of_a_constant_gate_are_exact():
    """Constant gate s = σ(c) and y_s = 1: every statistic has a closed form."""
    L, k, c = 40, 2, -3.0
    p = onp.array([3, 10, 20])
    targets = onp.array([0, 2, 2])
    pre = onp.full((3, L), c)
    y_s = onp.ones((3, L, 2))
    for gate, a in (("euler", 1 - 1 / (1 + math.exp(-c))),
                    ("zoh", math.exp(-1 / (1 + math.exp(-c))))):
        s = onp.full((3, L), 1 / (1 + math.exp(-c)))
        y = gate_scan(y_s, s, mode=gate)                   # y(t+1) = 1 - a^{t+1}
        st = leak_statistics(y, y_s, pre, p, targets, k, gate, n_answers=3)
        assert_close(st["leak_per_step"], -math.log(a), "fast_vs_ref")
        assert st["hold_steps"] == sum(L - k - 1 - (q + k) for q in p)
        assert st["store"][1] is None and st["answer_weights"] == pytest.approx([1 / 3, 0, 2 / 3])
        assert_close(st["store"][0], [1 - a ** (p[0] + k + 1)] * 2, "fast_vs_ref")
        want2 = onp.mean([1 - a ** (q + k + 1) for q in p[1:]])
        assert_close(st["store"][2], [want2] * 2, "fast_vs_ref")
        assert_close(st["mu"], [1.0, 1.0], "fast_vs_ref")
        assert_close(st["final_a"], a ** k, "fast_vs_ref")
        assert_close(st["final_b"], [1 - a ** k] * 2, "fast_vs_ref")
        assert_close(st["store_fraction"], 1 - a, "fast_vs_ref")


def test_measure_leak_on_a_model_with_a_constant_gate():
    cfg = ModelConfig("residual", "extended", gate_bias=True, gate_gain=2.0)
    params = init_params(cfg, seed=0)
    params["r_num"] = onp.zeros_like(params["r_num"])       # r = 0: s = σ(g c) everywhere
    params["c"] = onp.array(-2.5)
    st = measure_leak(cfg, params, L=300, n=6, seed=1)
    assert_close(st["leak_per_step"], math.log1p(math.exp(-5.0)), "fast_vs_ref")
    _, _, pos = extended_induction_head(onp.random.default_rng([1, LEAK_STREAM, 300]), 6, 300,
                                        return_positions=True)    # the measured sequences
    assert st["n_trig"] == 4 and st["L"] == 300
    assert st["hold_steps"] == int((300 - 2 * 4 - 1 - pos).sum())
    zoh = measure_leak(ModelConfig("residual", "extended", gate_bias=True, gate_gain=2.0,
                                   gate="zoh"), params, L=300, n=6, seed=1)
    assert_close(zoh["leak_per_step"], 1 / (1 + math.exp(5.0)), "fast_vs_ref")


# ------------------------------------------------------------------ extended task, long L
@pytest.mark.parametrize("trigger,L", [(DEFAULT_TRIGGER, 65536), ((0,), 4096), ((0, 1), 2048),
                                       ((1, 1), 2048), ((0, 1, 2, 3, 4, 5), 16)])
def test_extended_rows_built_directly_have_exactly_two_occurrences(trigger, L):
    k = len(trigger)
    method = extended_method(L, 8, k)
    tok, tgt, p = extended_induction_head(onp.random.default_rng(4), 6, L, trigger=trigger,
                                          return_positions=True, method="resample")
    assert tok.shape == (6, L)
    assert (count_occurrences(tok, trigger) == 2).all()          # exactly twice
    assert (tok[:, -k:] == onp.array(trigger)).all()
    rows = onp.arange(6)
    for j in range(k):
        assert (tok[rows, p + j] == trigger[j]).all()
    assert ((p >= 0) & (p <= L - 2 * k - 1)).all()
    assert (tok[rows, p + k] == tgt).all() and ((tgt >= 0) & (tgt < 8)).all()
    if L >= 2048 and k <= 2 or L == 65536:
        assert method == "resample"                                 # auto picks it there


def test_extended_auto_is_rejection_where_affordable():
    for L, trig in ((16, DEFAULT_TRIGGER), (1024, DEFAULT_TRIGGER), (16, (0,)), (1024, (0, 1, 2))):
        a = extended_induction_head(onp.random.default_rng(9), 40, L, trigger=trig)
        b = extended_induction_head(onp.random.default_rng(9), 40, L, trigger=trig, method="reject")
        assert all((x == y).all() for x, y in zip(a, b)), (L, trig)
    assert extended_method(8192) == "reject" and extended_method(16384) == "resample"
    c = extended_induction_head(onp.random.default_rng(9), 40, 16384)
    d = extended_induction_head(onp.random.default_rng(9), 40, 16384)
    assert all((x == y).all() for x, y in zip(c, d))                # seeded
    with pytest.raises(ValueError, match="method"):
        extended_induction_head(onp.random.default_rng(0), 2, 64, method="exact")
    with pytest.raises(ValueError, match="n_tokens"):
        extended_induction_head(onp.random.default_rng(0), 2, 64, n_tokens=1, trigger=(0,),
                                method="resample")
