"""The Residual SSM's whole training loss as one primitive (rssm_ref.training.fused):
the same bits as the blocks composed by autograd (head.loss_composed), the gradients of
autograd through the reference cores (head.loss_ref), check_grads in every argument, and
training runs that do not change."""
import numpy as onp
import pytest
from autograd import value_and_grad
from autograd.test_util import check_grads

from rssm_ref.tolerances import assert_close
from rssm_ref.training import head
from rssm_ref.training.fused import residual_loss, residual_loss_kernel
from rssm_ref.training.head import ModelConfig, init_params, loss, loss_composed, loss_ref, loss_spec
from rssm_ref.training.tasks import make_batch
from rssm_ref.training.train import train, TrainConfig

CONFIGS = [
    ("induction", {}),
    ("extended", {"gate_gain": 5.0, "gate_bias": True, "reflection_bound": 1.0}),
    ("extended", {"gate_gain": 3.0, "gate_bias": True, "reflection_bound": 0.5,
                  "gate_penalty": 0.1}),
    ("induction", {"gate": "zoh", "gate_bias": True}),
    ("induction", {"readout": "linear", "gate_penalty": 2.0}),
    ("extended", {"nu": 2, "nu_r": 3, "m": 3, "gate": "zoh", "gate_gain": 2.0}),
    ("extended", {"gate_gain": 5.0, "gate_bias": True, "gate_penalty": 0.5,
                  "gate_penalty_mode": "relative"}),
    ("induction", {"gate": "zoh", "gate_penalty": 3.0, "gate_penalty_mode": "relative"}),
]
IDS = [f"{t}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'paper'}" for t, kw in CONFIGS]


def _case(task, kw, batch=32, L=16, seed=3):
    cfg = ModelConfig("residual", task, **kw)
    params = init_params(cfg, seed=seed)
    rng = onp.random.default_rng(seed)
    # away from the initial values, so that no parameter sits at a special point
    params = {k: v + 0.1 * rng.standard_normal(onp.shape(v)) for k, v in params.items()}
    tok, tgt = make_batch(task, rng, batch, L, cfg.n_tokens)
    return cfg, params, tok, tgt


