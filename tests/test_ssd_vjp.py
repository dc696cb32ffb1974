"""The hand-written chunked VJP of the SSD forward (rssm_ref.kernels.ssd, (V1)-(V5)).

Every gradient is checked against paths that share none of its backward code: autograd
through the time loop ``ssd_ref`` (and through the traced einsums ``ssd_chunked_ref`` for
the chunk states, which the loop has not), finite differences (``check_grads``), and on a
long sequence a plain NumPy adjoint recursion written here from (S2)-(S3).
"""
import autograd
import autograd.numpy as np
import numpy as onp
import pytest
from autograd.test_util import check_grads

from rssm_ref.kernels.ssd import segsum, segsum_vjp, ssd_core
from rssm_ref.ssd import ssd_chunked, ssd_chunked_ref, ssd_dt, ssd_params, ssd_ref
from rssm_ref.tolerances import TOLERANCES, rel_err

TOL = TOLERANCES["ssd_vjp_vs_autograd"]
ARGS = ["x", "dt", "A", "A_log", "B", "C", "D", "dt_bias", "z", "initial_states"]


def _params(**kw):
    """ssd_params; dt_limit="mid" is a clamp that binds on both sides (dt' quantiles 25%, 75%)."""
    mid = kw.get("dt_limit") == "mid"
    P = ssd_params(**{k: v for k, v in kw.items() if not (k == "dt_limit" and mid)})
    if mid:
        d = ssd_dt(P["dt"], P.get("dt_bias"), P["dt_softplus"])
        P["dt_limit"] = (float(onp.quantile(d, 0.25)), float(onp.quantile(d, 0.75)))
    return P


def _weights(P, seed=0, chunks=None):
    rng = onp.random.default_rng(seed)
    batch, _, h, p = P["x"].shape
    n = P["B"].shape[-1]
    w = [rng.normal(size=P["x"].shape), rng.normal(size=(batch, h, p, n))]
    if chunks is not None:
        w.append(rng.normal(size=(batch, chunks, h, p, n)))
    return w


def _loss(fn, P, names, W, Q=None):
    def f(args):
        kw = {**P, **dict(zip(names, args))}
        if Q is not None:
            kw.update(chunk_size=Q, return_chunk_states=len(W) > 2)
        out = fn(**kw)
        total = np.sum(out["y"] * W[0]) + np.sum(out["final_states"] * W[1])
        if len(W) > 2:
            total = total + np.sum(out["chunk_states"] * W[2])
        return total
    return f


# ------------------------------------------------------------- against autograd through ssd_ref
# (h, g, p, n, chunk, L, |dt' A| range): L not a multiple of the chunk, chunk > L, L = 1,
# g < h and g = h, chunk 1
SHAPES = [
    (4, 2, 3, 2, 4, 10, (1e-3, 3.0)),
    (2, 2, 2, 3, 16, 7, (1e-3, 50.0)),
    (3, 1, 2, 2, 5, 1, (1e-2, 5.0)),
    (6, 3, 2, 2, 3, 13, (1e-6, 50.0)),
    (2, 1, 1, 1, 1, 5, (1e-3, 1.0)),
]
OPTIONS = [
    {},
    {"D": "h", "z": True, "initial_states": True},
    {"D": "hp", "dt_softplus": True, "dt_bias": True, "A_log": True},
    {"D": "hp", "z": True, "dt_softplus": True, "dt_bias": True, "initial_states": True,
     "dt_limit": "mid"},
    {"dt_limit": "mid", "initial_states": True},        # the clamp on the raw step
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(sorted(o)) or "plain")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}g{}p{}n{}Q{}L{}".format(*s[:6]))
def test_every_gradient_matches_autograd_through_the_loop(shape, opts):
    h, g, p, n, Q, L, dtA = shape
    P = _params(batch=2, L=L, h=h, g=g, p=p, n=n, seed=7 * L + Q, dtA=dtA, **opts)
    names = [k for k in ARGS if k in P]
    W = _weights(P, seed=L)
    want = autograd.grad(_loss(ssd_ref, P, names, W))([P[k] for k in names])
    got = autograd.grad(_loss(ssd_chunked, P, names, W, Q))([P[k] for k in names])
    for name, a, b in zip(names, got, want):
        assert onp.all(onp.isfinite(a)), name
        assert rel_err(a, b) <= TOL, (name, rel_err(a, b))
    if "dt_limit" in P:
        # the clamp binds on both sides, so its gradient rule is exercised
        pre = ssd_dt(P["dt"], P.get("dt_bias"), P["dt_softplus"])
        outside = (pre < P["dt_limit"][0]) | (pre > P["dt_limit"][1])
        assert outside.any() and (~outside).any()


