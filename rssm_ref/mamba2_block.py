"""A whole Mamba-2 layer in float64 (Dao & Gu 2024, the Mamba-2 block of Section 7.1,
cited from memory as in ``rssm_ref.ssd``) and its decoding step.

The layer is mamba_ssm's ``Mamba2`` module: the non-fused branch of ``Mamba2.forward``
(``use_mem_eff_path=False``) and ``Mamba2.step``, with parameters under its PyTorch
``state_dict`` names. Its SSD core is ``rssm_ref.ssd``'s (S1)-(S9). HF's ``Mamba2Mixer``
uses the same names and computes the same with d_mlp = 0, D per head and the norm on
(in transformers 5.x the norm is per group, as here; older versions normalized the whole
width: ``norm_group_size=d_ssm``); its torch path rounds through float32 even in float64
(A = -exp(A_log.float()), the scan's .float() inputs, the norm's float32 upcast), a gap
near 1e-7. For one sequence u (L, d):

    (B1)  zxbcdt = u W_inᵀ + b_in = [z0 | x0 | z | xBC | dt_raw]
          widths d_mlp, d_mlp, d_ssm, conv_dim = d_ssm + 2gn, h (in that order)
    (B2)  xBC_conv[t, c] = silu(Σ_{k=0}^{W-1} w[c, k] x̃[t + k, c] + b_conv[c])
          x̃ = [s_{W-1} ; xBC]: the W-1 inputs before t = 0 (zeros, or an initial state),
          then xBC; a causal depthwise cross-correlation, w[c, W-1] weighs the current token
    (B3)  [x | B | C] = xBC_conv, widths d_ssm, gn, gn;  x -> (h, p),  B, C -> (g, n)
    (B4)  dt_t = clamp(softplus(dt_raw,t + dt_bias), lo, hi)      (S1); no clamp at (0, inf)
    (B5)  A = -exp(A_log)                                           one scalar per head
    (B6)  H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_tᵀ per head        (S2); head i reads
          group i // (h / g) (repeat_interleave)
    (B7)  y_ssd,t = H_t C_t + D x_t, times silu(z_t) only when there is no norm (S3)-(S4)
    (B8)  y_norm = rms_norm_gated(y_ssd, z) over groups of G = d_ssm / g channels:
          norm_before_gate=False (default):  v = y_ssd silu(z),  y_norm = v / √(mean_G v² + ε) · w_norm
          norm_before_gate=True:             y_norm = y_ssd / √(mean_G y_ssd² + ε) · w_norm · silu(z)
          (no ``norm.weight``, mamba_ssm's rmsnorm=False: y_norm = y_ssd)
    (B9)  y_inner = [silu(z0) x0 | y_norm]                          (y_norm when d_mlp = 0)
    (B10) y = y_inner W_outᵀ + b_out

and the decoding step (``Mamba2.step``) keeps the last W conv inputs s (conv_dim, W),
oldest first, and H (h, p, n):

    (B11) s <- [s[:, 1:], xBC_t];   xBC_conv,t = silu(Σ_k s[:, k] w[:, k] + b_conv);
          then (B3)-(B10), (B6) one step (mamba_ssm's ``selective_state_update``)

States: conv_state (batch, conv_dim, W), mamba_ssm's ``allocate_inference_cache``
layout and HF's cache (the last W conv *inputs* xBC, zero-padded on the left; every
function returns it); causal-conv1d's (batch, conv_dim, W - 1) is accepted too where
a sequence is given (see ``rssm_ref.mamba_block``'s two layouts and its converters).
ssm_state (batch, h, p, n). ``Mamba2.forward`` itself always starts from zero states;
the initial states here are what its cache and causal-conv1d / the SSD kernel's
``initial_states`` would give.

What the shapes determine, and what must be given: h from A_log; W and conv_dim from
conv1d.weight; d and the row count from in_proj.weight; d_inner = d_mlp + d_ssm from
out_proj.weight; then d_ssm = 2 d_inner + conv_dim + h - rows (or norm.weight's length,
which must agree), d_mlp = d_inner - d_ssm, p = d_ssm / h and g·n = (conv_dim - d_ssm) / 2.
Only g and n apart are not: give ``ngroups`` or ``d_state`` (mamba_ssm's default is
ngroups=1). ``headdim`` may be given and is then checked. D (h,) is per head, D (d_ssm,)
per channel (mamba_ssm's D_has_hdim).

Where this differs from mamba_ssm's own code (all outside what it computes correctly):
``Mamba2.step`` drops dt_limit and handles neither D_has_hdim nor (without the Triton
kernel) ngroups > 1; the step here applies (B4)'s clamp, D per channel and groups as
the forward does, so prefill + steps equals one forward (HF's cached step drops the
limit too: to reproduce either, step without ``dt_limit``). softplus is exact (torch's
returns x above 20, a difference below e^-20 ≈ 2.1e-9).

Glossary (shapes; mamba_ssm's names in brackets)
-----------------------------------------------
batch, L             sequences, tokens
d [d_model]          layer width;   d_inner = expand · d = d_mlp + d_ssm
d_ssm [d_ssm]        SSM channels = h · p;   d_mlp  gated-MLP channels (0 by default)
h, p [nheads, headdim]   heads, head dimension;   g, n [ngroups, d_state]   groups, states
W [d_conv]           conv width;   conv_dim = d_ssm + 2 g n;   G = d_ssm / g  norm group
d_in_proj = 2 d_mlp + 2 d_ssm + 2 g n + h
in_proj.weight (d_in_proj, d), in_proj.bias (d_in_proj,) optional    W_in, b_in
conv1d.weight (conv_dim, 1, W), conv1d.bias (conv_dim,) optional      w, b_conv
dt_bias (h,), A_log (h,), D (h,) or (d_ssm,)
norm.weight (d_ssm,) optional (absent: rmsnorm=False)                 w_norm
out_proj.weight (d, d_inner), out_proj.bias (d,) optional             W_out, b_out
hidden_states (batch, L, d);  token (batch, d);  y (batch, L, d)
zxbcdt (batch, L, d_in_proj); xBC_conv (batch, L, conv_dim); dt (batch, L, h);
y_ssd, y_norm (batch, L, d_ssm); y_inner (batch, L, d_inner)
conv_state (batch, conv_dim, W);  ssm_state (batch, h, p, n) = H_{L-1}

>>> P = mamba2_block_params(d_model=4, d_state=3, d_conv=3, headdim=2, ngroups=2, seed=0)
>>> u = onp.random.default_rng(0).normal(size=(2, 5, 4))
>>> out = mamba2_block(P, u, ngroups=2, chunk_size=2)
>>> out["y"].shape, out["conv_state"].shape, out["ssm_state"].shape
((2, 5, 4), (2, 20, 3), (2, 4, 2, 3))
>>> ref = mamba2_block_ref(P, u, ngroups=2)
>>> bool(onp.abs(out["y"] - ref["y"]).max() < 1e-12)
True
"""
import math

