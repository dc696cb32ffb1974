"""What a new user met right after `reproduce`: explain on a selective checkpoint, cost
reading reproduce's folders, the leak law printed with what it assumes, and the figures
(labels, what is drawn on top, coincident channels, titles) checked on the matplotlib
objects, not on pixels."""
import json
import os
import shutil

import numpy as onp
import pytest
from click.testing import CliRunner

from cli import main
from rssm_ref.experiments.explain import (gate_figure, impulse_figure, lti_systems,
                                          pole_zero_figure)
from rssm_ref.experiments.plots import plot_cost, plot_lengths
from rssm_ref.experiments.beyond import format_results
from rssm_ref.experiments.reproduce import accuracy_figure

plt = pytest.importorskip("matplotlib.pyplot", reason="the figures need matplotlib ([plot])")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _ok(*args):
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    return res


def _load(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One quick reproduce of the induction task into <tmp>/results-induction, the folder
    reproduce writes by default."""
    root = tmp_path_factory.mktemp("newuser")
    out = root / "results-induction"
    _ok("reproduce", "--task", "induction", "--quick", "--out", out)
    return root


# ------------------------------------------------------- explain names the checkpoint's model
def test_explain_takes_the_model_from_a_selective_checkpoint(run, tmp_path):
    ck = run / "results-induction" / "selective-seed0.npz"
    out = tmp_path / "ex"
    res = _ok("explain", "--params", ck, "--out", out)
    doc = _load(out / "trace.json")
    assert doc["model"] == "selective" and doc["task"] == "induction"
    assert os.path.getsize(out / "delta-induction.png") > 1000
    assert "Selective SSM" in res.stdout and "discretization zoh" in res.stdout
    # the summary, recomputed here from the checkpoint and the traced inputs (eq. (4a), (3a))
    with onp.load(ck) as z:
        A_log, W_d, b_d = z["param/A_log"], z["param/W_delta"], z["param/delta_bias"]
    with onp.load(out / "trace.npz") as z:
        u = z["u"]
    A = -onp.exp(A_log)
    delta = onp.logaddexp(0.0, u @ W_d.T + b_d)
    kept = onp.exp(delta[:, :, None] * A[None])
    summ = doc["summary"]
    assert (summ["m"], summ["n"]) == A_log.shape
    assert summ["A_range"] == pytest.approx([A.min(), A.max()], rel=1e-12)
    assert summ["delta_range"] == pytest.approx([delta.min(), delta.max()], rel=1e-9)
    assert summ["kept_range"] == pytest.approx([kept.min(), kept.max()], rel=1e-9)
    mine = [r for r in _load(run / "results-induction" / "results.json")["runs"]
            if r["model"] == "selective"][0]
    assert summ["stored_accuracy"]["accuracy"] == mine["accuracy"]
    assert summ["stored_accuracy"]["quick"] is True and "stored accuracy" in res.stdout


def test_explain_refuses_a_model_or_task_the_checkpoint_contradicts(run, tmp_path):
    ck = run / "results-induction" / "selective-seed0.npz"
    for args, flag in ((["--model", "residual"], "--model residual"),
                       (["--task", "extended"], "--task extended"),
                       (["--gate", "zoh"], "--gate")):
        out = tmp_path / "o"
        res = _invoke("explain", "--params", ck, "--out", out, *args)
        assert res.exit_code == 2, (args, res.output)
        assert res.stderr.startswith(f"error: {flag}") and "Traceback" not in res.output
        assert len(res.stderr.strip().splitlines()) == 1
        assert not out.exists()                       # refused before anything is written
    res = _invoke("explain", "--params", ck, "--model", "residual", "--out", tmp_path / "o")
    assert "selective" in res.stderr                  # names what the file holds


# ------------------------------------------------------- cost reads reproduce's folders
def test_cost_joins_reproduce_accuracies_by_default(run, tmp_path, monkeypatch):
    monkeypatch.chdir(run)
    res = _ok("experiment", "cost", "--quick", "--out", tmp_path / "cost")
    d = _load(tmp_path / "cost" / "results.json")
    rep = {r["model"]: r for r in _load(run / "results-induction" / "results.json")["runs"]}
    by = {r["label"]: r for r in d["table"]["rows"]}
    for label, model in (("residual induction gate=euler", "residual"),
                         ("selective induction (paper's)", "selective")):
        want = {str(L): a for L, a in zip(rep[model]["lengths"], rep[model]["accuracy"])}
        assert by[label]["accuracy"] == pytest.approx(want), label
        assert by[label]["accuracy_from"] == [os.path.join("results-induction", "results.json")]
    assert by["residual extended gate=euler"]["accuracy"] is None      # not run
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("accuracies from")]
    assert len(line) == 1
    assert "results-induction/results.json (found)" in line[0]
    assert "results-extended/results.json (absent)" in line[0]
    assert "--checkpoints" in line[0] and "--results-from" in line[0]
    # elsewhere: --checkpoints points at other reproduce folders
    shutil.copytree(run / "results-induction", tmp_path / "runs-induction")
    _ok("experiment", "cost", "--quick", "--out", tmp_path / "cost2",
        "--checkpoints", str(tmp_path / "runs-{task}"))
    rows = _load(tmp_path / "cost2" / "results.json")["table"]["rows"]
    assert [r["accuracy_from"] for r in rows if r["accuracy"]] == \
        [[str(tmp_path / "runs-induction" / "results.json")]] * 2


def test_cost_refuses_a_reproduce_folder_without_reproduce_results(tmp_path):
    (tmp_path / "r-induction").mkdir()
    (tmp_path / "r-induction" / "results.json").write_text('{"x": 1}')
    res = _invoke("experiment", "cost", "--quick", "--out", tmp_path / "c",
                  "--checkpoints", str(tmp_path / "r-{task}"))
    assert res.exit_code == 2 and res.stderr.startswith("error: --checkpoints")
    assert "r-induction/results.json" in res.stderr and "reproduce's results.json" in res.stderr
    assert not (tmp_path / "c").exists()


def test_cost_figure_colours_points_by_model(run, tmp_path, monkeypatch):
    monkeypatch.chdir(run)
    _ok("experiment", "cost", "--quick", "--out", tmp_path / "cost")
    d = _load(tmp_path / "cost" / "results.json")
    rows = d["table"]["rows"]
    fig = plot_cost(plt, d)
    try:
        points = fig.axes[0].collections[:len(rows)]          # one scatter per row, in order
        colour = {}
        for r, pc in zip(rows, points):
            colour.setdefault(r["model"], set()).add(tuple(pc.get_facecolor()[0]))
        # residual rows of four experiments (tables, zoh_gate, nu_sweep) share one colour
        assert {len(c) for c in colour.values()} == {1}
        assert colour["residual"] != colour["selective"]
        assert {"Residual SSM", "Selective SSM"} <= set(_legend_texts(fig.axes[0]))
    finally:
        plt.close(fig)


# ------------------------------------------------------- lengths: the law and its scope
def test_lengths_prints_the_leak_law_with_what_it_assumes(run, tmp_path):
    out = tmp_path / "len"
    res = _ok("experiment", "lengths", "--quick", "--out", out,
              "--checkpoints", str(run / "results-{task}"))
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith("  leak law")]
    assert len(rows) == 2
    note = [ln for ln in res.stdout.splitlines() if ln.startswith("note:")]
    assert len(note) == 1 and "stationary" in note[0] and "docs/13" in note[0]
    d = _load(out / "results.json")
    assert d["prediction_reliable"] is True and "docs/13" in d["prediction_caveat"]
    fig = plot_lengths(plt, d)
    try:
        for ax in fig.axes[:1]:
            assert "leak prediction" in _legend_texts(ax)
            assert "measured (seed 0)" in _legend_texts(ax)
    finally:
        plt.close(fig)
    # a results.json of an older rssm-ref (no flag) is still shown as unreliable
    d.pop("prediction_reliable")
    d["prediction_caveat"] = "the old mean-leak prediction (docs/13)"
    text = format_results(d)
    assert sum("leak pred. (unreliable)" in ln for ln in text.splitlines()) == 2
    fig = plot_lengths(plt, d)
    try:
        assert "leak prediction (unreliable, see docs/13)" in _legend_texts(fig.axes[0])
    finally:
        plt.close(fig)


# ------------------------------------------------------- accuracy.png
def _summary(seeds):
    k = len(seeds)
    return {"residual": {"mean": [100.0] * 7, "min": [100.0] * 7, "max": [100.0] * 7,
                         "std": [0.0] * 7, "seeds": seeds, "total_steps": [27000]},
            "selective": {"mean": [60.0] * 7, "min": [55.0] * 7, "max": [65.0] * 7,
                          "std": [3.0] * 7, "seeds": seeds, "total_steps": [10000]}}, k


@pytest.mark.parametrize("seeds", [[3], [0, 1, 2]])
def test_accuracy_figure_names_the_seeds_and_draws_measured_on_top(run, seeds):
    results = dict(_load(run / "results-induction" / "results.json"), quick=False)
    results["summary"], k = _summary(seeds)
    fig = accuracy_figure(results)
    try:
        ax = fig.axes[0]
        labels = _legend_texts(ax)
        if k == 1:
            assert "Residual SSM: measured (seed 3)" in labels
            assert not any("mean" in t for t in labels)
        else:
            assert any(t.startswith("Residual SSM: measured (mean of 3 seeds") for t in labels)
        paper = {ln.get_label(): ln for ln in ax.get_lines() if "paper" in ln.get_label()}
        measured = {c.get_label(): c.lines[0] for c in ax.containers}
        res_paper = paper["Residual SSM: paper (Table 1)"]
        res_meas = [ln for lab, ln in measured.items() if lab.startswith("Residual SSM")][0]
        # both at 100 %: the measured circles lie over the paper's larger hollow squares
        assert list(res_meas.get_ydata()) == list(res_paper.get_ydata())
        assert res_meas.get_zorder() > res_paper.get_zorder()
        assert (res_paper.get_marker(), res_meas.get_marker()) == ("s", "o")
        assert res_paper.get_markersize() > res_meas.get_markersize()
    finally:
        plt.close(fig)


# ------------------------------------------------------- the gate figure
def _gate_trace(delay):
    """A hand-made induction trace: trigger 7 at p = 5, answer 3 at q = 6, y_s(t) the
    embedding of u(t - delay), and a gate that opens once, at q + delay."""
    L, p, q, target = 12, 5, 6, 3
    tok = [0, 1, 2, 4, 5, 7, 3, 6, 0, 1, 2, 7]
    ang = onp.linspace(0, 2 * onp.pi, 8, endpoint=False)
    E = onp.stack([onp.cos(ang), onp.sin(ang)], axis=1)
    y_s = onp.array([E[tok[t - delay]] if t >= delay else onp.zeros(2) for t in range(L)])
    s = onp.zeros(L)
    s[q + delay] = 0.95
    doc = {"task": "induction", "L": L, "tokens": tok, "trigger_position": p,
           "answer_position": q, "target": target, "prediction": target}
    return doc, {"s": s, "y_s": y_s, "param__embedding": E}


def test_gate_figure_explains_a_one_step_lag_only_where_the_data_show_it():
    doc, arrays = _gate_trace(delay=1)
    fig = gate_figure(doc, arrays)
    try:
        labels = _legend_texts(fig.axes[0])
        why = [t for t in labels if t.startswith("gate opens at t = 7")]
        assert len(why) == 1
        assert "one step after the answer" in why[0] and "eq. (5)" in why[0]
        assert "y_s(7) carries the answer u(6)" in why[0]
        assert "answer position (target token 3)" in labels
    finally:
        plt.close(fig)
    doc, arrays = _gate_trace(delay=0)                     # Σ with feedthrough: no lag
    fig = gate_figure(doc, arrays)
    try:
        labels = _legend_texts(fig.axes[0])
        assert any(t.startswith("gate opens at the answer, t = 6") for t in labels)
        assert not any("one step" in t for t in labels)
    finally:
        plt.close(fig)
    doc, arrays = _gate_trace(delay=1)
    arrays["s"][:] = 0.9                                   # open everywhere: no claim
    fig = gate_figure(doc, arrays)
    try:
        assert not any(t.startswith("gate") and "open" in t
                       for t in _legend_texts(fig.axes[0]))
    finally:
        plt.close(fig)


def test_the_plotted_trained_gate_opens_one_step_after_the_answer(tmp_path):
    """docs/figures' trained model: the lag the legend states is the plotted data's."""
    with onp.load(os.path.join(ROOT, "docs", "figures", "trace.npz")) as z:
        P = {k[len("param__"):]: z[k] for k in z.files if k.startswith("param__")}
    onp.savez(tmp_path / "P.npz", **P)
    _ok("explain", "--params", tmp_path / "P.npz", "--out", tmp_path / "ex")
    doc = _load(tmp_path / "ex" / "trace.json")
    with onp.load(tmp_path / "ex" / "trace.npz") as z:
        s, y_s, E = z["s"], z["y_s"], z["param__embedding"][:7]
    q, p = doc["answer_position"], doc["trigger_position"]
    t = p + int(onp.argmax(s[p:doc["L"] - 1]))
    cos = E @ y_s[t] / onp.linalg.norm(E, axis=1) / onp.linalg.norm(y_s[t])
    assert t == q + 1 and int(onp.argmax(cos)) == doc["target"]
    assert doc["gate_opening"]["t"] == t and doc["gate_opening"]["lag"] == 1


# ------------------------------------------------------- impulse and pole-zero figures
def _identical_channels():
    num = onp.tile([0.2, 0.5, -0.3], (2, 2, 1))
    num[1, 0] = [0.0, 1.0, 0.1]                       # channel u1 -> y2 differs
    return {"num": num, "den": onp.tile([1.0, -0.9, 0.2], (2, 1))}


def test_coincident_channels_are_drawn_apart_and_named_in_the_legend():
    systems = lti_systems(_identical_channels())
    fig = impulse_figure(systems)
    try:
        ax = fig.axes[0]
        lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("$")]
        assert len(lines) == 4
        assert len({ln.get_linestyle() for ln in lines}) == 4
        assert len({ln.get_markersize() for ln in lines}) == 4
        labels = _legend_texts(ax)
        same = [t for t in labels if "coincides with" in t]
        assert len(same) == 3                                  # (1,1), (1,2), (2,2)
        assert not any("coincides" in t for t in labels if t.startswith("$u_{1} \\to y_2$"))
    finally:
        plt.close(fig)
    fig = pole_zero_figure(systems)
    try:
        labels = _legend_texts(fig.axes[0])
        assert sum("coincides with" in t for t in labels) == 3
        zeros = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("zeros")]
        assert len({ln.get_markersize() for ln in zeros}) == len(zeros)
    finally:
        plt.close(fig)
    rng = onp.random.default_rng(0)                              # distinct channels
    P = {"num": rng.normal(size=(2, 2, 3)), "den": onp.tile([1.0, -0.5, 0.1], (2, 1))}
    fig = impulse_figure(lti_systems(P))
    try:
        assert not any("coincides" in t for t in _legend_texts(fig.axes[0]))
    finally:
        plt.close(fig)


def test_a_plain_lti_system_is_titled_with_its_sizes():
    P = _identical_channels()
    n = P["den"].shape[0] * (P["den"].shape[1] - 1)              # 2 rows of order 2
    ss = {"A": onp.diag([0.5, 0.2, -0.1]), "B": onp.ones((3, 2)), "C": onp.ones((1, 3)),
          "D": onp.zeros((1, 2))}
    for params, head in ((P, f"LTI system ({n} states, 2 inputs, 2 outputs)"),
                         (ss, "LTI system (3 states, 2 inputs, 1 output)")):
        for make in (impulse_figure, pole_zero_figure):
            fig = make(lti_systems(params))
            try:
                assert fig.axes[0].get_title().startswith(head + ":")
            finally:
                plt.close(fig)


def test_window_and_zoh_figures_name_a_single_seed(tmp_path):
    """One seed is labelled as that seed, not as a mean (the window and zoh_gate figures)."""
    import json
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rssm_ref.experiments.plots import plot_window, plot_zoh
    for name, plot in (("window", plot_window), ("zoh_gate", plot_zoh)):
        out = tmp_path / name
        res = CliRunner().invoke(main, ["experiment", name, "--quick", "--out", str(out)])
        assert res.exit_code == 0, res.output
        results = json.loads((out / "results.json").read_text())
        fig = plot(plt, results)
        labels = [t for ax in fig.axes for t in ax.get_legend_handles_labels()[1]]
        assert any("(seed 0)" in t for t in labels), labels
        assert not any("(mean)" in t for t in labels), labels
        plt.close(fig)
