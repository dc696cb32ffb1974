"""SSD core (rssm_ref.ssd): chunked vs recurrence, long sequences, an LTI special case
against scipy.signal.lfilter, the ssd_minimal convention, gradients, input checks.

Every expectation is computed independently of the path under test: the chunked path
against the time loop ``ssd_ref``, and both against plain NumPy loops or scipy written
here from the equations (S1)-(S4) of the module docstring.
"""
import autograd
import autograd.numpy as np
import numpy as onp
import pytest

from rssm_ref.tolerances import TOLERANCES
import scipy.signal
from autograd.test_util import check_grads
from hypothesis import given
from hypothesis import strategies as st

from rssm_ref.ssd import (check_ssd_inputs, segsum, ssd_chunked, ssd_dt, ssd_minimal_convention,
                          ssd_params, ssd_ref)
from rssm_ref.tolerances import rel_err

# chunked vs recurrence: the same sums in another order (measured worst ~3e-15)
TOL_CHUNKED = TOLERANCES["chunked_vs_recurrence"]
# gradients of the two paths through autograd (measured worst ~6e-16)
TOL_GRAD = TOLERANCES["vjp_vs_autograd"]


def _plain_softplus(u):
    # written independently of the module's logaddexp form
    return onp.where(u > 30.0, u, onp.log1p(onp.exp(onp.minimum(u, 30.0))))


def _plain_silu(z):
    return z / (1.0 + onp.exp(-z))


def _plain_recurrence(x, dtp, A, B, C, D=None, z=None, H0=None):
    """(S2)-(S4) with plain NumPy, one step at a time, vectorized over batch and heads;
    dtp is the effective step dt'. Heads are paired with groups by explicit indexing."""
    batch, L, h, p = x.shape
    g, n = B.shape[2:]
    grp = onp.arange(h) // (h // g)
    Bh, Ch = B[:, :, grp], C[:, :, grp]
    H = onp.zeros((batch, h, p, n)) if H0 is None else H0.copy()
    y = onp.empty((batch, L, h, p))
    for t in range(L):
        H = (onp.exp(dtp[:, t] * A)[:, :, None, None] * H
             + (dtp[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :])
        y[:, t] = onp.einsum("bhpn,bhn->bhp", H, Ch[:, t])
    if D is not None:
        y = y + (D if D.ndim == 2 else D[:, None]) * x
    if z is not None:
        y = y * _plain_silu(z)
    return y, H


def _compare(P, Q):
    r, c = ssd_ref(**P), ssd_chunked(**P, chunk_size=Q)
    return max(rel_err(c["y"], r["y"]), rel_err(c["final_states"], r["final_states"]))


# ------------------------------------------------------------------ chunked vs the recurrence
# (h, g, p, n, chunk, L, dtA): L = 1, primes, chunk > L, chunk = 1, chunk = L, chunk | L
SHAPES = [
    (1, 1, 1, 1, 1, 1, (1e-6, 50.0)),
    (4, 2, 3, 5, 4, 10, (1e-3, 1.0)),
    (2, 1, 2, 3, 1, 7, (1e-6, 50.0)),
    (6, 3, 2, 4, 16, 13, (1e-6, 50.0)),
    (4, 4, 1, 1, 64, 1, (1e-6, 50.0)),
    (4, 1, 3, 2, 5, 97, (1e-6, 50.0)),
    (2, 2, 4, 8, 128, 67, (1e-2, 50.0)),
    (3, 1, 2, 2, 8, 64, (10.0, 50.0)),
    (2, 1, 3, 3, 32, 211, (1e-6, 1e-3)),
    (4, 2, 2, 2, 31, 31, (1e-6, 50.0)),
    (3, 3, 2, 3, 3, 2, (1e-6, 50.0)),
    (2, 1, 2, 2, 7, 53, (1e-6, 1e-6)),
    (2, 1, 2, 2, 6, 41, (50.0, 50.0)),
]
OPTIONS = [
    {},
    {"D": "h", "z": True, "dt_bias": True, "dt_softplus": True, "initial_states": True},
    {"D": "hp", "A_log": True, "initial_states": True},
    {"dt_bias": True, "dt_softplus": True, "z": True, "D": "hp"},
    {"initial_states": True, "dt_softplus": True, "dt_limit": "mid"},
]


def _params(**kw):
    """ssd_params, with dt_limit="mid": a clamp that binds on both sides (the 25% and 75%
    quantiles of dt')."""
    mid = kw.get("dt_limit") == "mid"
    P = ssd_params(**{k: v for k, v in kw.items() if not (k == "dt_limit" and mid)})
    if mid:
        d = ssd_dt(P["dt"], P.get("dt_bias"), P["dt_softplus"])
        P["dt_limit"] = (float(onp.quantile(d, 0.25)), float(onp.quantile(d, 0.75)))
    return P


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(sorted(o)) or "plain")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}g{}p{}n{}Q{}L{}".format(*s[:6]))
def test_chunked_matches_recurrence(shape, opts):
    h, g, p, n, Q, L, dtA = shape
    P = _params(batch=2, L=L, h=h, g=g, p=p, n=n, seed=L * 31 + Q, dtA=dtA, **opts)
    assert _compare(P, Q) <= TOL_CHUNKED


