"""A whole Mamba-2 layer (rssm_ref.mamba2_block): fast vs ref, every stage against a plain
NumPy loop, prefill + decoding steps (a Hypothesis sweep and a long sequence), gradients,
validation, and (when installed) HF transformers' Mamba2Mixer in float64.

Every expectation is computed independently of the path under test: the fast path against
the token loop, both against NumPy loops written here from (B1)-(B10), and HF's own code.
"""
import contextlib
import re

import autograd.numpy as np
import numpy as onp
import pytest
from autograd import grad
from autograd.test_util import check_grads
from hypothesis import given, settings, strategies as st

from rssm_ref.mamba2_block import (OPTIONAL, REQUIRED, mamba2_block, mamba2_block_params,
                                   mamba2_block_ref, mamba2_block_step, rms_norm_gated,
                                   validate_mamba2_block)
from rssm_ref.tolerances import TOLERANCES, rel_err

KEYS_OUT = ("y", "zxbcdt", "xBC_conv", "dt", "y_ssd", "y_norm", "y_inner", "conv_state",
            "ssm_state")
LIMIT = (0.05, 0.8)


def _case(d, h, p, g, n, W, d_mlp, D, norm, nbg, bias, init, batch, L, chunk, limit=False):
    return dict(d=d, h=h, p=p, g=g, n=n, W=W, d_mlp=d_mlp, D=D, norm=norm, nbg=nbg, bias=bias,
                init=init, batch=batch, L=L, chunk=chunk, limit=limit)


CASES = {
    "g1": _case(4, 2, 2, 1, 3, 4, 0, "h", True, False, True, None, 2, 7, 3),
    "g2-hp-nbg-W": _case(5, 4, 2, 2, 2, 3, 0, "hp", True, True, False, "W", 1, 9, 4),
    "mlp-g3-W-1-limit": _case(3, 6, 1, 3, 2, 2, 3, "h", True, False, True, "W-1", 2, 6, 5, True),
    "nonorm-mlp-L<W": _case(4, 2, 3, 2, 2, 4, 2, "hp", False, False, True, "W", 2, 3, 2),
    "g=h-nbg-L<W": _case(6, 4, 2, 4, 1, 3, 0, "h", True, True, False, None, 3, 2, 256),
    "nonorm-W-1-limit": _case(2, 3, 2, 1, 4, 2, 1, "hp", False, False, False, "W-1", 1, 11, 4, True),
}


def _setup(c, seed=0):
    """Params away from their initial values (random A_log, D, dt_bias, norm.weight) and a
    layer width d independent of d_inner, so no special structure hides an error."""
    d, h, p, g = c["d"], c["h"], c["p"], c["g"]
    d_ssm = h * p
    d_inner = d_ssm + c["d_mlp"]
    P = mamba2_block_params(d_inner, d_state=c["n"], d_conv=c["W"], expand=1, headdim=p,
                            ngroups=g, d_ssm=d_ssm, D_has_hdim=c["D"] == "hp", rmsnorm=c["norm"],
                            bias=c["bias"], conv_bias=c["bias"], seed=seed)
    rng = onp.random.default_rng(100 + seed)
    rows = P["in_proj.weight"].shape[0]
    P["in_proj.weight"] = rng.uniform(-d ** -0.5, d ** -0.5, size=(rows, d))
    P["out_proj.weight"] = rng.uniform(-d_inner ** -0.5, d_inner ** -0.5, size=(d, d_inner))
    if c["bias"]:
        P["out_proj.bias"] = rng.normal(scale=0.3, size=d)
    P["A_log"] = P["A_log"] + rng.normal(scale=0.5, size=h)
    P["D"] = rng.normal(size=P["D"].shape)
    P["dt_bias"] = rng.uniform(-3.0, 1.0, size=h)
    if c["norm"]:
        P["norm.weight"] = rng.uniform(0.5, 1.5, size=d_ssm)
    u = rng.normal(size=(c["batch"], c["L"], d))
    conv_dim = d_ssm + 2 * g * c["n"]
    cs = None if c["init"] is None else rng.normal(
        size=(c["batch"], conv_dim, c["W"] if c["init"] == "W" else c["W"] - 1))
    ss = None if c["init"] is None else rng.normal(size=(c["batch"], h, p, c["n"]))
    opts = {"ngroups": g, "norm_before_gate": c["nbg"]}
    if c["limit"]:
        opts["dt_limit"] = LIMIT
    return P, u, cs, ss, opts


