"""A whole Mamba-1 layer in float64 (Gu & Dao 2023, Algorithm 2 and Fig. 3) and its decoding step.

The layer is mamba_ssm's ``Mamba`` module (the slow path of ``Mamba.forward`` and
``Mamba.step``; mambapy's ``MambaBlock`` and HF's ``MambaMixer`` compute the same), with
parameters under its PyTorch ``state_dict`` names. For one sequence h (L, d):

    (M1)  xz = h W_inᵀ + b_in;            x = xz[..., :E],  z = xz[..., E:]    (x first)
    (M2)  x_conv[t, e] = Σ_{k=0}^{W-1} w[e, k] x̃[t + k, e] + b_conv[e]
          x̃ = [s_{W-1} ; x]: the W-1 inputs before t = 0 (zeros, or an initial state),
          then x; a causal depthwise cross-correlation, w[e, W-1] weighs the current token
    (M3)  x_act = silu(x_conv) = x_conv σ(x_conv)
    (M4)  [dt_low | B | C] = x_act W_xᵀ                      widths R, N, N
    (M5)  Δ = softplus(dt_low W_dtᵀ + b_dt)                   b_dt added once
    (M6)  A = -exp(A_log)
    (M7)  h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t ⊙ x_act,t) ⊗ B_t     Euler B (selective_scan_ref)
    (M8)  y_ssm,t = h_t C_t + D ⊙ x_act,t                        output after the update
    (M9)  y = (y_ssm ⊙ silu(z)) W_outᵀ + b_out

and the decoding step (``Mamba.step``) keeps the last W conv inputs s (E, W), oldest first:

    (M10) s ← [s[:, 1:], x_t];   x_conv,t = Σ_k s[:, k] w[:, k] + b_conv;   then (M3)-(M9)

Two conv-state layouts (convert with ``conv_state_to_initial_states`` and
``initial_states_to_conv_state``):

* ``conv_state`` (batch, E, W): mamba_ssm's ``Mamba.step`` / ``InferenceParams`` and HF's
  ``MambaCache``; columns oldest..newest of the last W conv *inputs* x (not x_conv),
  zero-padded on the left when fewer than W tokens were seen. Its oldest column is
  rolled out by the next step before it is read, so it never affects an output.
  This is what every function here returns.
* ``initial_states`` (batch, E, W - 1): causal-conv1d's ``initial_states`` /
  ``final_states`` and mambapy's step cache ``inputs``; the last W - 1 inputs only.

``mamba_block`` and ``mamba_block_ref`` accept either (told apart by the last dimension);
``mamba_block_step`` takes the (batch, E, W) one, as ``Mamba.step`` does.

softplus here is log(1 + e^x) everywhere; torch's ``F.softplus`` and the CUDA scan return
x itself above 20, a difference below e^-20 ≈ 2.1e-9 there (Δ's pre-activation is ≈ -4
to -2 at mamba_ssm's initialisation, far from it).

Glossary (shapes; mamba_ssm's names in brackets)
-----------------------------------------------
batch, L             sequences, tokens
d [d_model]          layer width;      E [d_inner] = expand · d
N [d_state]          states per channel;  W [d_conv] conv width;  R [dt_rank]
hidden_states (batch, L, d);  token (batch, d);  y (batch, L, d)
in_proj.weight (2E, d), in_proj.bias (2E,) optional        W_in, b_in
conv1d.weight (E, 1, W), conv1d.bias (E,) optional         w = conv1d.weight[:, 0, :], b_conv
x_proj.weight (R + 2N, E)                                   W_x
dt_proj.weight (E, R), dt_proj.bias (E,)                    W_dt, b_dt
A_log (E, N), D (E,)
out_proj.weight (d, E), out_proj.bias (d,) optional         W_out, b_out
xz (batch, L, 2E); x_conv, x_act, delta, y_ssm, z (batch, L, E)
conv_state (batch, E, W);  ssm_state (batch, E, N) = h_L

>>> P = mamba_block_params(d_model=4, d_state=3, d_conv=3, seed=0)
>>> h = onp.random.default_rng(0).normal(size=(2, 5, 4))
>>> out = mamba_block(P, h)
>>> out["y"].shape, out["conv_state"].shape, out["ssm_state"].shape
((2, 5, 4), (2, 8, 3), (2, 8, 3))
>>> ref = mamba_block_ref(P, h)
>>> bool(onp.abs(out["y"] - ref["y"]).max() < 1e-12)
True
"""
import difflib
import math

