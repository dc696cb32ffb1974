"""A whole Mamba-1 layer (rssm_ref.mamba_block): fast vs ref, prefill + decoding steps,
the conv against numpy.convolve / scipy.signal.correlate, the scan against a plain loop,
gradients, validation, and (when installed) mambapy's MambaBlock in float64."""
import inspect
import math
import re

import autograd.numpy as np
import numpy as onp
import pytest

from rssm_ref.tolerances import TOLERANCES
import scipy.signal
from autograd import grad
from autograd.test_util import check_grads

from rssm_ref.mamba_block import (OPTIONAL, REQUIRED, conv_state_to_initial_states,
                                  initial_states_to_conv_state, mamba_block, mamba_block_params,
                                  mamba_block_ref, mamba_block_step, validate_mamba_block)

KEYS_OUT = ("y", "xz", "x_conv", "x_act", "delta", "y_ssm", "z", "conv_state", "ssm_state")

# (d, N, W, R, expand, biases, initial states, batch, L); R != ceil(d / 16) where it matters
CASES = [(4, 3, 2, 2, 2, True, None, 2, 7),
         (6, 2, 3, 3, 2, False, "W", 1, 9),
         (5, 4, 4, 2, 3, True, "W-1", 3, 6),
         (8, 3, 4, 1, 2, False, None, 2, 3),       # L < W
         (3, 5, 3, 4, 2, True, "W", 2, 2),         # L < W with an initial state
         (7, 2, 2, 3, 1, True, "W-1", 1, 11)]


def _setup(d, N, W, R, expand, biases, init, batch, L, seed=0):
    """Params away from their initial values (random A_log, D, a wider Δ range), so no
    special structure (A_log rows equal, D = 1, Δ ≈ 0) hides an error."""
    P = mamba_block_params(d, d_state=N, d_conv=W, expand=expand, dt_rank=R, seed=seed,
                           conv_bias=biases, bias=biases)
    rng = onp.random.default_rng(100 + seed)
    E = expand * d
    P["A_log"] = P["A_log"] + rng.normal(scale=0.5, size=(E, N))
    P["D"] = rng.normal(size=E)
    P["dt_proj.bias"] = rng.uniform(-3.0, 1.0, size=E)
    h = rng.normal(size=(batch, L, d))
    cs = None if init is None else rng.normal(size=(batch, E, W if init == "W" else W - 1))
    ss = None if init is None else rng.normal(size=(batch, E, N))
    return P, h, cs, ss


def _maxabs(a, b):
    return float(onp.max(onp.abs(onp.asarray(a) - onp.asarray(b))))


def _silu(x):
    return x / (1.0 + onp.exp(-x))


@pytest.mark.parametrize("case", CASES, ids=[f"d{c[0]}N{c[1]}W{c[2]}R{c[3]}{c[6]}" for c in CASES])
def test_fast_vs_ref(case):
    P, h, cs, ss = _setup(*case)
    fast, ref = mamba_block(P, h, cs, ss), mamba_block_ref(P, h, cs, ss)
    assert set(fast) == set(ref) == set(KEYS_OUT)
    for k in KEYS_OUT:
        assert fast[k].shape == ref[k].shape, k
        assert _maxabs(fast[k], ref[k]) <= TOLERANCES['fast_vs_ref'], (k, _maxabs(fast[k], ref[k]))


@pytest.mark.parametrize("L,k,W,init", [(1, 5, 4, False), (2, 3, 4, False), (3, 4, 4, True),
                                        (4, 2, 4, False), (9, 6, 2, True), (2048, 4, 3, False)])