@given(st.data())
def test_chunked_matches_recurrence_property(data):
    g = data.draw(st.integers(1, 3), "g")
    h = g * data.draw(st.integers(1, 3), "h/g")
    p, n = data.draw(st.integers(1, 4), "p"), data.draw(st.integers(1, 4), "n")
    L = data.draw(st.one_of(st.sampled_from([1, 2, 3, 5, 7, 11, 13, 31, 61, 67]),
                            st.integers(1, 70)), "L")
    Q = data.draw(st.integers(1, 80), "chunk")
    lo = data.draw(st.floats(-6.0, onp.log10(50.0)), "log10 lo")
    hi = data.draw(st.floats(lo, onp.log10(50.0)), "log10 hi")
    opts = {"D": data.draw(st.sampled_from([None, "h", "hp"]), "D"),
            "z": data.draw(st.booleans(), "z"),
            "dt_bias": data.draw(st.booleans(), "dt_bias"),
            "dt_softplus": data.draw(st.booleans(), "dt_softplus"),
            "initial_states": data.draw(st.booleans(), "initial_states"),
            "A_log": data.draw(st.booleans(), "A_log")}
    if data.draw(st.booleans(), "dt_limit"):
        opts["dt_limit"] = "mid"
    P = _params(batch=2, L=L, h=h, g=g, p=p, n=n, seed=data.draw(st.integers(0, 2**31), "seed"),
                dtA=(10.0 ** lo, 10.0 ** hi), **opts)
    assert _compare(P, Q) <= TOL_CHUNKED


def test_chunk_states_are_the_recurrence_states_at_chunk_ends():
    P = ssd_params(batch=2, L=23, h=4, g=2, p=2, n=3, seed=3, initial_states=True, dtA=(1e-3, 5.0))
    out = ssd_chunked(**P, chunk_size=5, return_chunk_states=True)
    ends = [5, 10, 15, 20, 23]
    assert out["chunk_states"].shape == (2, len(ends), 4, 2, 3)
    for c, e in enumerate(ends):
        cut = {k: (v[:, :e] if k in ("x", "dt", "B", "C") else v) for k, v in P.items()}
        want = ssd_ref(**cut)["final_states"]
        assert rel_err(out["chunk_states"][:, c], want) <= TOL_CHUNKED


# ------------------------------------------------------------------ long sequences
def test_long_sequence_is_finite_and_matches_a_plain_loop():
    """L = 65536 with |dt' A| from 1e-6 (head 0: memory of the whole sequence) to 50 (head 1:
    exp(-50) per step, ~10^4 of log-decay per chunk): no overflow, no NaN, and the
    recurrence's numbers. A naive exp(cumsum) / exp(-cumsum) split would be 0 * inf here."""
    rng = onp.random.default_rng(7)
    L, h, p, n = 65536, 2, 2, 2
    A = onp.array([-0.5, -2.0])
    q = onp.stack([onp.exp(rng.uniform(onp.log(1e-6), onp.log(1e-3), L)),
                   onp.exp(rng.uniform(onp.log(1e-2), onp.log(50.0), L))], axis=-1)[None]
    dtp = q / -A
    bias = onp.array([0.3, -0.2])
    raw = dtp + onp.log(-onp.expm1(-dtp)) - bias          # softplus^{-1}, then the bias removed
    x, z = rng.normal(size=(1, L, h, p)), rng.normal(size=(1, L, h, p))
    B, C = rng.normal(size=(1, L, 1, n)), rng.normal(size=(1, L, 1, n))
    D, H0 = rng.normal(size=h), rng.normal(size=(1, h, p, n))
    out = ssd_chunked(x, raw, A, B, C, chunk_size=128, D=D, z=z, dt_bias=bias,
                      initial_states=H0, dt_softplus=True)
    assert onp.all(onp.isfinite(out["y"])) and onp.all(onp.isfinite(out["final_states"]))
    y, H = _plain_recurrence(x, _plain_softplus(raw + bias), A, B, C, D, z, H0)
    assert rel_err(out["y"], y) <= TOL_CHUNKED                # measured 3e-16
    assert rel_err(out["final_states"], H) <= TOL_CHUNKED