def _counting(monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return residual_loss(*args, **kwargs)
    monkeypatch.setattr(head, "residual_loss", counted)
    return calls


@pytest.mark.parametrize("task,kw", CONFIGS, ids=IDS)
def test_fused_loss_is_the_composed_loss_bit_for_bit(task, kw, monkeypatch):
    cfg, params, tok, tgt = _case(task, kw)
    calls = _counting(monkeypatch)
    v_f, g_f = value_and_grad(lambda p: loss(cfg, p, tok, tgt))(params)
    assert calls == [1]                                      # the fused route was taken
    v_c, g_c = value_and_grad(lambda p: loss_composed(cfg, p, tok, tgt))(params)
    assert calls == [1]
    assert v_f == v_c
    assert sorted(g_f) == sorted(g_c) == sorted(params)
    for k in params:
        assert onp.array_equal(g_f[k], g_c[k]), k


@pytest.mark.parametrize("task,kw", CONFIGS, ids=IDS)
def test_fused_gradient_is_autograd_through_the_reference_cores(task, kw):
    cfg, params, tok, tgt = _case(task, kw, batch=8)
    v_f, g_f = value_and_grad(lambda p: loss(cfg, p, tok, tgt))(params)
    v_r, g_r = value_and_grad(lambda p: loss_ref(cfg, p, tok, tgt))(params)
    assert_close(v_f, v_r, "fast_vs_ref", "loss")
    for k in params:
        assert_close(g_f[k], g_r[k], "vjp_vs_autograd", k)


def test_kernel_path_at_long_L_is_fused_too(monkeypatch):
    """path="kernel" is fused at any L (the convolution by FFT above 64); "auto" at L > 64
    takes the composed recurrent route, and so does an untraced call."""
    cfg, params, tok, tgt = _case("induction", {"path": "kernel"}, batch=4, L=80)
    calls = _counting(monkeypatch)
    auto = ModelConfig("residual", "induction")
    value_and_grad(lambda p: loss(auto, p, tok, tgt))(params)
    loss(cfg, params, tok, tgt)
    assert calls == []
    v_f, g_f = value_and_grad(lambda p: loss(cfg, p, tok, tgt))(params)
    assert calls == [1]
    v_r, g_r = value_and_grad(lambda p: loss_ref(cfg, p, tok, tgt))(params)
    assert_close(v_f, v_r, "fast_vs_ref", "loss")
    for k in params:
        assert_close(g_f[k], g_r[k], "vjp_vs_autograd", k)


@pytest.mark.parametrize("which", [1, 2, 4, 6, 7])
def test_check_grads_in_every_argument(which):
    task, kw = CONFIGS[which]
    cfg, params, tok, tgt = _case(task, kw, batch=4, L=9)
    spec = loss_spec(cfg)
    keys = ["E", "sigma_num", "sigma_theta", "r_num", "r_theta", "c", "W_out", "b_out"]
    args = [params.get(k) for k in keys]
    for i, k in enumerate(keys):
        if args[i] is None:
            continue

        def f(x, i=i):
            a = list(args)
            a[i] = x
            return residual_loss_kernel(*a, tok, tgt, spec, True)
        check_grads(f, modes=["rev"], order=1)(args[i])


def test_untraced_call_is_the_same_number():
    cfg, params, tok, tgt = _case(*CONFIGS[2])
    assert residual_loss(params, tok, tgt, loss_spec(cfg), traced=False) == \
        loss_composed(cfg, params, tok, tgt)


def test_training_is_unchanged_by_the_fused_route(monkeypatch):
    """The same run through the fused primitive and through the composed blocks: the same
    parameters and losses, bit for bit (restarts included)."""
    cfg = ModelConfig("residual", "extended", gate_gain=5.0, gate_bias=True, gate_penalty=0.1)
    tcfg = TrainConfig(steps=40, batch=32, log_every=10 ** 9, restarts=2, restart_steps=10,
                       warmup=5, seed=4)
    p_f, h_f = train(cfg, tcfg)
    monkeypatch.setattr(head, "fused_route", lambda *a: False)     # every step composed
    p_c, h_c = train(cfg, tcfg)
    assert h_f["loss"] == h_c["loss"]
    for k in p_f:
        assert onp.array_equal(p_f[k], p_c[k]), k


@pytest.mark.parametrize("mode", ["mean", "relative"])
def test_gate_statistic_vjp_is_autograds(mode):
    """kernels.residual.gate_stat's hand-written VJP against autograd through the same
    statistic in autograd's operations (residual_ssm._with_gate_mean), distinct maxima."""
    import autograd.numpy as anp
    from autograd import grad
    from rssm_ref.kernels.residual import gate_stat, gate_stat_vjp
    s = onp.random.default_rng(0).uniform(0.01, 0.9, size=(5, 11))
    g = onp.random.default_rng(1).normal(size=5)

    def stat(x):
        if mode == "mean":
            return anp.mean(x, axis=1)
        M = anp.max(x, axis=1)
        return (anp.sum(x, axis=1) - M) / M
    assert_close(gate_stat(s, mode), stat(s), "fast_vs_ref", "stat")
    assert_close(onp.broadcast_to(gate_stat_vjp(s, mode, g), s.shape), grad(lambda x: anp.sum(stat(x) * g))(s),
                 "vjp_vs_autograd", "d s")


@pytest.mark.parametrize("which", [0, 2, 4, 6])
def test_flat_loss_is_the_composed_loss_of_theta_bit_for_bit(which):
    """The training step's primitive of the optimizer's flat vector: value and gradient
    equal, bit for bit, to the loss composed on the params read from theta; check_grads."""
    from rssm_ref.training.train import FlatAdam, fresh_state
    task, kw = CONFIGS[which]
    cfg, params, tok, tgt = _case(task, kw)
    opt = FlatAdam(fresh_state(params), TrainConfig())
    f = head.flat_loss(cfg, opt.layout(), tok.shape[1])
    assert f is not None
    v_f, g_f = value_and_grad(f)(opt.theta, tok, tgt)
    v_c, g_c = value_and_grad(lambda th: loss_composed(cfg, opt.unflatten(th), tok, tgt))(opt.theta)
    assert v_f == v_c and onp.array_equal(g_f, g_c)
    check_grads(lambda th: f(th, tok[:4], tgt[:4]), modes=["rev"], order=1)(opt.theta)


def test_flat_loss_only_where_there_is_one_primitive():
    sel = ModelConfig("selective", "induction")
    assert head.flat_loss(sel, (("E", 0, 1, (1,)),), 16) is None
    assert head.flat_loss(ModelConfig("residual", "induction"), (("E", 0, 1, (1,)),), 80) is None