def test_prefill_then_steps_equals_the_whole_sequence(L, k, W, init):
    P, h, cs, ss = _setup(4, 3, W, 2, 2, True, "W" if init else None, 2, L + k, seed=L)
    whole = mamba_block(P, h, cs, ss)
    pre = mamba_block(P, h[:, :L], cs, ss)
    c, s = pre["conv_state"], pre["ssm_state"]
    for j in range(k):
        y, c, s = mamba_block_step(P, h[:, L + j], c, s)
        assert _maxabs(y, whole["y"][:, L + j]) <= TOLERANCES['prefill_vs_forward'], (j, _maxabs(y, whole["y"][:, L + j]))
    assert _maxabs(c, whole["conv_state"]) <= TOLERANCES['prefill_vs_forward']
    assert _maxabs(s, whole["ssm_state"]) <= TOLERANCES['prefill_vs_forward']
    assert _maxabs(pre["y"], whole["y"][:, :L]) <= TOLERANCES['prefill_vs_forward']


def test_conv_state_is_the_last_W_inputs_zero_padded_on_the_left():
    P, h, _, _ = _setup(4, 2, 4, 1, 2, True, None, 2, 2)
    x = (h @ P["in_proj.weight"].T + P["in_proj.bias"])[..., :8]          # (M1), x first
    expected = onp.concatenate([onp.zeros((2, 2, 8)), x], axis=1).transpose(0, 2, 1)
    for f in (mamba_block, mamba_block_ref):
        assert _maxabs(f(P, h)["conv_state"], expected) == 0.0
    P, h, _, _ = _setup(4, 2, 3, 1, 2, False, None, 1, 10)
    x = (h @ P["in_proj.weight"].T)[..., :8]
    assert _maxabs(mamba_block(P, h)["conv_state"], x[:, -3:].transpose(0, 2, 1)) == 0.0


@pytest.mark.parametrize("W,init", [(2, False), (3, True), (4, False), (4, True)])
def test_conv_matches_numpy_convolve_and_scipy_correlate(W, init):
    P, h, cs, ss = _setup(3, 2, W, 1, 2, True, "W-1" if init else None, 2, 13)
    x = (h @ P["in_proj.weight"].T + P["in_proj.bias"])[..., :6]
    outs = (mamba_block(P, h, cs, ss), mamba_block_ref(P, h, cs, ss))
    for b, e in [(0, 0), (1, 4)]:
        past = cs[b, e] if init else onp.zeros(W - 1)
        xpad = onp.concatenate([past, x[b, :, e]])
        w = P["conv1d.weight"][e, 0]
        by_convolve = onp.convolve(xpad, w[::-1], mode="valid") + P["conv1d.bias"][e]
        by_correlate = scipy.signal.correlate(xpad, w, mode="valid", method="direct")
        by_correlate = by_correlate + P["conv1d.bias"][e]
        for out in outs:
            assert _maxabs(out["x_conv"][b, :, e], by_convolve) <= TOLERANCES['fast_vs_ref']
            assert _maxabs(out["x_conv"][b, :, e], by_correlate) <= TOLERANCES['fast_vs_ref']


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]], ids=["zero", "init-W-1", "init-W"])
def test_every_stage_matches_a_plain_numpy_loop(case):
    """(M1), (M3)-(M9) in plain NumPy, the scan (M7)-(M8) per channel and per token."""
    d, N, W, R, expand, biases, init, batch, L = case
    P, h, cs, ss = _setup(*case)
    E = expand * d
    b_in = P.get("in_proj.bias", onp.zeros(2 * E))
    b_out = P.get("out_proj.bias", onp.zeros(d))
    xz = h @ P["in_proj.weight"].T + b_in
    for out in (mamba_block(P, h, cs, ss), mamba_block_ref(P, h, cs, ss)):
        assert _maxabs(out["xz"], xz) <= TOLERANCES['fast_vs_ref'] and _maxabs(out["z"], xz[..., E:]) <= TOLERANCES['fast_vs_ref']
        x_act = _silu(out["x_conv"])
        assert _maxabs(out["x_act"], x_act) <= TOLERANCES['fast_vs_ref']
        x_dbl = x_act @ P["x_proj.weight"].T
        delta = onp.log1p(onp.exp(x_dbl[..., :R] @ P["dt_proj.weight"].T + P["dt_proj.bias"]))
        assert _maxabs(out["delta"], delta) <= TOLERANCES['fast_vs_ref']
        Bm, Cm = x_dbl[..., R:R + N], x_dbl[..., R + N:]
        A = -onp.exp(P["A_log"])
        y_ssm = onp.zeros((batch, L, E))
        last = onp.zeros((batch, E, N))
        for b in range(batch):
            for e in range(E):
                state = onp.zeros(N) if ss is None else ss[b, e].copy()
                for t in range(L):
                    dt, u = delta[b, t, e], x_act[b, t, e]
                    state = onp.exp(dt * A[e]) * state + dt * Bm[b, t] * u
                    y_ssm[b, t, e] = state @ Cm[b, t] + P["D"][e] * u
                last[b, e] = state
        assert _maxabs(out["y_ssm"], y_ssm) <= TOLERANCES['fast_vs_ref']
        assert _maxabs(out["ssm_state"], last) <= TOLERANCES['fast_vs_ref']
        y = (y_ssm * _silu(xz[..., E:])) @ P["out_proj.weight"].T + b_out
        assert _maxabs(out["y"], y) <= TOLERANCES['fast_vs_ref']


