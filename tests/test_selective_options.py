"""The Selective SSM search's options: ``TrainConfig.weight_decay`` (decoupled AdamW) and
``ModelConfig.delta_init``, ``A_init``, ``use_D``, ``readout_scale``. Each default is the
code as it was (bit for bit against a reconstruction of the old initialisation and Adam
step written here from the formulas); each option has its effect; bad values and options
given to the model they do not apply to are refused by a one-line ValueError naming the
field; the options travel through checkpoints' run configs and the grid runner."""
import dataclasses
import importlib.util
import os

import numpy as onp
import pytest
from autograd import grad, value_and_grad
from autograd.test_util import check_grads

from rssm_ref.experiments.explain import oracle_params
from rssm_ref.experiments.reproduce import (check_resume, read_run_config, ReproduceConfig,
                                            run_config, train_config)
from rssm_ref.tolerances import assert_close
from rssm_ref.training.head import (final_output, init_params, logits, loss, loss_composed,
                                    loss_ref, loss_spec, ModelConfig, param_count)
from rssm_ref.training.train import FlatAdam, lr_schedule, NO_DECAY, save_checkpoint, TrainConfig
from rssm_ref.xp.models import selective_ssm_xp

CONVENTIONS = [("zoh", "before"), ("zoh", "after"), ("euler", "before"), ("euler", "after")]
SEL = dict(m=4, n=3)          # a small selective model: fast tests


def _sel(**kw):
    return ModelConfig("selective", "induction", **{**SEL, **kw})


def _batch(cfg, seed=0, batch=5, L=9):
    return cfg.batch(onp.random.default_rng(seed), batch, L)


# ------------------------------------------------------------- defaults: the old code
def _old_selective_init(cfg, seed):
    """The initialisation before the options existed, written out: E, S4D-real A_log,
    W_delta, delta_bias = softplus⁻¹(U(0.001, 0.1)), W_B, W_C from one seeded stream."""
    rng = onp.random.default_rng(seed)
    m, n = cfg.m, cfg.n
    s = 1.0 / onp.sqrt(m)
    E = rng.normal(0.0, 1.0, size=(cfg.vocab, m))
    return {"E": E, "A_log": onp.log(onp.tile(onp.arange(1, n + 1, dtype=float), (m, 1))),
            "W_delta": rng.normal(0.0, s, size=(m, m)),
            "delta_bias": onp.log(onp.expm1(rng.uniform(0.001, 0.1, size=m))),
            "W_B": rng.normal(0.0, s, size=(n, m)), "W_C": rng.normal(0.0, s, size=(n, m))}


def _adam_steps(cfg, tcfg, params, steps):
    """Plain Adam, per array, from train.py's module docstring (clip, then m, v, θ)."""
    from rssm_ref.training.train import DATA_STREAM
    p = {k: onp.array(v) for k, v in params.items()}
    m = {k: onp.zeros_like(v) for k, v in p.items()}
    v = {k: onp.zeros_like(x) for k, x in p.items()}
    for k in range(steps):
        tokens, targets = cfg.batch(onp.random.default_rng([tcfg.seed, DATA_STREAM, k]),
                                    tcfg.batch, tcfg.L)
        g = grad(lambda q: loss(cfg, q, tokens, targets))(p)
        flat = onp.concatenate([onp.ravel(g[name]) for name in p])   # ‖g‖₂ over all arrays
        norm = float(onp.sqrt(onp.dot(flat, flat)))
        lr = lr_schedule(k, tcfg)
        for name in p:
            gk = onp.array(g[name])
            if norm > tcfg.clip:
                gk *= tcfg.clip / norm
            m[name] = tcfg.beta1 * m[name] + (1 - tcfg.beta1) * gk
            v[name] = tcfg.beta2 * v[name] + (1 - tcfg.beta2) * (gk * gk)
            m_hat = m[name] / (1 - tcfg.beta1 ** (k + 1))
            v_hat = v[name] / (1 - tcfg.beta2 ** (k + 1))
            p[name] = p[name] - lr * m_hat / (onp.sqrt(v_hat) + tcfg.eps)
    return p


