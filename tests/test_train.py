"""Training loop: schedule, clipping, determinism, atomic checkpoints, resume."""
import os

import numpy as onp
import pytest

from rssm_ref.training.head import ModelConfig
from rssm_ref.util.paths import atomic_savez
from rssm_ref.training.train import (TrainConfig, clip_by_global_norm, load_checkpoint,
                            lr_schedule, train)

CFG = ModelConfig("residual", "induction")


def test_schedule_warmup_then_cosine():
    c = TrainConfig(steps=100, warmup=10, lr=0.5)
    lrs = [lr_schedule(k, c) for k in range(100)]
    assert onp.allclose(lrs[:10], 0.5 * onp.arange(1, 11) / 10)
    assert lrs[10] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 0.001


def test_clip_global_norm():
    g = {"a": onp.array([3.0]), "b": onp.array([[4.0]])}
    clipped, norm = clip_by_global_norm(g, 1.0)
    assert norm == pytest.approx(5.0)
    total = onp.sqrt(sum(float(onp.sum(v ** 2)) for v in clipped.values()))
    assert total == pytest.approx(1.0)
    same, _ = clip_by_global_norm(g, 10.0)
    assert same["a"][0] == 3.0


def test_loss_decreases_and_is_deterministic():
    c = TrainConfig(steps=60, batch=32, warmup=5, seed=1)
    p1, h1 = train(CFG, c)
    p2, _ = train(CFG, c)
    assert all((p1[k] == p2[k]).all() for k in p1)            # bit-identical
    assert onp.mean(h1["loss"][-10:]) < onp.mean(h1["loss"][:10])


def test_resume_equals_uninterrupted(tmp_path):
    ck = str(tmp_path / "ck.npz")
    full, _ = train(CFG, TrainConfig(steps=30, batch=16, warmup=3, seed=2))

    class Stop(Exception):
        pass

    def crash_at_13(step, info):
        if step >= 13:
            raise Stop

    # an interrupted run: the checkpoint of step 12 is on disk when it dies at step 13
    with pytest.raises(Stop):
        train(CFG, TrainConfig(steps=30, batch=16, warmup=3, seed=2, checkpoint_every=12, log_every=1),
              checkpoint=ck, progress=crash_at_13)
    assert load_checkpoint(ck)[3] == 12
    resumed, _ = train(CFG, TrainConfig(steps=30, batch=16, warmup=3, seed=2), checkpoint=ck, resume=True)
    assert all((resumed[k] == full[k]).all() for k in full)


def test_atomic_checkpoint_and_corrupt_file(tmp_path):
    path = str(tmp_path / "c.npz")
    atomic_savez(path, {"step": onp.array(1), "param/E": onp.ones(2)})
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]
    with open(path, "r+b") as fh:
        fh.truncate(20)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)


def test_restarts_pick_lowest_loss_candidate_deterministically():
    c = TrainConfig(steps=40, batch=16, warmup=3, seed=4, restarts=3, restart_steps=10)
    assert c.total_steps == 60
    p1, h1 = train(CFG, c)
    p2, h2 = train(CFG, c)
    assert h1["restart_winner"] == h2["restart_winner"] and all((p1[k] == p2[k]).all() for k in p1)
    # the winner is the candidate whose last short-run losses were lowest: rerunning that
    # candidate alone (same init, same batches) reproduces the final parameters exactly
    from rssm_ref.training.head import init_params
    w = h1["restart_winner"]
    alone, _ = train(CFG, TrainConfig(steps=40, batch=16, warmup=3, seed=4),
                     params=init_params(CFG, seed=4 if w == 0 else [4, w]))
    assert all((alone[k] == p1[k]).all() for k in p1)
    scores = []
    for r in range(3):
        _, h = train(CFG, TrainConfig(steps=40, batch=16, warmup=3, seed=4),
                     params=init_params(CFG, seed=4 if r == 0 else [4, r]))
        scores.append(onp.mean(h["loss"][:10][-100:]))
    assert int(onp.argmin(scores)) == w