import autograd.numpy as np
import numpy as onp

from rssm_ref.kernels.nonlinear import silu, softplus
from rssm_ref.selective_ssm import A_from_log, linear_scan
from rssm_ref.validation import check_array

__all__ = ["mamba_block_ref", "mamba_block_step", "mamba_block", "conv_state_to_initial_states",
           "initial_states_to_conv_state", "mamba_block_params", "validate_mamba_block",
           "check_layer_states", "check_layer_keys",
           "REQUIRED", "OPTIONAL"]

REQUIRED = ("in_proj.weight", "conv1d.weight", "x_proj.weight", "dt_proj.weight",
            "dt_proj.bias", "A_log", "D", "out_proj.weight")
OPTIONAL = ("in_proj.bias", "conv1d.bias", "out_proj.bias")
_SYMBOLS = {"in_proj.weight": "(2E, d)", "in_proj.bias": "(2E,)", "conv1d.weight": "(E, 1, W)",
            "conv1d.bias": "(E,)", "x_proj.weight": "(R + 2N, E)", "dt_proj.weight": "(E, R)",
            "dt_proj.bias": "(E,)", "A_log": "(E, N)", "D": "(E,)", "out_proj.weight": "(d, E)",
            "out_proj.bias": "(d,)"}
_NDIM = {k: s.count(",") + 1 - s.endswith(",)") for k, s in _SYMBOLS.items()}
_PARTS = ("xz", "x_conv", "x_act", "delta", "y_ssm", "z")


# ------------------------------------------------------------------ the _ref twin
def mamba_block_ref(params, hidden_states, conv_state=None, ssm_state=None):
    """The layer (M1)-(M9) as one loop over time calling ``mamba_block_step`` per token.

    hidden_states (batch, L, d); conv_state (batch, E, W) or causal-conv1d's (batch, E,
    W - 1), None for zeros; ssm_state (batch, E, N), None for zeros. Returns a dict:
    y (batch, L, d); xz (batch, L, 2E); x_conv, x_act, delta, y_ssm, z (batch, L, E);
    conv_state (batch, E, W) and ssm_state (batch, E, N) after the last token.

    >>> P = mamba_block_params(d_model=2, d_state=2, d_conv=2, seed=1)
    >>> h = onp.random.default_rng(1).normal(size=(1, 3, 2))
    >>> out = mamba_block_ref(P, h)
    >>> y0, _, _ = mamba_block_step(P, h[:, 0], None, None)
    >>> bool(onp.allclose(out["y"][:, 0], y0, rtol=0, atol=1e-15))
    True
    """
    v = validate_mamba_block(params, hidden_states, conv_state, ssm_state)
    P, L = v["params"], onp.shape(v["hidden_states"])[1]
    cs, ss = v["conv_state"], v["ssm_state"]
    parts = {k: [] for k in ("y",) + _PARTS}
    for t in range(L):
        y, cs, ss, mid = mamba_block_step(P, v["hidden_states"][:, t], cs, ss,
                                          intermediates=True)
        parts["y"].append(y)
        for k in _PARTS:
            parts[k].append(mid[k])
    out = {k: np.stack(seq, axis=1) for k, seq in parts.items()}
    out["conv_state"], out["ssm_state"] = cs, ss
    return out