def test_default_init_is_the_old_draw_and_explicit_defaults_change_nothing():
    cfg = ModelConfig("selective", "induction")
    explicit = ModelConfig("selective", "induction", delta_init=(0.001, 0.1), A_init="s4d",
                           use_D=False, readout_scale=10.0)
    assert cfg == explicit
    old = _old_selective_init(cfg, seed=4)
    new = init_params(cfg, seed=4)
    assert list(new) == list(old)
    assert all(onp.array_equal(new[k], old[k]) for k in old)
    assert param_count(cfg)["total"] == 784


@pytest.mark.parametrize("model", ["selective", "residual"])
def test_default_training_is_plain_adam_bit_for_bit(model):
    from rssm_ref.training.train import train
    cfg = _sel() if model == "selective" else ModelConfig("residual", "induction", gate_bias=True)
    tcfg = TrainConfig(steps=4, batch=6, warmup=2, seed=2, lr=0.05, clip=0.5)
    trained, _ = train(cfg, tcfg)
    want = _adam_steps(cfg, tcfg, init_params(cfg, seed=2), 4)
    assert all(onp.array_equal(trained[k], want[k]) for k in want)


# ------------------------------------------------------------------ weight decay
def _opt(params, **kw):
    state = (params, {k: onp.zeros_like(v) for k, v in params.items()},
             {k: onp.zeros_like(v) for k, v in params.items()})
    return FlatAdam(state, TrainConfig(**{"warmup": 4, "lr": 0.03, **kw}))


@pytest.mark.parametrize("cfg", [_sel(use_D=True, window=2),
                                 ModelConfig("residual", "induction", gate_bias=True,
                                             readout="linear")])
def test_weight_decay_shrinks_exactly_the_decayed_arrays_on_a_zero_gradient_step(cfg):
    params = init_params(cfg, seed=1)
    if "c" in params:
        params["c"] = onp.array(0.3)
    wd = 0.1
    opt = _opt(params, weight_decay=wd)
    lr = opt.step(onp.zeros(opt.theta.size), 2)
    assert lr == 0.03 * 3 / 4
    after = opt.state()[0]
    skipped = {k for k in params if k in NO_DECAY}
    assert skipped == {"selective": {"A_log", "D", "delta_bias"},
                       "residual": {"b_out", "c"}}[cfg.model]
    for k, v in params.items():
        factor = 1.0 if k in skipped else 1.0 - lr * wd
        assert onp.array_equal(after[k], v * factor), k


def test_weight_decay_zero_is_adam_and_positive_matches_a_hand_written_adamw_step():
    cfg = _sel(use_D=True)
    params = init_params(cfg, seed=0)
    rng = onp.random.default_rng(5)
    grads = [rng.normal(size=sum(v.size for v in params.values())) * 0.01 for _ in range(3)]
    plain, zero = _opt(params), _opt(params, weight_decay=0.0)
    decayed = _opt(params, weight_decay=0.2)
    for k, g in enumerate(grads):
        plain.step(g, k)
        zero.step(g, k)
        decayed.step(g, k)
    assert onp.array_equal(plain.theta, zero.theta)
    # AdamW by hand, per array: θ ← θ (1 − lr λ) [decayed arrays], then the Adam update
    p = {k: onp.array(v) for k, v in params.items()}
    m = {k: onp.zeros_like(v) for k, v in p.items()}
    v2 = {k: onp.zeros_like(v) for k, v in p.items()}
    tcfg = decayed.cfg
    for k, g in enumerate(grads):
        lr = lr_schedule(k, tcfg)
        parts = dict(zip(decayed.names, onp.split(g, onp.cumsum([p[n].size for n in decayed.names])[:-1])))
        for name in p:
            gk = parts[name].reshape(p[name].shape)
            if name not in NO_DECAY:
                p[name] = p[name] * (1.0 - lr * 0.2)
            m[name] = 0.9 * m[name] + 0.1 * gk
            v2[name] = 0.999 * v2[name] + 0.001 * gk * gk
            p[name] = p[name] - lr * (m[name] / (1 - 0.9 ** (k + 1))) / (
                onp.sqrt(v2[name] / (1 - 0.999 ** (k + 1))) + 1e-8)
    got = decayed.state()[0]
    for name in p:
        assert_close(got[name], p[name], "fast_vs_ref", name)
    assert not onp.array_equal(got["W_B"], plain.state()[0]["W_B"])
    assert onp.array_equal(got["A_log"], plain.state()[0]["A_log"])   # not decayed