@pytest.mark.parametrize("Q,L", [(4, 10), (3, 9), (16, 5), (1, 4)])
def test_chunk_states_cotangent_matches_autograd_through_the_einsums(Q, L):
    P = _params(batch=2, L=L, h=4, g=2, p=2, n=3, seed=Q, dtA=(1e-3, 10.0), D="h", z=True,
                dt_bias=True, dt_softplus=True, initial_states=True)
    names = [k for k in ARGS if k in P]
    W = _weights(P, seed=1, chunks=-(-L // Q))
    want = autograd.grad(_loss(ssd_chunked_ref, P, names, W, Q))([P[k] for k in names])
    got = autograd.grad(_loss(ssd_chunked, P, names, W, Q))([P[k] for k in names])
    for name, a, b in zip(names, got, want):
        assert rel_err(a, b) <= TOL, (name, rel_err(a, b))


# ------------------------------------------------------------------ finite differences
CHECK_CONFIGS = [
    {"D": "h", "z": True, "dt_bias": True, "dt_softplus": True, "initial_states": True},
    {"D": "hp", "A_log": True, "dt_bias": True, "dt_softplus": True, "initial_states": True,
     "z": True, "dt_limit": "mid"},
]


@pytest.mark.parametrize("cfg", CHECK_CONFIGS, ids=["D_h-z", "D_hp-A_log-limit"])
def test_check_grads_in_every_argument(cfg):
    P = _params(batch=2, L=5, h=4, g=2, p=2, n=2, seed=3, dtA=(1e-2, 3.0), **cfg)
    W = _weights(P, seed=2, chunks=3)
    names = [k for k in ARGS if k in P]
    assert len(names) == 9
    for name in names:
        f = _loss(ssd_chunked, P, [name], W, Q=2)
        check_grads(lambda v, f=f: f([v]), modes=["rev"], order=1)(P[name])


# ------------------------------------------------------------------ the clamp's rule
def test_clamp_gradient_is_zero_strictly_outside_and_passes_at_the_bounds():
    P = _params(batch=2, L=9, h=2, g=1, p=2, n=2, seed=5, dtA=(1e-2, 2.0), dt_limit="mid")
    W = _weights(P)
    gdt = autograd.grad(lambda v: _loss(ssd_chunked, P, ["dt"], W, 4)([v]))(P["dt"])
    lo, hi = P["dt_limit"]
    outside = (P["dt"] < lo) | (P["dt"] > hi)
    assert onp.all(gdt[outside] == 0.0) and onp.all(gdt[~outside] != 0.0)
    # a step exactly on the lower bound (nothing below it): mamba_ssm passes its gradient
    # (np.clip's rule would zero it), so the gradient equals the one without a clamp
    P = ssd_params(batch=1, L=6, h=2, g=1, p=2, n=2, seed=6)
    at = onp.unravel_index(onp.argmin(P["dt"]), P["dt"].shape)
    lo = float(P["dt"][at])
    assert onp.sum(P["dt"] <= lo) == 1
    grads = {}
    for limit in [(lo, 1e9), (0.0, onp.inf)]:
        f = _loss(ssd_chunked, dict(P, dt_limit=limit), ["dt"], _weights(P), 3)
        grads[limit] = autograd.grad(lambda v: f([v]))(P["dt"])
    clamped, free = grads.values()
    assert clamped[at] != 0.0 and onp.array_equal(clamped, free)


# ------------------------------------------------------------------ long sequences
def _adjoint_loop(x, dtp, A, B, C, H0, gy, gF):
    """Gradients of sum(y gy) + sum(H_{L-1} gF) for (S2)-(S3) without D, z or (S1): the
    adjoint recursion Hbar_t = gy_t C_t^T + exp(a_{t+1}) Hbar_{t+1}, one step at a time."""
    batch, L, h, p = x.shape
    g, n = B.shape[2:]
    r = h // g
    grp = onp.arange(h) // r
    Bh, Ch = B[:, :, grp], C[:, :, grp]
    e = onp.exp(dtp * A)
    X = x * dtp[..., None]
    Hs = onp.empty((L + 1, batch, h, p, n))
    Hs[0] = H0
    for t in range(L):
        Hs[t + 1] = e[:, t, :, None, None] * Hs[t] + X[:, t, :, :, None] * Bh[:, t, :, None, :]
    dX, dBh, dCh = onp.empty_like(X), onp.empty_like(Bh), onp.empty_like(Ch)
    de = onp.empty_like(e)
    Hbar = gF.copy()
    for t in range(L - 1, -1, -1):
        dCh[:, t] = onp.einsum("bhpn,bhp->bhn", Hs[t + 1], gy[:, t])
        Hbar = Hbar + gy[:, t, :, :, None] * Ch[:, t, :, None, :]
        dX[:, t] = onp.einsum("bhpn,bhn->bhp", Hbar, Bh[:, t])
        dBh[:, t] = onp.einsum("bhpn,bhp->bhn", Hbar, X[:, t])
        de[:, t] = onp.einsum("bhpn,bhpn->bh", Hbar, Hs[t])
        Hbar = e[:, t, :, None, None] * Hbar
    da = de * e
    group_sum = lambda v: v.reshape(batch, L, g, r, n).sum(axis=3)
    return {"x": dX * dtp[..., None], "dt": onp.sum(dX * x, axis=-1) + da * A,
            "A": onp.sum(da * dtp, axis=(0, 1)), "B": group_sum(dBh), "C": group_sum(dCh),
            "initial_states": Hbar}


def test_long_sequence_gradients_are_finite_and_match_a_plain_adjoint_loop():
    """L = 4096, |dt' A| log-uniform on [1e-6, 50]: exp(-50) per step and ~10^4 of
    log-decay per chunk underflow to exact zeros, never inf * 0."""
    P = ssd_params(batch=1, L=4096, h=2, g=1, p=2, n=2, seed=11, dtA=(1e-6, 50.0),
                   initial_states=True)
    names = ["x", "dt", "A", "B", "C", "initial_states"]
    W = _weights(P, seed=4)
    out = ssd_chunked(**P, chunk_size=64)
    assert onp.all(onp.isfinite(out["y"])) and onp.all(onp.isfinite(out["final_states"]))
    got = autograd.grad(_loss(ssd_chunked, P, names, W, 64))([P[k] for k in names])
    want = _adjoint_loop(P["x"], P["dt"], P["A"], P["B"], P["C"], P["initial_states"], *W)
    for name, a in zip(names, got):
        assert onp.all(onp.isfinite(a)), name
        assert rel_err(a, want[name]) <= TOL, (name, rel_err(a, want[name]))


def test_long_sequence_every_option_is_finite_and_matches_autograd_through_the_einsums():
    P = ssd_params(batch=1, L=4096, h=2, g=2, p=2, n=2, seed=12, dtA=(1e-6, 50.0), D="hp",
                   z=True, dt_bias=True, dt_softplus=True, initial_states=True)
    P["dt_limit"] = (1e-4, 30.0)
    names = [k for k in ARGS if k in P]
    W = _weights(P, seed=5, chunks=32)
    got = autograd.grad(_loss(ssd_chunked, P, names, W, 128))([P[k] for k in names])
    want = autograd.grad(_loss(ssd_chunked_ref, P, names, W, 128))([P[k] for k in names])
    for name, a, b in zip(names, got, want):
        assert onp.all(onp.isfinite(a)), name
        assert rel_err(a, b) <= TOL, (name, rel_err(a, b))


# ------------------------------------------------------------------ the pieces
def test_segsum_vjp_is_the_adjoint_of_segsum():
    rng = onp.random.default_rng(0)
    a, W = -rng.uniform(0.0, 3.0, size=(2, 3, 9)), rng.normal(size=(2, 3, 9, 9))
    want = autograd.grad(lambda v: np.sum(np.exp(segsum(v)) * W))(a)
    assert rel_err(segsum_vjp(W * onp.exp(segsum(a))), want) <= TOL


def test_forward_is_the_reference_bit_for_bit():
    for Q, opts in [(4, {"D": "h", "z": True}), (64, {"initial_states": True, "A_log": True})]:
        P = _params(batch=2, L=11, h=4, g=2, p=2, n=3, seed=Q, dt_limit="mid", **opts)
        a = ssd_chunked(**P, chunk_size=Q, return_chunk_states=True)
        b = ssd_chunked_ref(**P, chunk_size=Q, return_chunk_states=True)
        for k in a:
            assert onp.array_equal(a[k], b[k]), k


def test_vjp_without_parked_forward_recomputes_the_same_gradients():
    P = ssd_params(batch=2, L=7, h=2, g=1, p=2, n=2, seed=8, D="h", z=True,
                   initial_states=True)
    args = [P[k] for k in ("x", "dt", "A", "B", "C", "D", "z")]

    def loss(vals, keep):
        y, final, _ = ssd_core(*vals, None, P["initial_states"], False, 0.0, onp.inf, 3, keep)
        return np.sum(y ** 2) + np.sum(final)
    kept = autograd.grad(lambda v: loss(v, True))(args)
    again = autograd.grad(lambda v: loss(v, False))(args)
    for a, b in zip(kept, again):
        assert onp.array_equal(a, b)