def test_segsum_entries_are_own_segment_sums():
    """S[t, s] = a_{s+1} + ... + a_t summed from its own segment: the subdiagonal is a_t
    bit for bit even when the running total is ~1e6 (a difference of two cumulative sums
    is not), the upper triangle is -inf, exp never NaN."""
    rng = onp.random.default_rng(0)
    a = -rng.uniform(0.0, 5000.0, size=(2, 3, 300))
    S = segsum(a)
    assert onp.array_equal(onp.diagonal(S, -1, -2, -1), a[..., 1:])
    cs = onp.cumsum(a, axis=-1)
    assert not onp.array_equal(cs[..., 1:] - cs[..., :-1], a[..., 1:])
    assert onp.all(onp.diagonal(S, 0, -2, -1) == 0.0)
    assert onp.all(onp.isneginf(S[..., onp.triu_indices(300, 1)[0], onp.triu_indices(300, 1)[1]]))
    i, j = 250, 17
    assert S[1, 2, i, j] == pytest.approx(onp.sum(a[1, 2, j + 1:i + 1]), rel=1e-13)
    assert not onp.any(onp.isnan(onp.exp(S)))


# ------------------------------------------------------------------ an LTI special case
@pytest.mark.parametrize("path", ["ref", "chunked"])
def test_scalar_lti_case_matches_lfilter(path):
    """h = g = p = n = 1 with constant dt: H_t = a H_{t-1} + u_t, a = exp(dt' A),
    u_t = dt' x_t B_t is one LTI filter 1 / (1 - a q^-1) on u; y_t = C_t H_t + D x_t."""
    rng = onp.random.default_rng(11)
    L, A, dt_raw, bias, D = 257, onp.array([-0.7]), 0.4, -0.1, onp.array([0.6])
    x, B, C = (rng.normal(size=(1, L, 1, 1)) for _ in range(3))
    z, H0 = rng.normal(size=(1, L, 1, 1)), rng.normal(size=(1, 1, 1, 1))
    dtp = float(_plain_softplus(onp.array(dt_raw + bias)))
    a = onp.exp(dtp * A[0])
    u = dtp * x[0, :, 0, 0] * B[0, :, 0, 0]
    H, _ = scipy.signal.lfilter([1.0], [1.0, -a], u, zi=[a * H0[0, 0, 0, 0]])
    want = (C[0, :, 0, 0] * H + D[0] * x[0, :, 0, 0]) * _plain_silu(z[0, :, 0, 0])
    fn = ssd_ref if path == "ref" else (lambda *a_, **k: ssd_chunked(*a_, chunk_size=16, **k))
    out = fn(x, onp.full((1, L, 1), dt_raw), A, B, C, D=D, z=z, dt_bias=onp.array([bias]),
             initial_states=H0, dt_softplus=True)
    assert rel_err(out["y"][0, :, 0, 0], want) <= TOL_CHUNKED
    assert rel_err(out["final_states"].ravel(), H[-1:]) <= TOL_CHUNKED


