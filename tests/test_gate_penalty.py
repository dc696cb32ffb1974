"""The optional training penalty λ · mean_{batch, t} s(t) on the Residual SSM's gate
(``ModelConfig.gate_penalty``): λ = 0 is the unpenalised code exactly; λ > 0 agrees with
its twin ``loss_ref`` on every path and gate; the fused primitive that returns y(L) and
the mean opening s̄ together has correct values (the loop twin's s) and gradients (finite
differences, and autograd through the reference core); and the option travels through
checkpoints' run configs and the grid runner."""
import importlib.util
import os

import autograd.numpy as np
import numpy as onp
import pytest
from autograd import grad, value_and_grad

import rssm_ref.residual_ssm as residual_mod
from rssm_ref.experiments.common import model_cfg_from_run_config
from rssm_ref.experiments.reproduce import (check_resume, read_run_config, ReproduceConfig,
                                            run_config, train_config)
from rssm_ref.kernels.residual import final_kernel, final_kernel_gate_mean, final_kernel_gate_mean_vjp
from rssm_ref.realization import tf2ss
from rssm_ref.residual_ssm import (residual_ssm_final, residual_ssm_final_ref, residual_ssm_ref,
                                   residual_ssm_tf)
from rssm_ref.tolerances import assert_close
from rssm_ref.training.head import (cosine_logits, cross_entropy, embed, init_params, loss,
                                    loss_ref, ModelConfig, residual_core_arrays, SCALE)
from rssm_ref.training.train import save_checkpoint, TrainConfig, train
from rssm_ref.util import kept

from _helpers import check_all_grads
from _helpers import rng as _rng

GATES = ["euler", "zoh"]
NAMES = ["sigma_num", "sigma_den", "r_num", "r_den", "gate_bias", "u"]
RECIPE = dict(gate_gain=5.0, gate_bias=True, reflection_bound=1.0)


def _cfg(**kw):
    return ModelConfig("residual", "extended", **{**RECIPE, **kw})


def _batch(cfg, seed=0, batch=6, L=16):
    tokens, targets = cfg.batch(_rng(seed), batch, L)
    return tokens, targets


def _params(cfg, seed=3):
    p = init_params(cfg, seed=seed)
    if "c" in p:
        p["c"] = onp.array(0.2)       # a nonzero bias: its gradient is not trivially 0
    return p


def _core_args(cfg, params, tokens):
    return list(residual_core_arrays(params, cfg)) + [params["E"][tokens]]


def _ref_s(cfg, params, tokens):
    """s (batch, L) of the state-space loop (residual_ssm_ref) on the observable realization."""
    sn, sd, rn, rd, c, u = _core_args(cfg, params, tokens)
    return residual_ssm_ref(*tf2ss(sn, sd), *tf2ss(rn, rd), c, u, gate=cfg.gate,
                            return_intermediates=True)[1]["s"]


# ------------------------------------------------------ (1) λ = 0: the old code, bit for bit
def test_zero_penalty_never_uses_the_penalty_path(monkeypatch):
    cfg = _cfg(gate_penalty=0.0)
    params = _params(cfg)
    tokens, targets = _batch(cfg)

    def refuse(*a, **k):
        raise AssertionError("the gate-mean primitive was used with gate_penalty = 0")
    monkeypatch.setattr(residual_mod, "final_kernel_gate_mean", refuse)

    def unpenalised(p):      # the cross-entropy as the code computed it before the option
        y = final_kernel(*residual_core_arrays(p, cfg), embed(p["E"], tokens), cfg.gate, True)
        return cross_entropy(cosine_logits(y, p["E"], SCALE, cfg.n_tokens), targets)
    v0, g0 = value_and_grad(unpenalised)(params)
    v, g = value_and_grad(lambda p: loss(cfg, p, tokens, targets))(params)
    assert v == v0 and all(onp.array_equal(g[k], g0[k]) for k in params)
    assert ModelConfig("residual", "extended") == ModelConfig("residual", "extended", gate_penalty=0)
    assert loss_ref(cfg, params, tokens, targets) == loss_ref(_cfg(), params, tokens, targets)


def test_zero_penalty_training_is_unchanged(monkeypatch):
    tcfg = TrainConfig(steps=6, batch=16, warmup=2, seed=4)
    monkeypatch.setattr(residual_mod, "final_kernel_gate_mean", None)   # never called
    p0, h0 = train(_cfg(), tcfg)
    p1, h1 = train(_cfg(gate_penalty=0.0), tcfg)
    assert h0["loss"] == h1["loss"] and all(onp.array_equal(p0[k], p1[k]) for k in p0)