def mamba_block_step(params, token, conv_state=None, ssm_state=None, *, intermediates=False):
    """One decoding step, mamba_ssm's ``Mamba.step`` (M10, M3-M9), in float64.

    token (batch, d); conv_state (batch, E, W), the last W conv inputs oldest first (None:
    zeros); ssm_state (batch, E, N) (None: zeros). Returns (y (batch, d), conv_state,
    ssm_state), the states after this token; with ``intermediates=True`` a fourth item,
    a dict of xz (batch, 2E) and x_conv, x_act, delta, y_ssm, z (batch, E).

    >>> P = mamba_block_params(d_model=2, d_state=2, d_conv=3, seed=0)
    >>> tok = onp.ones((1, 2))
    >>> y, cs, ss = mamba_block_step(P, tok, None, None)
    >>> y.shape, cs.shape, ss.shape
    ((1, 2), (1, 4, 3), (1, 4, 2))
    >>> x = tok @ P["in_proj.weight"][:4].T          # (M1): the new conv input
    >>> bool(onp.allclose(cs[:, :, -1], x)) and bool((cs[:, :, :-1] == 0).all())
    True
    """
    v = validate_mamba_block(params, conv_state=conv_state, ssm_state=ssm_state, token=token)
    P, dm = v["params"], v["dims"]
    E, N, R = dm["E"], dm["N"], dm["R"]
    xz = _linear(v["token"], P["in_proj.weight"], P.get("in_proj.bias"))
    x, z = xz[:, :E], xz[:, E:]
    cs = np.concatenate([v["conv_state"][:, :, 1:], x[:, :, None]], axis=2)
    x_conv = np.sum(cs * P["conv1d.weight"][:, 0, :], axis=-1)
    if "conv1d.bias" in P:
        x_conv = x_conv + P["conv1d.bias"]
    x_act = silu(x_conv)
    x_dbl = np.dot(x_act, P["x_proj.weight"].T)
    dt_low, B, C = x_dbl[:, :R], x_dbl[:, R:R + N], x_dbl[:, R + N:]
    delta = softplus(np.dot(dt_low, P["dt_proj.weight"].T) + P["dt_proj.bias"])
    A = A_from_log(P["A_log"])
    ss = np.exp(delta[:, :, None] * A) * v["ssm_state"] + (delta * x_act)[:, :, None] * B[:, None, :]
    y_ssm = np.einsum("ben,bn->be", ss, C) + P["D"] * x_act
    y = _linear(y_ssm * silu(z), P["out_proj.weight"], P.get("out_proj.bias"))
    if not intermediates:
        return y, cs, ss
    return y, cs, ss, {"xz": xz, "x_conv": x_conv, "x_act": x_act, "delta": delta,
                       "y_ssm": y_ssm, "z": z}


# ------------------------------------------------------------------ the fast path
def mamba_block(params, hidden_states, conv_state=None, ssm_state=None):
    """The layer (M1)-(M9) vectorized over time: the conv as W shifted slices, the scan
    (M7) as ``linear_scan``. Same arguments and returned dict as ``mamba_block_ref``.

    An initial ssm_state h0 enters as a(0) h0 added to the scan's x at t = 0, so that
    (M7) at t = 0 reads h_0 = a(0) h0 + x(0).

    >>> P = mamba_block_params(d_model=4, d_state=2, d_conv=4, seed=0)
    >>> h = onp.random.default_rng(2).normal(size=(1, 6, 4))
    >>> first = mamba_block(P, h[:, :4])
    >>> rest = mamba_block(P, h[:, 4:], first["conv_state"], first["ssm_state"])
    >>> whole = mamba_block(P, h)
    >>> bool(onp.allclose(rest["y"], whole["y"][:, 4:], rtol=0, atol=1e-14))
    True
    """
    v = validate_mamba_block(params, hidden_states, conv_state, ssm_state)
    P, dm, hs = v["params"], v["dims"], v["hidden_states"]
    E, N, W, R = dm["E"], dm["N"], dm["W"], dm["R"]
    L = onp.shape(hs)[1]
    xz = _linear(hs, P["in_proj.weight"], P.get("in_proj.bias"))
    x, z = xz[..., :E], xz[..., E:]
    # x_full[:, j] is the conv input at time j - W: the W stored inputs, then the sequence
    x_full = np.concatenate([np.transpose(v["conv_state"], (0, 2, 1)), x], axis=1)
    w = P["conv1d.weight"][:, 0, :]
    x_conv = sum(w[:, k] * x_full[:, 1 + k:1 + k + L] for k in range(W))
    if "conv1d.bias" in P:
        x_conv = x_conv + P["conv1d.bias"]
    x_act = silu(x_conv)
    x_dbl = np.dot(x_act, P["x_proj.weight"].T)
    dt_low, B, C = x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]
    delta = softplus(np.dot(dt_low, P["dt_proj.weight"].T) + P["dt_proj.bias"])
    a = np.exp(delta[..., None] * A_from_log(P["A_log"]))                  # (batch, L, E, N)
    u = (delta * x_act)[..., None] * B[:, :, None, :]
    u = np.concatenate([u[:, :1] + a[:, :1] * v["ssm_state"][:, None], u[:, 1:]], axis=1)
    H = linear_scan(a, u)
    y_ssm = np.einsum("blen,bln->ble", H, C) + P["D"] * x_act
    y = _linear(y_ssm * silu(z), P["out_proj.weight"], P.get("out_proj.bias"))
    return {"y": y, "xz": xz, "x_conv": x_conv, "x_act": x_act, "delta": delta,
            "y_ssm": y_ssm, "z": z, "conv_state": np.transpose(x_full[:, L:], (0, 2, 1)),
            "ssm_state": H[:, -1]}