def test_per_head_lti_case_matches_lfilter():
    """Constant dt per head, g = 1: every state entry H[i, p, n] is its own LTI filter
    1 / (1 - a_i q^-1) on dt'_i x[t, i, p] B[t, n]; y[t, i, p] = sum_n H[t, i, p, n] C[t, n]."""
    rng = onp.random.default_rng(12)
    L, h, p, n = 101, 3, 2, 3
    A, dts = -onp.array([0.01, 1.0, 20.0]), onp.array([0.5, 1.5, 2.0])
    x, B, C = rng.normal(size=(1, L, h, p)), rng.normal(size=(1, L, 1, n)), rng.normal(size=(1, L, 1, n))
    out = ssd_chunked(x, onp.broadcast_to(dts, (1, L, h)), A, B, C, chunk_size=10)
    for i in range(h):
        a = onp.exp(dts[i] * A[i])
        u = dts[i] * x[0, :, i, :, None] * B[0, :, 0, None, :]                  # (L, p, n)
        H = scipy.signal.lfilter([1.0], [1.0, -a], u, axis=0)
        assert rel_err(out["y"][0, :, i], onp.einsum("tpn,tn->tp", H, C[0, :, 0])) <= TOL_CHUNKED
        assert rel_err(out["final_states"][0, i], H[-1]) <= TOL_CHUNKED


# ------------------------------------------------------------------ dt' and the ssd_minimal mapping
def test_ssd_dt_matches_mamba_conventions():
    rng = onp.random.default_rng(2)
    dt, bias = rng.normal(0.0, 15.0, size=(2, 50, 3)), rng.normal(size=3)
    # mamba_ssm's kernels: softplus(u) = u above 20; ours is exact, the gap below 2.1e-9
    u = dt + bias
    thresholded = onp.where(u <= 20.0, onp.log1p(onp.exp(onp.minimum(u, 20.0))), u)
    assert onp.max(onp.abs(ssd_dt(dt, bias, True) - thresholded)) < 2.1e-9
    assert onp.max(onp.abs(ssd_dt(dt, bias, True) - _plain_softplus(u))) <= 1e-15 * onp.max(u)
    assert onp.array_equal(ssd_dt(dt, bias, False), u)            # no clamp by default
    assert onp.array_equal(ssd_dt(dt, bias, False, (0.1, 2.0)), onp.minimum(onp.maximum(u, 0.1), 2.0))


@pytest.mark.parametrize("h,g", [(3, 1), (4, 2)])
def test_ssd_minimal_convention_is_the_folded_recurrence(h, g):
    """ssd_minimal_discrete's model: H_t = exp(A_t) H_{t-1} + X_t B_t^T, y_t = H_t C_t with
    A_t, X_t already multiplied by dt' and B, C per head. A plain loop in that convention
    on the adapter's arrays equals ssd_chunked (no D, no z), every head, any g."""
    P = ssd_params(batch=2, L=12, h=h, g=g, p=2, n=3, seed=5, dt_bias=True, dt_softplus=True,
                   initial_states=True)
    y = ssd_chunked(**P, chunk_size=4)["y"]
    m = ssd_minimal_convention(**P)
    assert m["B"].shape == (2, 12, h, 3) and m["initial_states"].shape == (2, 1, h, 2, 3)
    H = m["initial_states"][:, 0]
    ys = []
    for t in range(12):
        H = (onp.exp(m["A"][:, t])[..., None, None] * H
             + m["X"][:, t][..., None] * m["B"][:, t][:, :, None, :])
        ys.append(onp.einsum("bhpn,bhn->bhp", H, m["C"][:, t]))
    assert rel_err(onp.stack(ys, 1), y) <= TOL_CHUNKED
    # head i reads group i // (h / g): repeat_interleave, not repeat
    assert onp.array_equal(m["B"][:, :, h - 1], P["B"][:, :, g - 1])


# ------------------------------------------------------------------ gradients
def _loss(path, P, weights, Q=3):
    out = ssd_ref(**P) if path == "ref" else ssd_chunked(**P, chunk_size=Q)
    return np.sum(out["y"] * weights[0]) + np.sum(out["final_states"] * weights[1])


GRAD_CONFIGS = [
    {"D": "h", "z": True, "dt_bias": True, "dt_softplus": True, "initial_states": True},
    {"D": "hp", "A_log": True, "initial_states": True, "dt_bias": True, "dt_softplus": True,
     "z": True, "dt_limit": "mid"},
]
GRAD_ARGS = ["x", "dt", "A", "A_log", "B", "C", "D", "dt_bias", "z", "initial_states"]


def _grad_setup(cfg, L=8):
    P = _params(batch=2, L=L, h=4, g=2, p=2, n=3, seed=9, dtA=(1e-3, 3.0), **cfg)
    rng = onp.random.default_rng(10)
    weights = (rng.normal(size=(2, L, 4, 2)), rng.normal(size=(2, 4, 2, 3)))
    return P, weights