def _silu(x):
    return x / (1.0 + onp.exp(-x))


# ------------------------------------------------------------------ fast vs ref
@pytest.mark.parametrize("name", list(CASES))
def test_fast_vs_ref(name):
    c = CASES[name]
    P, u, cs, ss, opts = _setup(c)
    fast = mamba2_block(P, u, cs, ss, chunk_size=c["chunk"], **opts)
    ref = mamba2_block_ref(P, u, cs, ss, **opts)
    assert set(fast) == set(ref) == set(KEYS_OUT)
    for k in KEYS_OUT:
        assert fast[k].shape == ref[k].shape, k
        assert rel_err(fast[k], ref[k]) <= TOLERANCES["fast_vs_ref"], (k, rel_err(fast[k], ref[k]))


def test_chunk_size_changes_only_round_off():
    P, u, cs, ss, opts = _setup(CASES["g2-hp-nbg-W"])
    outs = [mamba2_block(P, u, cs, ss, chunk_size=q, **opts) for q in (1, 2, 4, 5, 9, 64)]
    for o in outs[1:]:
        for k in ("y", "y_ssd", "ssm_state"):
            assert rel_err(o[k], outs[0][k]) <= TOLERANCES["chunked_vs_recurrence"], k


# ------------------------------------------------------------------ a plain NumPy loop
def _numpy_layer(P, u, cs, ss, c, group_size=None):
    """(B1)-(B10) with plain NumPy and explicit loops over time, taps, heads and groups."""
    batch, L, _ = u.shape
    h, p, g, n, W, m = c["h"], c["p"], c["g"], c["n"], c["W"], c["d_mlp"]
    s, gn = h * p, g * n
    conv_dim = s + 2 * gn
    zx = u @ P["in_proj.weight"].T + P.get("in_proj.bias", 0.0)
    z0, x0, z = zx[..., :m], zx[..., m:2 * m], zx[..., 2 * m:2 * m + s]
    xBC, dt_raw = zx[..., 2 * m + s:2 * m + s + conv_dim], zx[..., 2 * m + s + conv_dim:]
    state = onp.zeros((batch, conv_dim, W)) if cs is None else onp.array(cs)
    if state.shape[-1] == W - 1:                      # causal-conv1d's layout
        state = onp.concatenate([onp.zeros((batch, conv_dim, 1)), state], axis=2)
    xpad = onp.concatenate([state.transpose(0, 2, 1), xBC], axis=1)      # time j - W
    w = P["conv1d.weight"][:, 0, :]
    conv = onp.zeros((batch, L, conv_dim)) + P.get("conv1d.bias", 0.0)
    for t in range(L):
        for k in range(W):
            conv[:, t] += w[:, k] * xpad[:, t + 1 + k]
    act = _silu(conv)
    x = act[..., :s].reshape(batch, L, h, p)
    B = act[..., s:s + gn].reshape(batch, L, g, n)
    C = act[..., s + gn:].reshape(batch, L, g, n)
    dt = onp.log1p(onp.exp(dt_raw + P["dt_bias"]))
    if c["limit"]:
        dt = onp.minimum(onp.maximum(dt, LIMIT[0]), LIMIT[1])
    A = -onp.exp(P["A_log"])
    Dhp = onp.broadcast_to(P["D"].reshape(h, -1), (h, p))
    y = onp.zeros((batch, L, h, p))
    H = onp.zeros((batch, h, p, n)) if ss is None else onp.array(ss)
    for b in range(batch):
        for i in range(h):
            grp = i // (h // g)
            for t in range(L):
                H[b, i] = (onp.exp(dt[b, t, i] * A[i]) * H[b, i]
                           + dt[b, t, i] * onp.outer(x[b, t, i], B[b, t, grp]))
                y[b, t, i] = H[b, i] @ C[b, t, grp] + Dhp[i] * x[b, t, i]
    y = y.reshape(batch, L, s)
    if not c["norm"]:
        y_ssd = y * _silu(z)
        y_norm = y_ssd
    else:
        y_ssd, y_norm = y, onp.zeros_like(y)
        G = s // g if group_size is None else group_size
        for j in range(s // G):
            sl = slice(j * G, (j + 1) * G)
            v = y[..., sl] if c["nbg"] else y[..., sl] * _silu(z[..., sl])
            out = v / onp.sqrt(onp.mean(v * v, axis=-1, keepdims=True) + 1e-5) * P["norm.weight"][sl]
            y_norm[..., sl] = out * _silu(z[..., sl]) if c["nbg"] else out
    y_inner = onp.concatenate([_silu(z0) * x0, y_norm], axis=-1) if m else y_norm
    return {"y": y_inner @ P["out_proj.weight"].T + P.get("out_proj.bias", 0.0),
            "zxbcdt": zx, "xBC_conv": act, "dt": dt, "y_ssd": y_ssd, "y_norm": y_norm,
            "y_inner": y_inner, "conv_state": xpad[:, -W:].transpose(0, 2, 1), "ssm_state": H}


@pytest.mark.parametrize("name", list(CASES))
def test_every_stage_matches_a_plain_numpy_loop(name):
    c = CASES[name]
    P, u, cs, ss, opts = _setup(c, seed=1)
    want = _numpy_layer(P, u, cs, ss, c)
    for got in (mamba2_block(P, u, cs, ss, chunk_size=c["chunk"], **opts),
                mamba2_block_ref(P, u, cs, ss, **opts)):
        for k in KEYS_OUT:
            assert rel_err(got[k], want[k]) <= TOLERANCES["fast_vs_ref"], (k, rel_err(got[k], want[k]))


def test_norm_group_size_whole_width_and_the_norm_alone():
    c = CASES["g2-hp-nbg-W"]
    P, u, cs, ss, opts = _setup(c, seed=2)
    d_ssm = c["h"] * c["p"]
    whole = mamba2_block(P, u, cs, ss, norm_group_size=d_ssm, **opts)
    want = _numpy_layer(P, u, cs, ss, c, group_size=d_ssm)
    assert rel_err(whole["y"], want["y"]) <= TOLERANCES["fast_vs_ref"]
    per_group = mamba2_block(P, u, cs, ss, **opts)
    assert rel_err(whole["y"], per_group["y"]) > 1e-3        # the option is not a no-op
    # the norm by itself: each group of G channels has unit RMS before the weight
    y = onp.random.default_rng(3).normal(size=(2, 3, 12)) * onp.repeat([1.0, 10.0, 0.1], 4)
    out = rms_norm_gated(y, None, onp.ones(12), 4, eps=0.0)
    rms = onp.sqrt(onp.mean(out.reshape(2, 3, 3, 4) ** 2, axis=-1))
    assert onp.max(onp.abs(rms - 1.0)) <= 1e-14


def test_conv_state_is_the_last_W_inputs_zero_padded_on_the_left():
    for L in (2, 9):
        c = dict(CASES["g1"], L=L, init=None, bias=True)
        P, u, _, _, opts = _setup(c)
        zx = u @ P["in_proj.weight"].T + P["in_proj.bias"]
        xBC = zx[..., 4:4 + 10]                                 # after z (d_ssm = 4)
        expected = onp.concatenate([onp.zeros((2, 4, 10)), xBC], axis=1)[:, -4:].transpose(0, 2, 1)
        for f in (mamba2_block, mamba2_block_ref):
            assert onp.max(onp.abs(f(P, u, **opts)["conv_state"] - expected)) == 0.0


def test_the_two_conv_state_layouts_give_the_same_layer():
    P, u, cs, ss, opts = _setup(CASES["g2-hp-nbg-W"])
    a = mamba2_block(P, u, cs, ss, **opts)
    b = mamba2_block(P, u, cs[:, :, 1:], ss, **opts)
    for k in KEYS_OUT:
        assert onp.max(onp.abs(a[k] - b[k])) == 0.0, k


# ------------------------------------------------------------------ prefill + decoding
def _prefill_then_step(P, u, L, k, cs, ss, chunk, opts):
    pre = mamba2_block(P, u[:, :L], cs, ss, chunk_size=chunk, **opts)
    c, s, ys = pre["conv_state"], pre["ssm_state"], []
    for j in range(k):
        y, c, s = mamba2_block_step(P, u[:, L + j], c, s, **opts)
        ys.append(y)
    return onp.concatenate([pre["y"], onp.stack(ys, axis=1)], axis=1), c, s


@pytest.mark.parametrize("name,L,k,chunk", [("g1", 1, 5, 4), ("g2-hp-nbg-W", 3, 4, 2),
                                            ("mlp-g3-W-1-limit", 8, 3, 3),
                                            ("nonorm-mlp-L<W", 2, 4, 256),
                                            ("g2-hp-nbg-W", 2048, 3, 256),
                                            ("mlp-g3-W-1-limit", 2048, 2, 100)])
def test_prefill_then_steps_equals_the_whole_sequence(name, L, k, chunk):
    c = dict(CASES[name], L=L + k)
    P, u, cs, ss, opts = _setup(c, seed=L)
    whole = mamba2_block(P, u, cs, ss, chunk_size=chunk, **opts)
    y, cst, sst = _prefill_then_step(P, u, L, k, cs, ss, chunk, opts)
    tol = TOLERANCES["prefill_vs_forward"]
    assert rel_err(y, whole["y"]) <= tol, rel_err(y, whole["y"])
    assert rel_err(y[:, L:], whole["y"][:, L:]) <= tol
    assert rel_err(cst, whole["conv_state"]) <= tol
    assert rel_err(sst, whole["ssm_state"]) <= tol, rel_err(sst, whole["ssm_state"])


@st.composite
def layers(draw):
    g = draw(st.integers(1, 3))
    h = g * draw(st.integers(1, 3))
    c = _case(d=draw(st.integers(1, 5)), h=h, p=draw(st.integers(1, 3)), g=g,
              n=draw(st.integers(1, 3)), W=draw(st.integers(2, 4)), d_mlp=draw(st.integers(0, 2)),
              D=draw(st.sampled_from(["h", "hp"])), norm=draw(st.booleans()),
              nbg=draw(st.booleans()), bias=draw(st.booleans()),
              init=draw(st.sampled_from([None, "W", "W-1"])), batch=draw(st.integers(1, 2)),
              L=0, chunk=draw(st.integers(1, 8)), limit=draw(st.booleans()))
    L = draw(st.one_of(st.integers(1, c["W"] + 1), st.integers(1, 40)))
    k = draw(st.integers(1, 5))
    return dict(c, L=L + k), L, k, draw(st.integers(0, 2 ** 16))


@settings(max_examples=100, deadline=None, database=None)
@given(layers())
def test_hypothesis_prefill_then_steps_equals_one_forward(drawn):
    c, L, k, seed = drawn
    P, u, cs, ss, opts = _setup(c, seed=seed)
    whole = mamba2_block(P, u, cs, ss, chunk_size=c["chunk"], **opts)
    y, cst, sst = _prefill_then_step(P, u, L, k, cs, ss, c["chunk"], opts)
    tol = TOLERANCES["prefill_vs_forward"]
    assert rel_err(y, whole["y"]) <= tol
    assert rel_err(cst, whole["conv_state"]) <= tol
    assert rel_err(sst, whole["ssm_state"]) <= tol


# ------------------------------------------------------------------ gradients
def _loss(f, G, opts):
    def loss(P, u, cs, ss):
        o = f(P, u, cs, ss, **opts)
        return (np.sum(o["y"] * G["y"]) + np.sum(o["conv_state"] * G["conv_state"])
                + np.sum(o["ssm_state"] * G["ssm_state"]) + np.sum(np.sin(o["y_ssd"]))
                + np.sum(np.sin(o["dt"])))
    return loss


@pytest.mark.parametrize("name", ["g2-hp-nbg-W", "mlp-g3-W-1-limit", "nonorm-mlp-L<W", "g1"])
def test_gradients_fast_vs_ref(name):
    c = CASES[name]
    P, u, cs, ss, opts = _setup(c)
    conv_dim = c["h"] * c["p"] + 2 * c["g"] * c["n"]
    if cs is None:                      # then take gradients w.r.t. explicit zero states
        cs = onp.zeros((c["batch"], conv_dim, c["W"]))
        ss = onp.zeros((c["batch"], c["h"], c["p"], c["n"]))
    o = mamba2_block(P, u, cs, ss, **opts)
    rng = onp.random.default_rng(7)
    G = {k: rng.normal(size=o[k].shape) for k in ("y", "conv_state", "ssm_state")}

    def fast(P, u, cs, ss, **kw):
        return mamba2_block(P, u, cs, ss, chunk_size=c["chunk"], **kw)

    g_fast = grad(_loss(fast, G, opts), (0, 1, 2, 3))(P, u, cs, ss)
    g_ref = grad(_loss(mamba2_block_ref, G, opts), (0, 1, 2, 3))(P, u, cs, ss)
    pairs = [(k, g_fast[0][k], g_ref[0][k]) for k in P]
    pairs += [("hidden_states", g_fast[1], g_ref[1]), ("conv_state", g_fast[2], g_ref[2]),
              ("ssm_state", g_fast[3], g_ref[3])]
    for key, a, b in pairs:
        assert a.shape == b.shape and onp.max(onp.abs(b)) > 0, key
        assert rel_err(a, b) <= TOLERANCES["fast_vs_ref"], (key, rel_err(a, b))


def test_check_grads_fast_path_and_step():
    c = _case(3, 4, 2, 2, 2, 3, 1, "hp", True, False, True, "W", 2, 4, 3)
    P, u, cs, ss, opts = _setup(c, seed=3)
    onp.random.seed(0)      # check_grads draws its random directions from the global RNG

    def fast(P, u, cs, ss):
        o = mamba2_block(P, u, cs, ss, chunk_size=3, **opts)
        return np.concatenate([np.ravel(o["y"]), np.ravel(o["conv_state"]),
                               np.ravel(o["ssm_state"])])

    check_grads(fast, argnum=(0, 1, 2, 3), modes=["rev"], order=1)(P, u, cs, ss)

    def step(P, tok, cs, ss):
        y, cn, sn = mamba2_block_step(P, tok, cs, ss, **opts)
        return np.concatenate([np.ravel(y), np.ravel(cn), np.ravel(sn)])

    check_grads(step, argnum=(0, 1, 2, 3), modes=["rev"], order=1)(P, u[:, 0], cs, ss)


# ------------------------------------------------------------------ parameters
def test_params_follow_mamba_ssm_initialisation():
    d, n, W, p, g = 16, 5, 3, 8, 2
    P = mamba2_block_params(d, d_state=n, d_conv=W, headdim=p, ngroups=g, seed=1)
    d_inner = 2 * d
    h = d_inner // p
    assert P["in_proj.weight"].shape == (2 * d_inner + 2 * g * n + h, d)
    assert P["conv1d.weight"].shape == (d_inner + 2 * g * n, 1, W)
    assert P["out_proj.weight"].shape == (d, d_inner)
    A = onp.exp(P["A_log"])
    assert A.shape == (h,) and A.min() >= 1.0 and A.max() <= 16.0 and len(set(A)) == h
    dt = onp.log1p(onp.exp(P["dt_bias"]))
    assert dt.min() >= 1e-3 * (1 - 1e-12) and dt.max() <= 0.1 * (1 + 1e-12)
    assert onp.array_equal(P["D"], onp.ones(h)) and onp.array_equal(P["norm.weight"], onp.ones(d_inner))
    assert onp.abs(P["in_proj.weight"]).max() <= d ** -0.5
    assert onp.abs(P["conv1d.weight"]).max() <= W ** -0.5
    assert onp.abs(P["out_proj.weight"]).max() <= d_inner ** -0.5
    assert set(P) == set(REQUIRED) | {"conv1d.bias", "norm.weight"}
    Q = mamba2_block_params(d, d_state=n, d_conv=W, headdim=p, ngroups=g, seed=1, bias=True,
                            conv_bias=False, rmsnorm=False, D_has_hdim=True, conv_init=0.01)
    assert set(Q) == set(REQUIRED) | {"in_proj.bias", "out_proj.bias"}
    assert onp.array_equal(Q["D"], onp.ones(d_inner)) and onp.abs(Q["conv1d.weight"]).max() <= 0.01
    assert all(onp.array_equal(P[k], Q[k]) for k in REQUIRED if k not in ("D", "conv1d.weight"))
    M = mamba2_block_params(d, d_state=n, headdim=p, d_ssm=16, seed=1)        # d_mlp = 16
    assert M["in_proj.weight"].shape == (2 * d_inner + 2 * n + 2, d)
    assert validate_mamba2_block(M, ngroups=1)["dims"]["d_mlp"] == 16
    for kwargs, key in [({"headdim": 5}, "headdim"), ({"ngroups": 3}, "ngroups"),
                        ({"d_ssm": 40}, "d_ssm"), ({"A_init_range": (0, 2)}, "A_init_range")]:
        with pytest.raises(ValueError, match=key):
            mamba2_block_params(d, **{"headdim": p, **kwargs})


# ------------------------------------------------------------------ validation
def _bad(P, key, value):
    Q = dict(P)
    if value is None:
        del Q[key]
    else:
        Q[key] = value
    return Q


def test_validation_errors_name_the_key_and_shape():
    c = _case(4, 4, 2, 2, 3, 4, 0, "h", True, False, True, "W", 2, 5, 4)
    P, u, cs, ss, opts = _setup(c)          # d_ssm 8, h 4, p 2, g 2, n 3, conv_dim 20, rows 32
    NN = _bad(P, "norm.weight", None)
    cases = [
        (_bad(P, "D", None), {}, "'D'", "(h,) or (d_ssm,)"),
        (_bad(P, "D", onp.zeros(5)), {}, "'D'", "(h,) = (4,) or (d_ssm,) = (8,)"),
        (_bad(P, "norm.wieght", onp.ones(8)), {}, "norm.wieght", "'norm.weight'"),
        (_bad(P, "dt_bias", onp.zeros(3)), {}, "dt_bias", "(h,) = (4,)"),
        (_bad(P, "conv1d.weight", P["conv1d.weight"][:, 0]), {}, "conv1d.weight", "(conv_dim, 1, W)"),
        (_bad(P, "conv1d.weight", P["conv1d.weight"][:-1]), {}, "conv1d.weight", "positive even"),
        (_bad(P, "in_proj.weight", P["in_proj.weight"][:-1]), {}, "in_proj.weight",
         "(d_in_proj, d) = (32, 4)"),
        (_bad(NN, "in_proj.weight", P["in_proj.weight"][:10]), {}, "in_proj.weight",
         "d_ssm = 2 d_inner + conv_dim + h - rows"),
        (_bad(P, "A_log", onp.zeros(3)), {}, "A_log", "h = 3 heads do not divide d_ssm = 8"),
        (_bad(P, "out_proj.weight", P["out_proj.weight"][:3]), {}, "out_proj.weight",
         "(d, d_inner) = (4, 8)"),
        (_bad(P, "norm.weight", onp.ones(9)), {}, "norm.weight", "d_inner = 8"),
        (_bad(P, "conv1d.bias", onp.ones(3)), {}, "conv1d.bias", "(conv_dim,) = (20,)"),
        (P, {"ngroups": None}, "ngroups", "g·n = 6"),
        (P, {"ngroups": 4}, "ngroups", "does not divide g·n = 6"),
        (P, {"ngroups": 3}, "ngroups", "does not divide h = 4"),
        (P, {"ngroups": 2, "d_state": 2}, "d_state", "g·n = 6"),
        (P, {"ngroups": None, "d_state": 4}, "d_state", "does not divide g·n = 6"),
        (P, {"headdim": 4}, "headdim", "p = d_ssm / h = 2"),
        (P, {"norm_group_size": 3}, "norm_group_size", "dividing d_ssm = 8"),
        (NN, {"norm_group_size": 8}, "norm_group_size", "no 'norm.weight'"),
        (P, {"dt_limit": (1.0, 0.0)}, "dt_limit", "lo <= hi"),
        (P, {"eps": 0.0}, "eps", "> 0"),
        (P, {"norm_before_gate": "yes"}, "norm_before_gate", "True or False"),
        (P, {"chunk_size": 0}, "chunk_size", ">= 1"),
    ]
    for Q, extra, key, text in cases:
        kw = {**opts, **extra}
        kw = {k: v for k, v in kw.items() if v is not None}
        with pytest.raises(ValueError, match=re.escape(key)) as err:
            mamba2_block(Q, u, **kw)
        assert text in str(err.value) and "\n" not in str(err.value), str(err.value)
    for kwargs, name, shape in [
            ({"hidden_states": u[..., :3]}, "hidden_states", "(batch, L, d)"),
            ({"hidden_states": u[:, :0]}, "hidden_states", "L >= 1"),
            ({"hidden_states": u, "conv_state": cs[:, :, :2]}, "conv_state", "(2, 20, 4)"),
            ({"hidden_states": u, "conv_state": cs[:1]}, "conv_state", "(batch, conv_dim, W - 1)"),
            ({"hidden_states": u, "ssm_state": ss[:, :, :1]}, "ssm_state", "(2, 4, 2, 3)"),
            ({"token": u[:, 0], "conv_state": cs[:, :, 1:]}, "conv_state", "(2, 20, 4)"),
            ({"token": u[:, 0, :2]}, "token", "(batch, d)")]:
        with pytest.raises(ValueError, match=re.escape(name)) as err:
            validate_mamba2_block(P, **kwargs, **opts)
        assert shape in str(err.value), str(err.value)
    with pytest.raises(ValueError, match="conv_state"):
        mamba2_block_step(P, u[:, 0], cs[:, :, 1:], ss, **opts)   # the step takes (batch, conv_dim, W)
    assert set(OPTIONAL) <= set(P)
    dims = validate_mamba2_block(P, d_state=3, headdim=2)["dims"]
    assert (dims["g"], dims["n"], dims["p"], dims["d_mlp"]) == (2, 3, 2, 0)


# ------------------------------------------------------------------ HF transformers (optional)
def _hf():
    torch = pytest.importorskip("torch", reason="torch is not importable: pip install torch "
                                                "transformers to compare against HF's Mamba2Mixer")
    M = pytest.importorskip("transformers.models.mamba2.modeling_mamba2",
                            reason="transformers (with Mamba2) is not importable: pip install "
                                   "transformers")
    from transformers import Mamba2Config
    return torch, M, Mamba2Config


@contextlib.contextmanager
def _float32_casts_lifted(torch, M):
    """HF's torch path in float64 still casts to float32 on purpose: A = -exp(A_log.float()),
    the scan's x, B, C and dt .float(), the decoding step's dt.float() * A.float(), and the
    gated norm's .to(torch.float32). This redirects those casts (only in HF's module, only
    inside the block) to float64, so HF's own algorithm can be held to float64."""
    float_ = torch.Tensor.float

    def keep64(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else float_(self, *args, **kwargs)

    class Torch64:
        def __getattr__(self, name):
            return torch.float64 if name == "float32" else getattr(torch, name)

    module_torch = M.torch
    torch.Tensor.float, M.torch = keep64, Torch64()
    try:
        yield
    finally:
        torch.Tensor.float, M.torch = float_, module_torch


def _hf_mixer(g, limit=None, seed=0):
    torch, M, Mamba2Config = _hf()
    h, p, n, d = 4, 3, 3, 6
    cfg = Mamba2Config(hidden_size=d, num_heads=h, head_dim=p, state_size=n, n_groups=g,
                       conv_kernel=4, expand=2, chunk_size=5, num_hidden_layers=1, use_bias=True,
                       use_conv_bias=True, vocab_size=8,
                       time_step_limit=(0.0, float("inf")) if limit is None else limit)
    torch.manual_seed(seed)
    mixer = M.Mamba2Mixer(cfg, layer_idx=0).double().eval()     # eval: the torch path
    rng = onp.random.default_rng(seed)
    with torch.no_grad():
        for _, prm in mixer.named_parameters():
            prm.copy_(torch.tensor(rng.uniform(-0.6, 0.6, size=tuple(prm.shape))))
        mixer.dt_bias.copy_(torch.tensor(rng.uniform(-3.0, 0.5, size=h)))
        mixer.norm.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, size=h * p)))
    P = {k: v.detach().numpy().copy() for k, v in mixer.state_dict().items()}
    assert set(P) == set(REQUIRED) | set(OPTIONAL)
    u = rng.normal(size=(2, 13, d))
    G = rng.normal(size=(2, 13, d))
    return torch, M, mixer, cfg, P, u, G