import autograd.numpy as np
import numpy as onp

from rssm_ref.kernels.nonlinear import silu
from rssm_ref.mamba_block import check_layer_keys, check_layer_states
from rssm_ref.ssd import DT_LIMIT_NONE, ssd_chunked, ssd_dt, ssd_ref
from rssm_ref.validation import check_dt_limit

__all__ = ["mamba2_block_ref", "mamba2_block_step", "mamba2_block", "rms_norm_gated",
           "mamba2_block_params", "validate_mamba2_block", "REQUIRED", "OPTIONAL"]

REQUIRED = ("in_proj.weight", "conv1d.weight", "dt_bias", "A_log", "D", "out_proj.weight")
OPTIONAL = ("in_proj.bias", "conv1d.bias", "norm.weight", "out_proj.bias")
_SYMBOLS = {"in_proj.weight": "(d_in_proj, d)", "in_proj.bias": "(d_in_proj,)",
            "conv1d.weight": "(conv_dim, 1, W)", "conv1d.bias": "(conv_dim,)",
            "dt_bias": "(h,)", "A_log": "(h,)", "D": "(h,) or (d_ssm,)",
            "norm.weight": "(d_ssm,)", "out_proj.weight": "(d, d_inner)", "out_proj.bias": "(d,)"}
_NDIM = {"in_proj.weight": 2, "in_proj.bias": 1, "conv1d.weight": 3, "conv1d.bias": 1,
         "dt_bias": 1, "A_log": 1, "D": 1, "norm.weight": 1, "out_proj.weight": 2,
         "out_proj.bias": 1}
_PARTS = ("zxbcdt", "xBC_conv", "dt", "y_ssd", "y_norm", "y_inner")