def _loss(f, G):
    def loss(P, h, cs, ss):
        o = f(P, h, cs, ss)
        return (np.sum(o["y"] * G["y"]) + np.sum(o["conv_state"] * G["conv_state"])
                + np.sum(o["ssm_state"] * G["ssm_state"]) + np.sum(np.sin(o["x_act"])))
    return loss


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[3]], ids=["W", "W-1", "zero"])
def test_gradients_fast_vs_ref(case):
    P, h, cs, ss = _setup(*case)
    if cs is None:                      # then take gradients w.r.t. explicit zero states
        d, N, W, _, expand, _, _, batch, _ = case
        cs, ss = onp.zeros((batch, expand * d, W)), onp.zeros((batch, expand * d, N))
    o = mamba_block(P, h, cs, ss)
    rng = onp.random.default_rng(7)
    G = {k: rng.normal(size=o[k].shape) for k in ("y", "conv_state", "ssm_state")}
    g_fast = grad(_loss(mamba_block, G), (0, 1, 2, 3))(P, h, cs, ss)
    g_ref = grad(_loss(mamba_block_ref, G), (0, 1, 2, 3))(P, h, cs, ss)
    pairs = [(k, g_fast[0][k], g_ref[0][k]) for k in P]
    pairs += [("hidden_states", g_fast[1], g_ref[1]), ("conv_state", g_fast[2], g_ref[2]),
              ("ssm_state", g_fast[3], g_ref[3])]
    assert set(P) >= set(REQUIRED)
    for name, a, b in pairs:
        assert a.shape == b.shape and onp.max(onp.abs(b)) > 0, name
        rel = onp.max(onp.abs(a - b)) / onp.max(onp.abs(b))
        assert rel <= TOLERANCES['vjp_vs_autograd'], (name, rel)


def test_check_grads_fast_path_and_step():
    P, h, cs, ss = _setup(2, 2, 3, 2, 2, True, "W", 2, 4, seed=3)
    onp.random.seed(0)      # check_grads draws its random directions from the global RNG

    def fast(P, h, cs, ss):
        o = mamba_block(P, h, cs, ss)
        return np.concatenate([np.ravel(o["y"]), np.ravel(o["conv_state"]),
                               np.ravel(o["ssm_state"])])

    check_grads(fast, argnum=(0, 1, 2, 3), modes=["rev"], order=1)(P, h, cs, ss)

    def step(P, tok, cs, ss):
        y, c, s = mamba_block_step(P, tok, cs, ss)
        return np.concatenate([np.ravel(y), np.ravel(c), np.ravel(s)])

    check_grads(step, argnum=(0, 1, 2, 3), modes=["rev"], order=1)(P, h[:, 0], cs, ss)