def _hf_forward_and_grads(torch, mixer, u, G):
    ut = torch.tensor(u, requires_grad=True)
    for prm in mixer.parameters():
        prm.grad = None
    y = mixer(ut)
    (y * torch.tensor(G)).sum().backward()
    out = {"y": y.detach().numpy(), "hidden_states": ut.grad.numpy()}
    out.update({k: prm.grad.numpy() for k, prm in mixer.named_parameters()})
    return out


def _ours_forward_and_grads(P, u, G, opts):
    y = mamba2_block(P, u, chunk_size=5, **opts)["y"]
    gP, gu = grad(lambda P, u: np.sum(mamba2_block(P, u, chunk_size=5, **opts)["y"] * G),
                  (0, 1))(P, u)
    return dict(gP, y=y, hidden_states=gu)


@pytest.mark.parametrize("g,limit", [(1, None), (2, None), (2, (0.05, 0.8))],
                         ids=["g1", "g2", "g2-limit"])
def test_hf_mixer_float64_forward_and_every_gradient(g, limit):
    torch, M, mixer, _, P, u, G = _hf_mixer(g, limit)
    opts = {"ngroups": g} if limit is None else {"ngroups": g, "dt_limit": limit}
    ours = _ours_forward_and_grads(P, u, G, opts)
    with _float32_casts_lifted(torch, M):
        lifted = _hf_forward_and_grads(torch, mixer, u, G)
    shipped = _hf_forward_and_grads(torch, mixer, u, G)
    assert set(lifted) == set(ours)
    for k in ours:
        err = rel_err(lifted[k], ours[k])
        assert err <= TOLERANCES["third_party_float64"], (k, err)
        # as shipped, HF rounds through float32 (the casts above): float32-sized gaps
        assert rel_err(shipped[k], ours[k]) <= TOLERANCES["third_party_float32_cast"], k
    assert rel_err(shipped["y"], ours["y"]) > TOLERANCES["third_party_float64"], \
        "HF's Mamba2 torch path no longer rounds to float32: drop _float32_casts_lifted"