# ------------------------------------------------------------------ the _ref twin
def mamba2_block_ref(params, hidden_states, conv_state=None, ssm_state=None, **options):
    """The layer (B1)-(B10) as one loop over time calling ``mamba2_block_step`` per token.

    hidden_states (batch, L, d); conv_state (batch, conv_dim, W) or causal-conv1d's
    (batch, conv_dim, W - 1), None for zeros; ssm_state (batch, h, p, n), None for zeros.
    ``options``: ngroups or d_state (one is required), headdim, norm_before_gate,
    norm_group_size, dt_limit, eps (see ``validate_mamba2_block``). Returns a dict:
    y (batch, L, d); zxbcdt (batch, L, d_in_proj) (B1); xBC_conv (batch, L, conv_dim)
    after the conv and SiLU (B2); dt (batch, L, h) after bias, softplus and clamp (B4);
    y_ssd (batch, L, d_ssm) the scan's output with D, before the norm (B7); y_norm
    (batch, L, d_ssm) after the norm (B8); y_inner (batch, L, d_inner) out_proj's input
    (B9); conv_state (batch, conv_dim, W) and ssm_state (batch, h, p, n) after the last token.

    >>> P = mamba2_block_params(d_model=2, d_state=2, d_conv=2, headdim=2, seed=1)
    >>> u = onp.random.default_rng(1).normal(size=(1, 3, 2))
    >>> out = mamba2_block_ref(P, u, ngroups=1)
    >>> y0, _, _ = mamba2_block_step(P, u[:, 0], ngroups=1)
    >>> bool(onp.allclose(out["y"][:, 0], y0, rtol=0, atol=1e-15))
    True
    """
    v = validate_mamba2_block(params, hidden_states, conv_state, ssm_state, **options)
    L = onp.shape(v["hidden_states"])[1]
    cs, ss = v["conv_state"], v["ssm_state"]
    parts = {k: [] for k in ("y",) + _PARTS}
    for t in range(L):
        y, cs, ss, mid = mamba2_block_step(v["params"], v["hidden_states"][:, t], cs, ss,
                                           intermediates=True, **options)
        parts["y"].append(y)
        for k in _PARTS:
            parts[k].append(mid[k])
    out = {k: np.stack(seq, axis=1) for k, seq in parts.items()}
    out["conv_state"], out["ssm_state"] = cs, ss
    return out


def mamba2_block_step(params, token, conv_state=None, ssm_state=None, *, intermediates=False,
                      **options):
    """One decoding step, mamba_ssm's ``Mamba2.step`` (B11, B3-B10), in float64.

    token (batch, d); conv_state (batch, conv_dim, W), the last W conv inputs oldest first
    (None: zeros); ssm_state (batch, h, p, n) (None: zeros); ``options`` as
    ``mamba2_block_ref``. The scan's step is ``ssd_ref`` over one token (the update of
    ``selective_state_update``). Returns (y (batch, d), conv_state, ssm_state), the states
    after this token; with ``intermediates=True`` a fourth item, a dict of zxbcdt
    (batch, d_in_proj), xBC_conv (batch, conv_dim), dt (batch, h), y_ssd and y_norm
    (batch, d_ssm), y_inner (batch, d_inner).

    >>> P = mamba2_block_params(d_model=2, d_state=2, d_conv=3, headdim=2, seed=0)
    >>> tok = onp.ones((1, 2))
    >>> y, cs, ss = mamba2_block_step(P, tok, d_state=2)
    >>> y.shape, cs.shape, ss.shape
    ((1, 2), (1, 8, 3), (1, 2, 2, 2))
    >>> xBC = tok @ P["in_proj.weight"][4:12].T        # (B1): z, then the conv input
    >>> bool(onp.allclose(cs[:, :, -1], xBC)) and bool((cs[:, :, :-1] == 0).all())
    True
    """
    v = validate_mamba2_block(params, conv_state=conv_state, ssm_state=ssm_state, token=token,
                              **options)
    P, dm, opt = v["params"], v["dims"], v["options"]
    zxbcdt = _linear(v["token"], P["in_proj.weight"], P.get("in_proj.bias"))
    z0, x0, z, xBC, dt_raw = _split(zxbcdt, dm)
    cs = np.concatenate([v["conv_state"][:, :, 1:], xBC[:, :, None]], axis=2)
    pre = np.sum(cs * P["conv1d.weight"][:, 0, :], axis=-1)
    xBC_conv = silu(pre + P["conv1d.bias"] if "conv1d.bias" in P else pre)
    x, B, C = _heads(xBC_conv, dm)
    dt = ssd_dt(dt_raw, P["dt_bias"], True, opt["dt_limit"])
    gate = None if "norm.weight" in P else _per_head(z, dm)[:, None]
    scan = ssd_ref(x[:, None], dt[:, None], B=B[:, None], C=C[:, None], A_log=P["A_log"],
                   D=_skip(P["D"], dm), z=gate, initial_states=v["ssm_state"])
    y_ssd = np.reshape(scan["y"][:, 0], (-1, dm["d_ssm"]))
    y_norm, y_inner, y = _output(P, dm, opt, y_ssd, z, z0, x0)
    if not intermediates:
        return y, cs, scan["final_states"]
    return y, cs, scan["final_states"], {"zxbcdt": zxbcdt, "xBC_conv": xBC_conv, "dt": dt,
                                         "y_ssd": y_ssd, "y_norm": y_norm, "y_inner": y_inner}