# ------------------------------------------------------------------ conv-state layouts
def conv_state_to_initial_states(conv_state):
    """mamba_ssm's conv_state (batch, E, W) -> causal-conv1d's initial_states (batch, E, W-1).

    Drops the oldest column, the one the next step rolls out unread.

    >>> conv_state_to_initial_states(onp.arange(6.0).reshape(1, 2, 3)).tolist()
    [[[1.0, 2.0], [4.0, 5.0]]]
    """
    return conv_state[:, :, 1:]


def initial_states_to_conv_state(initial_states):
    """causal-conv1d's initial_states (batch, E, W-1) -> mamba_ssm's conv_state (batch, E, W).

    The oldest column, which no output reads, is set to zero; so this inverts
    ``conv_state_to_initial_states`` on everything a layer computes from it.

    >>> initial_states_to_conv_state(onp.array([[[1.0, 2.0], [4.0, 5.0]]])).tolist()
    [[[0.0, 1.0, 2.0], [0.0, 4.0, 5.0]]]
    """
    batch, E, _ = onp.shape(initial_states)
    return np.concatenate([onp.zeros((batch, E, 1)), initial_states], axis=2)


# ------------------------------------------------------------------ parameters
def mamba_block_params(d_model, d_state=16, d_conv=4, expand=2, dt_rank=None, seed=0,
                       conv_bias=True, bias=False, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4,
                       dt_scale=1.0):
    """A random Mamba layer's params (float64), seeded, with mamba_ssm's initial ranges.

    E = expand · d_model; R = dt_rank or ceil(d_model / 16) (``dt_rank="auto"``).
    in_proj, x_proj, out_proj ~ U(±1/√fan_in) (nn.Linear's default, biases too);
    conv1d ~ U(±1/√W) (nn.Conv1d's, fan_in = W for a depthwise conv);
    dt_proj.weight ~ U(±dt_scale/√R); dt log-uniform in [dt_min, dt_max], floored at
    dt_init_floor, and dt_proj.bias = softplus⁻¹(dt) = dt + log(1 - e^-dt);
    A_log[e] = log(1..N) (S4D-real); D = 1. Every array is drawn whatever the bias flags,
    so switching a bias off leaves the others as they were.

    >>> P = mamba_block_params(d_model=4, d_state=3, d_conv=2, seed=0)
    >>> {k: v.shape for k, v in sorted(P.items())}      # doctest: +NORMALIZE_WHITESPACE
    {'A_log': (8, 3), 'D': (8,), 'conv1d.bias': (8,), 'conv1d.weight': (8, 1, 2),
     'dt_proj.bias': (8,), 'dt_proj.weight': (8, 1), 'in_proj.weight': (16, 4),
     'out_proj.weight': (4, 8), 'x_proj.weight': (7, 8)}
    """
    d, N, W = int(d_model), int(d_state), int(d_conv)
    E = int(expand * d)
    R = math.ceil(d / 16) if dt_rank in (None, "auto") else int(dt_rank)
    rng = onp.random.default_rng(seed)

    def uniform(bound, shape):
        return rng.uniform(-bound, bound, size=shape)

    drawn = {"in_proj.weight": uniform(d ** -0.5, (2 * E, d)),
             "in_proj.bias": uniform(d ** -0.5, (2 * E,)),
             "conv1d.weight": uniform(W ** -0.5, (E, 1, W)),
             "conv1d.bias": uniform(W ** -0.5, (E,)),
             "x_proj.weight": uniform(E ** -0.5, (R + 2 * N, E)),
             "dt_proj.weight": uniform(dt_scale * R ** -0.5, (E, R))}
    dt = onp.maximum(onp.exp(rng.uniform(math.log(dt_min), math.log(dt_max), size=E)),
                     dt_init_floor)
    drawn["dt_proj.bias"] = dt + onp.log(-onp.expm1(-dt))
    drawn["A_log"] = onp.log(onp.tile(onp.arange(1, N + 1, dtype=float), (E, 1)))
    drawn["D"] = onp.ones(E)
    drawn["out_proj.weight"] = uniform(E ** -0.5, (d, E))
    drawn["out_proj.bias"] = uniform(E ** -0.5, (d,))
    off = set() if bias else {"in_proj.bias", "out_proj.bias"}
    if not conv_bias:
        off.add("conv1d.bias")
    return {k: a for k, a in drawn.items() if k not in off}