def test_hf_groups_normalize_per_group_not_over_the_whole_width():
    torch, M, mixer, _, P, u, G = _hf_mixer(2)
    with _float32_casts_lifted(torch, M), torch.no_grad():
        y = mixer(torch.tensor(u)).numpy()
    per_group = mamba2_block(P, u, ngroups=2)["y"]
    whole = mamba2_block(P, u, ngroups=2, norm_group_size=12)["y"]
    assert rel_err(y, per_group) <= TOLERANCES["third_party_float64"]
    assert rel_err(y, whole) > 1e-2


@pytest.mark.parametrize("limit", [None, (0.05, 0.8)], ids=["nolimit", "limit"])
def test_hf_cache_prefill_then_decoding_steps(limit):
    """HF's cache: a prefill, then one token at a time. Its decoding step, like mamba_ssm's
    Mamba2.step, drops time_step_limit: with a limit it equals our steps without one."""
    torch, M, mixer, cfg, P, u, _ = _hf_mixer(2, limit, seed=1)
    from transformers.cache_utils import DynamicCache
    L, T = 9, u.shape[1]
    pre_opts = {"ngroups": 2} if limit is None else {"ngroups": 2, "dt_limit": limit}
    pre = mamba2_block(P, u[:, :L], chunk_size=5, **pre_opts)
    ys, cs, ss = [pre["y"]], pre["conv_state"], pre["ssm_state"]
    for t in range(L, T):
        y, cs, ss = mamba2_block_step(P, u[:, t], cs, ss, ngroups=2)
        ys.append(y[:, None])
    ours = onp.concatenate(ys, axis=1)
    if limit is None:
        whole = mamba2_block(P, u, chunk_size=5, ngroups=2)["y"]
        assert rel_err(ours, whole) <= TOLERANCES["prefill_vs_forward"]
    for lifted in (True, False):
        tol = TOLERANCES["third_party_float64" if lifted else "third_party_float32_cast"]
        cache = DynamicCache(config=cfg)
        ctx = _float32_casts_lifted(torch, M) if lifted else contextlib.nullcontext()
        with ctx, torch.no_grad():
            hf = [mixer(torch.tensor(u[:, :L]), cache=cache).numpy()]
            for t in range(L, T):
                hf.append(mixer(torch.tensor(u[:, t:t + 1]), cache=cache).numpy())
        assert rel_err(onp.concatenate(hf, axis=1), ours) <= tol, (lifted, limit)
        # HF keeps mamba_ssm's layouts: conv (batch, conv_dim, W), recurrent (batch, h, p, n)
        assert rel_err(cache.get_conv_state(0).numpy(), cs) <= tol
        assert rel_err(cache.get_recurrent_state(0).numpy(), ss) <= tol