# ------------------------------------------------------------------ the fast path
def mamba2_block(params, hidden_states, conv_state=None, ssm_state=None, *, chunk_size=256,
                 **options):
    """The layer (B1)-(B10) vectorized over time: the conv (B2) as W shifted slices, the
    scan (B6)-(B7) as ``ssd_chunked`` with chunk_size Q (mamba_ssm's default 256; the
    result does not depend on it beyond round-off). Same arguments, options and
    returned dict as ``mamba2_block_ref``.

    >>> P = mamba2_block_params(d_model=4, d_state=2, d_conv=4, headdim=4, seed=0)
    >>> u = onp.random.default_rng(2).normal(size=(1, 6, 4))
    >>> first = mamba2_block(P, u[:, :4], ngroups=1)
    >>> rest = mamba2_block(P, u[:, 4:], first["conv_state"], first["ssm_state"], ngroups=1)
    >>> whole = mamba2_block(P, u, ngroups=1, chunk_size=4)
    >>> bool(onp.allclose(rest["y"], whole["y"][:, 4:], rtol=0, atol=1e-14))
    True
    """
    v = validate_mamba2_block(params, hidden_states, conv_state, ssm_state,
                              chunk_size=chunk_size, **options)
    P, dm, opt, u = v["params"], v["dims"], v["options"], v["hidden_states"]
    batch, L = onp.shape(u)[:2]
    zxbcdt = _linear(u, P["in_proj.weight"], P.get("in_proj.bias"))
    z0, x0, z, xBC, dt_raw = _split(zxbcdt, dm)
    # x_full[:, j] is the conv input at time j - W: the W stored inputs, then the sequence
    x_full = np.concatenate([np.transpose(v["conv_state"], (0, 2, 1)), xBC], axis=1)
    w = P["conv1d.weight"][:, 0, :]
    pre = sum(w[:, k] * x_full[:, 1 + k:1 + k + L] for k in range(dm["W"]))
    xBC_conv = silu(pre + P["conv1d.bias"] if "conv1d.bias" in P else pre)
    x, B, C = _heads(xBC_conv, dm)
    dt = ssd_dt(dt_raw, P["dt_bias"], True, opt["dt_limit"])
    gate = None if "norm.weight" in P else _per_head(z, dm)
    scan = ssd_chunked(x, dt, B=B, C=C, A_log=P["A_log"], D=_skip(P["D"], dm), z=gate,
                       initial_states=v["ssm_state"], chunk_size=chunk_size)
    y_ssd = np.reshape(scan["y"], (batch, L, dm["d_ssm"]))
    y_norm, y_inner, y = _output(P, dm, opt, y_ssd, z, z0, x0)
    return {"y": y, "zxbcdt": zxbcdt, "xBC_conv": xBC_conv, "dt": dt, "y_ssd": y_ssd,
            "y_norm": y_norm, "y_inner": y_inner,
            "conv_state": np.transpose(x_full[:, L:], (0, 2, 1)),
            "ssm_state": scan["final_states"]}


