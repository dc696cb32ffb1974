"""The leak law's stored vector is read where the gate opens, not one step early: a
trained Σ passes the answer on one step late, so the gate opens at q + 1 and y(q + 2)
holds the answer (docs/05, docs/06); reading y(q + 1) measured a vector the gate had not
written yet, and the prediction said chance where 100 % is measured."""
import numpy as onp

from rssm_ref.experiments.lengths import correct, leak_statistics, OPEN_LAG


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
    assert len(line) == 1 and ("holds to L" in line[0] or "holds beyond" in line[0])
    doc = json.loads((tmp_path / "ex" / "trace.json").read_text())
    lk = doc["summary"]["leak"]
    assert lk["reliable"] is False and lk["leak_per_step"] >= 0
    if lk["horizon_steps"] is not None:
        assert lk["holds_to_L"] == lk["horizon_steps"] + 3            # + 2 N_trig + 1
    assert leak_horizon(str(ckpt), "selective", "induction") is None