def test_weight_decay_agrees_with_torch_adamw():
    torch = pytest.importorskip("torch", reason="torch.optim.AdamW as the third-party reference")
    cfg = _sel()
    params = init_params(cfg, seed=3)
    rng = onp.random.default_rng(1)
    n = sum(v.size for v in params.values())
    grads = [rng.normal(size=n) * 0.01 for _ in range(4)]
    opt = _opt(params, weight_decay=0.05, clip=1e9, warmup=1)
    names = opt.names
    tp = [torch.tensor(onp.ravel(params[k]), dtype=torch.float64, requires_grad=True)
          for k in names if k not in NO_DECAY]
    tn = [torch.tensor(onp.ravel(params[k]), dtype=torch.float64, requires_grad=True)
          for k in names if k in NO_DECAY]
    ref = torch.optim.AdamW([{"params": tp, "weight_decay": 0.05},
                             {"params": tn, "weight_decay": 0.0}], lr=0.03, eps=1e-8)
    for k, g in enumerate(grads):
        opt.step(g, k)
        parts = dict(zip(names, onp.split(g, onp.cumsum([params[x].size for x in names])[:-1])))
        for t, name in zip(tp + tn, [x for x in names if x not in NO_DECAY]
                           + [x for x in names if x in NO_DECAY]):
            t.grad = torch.tensor(parts[name], dtype=torch.float64)
        for group in ref.param_groups:
            group["lr"] = lr_schedule(k, opt.cfg)
        ref.step()
    got = opt.state()[0]
    for t, name in zip(tp + tn, [x for x in names if x not in NO_DECAY]
                       + [x for x in names if x in NO_DECAY]):
        assert_close(onp.ravel(got[name]), t.detach().numpy(), "third_party_float64", name)


@pytest.mark.parametrize("wd", [-0.1, float("nan"), float("inf"), "some", True])
def test_bad_weight_decay_is_refused(wd):
    with pytest.raises(ValueError, match=r"^weight_decay: .*expected a finite number >= 0"):
        TrainConfig(weight_decay=wd)
    assert TrainConfig(weight_decay=0).weight_decay == 0.0


# ---------------------------------------------------------------- initialisation ranges
def test_A_init_range_draws_A_log_in_range_and_keeps_the_other_arrays():
    lo, hi = 0.5, 4.0
    cfg = ModelConfig("selective", "induction", A_init=[lo, hi])      # a JSON list
    assert cfg.A_init == (0.5, 4.0)
    p = init_params(cfg, seed=7)
    A = -onp.exp(p["A_log"])
    assert p["A_log"].shape == (16, 8)
    assert onp.all((-A >= lo) & (-A < hi)) and onp.unique(A).size == A.size
    s4d = init_params(ModelConfig("selective", "induction"), seed=7)
    assert all(onp.array_equal(p[k], s4d[k]) for k in s4d if k != "A_log")
    # the draw is log U(lo, hi) from the stream after W_C
    rng = onp.random.default_rng(7)
    for shape in [(8, 16), (16, 16), (16,), (8, 16), (8, 16)]:
        rng.uniform(size=shape) if shape == (16,) else rng.normal(size=shape)
    assert onp.array_equal(p["A_log"], onp.log(rng.uniform(lo, hi, size=(16, 8))))


