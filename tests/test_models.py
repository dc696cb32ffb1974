"""Models around the cores (Section 3.1): embedding, readout, loss, parameter counts, gradients."""
import autograd.numpy as np
import numpy as onp
import pytest
from autograd.test_util import check_grads

from rssm_ref.training.head import (ModelConfig, accuracy, init_params, logits, loss, param_count,
                             residual_core_arrays)
from rssm_ref.residual_ssm import residual_ssm_tf
from rssm_ref.training.tasks import make_batch
from rssm_ref.tolerances import assert_close


@pytest.mark.parametrize("model", ["residual", "selective"])
@pytest.mark.parametrize("task", ["induction", "extended"])
@pytest.mark.parametrize("options", [{}, {"readout": "linear"}, {"gate_bias": True, "gate_gain": 3.0}])
def test_shapes_counts_and_grads(model, task, options):
    if model == "selective" and "gate_bias" in options:
        pytest.skip("gate options belong to the residual model")
    cfg = ModelConfig(model, task, m=4 if model == "selective" else 0, n=2, **options)
    params = init_params(cfg, seed=0)
    counts = param_count(cfg)
    assert counts["total"] == counts["core"] + counts["embedding"] + counts["readout"]
    trainable = sum(v.size for v in params.values())
    if model == "residual":
        assert trainable == counts["total"]
    tok, tgt = make_batch(task, onp.random.default_rng(0), 3, 12, cfg.n_tokens)
    z = logits(cfg, params, tok)
    # the paper's dictionary of N = 8: 7 answers for induction (plus the trigger), 8 for extended
    assert z.shape == (3, 7 if task == "induction" else 8)
    if cfg.readout == "cosine":
        assert onp.all(onp.abs(z) <= 10 + 1e-12)
    keys = sorted(params)

    def f(*vals):
        return loss(cfg, dict(zip(keys, vals)), tok, tgt)

    check_grads(f, modes=["rev"], order=1)(*[params[k] for k in keys])


def test_paper_sizes():
    res = param_count(ModelConfig("residual", "induction"))
    sel = param_count(ModelConfig("selective", "induction"))
    # 8 embeddings of m = 2 (the paper's N = 8 with the trigger) and eq. (9)'s counts
    assert res["core"] == 42 and res["embedding"] == 16 and res["total"] == 58   # paper: ~50
    assert sel["core"] == 656 and sel["total"] == 784                           # paper: ~700
    assert param_count(ModelConfig("residual", "induction", gate_bias=True))["total"] == 59
    lin = param_count(ModelConfig("selective", "induction", readout="linear"))
    assert lin["readout"] == 7 * 16 + 7 and lin["total"] == 784 + 119


def test_paper_defaults():
    cfg = ModelConfig("residual", "induction")
    assert (cfg.n_tokens, cfg.vocab, cfg.gate_gain, cfg.gate_bias) == (7, 8, 1.0, False)
    assert ModelConfig("residual", "extended").vocab == 8
    assert "c" not in init_params(cfg)


@pytest.mark.parametrize("gain", [1.0, 3.0])
def test_gain_and_bias_folded_into_core_convention(gain):
    cfg = ModelConfig("residual", "induction", gate_gain=gain, gate_bias=True)
    p = init_params(cfg, seed=3)
    p["c"] = onp.array(0.2)
    sn, sd, rn, rd, c = residual_core_arrays(p, cfg)
    u = onp.random.default_rng(0).normal(size=(2, 10, 2))
    _, mid = residual_ssm_tf(sn, sd, rn, rd, c, u, return_intermediates=True)
    _, mid1 = residual_ssm_tf(sn, sd, p["r_num"], rd, 0.0, u, return_intermediates=True)
    expected = 1 / (1 + onp.exp(-gain * (mid1["r"] + 0.2)))      # s = σ(g (r + c))
    assert_close(mid["s"], expected, "fast_vs_ref")


def test_accuracy_chunking_does_not_change_result():
    cfg = ModelConfig("residual", "induction")
    p = init_params(cfg, seed=1)
    tok, tgt = make_batch("induction", onp.random.default_rng(2), 50, 20)
    assert accuracy(cfg, p, tok, tgt, chunk=7) == accuracy(cfg, p, tok, tgt, chunk=50)


def test_bad_config():
    with pytest.raises(ValueError, match="model"):
        ModelConfig("transformer", "induction")
    with pytest.raises(ValueError, match="task"):
        ModelConfig("residual", "copy")