def test_the_two_conv_state_layouts_give_the_same_layer():
    P, h, cs, ss = _setup(4, 3, 4, 2, 2, True, "W", 2, 5)
    init = conv_state_to_initial_states(cs)
    assert _maxabs(init, cs[:, :, 1:]) == 0.0 and init.shape == (2, 8, 3)
    back = initial_states_to_conv_state(init)
    assert _maxabs(back[:, :, 1:], cs[:, :, 1:]) == 0.0 and not back[:, :, 0].any()
    a, b, c = (mamba_block(P, h, s, ss) for s in (cs, init, back))
    for k in KEYS_OUT:
        assert _maxabs(a[k], b[k]) == 0.0 and _maxabs(a[k], c[k]) == 0.0, k


def test_params_follow_mamba_ssm_initialisation():
    P = mamba_block_params(40, d_state=5, d_conv=3, expand=2, seed=1)
    E, R = 80, math.ceil(40 / 16)
    assert P["dt_proj.weight"].shape == (E, R) and P["x_proj.weight"].shape == (R + 10, E)
    assert onp.array_equal(P["A_log"], onp.log(onp.tile(onp.arange(1.0, 6.0), (E, 1))))
    dt = onp.log1p(onp.exp(P["dt_proj.bias"]))
    assert dt.min() >= 1e-3 * (1 - 1e-12) and dt.max() <= 0.1 * (1 + 1e-12)
    assert onp.array_equal(P["D"], onp.ones(E))
    assert onp.abs(P["in_proj.weight"]).max() <= 40 ** -0.5
    assert onp.abs(P["conv1d.weight"]).max() <= 3 ** -0.5
    assert onp.abs(P["dt_proj.weight"]).max() <= R ** -0.5
    assert set(P) == set(REQUIRED) | {"conv1d.bias"}
    Pb = mamba_block_params(40, d_state=5, d_conv=3, seed=1, bias=True, conv_bias=False)
    assert set(Pb) == set(REQUIRED) | {"in_proj.bias", "out_proj.bias"}
    assert all(onp.array_equal(P[k], Pb[k]) for k in REQUIRED)


def _bad(P, key, value):
    Q = dict(P)
    if value is None:
        del Q[key]
    else:
        Q[key] = value
    return Q


def test_validation_errors_name_the_key_and_shape():
    P, h, cs, ss = _setup(4, 3, 4, 2, 2, True, "W", 2, 5)
    cases = [
        (_bad(P, "D", None), "'D'", "(E,)"),
        (_bad(P, "x_proj.weight", P["x_proj.weight"][:-1]), "x_proj.weight", "(R + 2N, E) = (8, 8)"),
        (_bad(P, "dt_proj.weight", P["dt_proj.weight"][:, :1]), "x_proj.weight", "R=1"),
        (_bad(P, "conv1d.weight", P["conv1d.weight"][:4]), "conv1d.weight", "(E, 1, W) = (8, 1, 4)"),
        (_bad(P, "conv1d.weight", P["conv1d.weight"][:, 0]), "conv1d.weight", "(E, 1, W)"),
        (_bad(P, "in_proj.weight", P["in_proj.weight"][:-1]), "in_proj.weight", "(2E, d) = (16, 4)"),
        (_bad(P, "out_proj.bias", onp.zeros(3)), "out_proj.bias", "(d,) = (4,)"),
        (_bad(P, "D", onp.zeros(7)), "'D'", "(E,) = (8,)"),
        (_bad(P, "in_proj.bais", onp.zeros(16)), "in_proj.bais", "in_proj.bias"),
    ]
    for Q, key, shape in cases:
        with pytest.raises(ValueError, match=re.escape(key)) as err:
            mamba_block(Q, h)
        assert shape in str(err.value), str(err.value)
    for kwargs, name, shape in [
            ({"hidden_states": h[..., :3]}, "hidden_states", "(batch, L, d)"),
            ({"hidden_states": h[:, :0]}, "hidden_states", "L >= 1"),
            ({"hidden_states": h, "conv_state": cs[:, :, :2]}, "conv_state", "(2, 8, 4)"),
            ({"hidden_states": h, "conv_state": cs[:1]}, "conv_state", "(batch, E, W - 1)"),
            ({"hidden_states": h, "ssm_state": ss[:, :, :2]}, "ssm_state", "(2, 8, 3)"),
            ({"token": h[:, 0], "conv_state": cs[:, :, 1:]}, "conv_state", "(2, 8, 4)"),
            ({"token": h[:, 0, :2]}, "token", "(batch, d)")]:
        with pytest.raises(ValueError, match=re.escape(name)) as err:
            validate_mamba_block(P, **kwargs)
        assert shape in str(err.value), str(err.value)
    with pytest.raises(ValueError, match="conv_state"):
        mamba_block_step(P, h[:, 0], cs[:, :, 1:], ss)    # the step takes (batch, E, W) only
    assert set(OPTIONAL) <= set(P)