@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=["D_h-z", "D_hp-A_log-limit"])
def test_gradients_chunked_match_recurrence(cfg):
    P, weights = _grad_setup(cfg)
    names = [k for k in GRAD_ARGS if k in P]
    assert len(names) == 9
    for name in names:
        def f(path):
            return autograd.grad(lambda v: _loss(path, {**P, name: v}, weights))(P[name])
        g_ref, g_chk = f("ref"), f("chunked")
        assert onp.all(onp.isfinite(g_chk)) and onp.max(onp.abs(g_ref)) > 0, name
        assert rel_err(g_chk, g_ref) <= TOL_GRAD, name


@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=["D_h-z", "D_hp-A_log-limit"])
def test_check_grads_chunked(cfg):
    P, weights = _grad_setup(cfg, L=5)
    for name in [k for k in GRAD_ARGS if k in P]:
        check_grads(lambda v, name=name: _loss("chunked", {**P, name: v}, weights, Q=2),
                    modes=["rev"], order=1)(P[name])


# ------------------------------------------------------------------ input checks
def _base():
    return ssd_params(batch=2, L=6, h=4, g=2, p=3, n=5, seed=0)


BAD = [
    ("x", {"x": onp.zeros((2, 6, 4))}, r"^x: expected shape \(batch, L, h, p\)"),
    ("x", {"x": onp.zeros((2, 0, 4, 3)), "dt": onp.zeros((2, 0, 4))}, r"^x: .*L >= 1"),
    ("dt", {"dt": onp.zeros((2, 6, 3))}, r"^dt: expected shape \(batch, L, h\) = \(2, 6, 4\)"),
    ("A", {"A": onp.array([-1.0, 0.5, -1.0, -2.0])}, r"^A: .*< 0"),
    ("A", {"A": -onp.ones(3)}, r"^A: expected shape \(h,\) = \(4,\)"),
    ("A", {"A_log": onp.zeros(4)}, r"^A: give exactly one"),
    ("B", {"B": onp.zeros((2, 6, 3, 5)), "C": onp.zeros((2, 6, 3, 5))}, r"^B: ngroups g = 3 does not divide"),
    ("B", {"B": onp.zeros((2, 5, 2, 5))}, r"^B: expected shape \(batch, L, g, n\) = \(2, 6, g, n\)"),
    ("C", {"C": onp.zeros((2, 6, 2, 4))}, r"^C: expected shape \(batch, L, g, n\) = \(2, 6, 2, 5\)"),
    ("D", {"D": onp.zeros((4, 2))}, r"^D: expected shape \(h,\) = \(4,\) or \(h, p\) = \(4, 3\)"),
    ("z", {"z": onp.zeros((2, 6, 4, 2))}, r"^z: expected shape \(batch, L, h, p\)"),
    ("dt_bias", {"dt_bias": onp.zeros(2)}, r"^dt_bias: expected shape \(h,\) = \(4,\)"),
    ("initial_states", {"initial_states": onp.zeros((2, 4, 3, 4))},
     r"^initial_states: expected shape \(batch, h, p, n\) = \(2, 4, 3, 5\)"),
    ("dt_limit", {"dt_limit": (2.0, 1.0)}, r"^dt_limit: "),
]


@pytest.mark.parametrize("path", ["ref", "chunked"])
@pytest.mark.parametrize("name,change,match", BAD, ids=[f"{b[0]}{i}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_argument(path, name, change, match):
    P = {**_base(), **change}
    fn = ssd_ref if path == "ref" else ssd_chunked
    with pytest.raises(ValueError, match=match):
        fn(**P)


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_bad_chunk_size(chunk):
    with pytest.raises(ValueError, match="^chunk_size: "):
        ssd_chunked(**_base(), chunk_size=chunk)


def test_check_returns_dims_and_resolves_A_log():
    P = ssd_params(batch=2, L=6, h=4, g=2, p=3, n=5, seed=0, A_log=True)
    v = check_ssd_inputs(**{k: P[k] for k in ("x", "dt", "B", "C", "A_log")})
    assert v["dims"] == {"batch": 2, "L": 6, "h": 4, "p": 3, "g": 2, "n": 5}
    assert onp.array_equal(v["A"], -onp.exp(P["A_log"]))