# ------------------------------------------------------------------ validation
def validate_mamba_block(params, hidden_states=None, conv_state=None, ssm_state=None, *,
                         token=None):
    """Check a Mamba layer's params and inputs; raise ValueError naming the key and shape.

    E, N come from A_log (E, N); R from dt_proj.weight (E, R); W from conv1d.weight
    (E, 1, W); d from in_proj.weight (2E, d); every other key must agree with them.
    Unknown keys are refused (naming the nearest expected one). hidden_states must be
    (batch, L, d) with L ≥ 1, token (batch, d); conv_state (batch, E, W), or with
    hidden_states also causal-conv1d's (batch, E, W - 1); ssm_state (batch, E, N).
    Returns a dict: params (float64 arrays, or autograd's traced values as given), dims
    {d, E, N, W, R}, hidden_states, token, conv_state (batch, E, W) (zeros for None),
    ssm_state (zeros for None).

    >>> P = mamba_block_params(d_model=4, d_state=3, d_conv=2, dt_rank=2)
    >>> validate_mamba_block(P)["dims"]
    {'d': 4, 'E': 8, 'N': 3, 'W': 2, 'R': 2}
    >>> P["x_proj.weight"] = P["x_proj.weight"][:5]
    >>> validate_mamba_block(P)          # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: params['x_proj.weight']: expected shape (R + 2N, E) = (8, 8), got (5, 8) ...
    """
    P = check_layer_keys(params, REQUIRED, OPTIONAL, _SYMBOLS, _NDIM, "a Mamba layer")
    E, N = onp.shape(P["A_log"])
    R = onp.shape(P["dt_proj.weight"])[1]
    W = onp.shape(P["conv1d.weight"])[2]
    d = onp.shape(P["in_proj.weight"])[1]
    dims = {"d": d, "E": E, "N": N, "W": W, "R": R}
    where = (f"E={E}, N={N} from A_log; R={R} from dt_proj.weight; W={W} from conv1d.weight; "
             f"d={d} from in_proj.weight")
    for name, size in dims.items():
        if size < 1:
            raise ValueError(f"{name} = {size} ({where}): every dimension must be at least 1")
    expected = {"in_proj.weight": (2 * E, d), "in_proj.bias": (2 * E,),
                "conv1d.weight": (E, 1, W), "conv1d.bias": (E,),
                "x_proj.weight": (R + 2 * N, E), "dt_proj.weight": (E, R),
                "dt_proj.bias": (E,), "A_log": (E, N), "D": (E,),
                "out_proj.weight": (d, E), "out_proj.bias": (d,)}
    for k in P:
        if tuple(onp.shape(P[k])) != expected[k]:
            raise ValueError(f"params[{k!r}]: expected shape {_SYMBOLS[k]} = {expected[k]}, "
                             f"got {tuple(onp.shape(P[k]))} ({where})")
    out = {"params": P, "dims": dims}
    out.update(check_layer_states(where, d, ("E", E), W, ("(batch, E, N)", (E, N)),
                                  hidden_states, token, conv_state, ssm_state))
    return out