@pytest.mark.parametrize("lo, hi", [(0.001, 0.1), (0.01, 1.0), (0.1, 2.0)])
def test_delta_init_range_sets_the_initial_step_sizes(lo, hi):
    cfg = ModelConfig("selective", "induction", delta_init=(lo, hi))
    p = init_params(cfg, seed=2)
    delta = onp.logaddexp(0.0, p["delta_bias"])                       # softplus(delta_bias)
    rng = onp.random.default_rng(2)
    rng.normal(size=(8, 16))
    rng.normal(size=(16, 16))
    want = rng.uniform(lo, hi, size=16)
    assert_close(delta, want, "fast_vs_ref")
    assert onp.all((delta > lo * (1 - 1e-12)) & (delta < hi * (1 + 1e-12)))


# ----------------------------------------------------------------------- the D skip
@pytest.mark.parametrize("disc, out", CONVENTIONS)
def test_use_D_adds_D_times_the_last_input(disc, out):
    base = _sel(discretization=disc, output=out)
    cfg = _sel(discretization=disc, output=out, use_D=True)
    p = init_params(cfg, seed=1)
    assert onp.array_equal(p["D"], onp.ones(4))
    assert param_count(cfg)["core"] == param_count(base)["core"] + 4
    p["D"] = onp.array([0.5, -1.0, 2.0, 0.25])
    tokens, _ = _batch(cfg)
    without = {k: v for k, v in p.items() if k != "D"}
    want = final_output(base, without, tokens) + p["D"] * p["E"][tokens[:, -1]]
    assert_close(final_output(cfg, p, tokens), want, "fast_vs_ref")


@pytest.mark.parametrize("disc, out", CONVENTIONS)
@pytest.mark.parametrize("window", [1, 2])
def test_use_D_gradient_matches_autograd_through_the_reference(disc, out, window):
    cfg = _sel(discretization=disc, output=out, use_D=True, window=window)
    p = init_params(cfg, seed=3)
    p["D"] = onp.array([0.5, -1.0, 2.0, 0.25])
    tokens, targets = _batch(cfg, seed=1)
    value, g = value_and_grad(lambda q: loss(cfg, q, tokens, targets))(p)
    value_ref, g_ref = value_and_grad(lambda q: loss_ref(cfg, q, tokens, targets))(p)
    assert_close(value, value_ref, "fast_vs_ref")
    for k in g_ref:
        assert_close(g[k], g_ref[k], "vjp_vs_autograd", k)
    assert onp.abs(g["D"]).max() > 0


def test_use_D_gradient_against_finite_differences():
    cfg = _sel(use_D=True)
    p = init_params(cfg, seed=3)
    tokens, targets = _batch(cfg, seed=2)
    onp.random.seed(0)
    check_grads(lambda D: loss(cfg, {**p, "D": D}, tokens, targets), modes=["rev"],
                order=1)(onp.array([0.5, -1.0, 2.0, 0.25]))


def test_use_D_on_the_array_backend_and_in_the_oracle_format():
    aas = pytest.importorskip("array_api_strict", reason="the evaluation path on another array module")
    cfg = _sel(use_D=True)
    p = init_params(cfg, seed=1)
    p["D"] = onp.array([0.5, -1.0, 2.0, 0.25])
    tokens, _ = _batch(cfg)
    want = final_output(cfg, p, tokens)
    assert_close(final_output(cfg, p, tokens, backend="array_api_strict"), want, "fast_vs_ref")
    P = oracle_params(cfg, p)
    assert onp.array_equal(P["D"], p["D"])
    u = P.pop("embedding")[tokens]
    assert_close(onp.asarray(selective_ssm_xp(P, u, cfg.discretization, cfg.output)["y"])[:, -1],
                 want, "fast_vs_ref")
    del aas