# ------------------------------------------------------------------ mambapy (optional)
def test_mambapy_float64_block_forward_and_step():
    torch = pytest.importorskip("torch", reason="torch is not importable: pip install torch "
                                                "mambapy to compare against mambapy's MambaBlock")
    mp = pytest.importorskip("mambapy.mamba", reason="mambapy is not importable: pip install mambapy")
    d, N, W, R, batch, L = 6, 4, 4, 3, 2, 16
    torch.manual_seed(0)
    cfg = mp.MambaConfig(d_model=d, n_layers=1, d_state=N, d_conv=W, dt_rank=R,
                         expand_factor=2, bias=True, conv_bias=True, pscan=True)
    blk = mp.MambaBlock(cfg).double()
    rng = onp.random.default_rng(5)
    with torch.no_grad():
        for name, p in blk.named_parameters():
            # away from the initial values; D as float32-representable numbers (see below)
            p.copy_(torch.tensor(rng.uniform(-0.6, 0.6, size=tuple(p.shape)), dtype=p.dtype))
        blk.D.copy_(blk.D.float().double())
    P = {k: v.detach().numpy().copy() for k, v in blk.state_dict().items()}
    assert set(P) == set(REQUIRED) | set(OPTIONAL)
    if "A_log.float()" in inspect.getsource(type(blk).ssm):
        # mambapy takes A = -exp(A_log.float()) in float32: hand our A_log the log of that A
        P["A_log"] = onp.log(torch.exp(blk.A_log.detach().float()).double().numpy())
    h = rng.normal(size=(batch, L, d))
    with torch.no_grad():
        got = blk(torch.tensor(h))
        got = (got[0] if isinstance(got, tuple) else got).numpy()
        ours = mamba_block(P, h)
        assert _maxabs(got, ours["y"]) <= TOLERANCES['third_party_float64'], _maxabs(got, ours["y"])
        # mambapy's step cache is causal-conv1d's layout: the last W - 1 inputs
        hid = torch.zeros(batch, 2 * d, N, dtype=torch.float64)
        cache = (hid, torch.zeros(batch, 2 * d, W - 1, dtype=torch.float64))
        c, s = None, None
        for t in range(5):
            y_t, cache = blk.step(torch.tensor(h[:, t]), cache)
            mine, c, s = mamba_block_step(P, h[:, t], c, s)
            assert _maxabs(y_t.numpy(), mine) <= TOLERANCES['third_party_float64']
        assert _maxabs(cache[0].numpy(), s) <= TOLERANCES['third_party_float64']
        assert _maxabs(cache[1].numpy(), conv_state_to_initial_states(c)) <= TOLERANCES['third_party_float64']