# ------------------------------------- (2) λ > 0: loss and every gradient against loss_ref
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("path, L", [("auto", 16), ("kernel", 16), ("recurrent", 16),
                                     ("fft", 16), ("auto", 80)])
def test_penalised_loss_and_gradients_match_loss_ref(gate, path, L):
    cfg = _cfg(gate=gate, path=path, gate_penalty=0.1)
    params = _params(cfg)
    tokens, targets = _batch(cfg, L=L)
    v, g = value_and_grad(lambda p: loss(cfg, p, tokens, targets))(params)
    v_ref, g_ref = value_and_grad(lambda p: loss_ref(cfg, p, tokens, targets))(params)
    assert_close(v, v_ref, "fast_vs_ref", "loss")
    for k in params:
        assert_close(g[k], g_ref[k], "vjp_vs_autograd", f"d{k}")


@pytest.mark.parametrize("gate", GATES)
def test_penalty_dominated_gradients_and_linear_readout(gate):
    """λ = 50: the penalty's gradient dominates (a wrong d s̄ could not hide under the
    cross-entropy's); the untied linear readout and the paper's gate (no gain, no bias)."""
    cfg = ModelConfig("residual", "induction", gate=gate, readout="linear", gate_penalty=50.0)
    params = _params(cfg)
    tokens, targets = _batch(cfg, seed=2)
    v, g = value_and_grad(lambda p: loss(cfg, p, tokens, targets))(params)
    v_ref, g_ref = value_and_grad(lambda p: loss_ref(cfg, p, tokens, targets))(params)
    assert_close(v, v_ref, "fast_vs_ref", "loss")
    for k in params:
        assert_close(g[k], g_ref[k], "vjp_vs_autograd", f"d{k}")


# ------------------------------------------------ (3) the primitive: values and gradients
def _args(seed, batch=3, L=12):
    cfg = _cfg()
    params = _params(cfg, seed)
    tokens, _ = _batch(cfg, seed, batch, L)
    return _core_args(cfg, params, tokens)


def _twin(gate):
    """[y(L), mean_t s(t)] by autograd through the reference core's intermediates."""
    def f(*a):
        y, mid = residual_ssm_tf(*a, path="recurrent", gate=gate, return_intermediates=True)
        return np.concatenate([y[:, -1], np.mean(mid["s"], axis=1)[:, None]], axis=1)
    return f


@pytest.mark.parametrize("gate", GATES)
def test_gate_mean_primitive_values_and_vjp(gate):
    args = _args(5)
    out = residual_ssm_final(*args, path="kernel", gate=gate, gate_mean=True)
    assert out.shape == (3, 3)
    assert onp.array_equal(out[:, :2], residual_ssm_final(*args, path="kernel", gate=gate))
    assert_close(out, residual_ssm_final_ref(*args, gate=gate, gate_mean=True), "fast_vs_ref")
    for dy in (_rng(6).normal(size=(3, 3)), onp.array([[0, 0, 1.0], [0, 0, -2.0], [0, 0, 0.5]])):
        fast = grad(lambda a: np.sum(residual_ssm_final(*a, path="kernel", gate=gate,
                                                        gate_mean=True) * dy))(tuple(args))
        ref = grad(lambda a: np.sum(_twin(gate)(*a) * dy))(tuple(args))
        for a, b, name in zip(fast, ref, NAMES):
            assert_close(a, b, "vjp_vs_autograd", f"d{name}")


@pytest.mark.parametrize("gate", GATES)
def test_gate_mean_primitive_check_grads(gate):
    args = _args(7, batch=2, L=9)
    check_all_grads(lambda *a: residual_ssm_final(*a, path="kernel", gate=gate, gate_mean=True),
                    *args)
    check_all_grads(lambda *a: final_kernel_gate_mean(*a, gate, False), *args)   # no cache kept


def test_gate_mean_vjp_without_cache_recomputes_the_same():
    args = _args(8)
    dy = _rng(9).normal(size=(3, 3))
    traced = grad(lambda a: np.sum(final_kernel_gate_mean(*a, "euler", True) * dy))(tuple(args))
    full = tuple(args) + ("euler", False)
    ans = final_kernel_gate_mean(*full)
    assert kept.take(ans) is None
    again = final_kernel_gate_mean_vjp(tuple(range(6)), ans, full, {})(dy)
    for a, b, name in zip(traced, again, NAMES):
        assert onp.array_equal(a, b), name