def check_layer_keys(params, required, optional, symbols, ndims, kind):
    """A layer's state_dict, checked once for both Mamba layers: every key known (a typo
    gets the nearest name), every required key present, each array float64 of its
    symbolic shape's rank. Returns a new dict of the arrays; errors name the key and the
    shape (``symbols``: key -> "(2E, d)" etc.; ``ndims``: key -> its rank)."""
    if not hasattr(params, "keys"):
        raise TypeError(f"params: expected a dict keyed by state_dict names, got "
                        f"{type(params).__name__}")
    known = tuple(required) + tuple(optional)
    for k in params:
        if k not in known:
            near = difflib.get_close_matches(str(k), known, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"params[{k!r}]: not {kind} key{hint}; expected "
                             f"{', '.join(required)} and optionally {', '.join(optional)}")
    for k in required:
        if k not in params:
            raise ValueError(f"params is missing {k!r} (expected shape {symbols[k]})")
    P = {}
    for k in params:
        P[k] = check_array(f"params[{k!r}]", params[k])
        if len(onp.shape(P[k])) != ndims[k]:
            raise ValueError(f"params[{k!r}]: expected shape {symbols[k]}, got {onp.shape(P[k])}")
    return P


def check_layer_states(where, d, channels, W, ssm, hidden_states=None, token=None,
                       conv_state=None, ssm_state=None):
    """A Mamba layer's input sequence and decoding states, checked once for both layers
    (Mamba-1 here, Mamba-2 in rssm_ref.mamba2_block): hidden_states (batch, L, d) or a
    token (batch, d); conv_state (batch, C, W), or causal-conv1d's (batch, C, W - 1) with
    a sequence (converted to the first), zeros when None; ssm_state (batch, *ssm shape),
    zeros when None. ``channels`` = (name, C) of the conv's channels, ``ssm`` = (symbolic
    shape, trailing shape). Returns {"hidden_states", "token", "conv_state", "ssm_state"};
    errors name the key, the expected shape and ``where``."""
    (cname, C), (ssm_symbol, ssm_tail) = channels, ssm
    out = {"hidden_states": None, "token": None}
    batch = None
    if hidden_states is not None:
        hs = check_array("hidden_states", hidden_states)
        shp = tuple(onp.shape(hs))
        if len(shp) != 3 or shp[2] != d or shp[1] < 1:
            raise ValueError(f"hidden_states: expected shape (batch, L, d) = (*, L >= 1, {d}), "
                             f"got {shp} ({where})")
        out["hidden_states"], batch = hs, shp[0]
    if token is not None:
        tok = check_array("token", token)
        shp = tuple(onp.shape(tok))
        if len(shp) != 2 or shp[1] != d:
            raise ValueError(f"token: expected shape (batch, d) = (*, {d}), got {shp} ({where})")
        out["token"], batch = tok, shp[0]
    if conv_state is None:
        out["conv_state"] = None if batch is None else onp.zeros((batch, C, W))
    else:
        cs = check_array("conv_state", conv_state)
        shp = tuple(onp.shape(cs))
        b = shp[0] if shp and batch is None else batch
        if shp == (b, C, W):
            out["conv_state"] = cs
        elif hidden_states is not None and shp == (b, C, W - 1):
            out["conv_state"] = initial_states_to_conv_state(cs)
        else:
            also = (f" or causal-conv1d's initial_states (batch, {cname}, W - 1) = "
                    f"({b}, {C}, {W - 1})" if hidden_states is not None else "")
            raise ValueError(f"conv_state: expected shape (batch, {cname}, W) = ({b}, {C}, {W})"
                             f"{also}, got {shp} ({where})")
        batch = b
    if ssm_state is None:
        out["ssm_state"] = None if batch is None else onp.zeros((batch,) + tuple(ssm_tail))
    else:
        ss = check_array("ssm_state", ssm_state)
        shp = tuple(onp.shape(ss))
        b = shp[0] if shp and batch is None else batch
        want = (b,) + tuple(ssm_tail)
        if shp != want:
            raise ValueError(f"ssm_state: expected shape {ssm_symbol} = {want}, got {shp} "
                             f"({where})")
        out["ssm_state"] = ss
    return out


# ------------------------------------------------------------------ helpers
def _linear(x, weight, bias):
    y = np.dot(x, weight.T)
    return y if bias is None else y + bias
