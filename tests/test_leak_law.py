"""The leak law (docs/13 section 1). Its stored vector is read where the gate opens, not
one step early: a trained Σ passes the answer on one step late, so the gate opens at q + 1
and y(q + 2) holds the answer (docs/05, docs/06). The gate's output splits exactly at the
trigger into what came before, what the trigger wrote and what the holding steps wrote;
the law, built from that split, predicts a trained model's accuracy."""
import numpy as onp

from rssm_ref.experiments.common import LEAK_STREAM, model_cfg_from_run_config
from rssm_ref.experiments.lengths import (correct, gate_writes, HOLD_PCT, law_accuracy,
                                          leak_statistics, OPEN_LAG, task_rows, trace,
                                          window_writes)
from rssm_ref.experiments.reproduce import read_run_config
from rssm_ref.tolerances import assert_close, TOLERANCES
from rssm_ref.training.head import accuracy, init_params, ModelConfig
from rssm_ref.training.tasks import make_batch
from rssm_ref.training.train import load_checkpoint


def _one_sequence(lag):
    """A hand-made trace: the gate shut (pre-activation -30) except one opening at q + lag,
    which writes y_s there (the answer's direction e_1) into y; y_s points at e_0 elsewhere."""
    L, q = 40, 10
    pre = onp.full((1, L), -30.0)
    pre[0, q + lag] = 30.0
    y_s = onp.tile([1.0, 0.0], (1, L, 1))
    y_s[0, q + lag] = [0.0, 1.0]
    s = 1.0 / (1.0 + onp.exp(-pre))
    y, acc = onp.zeros((1, L, 2)), onp.zeros(2)
    for t in range(L):                                   # eq. (5): y(t+1) = (1-s) y + s y_s
        acc = (1 - s[0, t]) * acc + s[0, t] * y_s[0, t]
        y[0, t] = acc
    return y, y_s, pre, onp.array([q - 1]), onp.array([1])


def test_the_stored_vector_is_read_at_the_opening():
    for lag in range(OPEN_LAG + 1):
        y, y_s, pre, p, tgt = _one_sequence(lag)
        st = leak_statistics(y, y_s, pre, p, tgt, 1, n_answers=2)
        assert onp.allclose(st["store"][1], [0.0, 1.0], atol=1e-12), (lag, st["store"][1])
        assert st["opening_lag"] == lag
        assert st["store_fraction"] > 0.999
        assert st["leak_per_step"] < 1e-12              # nothing leaks after the opening


def test_a_shut_gate_keeps_the_answer_at_every_length():
    y, y_s, pre, p, tgt = _one_sequence(1)
    st = leak_statistics(y, y_s, pre, p, tgt, 1, n_answers=2)
    assert correct(st, onp.array([0, 1000, 65536]), lambda v: v)[1].all()


def test_explain_prints_the_predicted_horizon_of_a_checkpoint(tmp_path):
    """explain on a reproduce checkpoint of the Residual SSM prints the leak law's horizon
    and stores it in trace.json; on params without a run config it says nothing."""
    import json
    from click.testing import CliRunner
    from rssm_ref.app.cli import main
    from rssm_ref.experiments.explain import leak_horizon
    r = CliRunner()
    run = tmp_path / "rep"
    assert r.invoke(main, ["reproduce", "--task", "induction", "--model", "residual", "--quick",
                           "--out", str(run)]).exit_code == 0
    ckpt = run / "residual-seed0.npz"
    res = r.invoke(main, ["explain", "--params", str(ckpt), "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("leak law")]
    assert len(line) == 1 and any(w in line[0] for w in ("holds to L ≈", "holds beyond L ≈",
                                                         "already at L = 16"))
    doc = json.loads((tmp_path / "ex" / "trace.json").read_text())
    lk = doc["summary"]["leak"]
    assert lk["leak_per_step"] >= 0 and lk["hold_pct"] == HOLD_PCT
    # the horizon is where the law crosses HOLD_PCT, on the same law
    rc = read_run_config(str(ckpt))
    gw = gate_writes(model_cfg_from_run_config(rc, str(ckpt), "induction"),
                     load_checkpoint(str(ckpt))[0])
    if lk["holds_to_L"] is not None:
        assert law_accuracy(gw, lk["holds_to_L"]) >= HOLD_PCT
    if lk["first_below_L"] is not None:
        assert law_accuracy(gw, lk["first_below_L"]) < HOLD_PCT
    assert leak_horizon(str(ckpt), "selective", "induction") is None


def _traced_one(L=96, seed=3):
    """gate_writes on one sequence of an untrained Residual SSM (a leaky gate: every step
    writes) and the trace it came from."""
    cfg = ModelConfig("residual", "induction")
    params = init_params(cfg, seed)
    gw = gate_writes(cfg, params, L=L, n=1, seed=seed)
    tok, tgt, p, k = task_rows(cfg, onp.random.default_rng([seed, LEAK_STREAM, L]), 1, L)
    y, _, _ = trace(cfg, params, tok)
    return gw, y[0], int(p[0]), k


def test_the_split_at_the_trigger_rebuilds_the_gate_output_exactly():
    """One sequence's own pooled steps are its steps before the trigger, then its holding
    steps: the law's windows over them give back y(p) and y(L - N_trig) to round-off,
    decay inside the windows included (docs/13 section 1's decomposition)."""
    L = 96
    gw, y, p, k = _traced_one(L)
    assert gw["exact_decay"] and gw["cum_leak"][-1] > 1.0        # the decay is not negligible
    before, _ = window_writes(gw, onp.array([0]), onp.array([p]))
    assert_close(before[0], y[p - 1] if p > 0 else 0.0 * y[0], "fast_vs_ref")
    d = L - k - p - int(gw["span_steps"][0])
    after, keep = window_writes(gw, onp.array([p]), onp.array([d]))
    y_stop = keep[0] * (gw["keep_span"][0] * before[0] + gw["span"][0]) + after[0]
    assert_close(y_stop, y[L - k - 1], "fast_vs_ref")
    assert gw["pool_steps"] == p + d


def test_the_law_predicts_a_trained_models_accuracy():
    """The law (200 traced sequences at L = 256) against the accuracy measured on 2000 fresh
    sequences, for a smoke-trained Residual SSM (about 33 %, far from both 100 % and
    chance): within the law's criterion at every length, the shortest and beyond the trace."""
    from click.testing import CliRunner
    from rssm_ref.app.cli import main
    import tempfile
    with tempfile.TemporaryDirectory() as out:
        assert CliRunner().invoke(main, ["reproduce", "--task", "induction", "--model",
                                         "residual", "--quick", "--out", out]).exit_code == 0
        path = f"{out}/residual-seed0.npz"
        cfg = model_cfg_from_run_config(read_run_config(path), path, "induction")
        params = load_checkpoint(path)[0]
    gw = gate_writes(cfg, params, L=256, n=200)
    for L in (16, 128, 1024):
        tok, tgt = make_batch("induction", onp.random.default_rng([11, L]), 2000, L, cfg.n_tokens)
        measured = 100.0 * accuracy(cfg, params, tok, tgt)
        assert 20.0 < measured < 60.0
        assert abs(law_accuracy(gw, L) - measured) <= TOLERANCES["leak_law_points"], (L, measured)
    assert law_accuracy(gw, gw["pool_steps"]) is None            # beyond the pool's reach