# -------------------------------------- (4) the penalty's value: λ · mean of the loop's s
@pytest.mark.parametrize("gate", GATES)
def test_penalty_is_lambda_times_mean_gate_of_the_loop(gate):
    lam = 0.1
    cfg = _cfg(gate=gate, gate_penalty=lam)
    params = _params(cfg)
    tokens, targets = _batch(cfg, L=16)
    s = _ref_s(cfg, params, tokens)                              # (batch, L), eq. (5)'s s(t)
    assert s.shape == tokens.shape
    want = lam * float(onp.sum(s)) / s.size
    got = loss(cfg, params, tokens, targets) - loss(_cfg(gate=gate), params, tokens, targets)
    assert_close(got, want, "fast_vs_ref", "penalty")
    got_ref = loss_ref(cfg, params, tokens, targets) - loss_ref(_cfg(gate=gate), params, tokens, targets)
    assert_close(got_ref, want, "fast_vs_ref", "penalty of loss_ref")
    out = residual_ssm_final(*_core_args(cfg, params, tokens), gate=gate, gate_mean=True)
    assert_close(out[:, -1], onp.sum(s, axis=1) / s.shape[1], "fast_vs_ref", "s̄ per row")


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw, text", [
    (dict(model="selective", gate_penalty=0.1), "no gate s(t)"),
    (dict(gate_penalty=-0.1), "expected a finite number >= 0"),
    (dict(gate_penalty=float("nan")), "expected a finite number >= 0"),
    (dict(gate_penalty="a lot"), "expected a finite number >= 0"),
])
def test_bad_gate_penalty_is_refused(kw, text):
    model = kw.pop("model", "residual")
    with pytest.raises(ValueError, match="gate_penalty") as err:
        ModelConfig(model, "induction", **kw)
    assert text in str(err.value)
    assert ModelConfig("selective", "induction", gate_penalty=0).gate_penalty == 0.0


# ------------------------------------------- checkpoints' run configs and the grid runner
def test_run_config_records_the_penalty_and_old_checkpoints_read_zero(tmp_path):
    rcfg = ReproduceConfig(task="extended")
    tcfg = TrainConfig(steps=2, batch=4, warmup=1)
    mcfg = _cfg(gate_penalty=0.1)
    rc = run_config(rcfg, mcfg, tcfg)
    path = str(tmp_path / "residual-seed0.npz")
    train(mcfg, tcfg, checkpoint=path, run_config=rc)
    have = read_run_config(path)
    assert have["gate_penalty"] == 0.1
    assert model_cfg_from_run_config(have, path, "extended") == mcfg
    # an older run config, without the field: read as 0, and a resume of it is accepted
    old = {k: v for k, v in run_config(rcfg, _cfg(), train_config(rcfg, "residual", 0)).items()
           if k != "gate_penalty"}
    p = init_params(_cfg())
    old_path = str(tmp_path / "old.npz")
    save_checkpoint(old_path, p, p, p, 1, 0, run_config=old)
    assert read_run_config(old_path)["gate_penalty"] == 0.0
    assert model_cfg_from_run_config(read_run_config(old_path), old_path, "extended") == _cfg()
    check_resume(old_path, run_config(rcfg, _cfg(), train_config(rcfg, "residual", 0)))
    with pytest.raises(ValueError, match="gate_penalty = 0.0, this run asks for gate_penalty = 0.1"):
        check_resume(old_path, run_config(rcfg, mcfg, train_config(rcfg, "residual", 0)))


def test_grid_runner_passes_gate_penalty_to_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("RSSM_REF_THREADS", os.environ.get("RSSM_REF_THREADS", "1"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("sweep", os.path.join(root, "benchmarks", "sweep.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    job = {"name": "pen", "task": "extended", "model": "residual",
           "model_options": {**RECIPE, "gate_penalty": 0.1},
           "train": {"steps": 2, "batch": 4, "warmup": 1}, "seeds": [0], "eval_n": 2,
           "lengths": [16], "save_dir": str(tmp_path)}
    out = sweep.run_one(job, 0)
    assert out["model_options"]["gate_penalty"] == 0.1
    rc = read_run_config(str(tmp_path / "pen" / "extended" / "residual-seed0.npz"))
    assert rc["gate_penalty"] == 0.1 and rc["gate_gain"] == 5.0