# ------------------------------------------------------------------ the gated norm
def rms_norm_gated(y, z, weight, group_size, eps=1e-5, norm_before_gate=False):
    """The gated RMSNorm (B8), mamba_ssm's ``RMSNormGated`` (``rms_norm_ref``): over the
    last axis, in groups of ``group_size`` consecutive channels.

    Shapes: y, z (..., width) (z None: no gate), weight (width,); width % group_size == 0.
    norm_before_gate=False: v = y silu(z), out = v / √(mean_group v² + eps) · weight;
    True: out = y / √(mean_group y² + eps) · weight · silu(z).
    group_size = width is one group over the whole width.

    >>> y = onp.array([[3.0, 4.0, 1.0, 1.0]])
    >>> rms_norm_gated(y, None, onp.ones(4), 2, eps=0.0).round(4).tolist()
    [[0.8485, 1.1314, 1.0, 1.0]]
    """
    v = y if (z is None or norm_before_gate) else y * silu(z)
    lead, width = np.shape(v)[:-1], np.shape(v)[-1]
    grouped = np.reshape(v, lead + (width // group_size, group_size))
    rstd = 1.0 / np.sqrt(np.mean(grouped * grouped, axis=-1, keepdims=True) + eps)
    out = np.reshape(grouped * rstd, lead + (width,)) * weight
    return out * silu(z) if (z is not None and norm_before_gate) else out


# ------------------------------------------------------------------ shared pieces
def _linear(x, weight, bias):
    y = np.dot(x, weight.T)
    return y if bias is None else y + bias


def _split(zxbcdt, dm):
    """(B1)'s split along the last axis: z0, x0, z, xBC, dt_raw."""
    m, s, c = dm["d_mlp"], dm["d_ssm"], dm["conv_dim"]
    ends = onp.cumsum([m, m, s, c, dm["h"]])
    starts = onp.concatenate([[0], ends[:-1]])
    return tuple(zxbcdt[..., a:b] for a, b in zip(starts, ends))


def _per_head(a, dm):
    return np.reshape(a, np.shape(a)[:-1] + (dm["h"], dm["p"]))


def _heads(xBC_conv, dm):
    """(B3): x (..., h, p), B and C (..., g, n)."""
    s, gn = dm["d_ssm"], dm["g"] * dm["n"]
    lead = np.shape(xBC_conv)[:-1]
    B = np.reshape(xBC_conv[..., s:s + gn], lead + (dm["g"], dm["n"]))
    C = np.reshape(xBC_conv[..., s + gn:], lead + (dm["g"], dm["n"]))
    return _per_head(xBC_conv[..., :s], dm), B, C


def _skip(D, dm):
    """D per head (h,) as it is; per channel (d_ssm,) as (h, p), channel i·p + j of head i."""
    return D if np.shape(D) == (dm["h"],) else np.reshape(D, (dm["h"], dm["p"]))


def _output(P, dm, opt, y_ssd, z, z0, x0):
    """(B8)-(B10): y_norm, y_inner, y."""
    y_norm = (rms_norm_gated(y_ssd, z, P["norm.weight"], opt["group_size"], opt["eps"],
                             opt["norm_before_gate"]) if "norm.weight" in P else y_ssd)
    y_inner = np.concatenate([silu(z0) * x0, y_norm], axis=-1) if dm["d_mlp"] else y_norm
    return y_norm, y_inner, _linear(y_inner, P["out_proj.weight"], P.get("out_proj.bias"))


# ------------------------------------------------------------------ parameters
def mamba2_block_params(d_model, d_state=128, d_conv=4, expand=2, headdim=64, ngroups=1,
                        d_ssm=None, D_has_hdim=False, rmsnorm=True, bias=False, conv_bias=True,
                        conv_init=None, seed=0, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4,
                        A_init_range=(1, 16)):
    """A random Mamba-2 layer's params (float64), seeded, with mamba_ssm's initial ranges
    (``Mamba2.__init__``; its defaults too).

    d_inner = expand · d_model; d_ssm = d_inner unless given (the rest, d_mlp =
    d_inner - d_ssm, is a gated MLP); h = d_ssm / headdim; ngroups must divide h.
    in_proj, out_proj ~ U(±1/√fan_in) (nn.Linear's default, biases too); conv1d ~
    U(±1/√W) (nn.Conv1d's, fan_in = W for a depthwise conv), or U(±conv_init);
    dt log-uniform in [dt_min, dt_max], floored at dt_init_floor, and dt_bias =
    softplus⁻¹(dt) = dt + log(1 - e^-dt); A_log = log U(A_init_range); D = 1, shape
    (d_ssm,) with D_has_hdim else (h,); norm.weight = 1 (only with rmsnorm). Every array
    is drawn whatever the flags, so switching one off leaves the others as they were.

    >>> P = mamba2_block_params(d_model=4, d_state=3, d_conv=2, headdim=4, ngroups=2, seed=0)
    >>> {k: v.shape for k, v in sorted(P.items())}      # doctest: +NORMALIZE_WHITESPACE
    {'A_log': (2,), 'D': (2,), 'conv1d.bias': (20,), 'conv1d.weight': (20, 1, 2),
     'dt_bias': (2,), 'in_proj.weight': (30, 4), 'norm.weight': (8,), 'out_proj.weight': (4, 8)}
    """
    d, n, W, g = int(d_model), int(d_state), int(d_conv), int(ngroups)
    d_inner = expand * d
    if d_inner != int(d_inner) or d_inner < 1:
        raise ValueError(f"expand: expand · d_model = {d_inner} must be a positive integer")
    d_inner = int(d_inner)
    s = d_inner if d_ssm is None else int(d_ssm)
    if not 1 <= s <= d_inner:
        raise ValueError(f"d_ssm: {s} (expected 1 <= d_ssm <= d_inner = {d_inner})")
    if s % int(headdim):
        raise ValueError(f"headdim: {headdim} does not divide d_ssm = {s}")
    h = s // int(headdim)
    if g < 1 or h % g:
        raise ValueError(f"ngroups: {g} does not divide nheads h = d_ssm / headdim = {h}")
    lo, hi = A_init_range
    if not 0 < lo <= hi:
        raise ValueError(f"A_init_range: {A_init_range!r} (expected 0 < lo <= hi)")
    conv_dim, rows = s + 2 * g * n, 2 * d_inner + 2 * g * n + h
    rng = onp.random.default_rng(seed)

    def uniform(bound, shape):
        return rng.uniform(-bound, bound, size=shape)

    conv_bound = W ** -0.5 if conv_init is None else float(conv_init)
    drawn = {"in_proj.weight": uniform(d ** -0.5, (rows, d)),
             "in_proj.bias": uniform(d ** -0.5, (rows,)),
             "conv1d.weight": uniform(conv_bound, (conv_dim, 1, W)),
             "conv1d.bias": uniform(W ** -0.5, (conv_dim,))}
    dt = onp.maximum(onp.exp(rng.uniform(math.log(dt_min), math.log(dt_max), size=h)),
                     dt_init_floor)
    drawn["dt_bias"] = dt + onp.log(-onp.expm1(-dt))
    drawn["A_log"] = onp.log(rng.uniform(lo, hi, size=h))
    drawn["D"] = onp.ones(s if D_has_hdim else h)
    drawn["norm.weight"] = onp.ones(s)
    drawn["out_proj.weight"] = uniform(d_inner ** -0.5, (d, d_inner))
    drawn["out_proj.bias"] = uniform(d_inner ** -0.5, (d,))
    off = set() if bias else {"in_proj.bias", "out_proj.bias"}
    if not conv_bias:
        off.add("conv1d.bias")
    if not rmsnorm:
        off.add("norm.weight")
    return {k: a for k, a in drawn.items() if k not in off}


# ------------------------------------------------------------------ validation
def validate_mamba2_block(params, hidden_states=None, conv_state=None, ssm_state=None, *,
                          token=None, ngroups=None, d_state=None, headdim=None,
                          norm_before_gate=False, norm_group_size=None, dt_limit=DT_LIMIT_NONE,
                          eps=1e-5, chunk_size=None):
    """Check a Mamba-2 layer's params, inputs and options; raise ValueError naming the key
    or option and the expected shape, in one line.

    Dimensions as the module docstring derives them (h, W, conv_dim, d, d_inner from
    shapes; d_ssm, d_mlp, p, g·n from those); ``ngroups`` g or ``d_state`` n is required
    (both: they must agree), g must divide h; ``headdim``, when given, must equal p.
    Options: norm_before_gate (bool, mamba_ssm's; without a norm it is ignored, as there);
    norm_group_size (None: G = d_ssm / g as mamba_ssm's ``Mamba2``; an integer dividing
    d_ssm; d_ssm itself is one group over the whole width, as mamba_ssm's
    ``Mamba2Simple`` and older transformers' ``MambaRMSNormGated`` compute it; only with
    norm.weight); dt_limit (lo, hi), (0, inf) meaning no clamp;
    eps > 0 (the norm's; 1e-5 as mamba_ssm); chunk_size an integer >= 1 (fast path).
    hidden_states (batch, L, d) with L >= 1, token (batch, d); conv_state (batch,
    conv_dim, W), or with hidden_states also (batch, conv_dim, W - 1); ssm_state
    (batch, h, p, n). Returns a dict: params (float64 arrays, or autograd's traced values
    as given), dims {d, d_in_proj, d_inner, d_ssm, d_mlp, h, p, g, n, W, conv_dim},
    options {norm_before_gate, group_size, eps, dt_limit}, hidden_states, token,
    conv_state (batch, conv_dim, W) (zeros for None), ssm_state (zeros for None).

    >>> P = mamba2_block_params(d_model=4, d_state=3, d_conv=2, headdim=2, ngroups=2)
    >>> validate_mamba2_block(P, d_state=3)["dims"]      # doctest: +NORMALIZE_WHITESPACE
    {'d': 4, 'd_in_proj': 32, 'd_inner': 8, 'd_ssm': 8, 'd_mlp': 0, 'h': 4, 'p': 2,
     'g': 2, 'n': 3, 'W': 2, 'conv_dim': 20}
    >>> validate_mamba2_block(P)
    Traceback (most recent call last):
    ...
    ValueError: ngroups: required (or d_state): the shapes give only g·n = 6 (conv_dim = 20 from conv1d.weight minus d_ssm = 8, halved); mamba_ssm's default is ngroups=1
    """
    P = check_layer_keys(params, REQUIRED, OPTIONAL, _SYMBOLS, _NDIM, "a Mamba-2 layer")
    dims = _dims(P, ngroups, d_state, headdim)
    where = dims.pop("where")
    expected = {"in_proj.weight": (dims["d_in_proj"], dims["d"]),
                "in_proj.bias": (dims["d_in_proj"],), "conv1d.weight": (dims["conv_dim"], 1, dims["W"]),
                "conv1d.bias": (dims["conv_dim"],), "dt_bias": (dims["h"],), "A_log": (dims["h"],),
                "norm.weight": (dims["d_ssm"],), "out_proj.weight": (dims["d"], dims["d_inner"]),
                "out_proj.bias": (dims["d"],)}
    for k in P:
        shp = tuple(onp.shape(P[k]))
        if k == "D":
            if shp not in ((dims["h"],), (dims["d_ssm"],)):
                raise ValueError(f"params['D']: expected shape (h,) = ({dims['h']},) or (d_ssm,) "
                                 f"= ({dims['d_ssm']},), got {shp} ({where})")
        elif shp != expected[k]:
            raise ValueError(f"params[{k!r}]: expected shape {_SYMBOLS[k]} = {expected[k]}, "
                             f"got {shp} ({where})")
    options = _options(P, dims, norm_before_gate, norm_group_size, dt_limit, eps, chunk_size)
    out = {"params": P, "dims": dims, "options": options, "hidden_states": None, "token": None}
    out.update(check_layer_states(where, dims["d"], ("conv_dim", dims["conv_dim"]), dims["W"],
                                  ("(batch, h, p, n)", (dims["h"], dims["p"], dims["n"])),
                                  hidden_states, token, conv_state, ssm_state))
    return out


def _dims(P, ngroups, d_state, headdim):
    """The dimensions from the shapes, as the module docstring derives them."""
    h = onp.shape(P["A_log"])[0]
    conv_dim, _, W = onp.shape(P["conv1d.weight"])
    rows, d = onp.shape(P["in_proj.weight"])
    d_out, d_inner = onp.shape(P["out_proj.weight"])
    base = (f"h={h} from A_log; conv_dim={conv_dim}, W={W} from conv1d.weight; d={d}, "
            f"{rows} rows from in_proj.weight; d_inner={d_inner} from out_proj.weight")
    for name, size in (("h", h), ("conv_dim", conv_dim), ("W", W), ("d", d), ("d_inner", d_inner)):
        if size < 1:
            raise ValueError(f"{name} = {size} ({base}): every dimension must be at least 1")
    if "norm.weight" in P:
        d_ssm, src = onp.shape(P["norm.weight"])[0], "norm.weight"
        if not 1 <= d_ssm <= d_inner:
            raise ValueError(f"params['norm.weight']: expected shape (d_ssm,) with 1 <= d_ssm <= "
                             f"d_inner = {d_inner}, got ({d_ssm},) ({base})")
    else:
        d_ssm, src = 2 * d_inner + conv_dim + h - rows, "2 d_inner + conv_dim + h - rows"
        if not 1 <= d_ssm <= d_inner:
            raise ValueError(f"params['in_proj.weight']: expected shape (2 d_mlp + 2 d_ssm + 2 g n "
                             f"+ h, d) with d_ssm = 2 d_inner + conv_dim + h - rows in 1..{d_inner}, "
                             f"got {rows} rows, d_ssm = {d_ssm} ({base})")
    where = f"{base}; d_ssm={d_ssm} from {src}"
    if d_ssm % h:
        raise ValueError(f"params['A_log']: h = {h} heads do not divide d_ssm = {d_ssm} "
                         f"(expected shape (h,) with d_ssm = h·p; {where})")
    two_gn = conv_dim - d_ssm
    if two_gn < 2 or two_gn % 2:
        raise ValueError(f"params['conv1d.weight']: expected shape (d_ssm + 2 g n, 1, W) with "
                         f"2 g n = conv_dim - d_ssm a positive even number, got conv_dim - d_ssm "
                         f"= {two_gn} ({where})")
    gn, p = two_gn // 2, d_ssm // h
    g, n = _groups(gn, h, conv_dim, d_ssm, ngroups, d_state)
    if headdim is not None and headdim != p:
        raise ValueError(f"headdim: {headdim!r}, but d_ssm = {d_ssm} and h = {h} give p = "
                         f"d_ssm / h = {p} ({where})")
    d_mlp = d_inner - d_ssm
    dims = {"d": d, "d_in_proj": 2 * d_mlp + 2 * d_ssm + 2 * gn + h, "d_inner": d_inner,
            "d_ssm": d_ssm, "d_mlp": d_mlp, "h": h, "p": p, "g": g, "n": n, "W": W,
            "conv_dim": conv_dim}
    dims["where"] = f"{where}; g={g}, n={n}"
    return dims


def _groups(gn, h, conv_dim, d_ssm, ngroups, d_state):
    """(g, n) from g·n and whichever of ngroups, d_state was given."""
    src = f"conv_dim = {conv_dim} from conv1d.weight minus d_ssm = {d_ssm}, halved"
    for name, val in (("ngroups", ngroups), ("d_state", d_state)):
        if val is not None and (isinstance(val, (bool, onp.bool_))
                                or not isinstance(val, (int, onp.integer)) or val < 1):
            raise ValueError(f"{name}: {val!r} (expected an integer >= 1)")
    if ngroups is None and d_state is None:
        raise ValueError(f"ngroups: required (or d_state): the shapes give only g·n = {gn} ({src}); "
                         "mamba_ssm's default is ngroups=1")
    if ngroups is not None:
        if gn % ngroups:
            raise ValueError(f"ngroups: {ngroups} does not divide g·n = {gn} ({src})")
        g = int(ngroups)
        if d_state is not None and g * d_state != gn:
            raise ValueError(f"d_state: {d_state} with ngroups = {g} gives g·n = {g * d_state}, but "
                             f"the shapes give g·n = {gn} ({src})")
    else:
        if gn % d_state:
            raise ValueError(f"d_state: {d_state} does not divide g·n = {gn} ({src})")
        g = gn // int(d_state)
    if h % g:
        raise ValueError(f"ngroups: g = {g} does not divide h = {h} heads (A_log); each group "
                         "serves h / g heads")
    return g, gn // g


def _options(P, dims, norm_before_gate, norm_group_size, dt_limit, eps, chunk_size):
    if not isinstance(norm_before_gate, (bool, onp.bool_)):
        raise ValueError(f"norm_before_gate: {norm_before_gate!r} (expected True or False)")
    d_ssm = dims["d_ssm"]
    if norm_group_size is None:
        group_size = d_ssm // dims["g"]
    else:
        if "norm.weight" not in P:
            raise ValueError(f"norm_group_size: {norm_group_size!r} given, but params has no "
                             "'norm.weight' (rmsnorm=False: z gates inside the scan, no norm)")
        if (isinstance(norm_group_size, (bool, onp.bool_))
                or not isinstance(norm_group_size, (int, onp.integer))
                or norm_group_size < 1 or d_ssm % norm_group_size):
            raise ValueError(f"norm_group_size: {norm_group_size!r} (expected an integer dividing "
                             f"d_ssm = {d_ssm}; the default is d_ssm / g = {d_ssm // dims['g']})")
        group_size = int(norm_group_size)
    lo, hi = check_dt_limit(dt_limit)
    try:
        eps_ok = math.isfinite(float(eps)) and float(eps) > 0
    except (TypeError, ValueError):
        eps_ok = False
    if not eps_ok:
        raise ValueError(f"eps: {eps!r} (expected a finite number > 0; mamba_ssm's is 1e-5)")
    if chunk_size is not None and (isinstance(chunk_size, (bool, onp.bool_))
                                   or not isinstance(chunk_size, (int, onp.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size: {chunk_size!r} (expected an integer >= 1)")
    return {"norm_before_gate": bool(norm_before_gate), "group_size": group_size,
            "eps": float(eps), "dt_limit": (lo, hi)}