# ---------------------------------------------------------------------- readout scale
@pytest.mark.parametrize("model", ["selective", "residual"])
def test_readout_scale_scales_the_logits_and_the_loss_follows(model):
    base = _sel() if model == "selective" else ModelConfig("residual", "induction", gate_gain=3.0)
    cfg = dataclasses.replace(base, readout_scale=40.0)
    p = init_params(base, seed=0)
    tokens, targets = _batch(base, L=12)
    assert_close(logits(cfg, p, tokens), 4.0 * logits(base, p, tokens), "fast_vs_ref")
    z = 4.0 * logits(base, p, tokens)              # cross-entropy of the scaled logits
    lse = z.max(1) + onp.log(onp.exp(z - z.max(1, keepdims=True)).sum(1))
    want = float(onp.mean(lse - z[onp.arange(len(targets)), targets]))
    assert_close(loss_ref(cfg, p, tokens, targets), want, "fast_vs_ref")
    value, g = value_and_grad(lambda q: loss(cfg, q, tokens, targets))(p)
    assert_close(value, want, "fast_vs_ref")
    g_ref = grad(lambda q: loss_ref(cfg, q, tokens, targets))(p)
    for k in g_ref:
        assert_close(g[k], g_ref[k], "vjp_vs_autograd", k)
    if model == "residual":              # the fused primitive reads the scale from loss_spec
        assert loss_spec(cfg).scale == 40.0
        g_comp = grad(lambda q: loss_composed(cfg, q, tokens, targets))(p)
        assert all(onp.array_equal(g[k], g_comp[k]) for k in g)


# ------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("field, value, text", [
    ("delta_init", (0.1, 0.01), "0 < lo < hi"),
    ("delta_init", (0.0, 0.1), "0 < lo < hi"),
    ("delta_init", (0.001, float("nan")), "0 < lo < hi"),
    ("delta_init", 0.1, "0 < lo < hi"),
    ("delta_init", (0.1, 0.2, 0.3), "0 < lo < hi"),
    ("A_init", "s4d-real", "expected 's4d' or a pair"),
    ("A_init", (16, 1), "0 < lo < hi"),
    ("A_init", (-1, 4), "0 < lo < hi"),
    ("A_init", None, "0 < lo < hi"),
    ("use_D", "yes", "expected True or False"),
    ("use_D", 1, "expected True or False"),
    ("readout_scale", 0.0, "expected a finite number > 0"),
    ("readout_scale", -10, "expected a finite number > 0"),
    ("readout_scale", float("inf"), "expected a finite number > 0"),
    ("readout_scale", "ten", "expected a finite number > 0"),
])
def test_bad_values_are_refused_naming_the_field(field, value, text):
    with pytest.raises(ValueError) as err:
        ModelConfig("selective", "induction", **{field: value})
    msg = str(err.value)
    assert msg.startswith(f"{field}: ") and text in msg and "\n" not in msg


@pytest.mark.parametrize("field, value", [("delta_init", (0.01, 1.0)), ("A_init", (1.0, 16.0)),
                                          ("use_D", True)])
def test_selective_options_are_refused_for_the_residual_model(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: .*the residual model has none") as err:
        ModelConfig("residual", "induction", **{field: value})
    assert "\n" not in str(err.value)
    # the defaults, spelled out, are accepted
    ModelConfig("residual", "induction", delta_init=[0.001, 0.1], A_init="s4d", use_D=False)


def test_readout_scale_is_refused_with_the_linear_readout():
    with pytest.raises(ValueError, match=r"^readout_scale: 20.0 \(the linear readout has no scale"):
        ModelConfig("selective", "induction", readout="linear", readout_scale=20.0)
    assert ModelConfig("residual", "induction", readout="linear", readout_scale=10).readout_scale == 10.0


# ------------------------------------------- checkpoints' run configs and the grid runner
OPTIONS = dict(delta_init=(0.01, 1.0), A_init=(1.0, 16.0), use_D=True, readout_scale=20.0)


def _from_run_config(rc):
    """A ModelConfig from a run config, as the experiments read it (lists -> tuples)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                          for k, v in rc.items() if k in fields})


def test_run_config_round_trip_and_old_checkpoints_read_the_defaults(tmp_path):
    from rssm_ref.training.train import train
    rcfg = ReproduceConfig(task="induction")
    mcfg = _sel(**OPTIONS)
    tcfg = TrainConfig(steps=2, batch=4, warmup=1, weight_decay=0.01)
    rc = run_config(rcfg, mcfg, tcfg)
    path = str(tmp_path / "selective-seed0.npz")
    train(mcfg, tcfg, checkpoint=path, run_config=rc)
    have = read_run_config(path)
    assert have == rc and have["weight_decay"] == 0.01 and have["A_init"] == [1.0, 16.0]
    assert _from_run_config(have) == mcfg
    check_resume(path, rc)
    # an older run config, without the new fields: read as the defaults, resumable
    fresh = {m: run_config(rcfg, ModelConfig(m, "induction"), train_config(rcfg, m, 0))
             for m in ("selective", "residual")}
    new_fields = ("delta_init", "A_init", "use_D", "readout_scale", "weight_decay")
    for model, want in fresh.items():
        old = {k: v for k, v in want.items() if k not in new_fields}
        p = init_params(ModelConfig(model, "induction"))
        old_path = str(tmp_path / f"old-{model}.npz")
        save_checkpoint(old_path, p, p, p, 1, 0, run_config=old)
        assert read_run_config(old_path) == want
        assert _from_run_config(read_run_config(old_path)) == ModelConfig(model, "induction")
        check_resume(old_path, want)
    with pytest.raises(ValueError, match="use_D = False, this run asks for use_D = True"):
        check_resume(str(tmp_path / "old-selective.npz"),
                     run_config(rcfg, _sel(use_D=True, m=0, n=8),
                                train_config(rcfg, "selective", 0)))


def test_grid_runner_passes_every_option(tmp_path, monkeypatch):
    monkeypatch.setenv("RSSM_REF_THREADS", os.environ.get("RSSM_REF_THREADS", "1"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("sweep", os.path.join(root, "benchmarks", "sweep.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    job = {"name": "opts", "task": "induction", "model": "selective",
           "model_options": {**SEL, "delta_init": [0.01, 1.0], "A_init": [1, 16], "use_D": True,
                             "readout_scale": 20, "discretization": "euler", "output": "after"},
           "train": {"steps": 2, "batch": 4, "warmup": 1, "weight_decay": 0.1}, "seeds": [0],
           "eval_n": 2, "lengths": [16], "save_dir": str(tmp_path)}
    out = sweep.run_one(job, 0)
    assert out["param_count"] == param_count(_sel(use_D=True))["total"]
    rc = read_run_config(str(tmp_path / "opts" / "induction" / "selective-seed0.npz"))
    assert (rc["delta_init"], rc["A_init"], rc["use_D"], rc["readout_scale"], rc["weight_decay"]) \
        == ([0.01, 1.0], [1.0, 16.0], True, 20.0, 0.1)


def test_the_searched_selective_recipe_is_an_option_off_by_default():
    """--selective-recipe searched: the search winner of docs/recipe.md (Euler B, D,
    50 000 steps at batch 64); the default stays the short recipe with eq. (3b)'s ZOH;
    --paper-exact drops the additions, an explicit --discretization wins."""
    from rssm_ref.experiments.reproduce import (model_config, ReproduceConfig, run_config,
                                                SELECTIVE_SEARCHED, train_config)
    short, searched = ReproduceConfig(), ReproduceConfig(selective_recipe="searched")
    m, t = model_config(short, "selective"), train_config(short, "selective", 0)
    assert (m.discretization, m.use_D, t.steps, t.batch) == ("zoh", False, 10000, 64)
    m, t = model_config(searched, "selective"), train_config(searched, "selective", 0)
    assert (m.discretization, m.output, m.use_D) == ("euler", "before", True)
    assert (t.steps, t.batch, t.lr, t.warmup) == (50000, 64, 1e-2, 500)
    assert SELECTIVE_SEARCHED["steps"] == t.total_steps
    exact = ReproduceConfig(selective_recipe="searched", paper_exact=True)
    m = model_config(exact, "selective")
    assert (m.discretization, m.use_D) == ("zoh", False)
    m = model_config(ReproduceConfig(selective_recipe="searched", discretization="zoh"), "selective")
    assert (m.discretization, m.use_D) == ("zoh", True)
    # the Residual SSM's recipe does not depend on it
    assert run_config(short, model_config(short, "residual"), train_config(short, "residual", 0)) \
        == run_config(searched, model_config(searched, "residual"),
                      train_config(searched, "residual", 0))
    with pytest.raises(ValueError, match="--selective-recipe"):
        ReproduceConfig(selective_recipe="long")
