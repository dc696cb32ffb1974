"""The one place that defines rssm-ref's file format, and loads and checks its files.

Every file is a NumPy ``.npz`` archive read with ``allow_pickle=False``; every array is
float64 (token ids: integers). Sequences are batch-major, states start at zero and the
gate starts at y(0) = 0. Shapes are written with symbols; one symbol has one value
across a params file and its inputs file.

Glossary (symbols and shapes)
-----------------------------
batch, L        number of sequences, sequence length (both >= 1)
m               input width (LTI), model width (Residual, Selective)
p               LTI output width; n, k  LTI state order / polynomial length
n_sigma, k_sigma, n_r, k_r   the same for Σ and Σ_r of the Residual SSM (Fig. 3)
n (selective)   state size per channel, eq. (2)
vocab           rows of the optional ``embedding`` (vocab, m) used with ``tokens``
dt_rank         mamba: rank of Δ's projection (dt_proj.weight (m, dt_rank)); m = d_inner,
                n = d_state in mamba_ssm's names
layout          "channel-last" (batch, L, ...) (the default) or "channel-first": every
                sequence tensor with >= 3 axes has time as its *last* axis, mamba_ssm's
                (batch, d, L); h (batch, L, m, n) becomes (batch, m, n, L). ssd takes
                channel-last or "heads-flat" (HF's Mamba2Mixer): x, z, y, dy, grad_x,
                grad_z (batch, L, h·p) and B, C, grad_B, grad_C (batch, L, g·n), with g
                from the ``ngroups`` option (or initial_states' n); states unchanged

Params per model (``SPECS``; each block in exactly one form):

lti        ss: A (n, n), B (n, m), C (p, n), D (p, m)  |  tf: num (p, m, k), den (p, k)
residual   Σ  ss: sigma_A (n_sigma, n_sigma), sigma_B (n_sigma, m), sigma_C (m, n_sigma),
              sigma_D (m, m)  |  tf: sigma_num (m, m, k_sigma), sigma_den (m, k_sigma)
           Σ_r ss: r_A (n_r, n_r), r_B (n_r, m), r_C (1, n_r), r_D (1, m)
              |  tf: r_num (1, m, k_r), r_den (1, k_r)        (Σ and Σ_r in the same form)
           optional gate_bias () : s(t) = σ(r(t) + gate_bias), eq. (5)
selective  A (m, n) < 0, W_delta (m, m), W_B (n, m), W_C (n, m); optional delta_bias (m,),
           D (m,)  (eqs. (2)-(4))
mamba      a Mamba layer's own names (rssm_ref.oracle.mamba): A_log (m, n),
           x_proj.weight (dt_rank + 2 n, m) (rows: Δ's dt_rank, B's n, C's n),
           dt_proj.weight (m, dt_rank); optional dt_proj.bias (m,), D (m,)
mamba-block  a whole Mamba-1 layer's state_dict names (in_proj, conv1d, x_proj, dt_proj,
           A_log, D, out_proj)
mamba2-block a whole Mamba-2 layer's state_dict names (rssm_ref.mamba2_block): in_proj,
           conv1d, dt_bias (h,), A_log (h,), D (h,) or (d_ssm,), optional norm.weight
           (d_ssm,), out_proj; g and n apart come from the options (ngroups or d_state)
ssd        Mamba-2's SSD core (mamba_chunk_scan_combined's names): A_log (h,) or A (h,) < 0
           (exactly one); optional D (h,) or (h, p), dt_bias (h,)
all        optional embedding (vocab, m) (not the layers, ssd)

Inputs: ``u`` (batch, L, m) or ``tokens`` (batch, L) integer ids with ``embedding`` in
the params (u = embedding[tokens]); optional cotangent ``dy`` shaped like ``y``.
mamba-block, mamba2-block: hidden_states (batch, L, d), optional conv_state, ssm_state
(mamba2-block: (batch, conv_dim, W) or (batch, conv_dim, W - 1), (batch, h, p, n)). ssd: x
(batch, L, h, p), dt (batch, L, h), B, C (batch, L, g, n) with h % g == 0, optional
z (batch, L, h, p) and initial_states (batch, h, p, n).

Outputs (``forward``): ``y``; intermediates (residual: y_s (batch, L, m), r (batch, L),
s (batch, L); selective, mamba: delta (batch, L, m), h (batch, L, m, n), last_state
(batch, m, n) = h[:, -1]; ssd: final_states (batch, h, p, n) always, chunk_states
(batch, ceil(L / chunk_size), h, p, n); the layers: conv_state, ssm_state always, and
their own stages, mamba2-block's zxbcdt, xBC_conv, dt, y_ssd, y_norm, y_inner);
gradients ``grad_u`` (``grad_<input>`` for the layers' inputs) and ``grad_<key>`` per
parameter key; and, so that the file can be recomputed, the params as ``param__<key>``,
the inputs as ``input__<key>`` and the options as UTF-8 JSON in the uint8 array
``options_json``.

Every failure is a ``ValueError`` (or ``TypeError`` for a wrong dtype) whose one-line
message names the file, the key and what was expected:

>>> import io, numpy
>>> check_params("lti", {"num": numpy.ones((1, 1, 2)), "den": numpy.array([[1.0, -2.0]])},
...              where="P.npz")
Traceback (most recent call last):
...
ValueError: P.npz: key 'den': row 0 has a pole of modulus 2 (expected all poles strictly inside the unit circle; pass --allow-unstable (Python: allow_unstable=True) to override)
"""
import json
import math
import os
import zipfile

import numpy as onp

from rssm_ref.mamba2_block import validate_mamba2_block
from rssm_ref.util import safetensors
from rssm_ref.util.paths import atomic_savez
from rssm_ref.validation import check_array, check_stable_den, check_tokens

FORMAT_VERSION = "rssm-ref/1"
# ssd's chunk length when the options give none: Mamba-2's (mamba_ssm.modules.mamba2)
SSD_CHUNK_SIZE = 256
MODELS = ("lti", "residual", "selective", "mamba", "mamba-block", "mamba2-block", "ssd")
# the whole layers: input hidden_states, states conv_state and ssm_state, NumPy only
LAYER_MODELS = ("mamba-block", "mamba2-block")
# mamba2-block's gated-norm epsilon when the options give none: mamba_ssm's and HF's 1e-5
MAMBA2_EPS = 1e-5
PARAM_PREFIX = "param__"
INPUT_PREFIX = "input__"
OPTIONS_KEY = "options_json"

# model -> blocks -> form -> {key: symbolic shape}; integers in a shape are literal.
SPECS = {
    "lti": {
        "blocks": {
            "system": {
                "ss": {"A": ("n", "n"), "B": ("n", "m"), "C": ("p", "n"), "D": ("p", "m")},
                "tf": {"num": ("p", "m", "k"), "den": ("p", "k")},
            },
        },
        "optional": {"embedding": ("vocab", "m")},
        "outputs": {"y": ("batch", "L", "p")},
        "intermediates": {},
    },
    "residual": {
        "blocks": {
            "sigma": {
                "ss": {"sigma_A": ("n_sigma", "n_sigma"), "sigma_B": ("n_sigma", "m"),
                       "sigma_C": ("m", "n_sigma"), "sigma_D": ("m", "m")},
                "tf": {"sigma_num": ("m", "m", "k_sigma"), "sigma_den": ("m", "k_sigma")},
            },
            "r": {
                "ss": {"r_A": ("n_r", "n_r"), "r_B": ("n_r", "m"), "r_C": (1, "n_r"),
                       "r_D": (1, "m")},
                "tf": {"r_num": (1, "m", "k_r"), "r_den": (1, "k_r")},
            },
        },
        "optional": {"gate_bias": (), "embedding": ("vocab", "m")},
        "outputs": {"y": ("batch", "L", "m")},
        "intermediates": {"y_s": ("batch", "L", "m"), "r": ("batch", "L"), "s": ("batch", "L")},
    },
    "selective": {
        "blocks": {
            "selective": {
                "diag": {"A": ("m", "n"), "W_delta": ("m", "m"), "W_B": ("n", "m"),
                         "W_C": ("n", "m")},
            },
        },
        "optional": {"delta_bias": ("m",), "D": ("m",), "embedding": ("vocab", "m")},
        "outputs": {"y": ("batch", "L", "m")},
        "intermediates": {"delta": ("batch", "L", "m"), "h": ("batch", "L", "m", "n"),
                          "last_state": ("batch", "m", "n")},
    },
    # a Mamba layer's SSM parameters under their state_dict names (rssm_ref.oracle.mamba);
    # the rows of x_proj.weight are checked against dt_rank + 2 n after binding
    "mamba": {
        "blocks": {
            "mamba": {
                "mamba": {"A_log": ("m", "n"), "x_proj.weight": ("dt_rank+2n", "m"),
                          "dt_proj.weight": ("m", "dt_rank")},
            },
        },
        "optional": {"dt_proj.bias": ("m",), "D": ("m",), "embedding": ("vocab", "m")},
        "outputs": {"y": ("batch", "L", "m")},
        "intermediates": {"delta": ("batch", "L", "m"), "h": ("batch", "L", "m", "n"),
                          "last_state": ("batch", "m", "n")},
    },
    # a whole Mamba-1 layer (mamba_ssm's Mamba, rssm_ref.mamba_block) under its state_dict
    # names; in_proj.weight's rows (2E) and x_proj.weight's (dt_rank + 2 n) are checked
    # after binding. Its input is hidden_states (batch, L, d), HF's name; optional initial
    # states conv_state (batch, E, W) (or causal-conv1d's (batch, E, W - 1)) and ssm_state.
    "mamba-block": {
        "blocks": {
            "layer": {
                "mamba-block": {"in_proj.weight": ("2E", "d"), "conv1d.weight": ("E", 1, "W"),
                                "x_proj.weight": ("dt_rank+2n", "E"),
                                "dt_proj.weight": ("E", "dt_rank"), "dt_proj.bias": ("E",),
                                "A_log": ("E", "n"), "D": ("E",), "out_proj.weight": ("d", "E")},
            },
        },
        "optional": {"in_proj.bias": ("2E",), "conv1d.bias": ("E",), "out_proj.bias": ("d",)},
        "input": ("hidden_states", ("batch", "L", "d")),
        "states": {"conv_state": ("batch", "E", "W"), "ssm_state": ("batch", "E", "n")},
        "outputs": {"y": ("batch", "L", "d"), "conv_state": ("batch", "E", "W"),
                    "ssm_state": ("batch", "E", "n")},
        "intermediates": {"xz": ("batch", "L", "2E"), "x_conv": ("batch", "L", "E"),
                          "x_act": ("batch", "L", "E"), "delta": ("batch", "L", "E"),
                          "y_ssm": ("batch", "L", "E"), "z": ("batch", "L", "E")},
    },
    # Mamba-2's SSD core (rssm_ref.ssd) under mamba_ssm's mamba_chunk_scan_combined names:
    # A as A_log (A = -exp(A_log)) or A (< 0), never both; D is (h,) or (h, p)
    # (``shape_alternatives``); the inputs x, dt, B, C, optional z and initial_states;
    # chunk_states has one state per chunk of the ``chunk_size`` option (nchunks = ceil(L / Q))
    "ssd": {
        "blocks": {
            "A": {"log": {"A_log": ("h",)}, "direct": {"A": ("h",)}},
        },
        "optional": {"D": ("h",), "dt_bias": ("h",)},
        "shape_alternatives": {"D": ("h", "p")},
        "input": ("x", ("batch", "L", "h", "p")),
        "more_inputs": {"dt": ("batch", "L", "h"), "B": ("batch", "L", "g", "n"),
                        "C": ("batch", "L", "g", "n")},
        "states": {"z": ("batch", "L", "h", "p"), "initial_states": ("batch", "h", "p", "n")},
        "outputs": {"y": ("batch", "L", "h", "p"), "final_states": ("batch", "h", "p", "n")},
        "intermediates": {"chunk_states": ("batch", "nchunks", "h", "p", "n")},
    },
    # a whole Mamba-2 layer (mamba_ssm's Mamba2, rssm_ref.mamba2_block) under its state_dict
    # names; the sizes the shapes cannot give (d_ssm, d_mlp, p, g, n) are derived after
    # binding by rssm_ref.mamba2_block.validate_mamba2_block, with the options' ngroups or
    # d_state. D is (h,) per head or (d_ssm,) per channel (``shape_alternatives``, told
    # apart by which size fits); states conv_state (batch, conv_dim, W) (or causal-conv1d's
    # (batch, conv_dim, W - 1)) and ssm_state (batch, h, p, n).
    "mamba2-block": {
        "blocks": {
            "layer": {
                "mamba2-block": {"in_proj.weight": ("d_in_proj", "d"),
                                 "conv1d.weight": ("conv_dim", 1, "W"), "dt_bias": ("h",),
                                 "A_log": ("h",), "D": ("h",),
                                 "out_proj.weight": ("d", "d_inner")},
            },
        },
        "optional": {"in_proj.bias": ("d_in_proj",), "conv1d.bias": ("conv_dim",),
                     "norm.weight": ("d_ssm",), "out_proj.bias": ("d",)},
        "shape_alternatives": {"D": ("d_ssm",)},
        "input": ("hidden_states", ("batch", "L", "d")),
        "states": {"conv_state": ("batch", "conv_dim", "W"), "ssm_state": ("batch", "h", "p", "n")},
        "outputs": {"y": ("batch", "L", "d"), "conv_state": ("batch", "conv_dim", "W"),
                    "ssm_state": ("batch", "h", "p", "n")},
        "intermediates": {"zxbcdt": ("batch", "L", "d_in_proj"),
                          "xBC_conv": ("batch", "L", "conv_dim"), "dt": ("batch", "L", "h"),
                          "y_ssd": ("batch", "L", "d_ssm"), "y_norm": ("batch", "L", "d_ssm"),
                          "y_inner": ("batch", "L", "d_inner")},
    },
}

# Sequence tensors carry time on axis 1 (used by verify for "first bad time step").
TIME_AXIS_TENSORS = ("y", "y_s", "r", "s", "delta", "h", "grad_u", "dy", "u", "grad_x", "grad_dt",
                     "grad_z", "zxbcdt", "xBC_conv", "dt", "y_ssd", "y_norm", "y_inner")
LAYOUTS = ("channel-last", "channel-first")
# ssd's layouts: mamba_ssm's and mamba2-minimal's (batch, L, h, p), and HF's Mamba2Mixer's
# flat hidden states (batch, L, h·p) ("heads-flat")
SSD_LAYOUTS = ("channel-last", "heads-flat")
ALL_LAYOUTS = LAYOUTS + ("heads-flat",)
# heads-flat: the last two axes of these (batch, L, a, b) tensors as one, a·b; the value is
# the symbol that splits them again (x, z, y: h heads of p; B, C: g groups of n)
HEADS_FLAT_TENSORS = {"x": "h", "z": "h", "y": "h", "dy": "h", "grad_x": "h", "grad_z": "h",
                      "B": "g", "C": "g", "grad_B": "g", "grad_C": "g"}
_FLAT_INNER = {"h": "p", "g": "n"}

_FORM_NAMES = {"ss": "state-space", "tf": "transfer-function", "diag": "diagonal",
               "mamba": "Mamba-layer", "mamba-block": "Mamba-1 layer",
               "mamba2-block": "Mamba-2 layer",
               "log": "A = -exp(A_log)", "direct": "A < 0"}
# keys of a whole Mamba block outside its selective scan (refused with a hint)
_MAMBA_OUTSIDE = ("in_proj", "conv1d", "out_proj", "norm", "embedding.weight", "lm_head")


def check_layout(layout, where="layout"):
    """``layout`` if it is one of ALL_LAYOUTS, else ValueError (which model takes which:
    ``model_layouts``)."""
    if layout not in ALL_LAYOUTS:
        raise ValueError(f"{where}: {layout!r} (expected one of {', '.join(ALL_LAYOUTS)})")
    return layout


def model_layouts(model):
    """The layouts ``model`` takes: ssd channel-last or heads-flat, mamba-block channel-last
    only, the others channel-last or channel-first.

    >>> model_layouts("ssd"), model_layouts("mamba-block")
    (('channel-last', 'heads-flat'), ('channel-last',))
    """
    if model == "ssd":
        return SSD_LAYOUTS
    if "input" in SPECS.get(model, {}):
        return ("channel-last",)
    return LAYOUTS


def _time_last(key, ndim, layout):
    return layout == "channel-first" and key in TIME_AXIS_TENSORS and ndim >= 3


def _merged(key, ndim, layout):
    return layout == "heads-flat" and key in HEADS_FLAT_TENSORS and ndim == 4


def changes(key, ndim, layout):
    """Whether ``layout`` stores ``key`` (a canonical array of ``ndim`` axes) otherwise than
    channel-last does.

    >>> changes("y", 4, "heads-flat"), changes("final_states", 4, "heads-flat")
    (True, False)
    """
    return _time_last(key, ndim, layout) or _merged(key, ndim, layout)


def layout_shape(key, shape, layout):
    """The shape (or symbolic spec) of ``key`` in ``layout``, from its (batch, L, ...) one.

    >>> layout_shape("h", ("batch", "L", "m", "n"), "channel-first")
    ('batch', 'm', 'n', 'L')
    >>> layout_shape("last_state", (2, 3, 4), "channel-first")
    (2, 3, 4)
    >>> layout_shape("x", (2, 5, 4, 3), "heads-flat")
    (2, 5, 12)
    >>> layout_shape("B", ("batch", "L", "g", "n"), "heads-flat")
    ('batch', 'L', 'g·n')
    """
    shape = tuple(shape)
    if _time_last(key, len(shape), layout):
        return shape[:1] + shape[2:] + shape[1:2]
    if _merged(key, len(shape), layout):
        a, b = shape[2:]
        both = a * b if isinstance(a, int) and isinstance(b, int) else f"{a}·{b}"
        return shape[:2] + (both,)
    return shape


def to_layout(key, arr, layout):
    """(batch, L, ...) array -> ``layout`` (time moved last for channel-first; the last two
    axes as one for heads-flat)."""
    if _time_last(key, onp.ndim(arr), layout):
        return onp.moveaxis(arr, 1, -1)
    if _merged(key, onp.ndim(arr), layout):
        return onp.reshape(arr, onp.shape(arr)[:2] + (-1,))
    return arr


def from_layout(key, arr, layout, dims=None):
    """``layout`` array -> (batch, L, ...) (the inverse of ``to_layout``). heads-flat needs
    ``dims`` {"h": heads, "g": groups} (``layout_dims``) to split the last axis again.

    >>> from_layout("u", onp.zeros((2, 3, 5)), "channel-first").shape
    (2, 5, 3)
    >>> from_layout("B", onp.zeros((2, 5, 6)), "heads-flat", {"h": 4, "g": 2}).shape
    (2, 5, 2, 3)
    """
    if _time_last(key, onp.ndim(arr), layout):
        return onp.moveaxis(arr, -1, 1)
    if layout == "heads-flat" and key in HEADS_FLAT_TENSORS and onp.ndim(arr) == 3:
        split = dims[HEADS_FLAT_TENSORS[key]]
        return onp.reshape(arr, onp.shape(arr)[:2] + (split, -1))
    return arr


def layout_dims(model, inputs):
    """What heads-flat needs to split its tensors: {"h", "g"} from ssd's canonical inputs
    (None for another model).

    >>> layout_dims("ssd", {"x": onp.zeros((1, 2, 4, 3)), "B": onp.zeros((1, 2, 2, 5))})
    {'h': 4, 'g': 2}
    """
    if model != "ssd":
        return None
    return {"h": int(onp.shape(inputs["x"])[2]), "g": int(onp.shape(inputs["B"])[2])}


def time_axis(key, ndim, layout):
    """The time axis of ``key`` in ``layout`` (None for a tensor without one)."""
    if key not in TIME_AXIS_TENSORS or ndim < 2:
        return None
    return ndim - 1 if _time_last(key, ndim, layout) else 1


def _mamba_key_hint(key):
    """A hint for a key outside the SSM part of a Mamba layer, or with a module prefix."""
    names = ("A_log", "D", "x_proj.weight", "dt_proj.weight", "dt_proj.bias")
    for name in names:
        if key.endswith("." + name):
            return (f"; strip the prefix {key[:-len(name)]!r}: the file holds one layer's keys "
                    "A_log, D, x_proj.weight, dt_proj.weight, dt_proj.bias")
    if any(part in key for part in _MAMBA_OUTSIDE):
        return ("; the oracle checks the layer's selective scan: keep only A_log, D, "
                "x_proj.weight, dt_proj.weight, dt_proj.bias, and give as u the input of "
                "x_proj (after conv1d and SiLU)")
    return ""


def _layer_key_hint(model, extra, known):
    """A hint for keys a layer model lacks: a whole model's (one layer's keys under a
    module prefix), or the other Mamba layer's (Mamba-2 keys for --model mamba-block,
    Mamba-1 keys for --model mamba2-block).

    >>> _layer_key_hint("mamba2-block", ["dt_proj.bias", "x_proj.weight"], ["A_log"])
    "; a Mamba-1 layer's keys (Mamba has x_proj and dt_proj, ...; use --model mamba-block"
    """
    for key in extra:
        for name in known:
            if key.endswith("." + name):
                return (f"; a whole model's keys: select one layer with --prefix "
                        f"{key[:-len(name)]!r}")
    if model == "mamba-block" and ("dt_bias" in extra or "norm.weight" in extra):
        return ("; a Mamba-2 layer's keys (Mamba2 has dt_bias and norm.weight): --model "
                "mamba-block is the Mamba-1 layer, mamba_ssm's Mamba; use --model mamba2-block")
    if model == "mamba2-block" and any(k.startswith(("x_proj.", "dt_proj.")) for k in extra):
        return ("; a Mamba-1 layer's keys (Mamba has x_proj and dt_proj, Mamba2 has neither): "
                "--model mamba2-block is the Mamba-2 layer, mamba_ssm's Mamba2; use --model "
                "mamba-block")
    return ""


def check_model(model):
    if model not in SPECS:
        raise ValueError(f"model: {model!r} (expected one of {', '.join(MODELS)})")


def _q(key):
    return f"'{key}'"


def _fmt_shape(spec):
    return "(" + ", ".join(str(s) for s in spec) + ("," if len(spec) == 1 else "") + ")"


class _Sizes:
    """Symbol -> (value, key that fixed it), so messages can say where a size came from."""

    def __init__(self, where):
        self.where = where
        self.values = {}

    def bind(self, key, spec, shape):
        label = f"{self.where}: key {_q(key)}"
        if len(shape) != len(spec):
            raise ValueError(f"{label}: expected {len(spec)} dimensions {_fmt_shape(spec)}, "
                             f"got shape {tuple(shape)}")
        for sym, val in zip(spec, shape):
            if isinstance(sym, int):
                if val != sym:
                    raise ValueError(f"{label}: expected shape {_fmt_shape(spec)}, got "
                                     f"{tuple(shape)} (that dimension must be {sym})")
                continue
            if val < 1:
                what = "non-positive sequence length" if sym == "L" else f"empty dimension {sym}"
                raise ValueError(f"{label}: {what} in shape {tuple(shape)} "
                                 f"(expected {sym} >= 1 in {_fmt_shape(spec)})")
            if sym in self.values and self.values[sym][0] != val:
                prev, src = self.values[sym]
                raise ValueError(f"{label}: shape {tuple(shape)} gives {sym} = {val}, but "
                                 f"{src} gives {sym} = {prev} (expected {_fmt_shape(spec)} "
                                 "with consistent sizes)")
            self.values.setdefault(sym, (val, f"key {_q(key)}"))

    def get(self, sym):
        return self.values[sym][0]

    def as_dict(self):
        return {k: v[0] for k, v in self.values.items()}


def _float_array(where, key, value):
    """float64 only (the format's dtype): no silent casts from int, bool or float32."""
    name = f"{where}: key {_q(key)}"
    arr = onp.asarray(value)
    if arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and arr.dtype != onp.float64):
        raise TypeError(f"{name}: dtype {arr.dtype} (expected float64; convert with "
                        ".astype(numpy.float64))")
    return check_array(name, arr)


def _ss_stable(where, key, A):
    rmax = float(onp.max(onp.abs(onp.linalg.eigvals(A)))) if A.size else 0.0
    if not rmax < 1.0:
        raise ValueError(f"{where}: key {_q(key)}: has an eigenvalue of modulus {rmax:.6g} "
                         "(expected all eigenvalues strictly inside the unit circle; pass "
                         "--allow-unstable (Python: allow_unstable=True) to override)")


def param_form(model, params):
    """The form of each block: ``{"system": "tf"}`` etc., for already-checked params.

    >>> import numpy
    >>> param_form("lti", {"num": numpy.ones((1, 1, 1)), "den": numpy.ones((1, 1))})
    {'system': 'tf'}
    """
    check_model(model)
    out = {}
    for block, forms in SPECS[model]["blocks"].items():
        for form, keys in forms.items():
            if all(k in params for k in keys):
                out[block] = form
    return out


def check_params(model, params, where="params", allow_unstable=False, options=None):
    """Check a params mapping against ``SPECS[model]``; return ``(params, sizes)``.

    ``params``: mapping key -> array. Returns a new dict of float64 arrays and the sizes
    of the symbols (``{"m": 2, "p": 1, ...}``). Raises ValueError/TypeError naming
    ``where`` and the key. Stability: denominators (``den`` rows, descending powers of
    z) and state matrices must have all roots/eigenvalues inside |z| < 1, selective
    ``A`` must be negative (continuous-time Hurwitz, eq. (3a)), unless ``allow_unstable``.
    ``options`` (the forward options, mamba2-block only): its ngroups or d_state splits
    g·n, and its layer options are checked against the params (``mamba2_options``).

    >>> import numpy
    >>> p, sizes = check_params("lti", {"num": numpy.ones((2, 1, 3)),
    ...                                 "den": numpy.array([[1.0, -0.5, 0.0]] * 2)})
    >>> sorted(sizes.items())
    [('k', 3), ('m', 1), ('p', 2)]
    """
    check_model(model)
    spec = SPECS[model]
    if not hasattr(params, "keys"):
        raise TypeError(f"{where}: {type(params).__name__} (expected a mapping of key -> array)")
    known = set(spec["optional"])
    for forms in spec["blocks"].values():
        for keys in forms.values():
            known |= set(keys)
    extra = sorted(k for k in params if k not in known)
    if extra:
        hint = (_mamba_key_hint(extra[0]) if model == "mamba" else
                _layer_key_hint(model, extra, known) if model in LAYER_MODELS else "")
        raise ValueError(f"{where}: unexpected key {_q(extra[0])} for --model {model} "
                         f"(expected only {', '.join(sorted(known))}){hint}")

    chosen = {}
    for block, forms in spec["blocks"].items():
        present = {f: [k for k in keys if k in params] for f, keys in forms.items()}
        used = [f for f, ks in present.items() if ks]
        if not used:
            alts = " or ".join(f"{', '.join(keys)} ({_FORM_NAMES[f]})" for f, keys in forms.items())
            first = next(iter(next(iter(forms.values()))))
            raise ValueError(f"{where}: missing key {_q(first)} (expected {alts})")
        if len(used) > 1:
            raise ValueError(f"{where}: key {_q(present[used[1]][0])} mixes forms with key "
                             f"{_q(present[used[0]][0])} (expected {block} in one form only: "
                             + " or ".join(', '.join(forms[f]) for f in forms) + ")")
        form = used[0]
        missing = [k for k in forms[form] if k not in params]
        if missing:
            extra = ""
            if model in LAYER_MODELS:
                extra = f"; {missing[0]} is {_fmt_shape(forms[form][missing[0]])}"
                if model == "mamba2-block" and missing[0] == "D":
                    extra += " or (d_ssm,)"
                if "in_proj.weight" in missing and "x_proj.weight" in params:
                    extra += ("; a layer's selective scan alone (A_log, D, x_proj, dt_proj) "
                              "is --model mamba")
            raise ValueError(f"{where}: missing key {_q(missing[0])} (the {_FORM_NAMES[form]} "
                             f"form needs {', '.join(forms[form])}{extra})")
        chosen[block] = form
    if len(set(chosen.values())) > 1:
        desc = ", ".join(f"{b} in {_FORM_NAMES[f]} form" for b, f in chosen.items())
        raise ValueError(f"{where}: {desc} (expected Σ and Σ_r in the same form: all of "
                         "sigma_num, sigma_den, r_num, r_den or all of sigma_A..D, r_A..D)")

    out = {k: _float_array(where, k, params[k]) for k in params}
    sizes = _Sizes(where)
    given = [(k, shp) for block, form in chosen.items()
             for k, shp in spec["blocks"][block][form].items()]
    given += [(k, shp) for k, shp in spec["optional"].items() if k in out]
    # keys with a shape alternative last: the sizes that tell the two apart are bound then
    alts = spec.get("shape_alternatives", {})
    for key, shp in [g for g in given if g[0] not in alts] + [g for g in given if g[0] in alts]:
        sizes.bind(key, _shape_spec(spec, key, shp, onp.shape(out[key]), where, sizes),
                   onp.shape(out[key]))

    for key, arr in out.items():
        if key.endswith("den") or key == "den":
            bad = onp.flatnonzero(arr[:, 0] == 0.0)
            if bad.size:
                raise ValueError(f"{where}: key {_q(key)}: row {bad[0]} has a zero leading "
                                 "coefficient (expected den[:, 0] != 0, descending powers of z)")
            check_stable_den(f"{where}: key {_q(key)}", arr, allow_unstable=allow_unstable)
        elif not allow_unstable and (key in ("sigma_A", "r_A") or (model == "lti" and key == "A")):
            _ss_stable(where, key, arr)
    if model == "mamba":
        _check_mamba(where, out, sizes.as_dict())
    if model == "mamba-block":
        _check_mamba_block(where, out, sizes.as_dict())
    if model == "selective" and not allow_unstable:
        check_selective_A(where, out["A"])
    if model == "ssd":
        _check_ssd(where, out)
    if model == "mamba2-block":
        return out, _check_mamba2_block(where, out, sizes.as_dict(), options)
    return out, sizes.as_dict()


def _shape_spec(spec, key, shp, shape, where, sizes):
    """The spec a key is bound with: its own, or its alternative when the array has that
    many axes (ssd's D (h,) or (h, p)) or, with as many axes, when the alternative's sizes
    fit the ones bound so far and its own do not (mamba2-block's D (h,) or (d_ssm,))."""
    alt = spec.get("shape_alternatives", {}).get(key)
    if alt is None:
        return shp
    if len(alt) == len(shp) == len(shape):
        def fits(cand):
            return all(s not in sizes.values or sizes.values[s][0] == v
                       for s, v in zip(cand, shape) if not isinstance(s, int))
        if not fits(shp) and not fits(alt):
            known = "; ".join(f"{s} = {sizes.values[s][0]} from {sizes.values[s][1]}"
                              for s in shp + alt if not isinstance(s, int))
            raise ValueError(f"{where}: key {_q(key)}: shape {tuple(shape)} (expected "
                             f"{_fmt_shape(shp)} or {_fmt_shape(alt)}; {known})")
        return shp if fits(shp) else alt
    if len(shape) == len(alt):
        return alt
    if len(shape) != len(shp):
        raise ValueError(f"{where}: key {_q(key)}: shape {tuple(shape)} (expected "
                         f"{_fmt_shape(shp)} or {_fmt_shape(alt)})")
    return shp


def _check_ssd(where, params):
    """A < 0 (Mamba-2's A = -exp(A_log); the decays exp(dt' A) must not grow), or A_log
    whose exp neither overflows nor vanishes; --allow-unstable does not apply."""
    if "A" in params:
        bad = onp.flatnonzero(~(params["A"] < 0.0))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{where}: key 'A': entry {i} = {params['A'][i]:.6g} is not negative "
                             "(expected A (h,) < 0, or A_log (h,) with A = -exp(A_log); "
                             "--allow-unstable does not apply to the ssd model)")
        return
    with onp.errstate(over="ignore", under="ignore"):
        a = onp.exp(params["A_log"])
    bad = onp.flatnonzero(~(onp.isfinite(a) & (a > 0.0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: key 'A_log': entry {i} = {params['A_log'][i]:.6g} makes "
                         "A = -exp(A_log) overflow or vanish (expected -745 < A_log < 709)")


def check_selective_A(where, A):
    """Selective ``A`` must be negative: the model computes nothing else (the ZOH step
    divides by A, eq. (3b), and the cores refuse A >= 0), so --allow-unstable cannot help
    and is not suggested; ``forward`` checks this with and without the flag."""
    pos = onp.argwhere(onp.asarray(A) >= 0.0)
    if pos.size:
        i, j = (int(v) for v in pos[0])
        raise ValueError(f"{where}: key 'A': entry ({i}, {j}) = {A[i, j]:.6g} is not negative "
                         "(expected continuous-time diagonals A < 0, eq. (3a); --allow-unstable "
                         "does not apply to the selective model)")


def _check_mamba(where, params, sizes):
    """x_proj.weight's rows are dt_rank (Δ), then n (B), then n (C); A = -exp(A_log) finite."""
    rows, r, n = sizes["dt_rank+2n"], sizes["dt_rank"], sizes["n"]
    if rows != r + 2 * n:
        raise ValueError(f"{where}: key 'x_proj.weight': {rows} rows (expected dt_rank + 2 n = "
                         f"{r} + 2*{n} = {r + 2 * n}: dt_rank rows for Δ (dt_rank from key "
                         f"'dt_proj.weight'), then n for B, then n for C (n from key 'A_log'))")
    with onp.errstate(over="ignore", under="ignore"):
        a = onp.exp(params["A_log"])
    bad = onp.argwhere(~(onp.isfinite(a) & (a > 0.0)))
    if bad.size:
        i, j = (int(v) for v in bad[0])
        raise ValueError(f"{where}: key 'A_log': entry ({i}, {j}) = {params['A_log'][i, j]:.6g} "
                         "makes A = -exp(A_log) overflow or vanish (expected -745 < A_log < 709)")


def _check_mamba_block(where, params, sizes):
    """in_proj.weight holds x then z (2E rows, E from key 'conv1d.weight'); x_proj.weight's
    rows are dt_rank, n, n; A = -exp(A_log) finite."""
    rows, E = sizes["2E"], sizes["E"]
    if rows != 2 * E:
        raise ValueError(f"{where}: key 'in_proj.weight': {rows} rows (expected 2 E = 2*{E} = "
                         f"{2 * E}: E rows for x, then E for z; E from key 'conv1d.weight' "
                         f"({E}, 1, W))")
    _check_mamba(where, params, {"dt_rank+2n": sizes["dt_rank+2n"], "dt_rank": sizes["dt_rank"],
                                 "n": sizes["n"]})


# option -> forward flag, for the messages of mamba2-block's option checks
_MAMBA2_FLAGS = {"ngroups": "--ngroups", "d_state": "--n",
                 "norm_before_gate": "--norm-before-gate",
                 "norm_group_size": "--norm-group-size", "dt_limit": "--dt-limit",
                 "eps": "--eps", "chunk_size": "--chunk-size"}


def _check_mamba2_block(where, params, sizes, options):
    """The Mamba-2 layer's dimensions (rssm_ref.mamba2_block's derivation, with the
    options' ngroups or d_state) and its options checked against the params; returns
    the sizes with d_ssm, d_mlp, p, g and n added. A = -exp(A_log) must be finite."""
    try:
        dims = validate_mamba2_block(params, chunk_size=(options or {}).get("chunk_size"),
                                     **mamba2_options(options))["dims"]
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith("params["):
            # params['in_proj.weight']: ... -> P.npz: key 'in_proj.weight': ...
            key, rest = msg[len("params["):].split("]: ", 1)
            raise ValueError(f"{where}: key {key}: {rest}") from None
        name, rest = msg.split(": ", 1)
        flag = _MAMBA2_FLAGS.get(name, name)
        rest = rest.replace("(or d_state)", "(or --n)")
        raise ValueError(f"{flag}: {rest} (params {where})") from None
    _check_ssd(where, {"A_log": params["A_log"]})
    return dict(sizes, **{k: dims[k] for k in ("d_ssm", "d_mlp", "p", "g", "n")})


def mamba2_options(options):
    """rssm_ref.mamba2_block's keyword options (ngroups, d_state, norm_before_gate,
    norm_group_size, dt_limit, eps) from a mamba2-block file's options dict, defaults
    filled in: ngroups and d_state None (one is required), norm_before_gate False,
    norm_group_size None (d_ssm / g), dt_limit (0, inf) (``ssd_limit``), eps MAMBA2_EPS.

    >>> mamba2_options({"ngroups": 2, "dt_limit": [0.01, None]})["dt_limit"]
    (0.01, inf)
    """
    o = options or {}
    return {"ngroups": o.get("ngroups"), "d_state": o.get("d_state"),
            "norm_before_gate": o.get("norm_before_gate", False),
            "norm_group_size": o.get("norm_group_size"), "dt_limit": ssd_limit(o),
            "eps": MAMBA2_EPS if o.get("eps") is None else o["eps"]}


def input_key(model):
    """The name of a model's input sequence: ``u`` (hidden_states for mamba-block, x for ssd).

    >>> input_key("mamba-block"), input_key("lti")
    ('hidden_states', 'u')
    """
    return SPECS[model].get("input", ("u",))[0]


def ssd_limit(options):
    """The dt clamp (lo, hi) of an ssd file's options, stored as [lo, hi] with hi None for
    +inf (JSON has no infinity); (0, inf), no clamp, when absent.

    >>> ssd_limit({"dt_limit": [0.1, None]}), ssd_limit({})
    ((0.1, inf), (0.0, inf))
    """
    lo, hi = options.get("dt_limit") or (0.0, None)
    return float(lo), math.inf if hi is None else float(hi)


def layer_inputs(model):
    """A layer model's inputs besides its input sequence, in order: the required ones,
    then the optional ones (mamba-block's states; ssd's z, initial_states), as
    ``(required, optional)`` dicts of key -> symbolic shape.

    >>> [list(d) for d in layer_inputs("ssd")]
    [['dt', 'B', 'C'], ['z', 'initial_states']]
    """
    spec = SPECS[model]
    return dict(spec.get("more_inputs", {})), dict(spec.get("states", {}))


def output_shapes(model, sizes):
    """Concrete shapes of ``y`` and the intermediates, given all sizes.

    >>> output_shapes("residual", {"batch": 2, "L": 5, "m": 3})["r"]
    (2, 5)
    """
    check_model(model)
    spec = SPECS[model]
    shapes = {}
    for key, shp in {**spec["outputs"], **spec["intermediates"]}.items():
        if key in spec["intermediates"] and any(s not in sizes for s in shp
                                                 if not isinstance(s, int)):
            continue        # ssd's chunk_states without a chunk size: not an output here
        shapes[key] = tuple(s if isinstance(s, int) else sizes[s] for s in shp)
    return shapes


def check_inputs(model, inputs, sizes, where="inputs", params_where="params",
                 layout="channel-last", ngroups=None):
    """Check an inputs mapping (``u`` or ``tokens``, optional ``dy``) against the params' sizes.

    ``sizes`` comes from ``check_params``. Returns ``(inputs, sizes)`` with the sizes
    extended by ``batch`` and ``L``. Token ids need ``embedding`` (vocab, m) in the
    params and must lie in [0, vocab). With ``layout="channel-first"``, ``u`` and ``dy``
    are given as (batch, m, L) and come back as (batch, L, m), the cores' layout. ssd with
    ``layout="heads-flat"`` takes x, z, dy as (batch, L, h·p) and B, C as (batch, L, g·n)
    (HF's Mamba2Mixer); ``ngroups`` is g, or None when initial_states' n fixes it.

    >>> import numpy
    >>> _, s = check_inputs("lti", {"u": numpy.zeros((2, 7, 1))}, {"m": 1, "p": 1, "k": 2})
    >>> s["batch"], s["L"]
    (2, 7)
    """
    check_model(model)
    if not hasattr(inputs, "keys"):
        raise TypeError(f"{where}: {type(inputs).__name__} (expected a mapping of key -> array)")
    check_model_layout(model, layout)
    if "input" in SPECS[model]:
        return _check_layer_inputs(model, inputs, sizes, where, params_where, layout, ngroups)
    extra = sorted(k for k in inputs if k not in ("u", "tokens", "dy"))
    if extra:
        raise ValueError(f"{where}: unexpected key {_q(extra[0])} (expected u or tokens, "
                         "and optionally dy)")
    if "u" in inputs and "tokens" in inputs:
        raise ValueError(f"{where}: key 'tokens' given together with key 'u' (expected "
                         "exactly one of them)")
    if "u" not in inputs and "tokens" not in inputs:
        raise ValueError(f"{where}: missing key 'u' (expected u (batch, L, m) float64, or "
                         "tokens (batch, L) integer ids)")
    bound = _Sizes(where)
    for sym, val in sizes.items():
        bound.values[sym] = (val, f"{params_where}")
    out = {}
    if "u" in inputs:
        out["u"] = _float_array(where, "u", inputs["u"])
        try:
            bound.bind("u", layout_shape("u", ("batch", "L", "m"), check_layout(layout)),
                       onp.shape(out["u"]))
        except ValueError as exc:
            # the other layout fits: say so (mamba_ssm's arrays are (batch, d, L))
            shp, m = onp.shape(out["u"]), sizes.get("m")
            other = "channel-first" if layout == "channel-last" else "channel-last"
            m_axis = 1 if other == "channel-first" else 2
            if len(shp) == 3 and m is not None and shp[m_axis] == m and shp[3 - m_axis] != m:
                raise ValueError(f"{exc}; it fits the {other} layout: pass --layout "
                                 f"{other}") from None
            raise
        out["u"] = from_layout("u", out["u"], layout)
    else:
        tok = onp.asarray(inputs["tokens"])
        name = f"{where}: key 'tokens'"
        if tok.dtype.kind not in "iu":
            raise TypeError(f"{name}: dtype {tok.dtype} (expected integer token ids)")
        bound.bind("tokens", ("batch", "L"), tok.shape)
        if "vocab" not in sizes:
            raise ValueError(f"{name}: token ids need key 'embedding' (vocab, m) in "
                             f"{params_where} (expected an embedding, or inputs as u)")
        out["tokens"] = check_tokens(name, tok, sizes["vocab"])
    if "dy" in inputs:
        out["dy"] = _float_array(where, "dy", inputs["dy"])
        spec = layout_shape("dy", SPECS[model]["outputs"]["y"], layout)
        bound.bind("dy", spec, onp.shape(out["dy"]))
        out["dy"] = from_layout("dy", out["dy"], layout)
    return out, bound.as_dict()


# where each layer's layouts come from (the message of a refused --layout)
_LAYER_ANCHORS = {"mamba-block": "(batch, L, d) in mamba_ssm, mambapy and HF alike",
                  "mamba2-block": "(batch, L, d) in mamba_ssm and HF alike",
                  "ssd": "(batch, L, h, p) in mamba_ssm's mamba_chunk_scan_combined and "
                         "mamba2-minimal, (batch, L, h·p) in HF's Mamba2Mixer"}


def check_model_layout(model, layout, where="layout"):
    """``layout`` if ``model`` takes it (``model_layouts``): the layers' input sequence is
    channel-last in every anchor (ssd's also heads-flat, HF's), so a layer model refuses
    channel-first, and heads-flat belongs to ssd alone.

    >>> check_model_layout("mamba", "channel-first")
    'channel-first'
    >>> check_model_layout("mamba-block", "channel-first")
    Traceback (most recent call last):
    ...
    ValueError: layout: 'channel-first' given for --model mamba-block (its hidden_states is (batch, L, d) in mamba_ssm, mambapy and HF alike; expected channel-last)
    """
    check_layout(layout, where)
    allowed = model_layouts(model)
    if layout in allowed:
        return layout
    if "input" in SPECS[model]:
        name = SPECS[model]["input"][0]
        raise ValueError(f"{where}: {layout!r} given for --model {model} (its {name} is "
                         f"{_LAYER_ANCHORS[model]}; expected {' or '.join(allowed)})")
    raise ValueError(f"{where}: {layout!r} given for --model {model} (heads-flat is the ssd "
                     f"model's layout, x (batch, L, h·p); expected {' or '.join(allowed)})")


def _flat_groups(where, inputs, ngroups):
    """g for heads-flat B, C (batch, L, g·n): ``ngroups``, or B's width over the n of
    initial_states (batch, h, p, n); one line naming B and the flag when neither says."""
    if ngroups is not None:
        return int(ngroups), "--ngroups"
    shp = onp.shape(inputs["B"])
    n = onp.shape(inputs["initial_states"])[-1] if "initial_states" in inputs and \
        onp.ndim(inputs["initial_states"]) == 4 else None
    if n and len(shp) == 3 and shp[2] % n == 0:
        return shp[2] // n, "key 'initial_states' (its n)"
    raise ValueError(f"{where}: key 'B': shape {tuple(shp)} is (batch, L, g·n) in the "
                     "heads-flat layout and nothing says g (expected --ngroups G, HF's "
                     "n_groups, mamba2-minimal's ngroups; or initial_states (batch, h, p, n) "
                     "in the inputs, whose n fixes g)")


def _unflatten(where, key, arr, split, source):
    """A heads-flat tensor (batch, L, a·b) -> (batch, L, a, b), a = ``split`` (h or g)."""
    sym = HEADS_FLAT_TENSORS[key]
    inner = _FLAT_INNER[sym]
    shp = onp.shape(arr)
    if len(shp) != 3:
        hint = "; it fits the channel-last layout: drop --layout heads-flat" \
            if len(shp) == 4 else ""
        raise ValueError(f"{where}: key {_q(key)}: shape {shp} (expected 3 dimensions "
                         f"(batch, L, {sym}·{inner}) in the heads-flat layout){hint}")
    if shp[2] % split:
        raise ValueError(f"{where}: key {_q(key)}: shape {shp}: {shp[2]} is not a multiple of "
                         f"{sym} = {split} (expected (batch, L, {sym}·{inner}) in the "
                         f"heads-flat layout; {sym} from {source})")
    return onp.reshape(arr, shp[:2] + (split, shp[2] // split))


def _check_layer_inputs(model, inputs, sizes, where, params_where, layout, ngroups=None):
    """A layer's inputs: its input sequence (``SPECS[model]["input"]``), the other required
    inputs and the optional ones (``layer_inputs``), and ``dy``; channel-last (the layers
    take (batch, L, ...) in every anchor), or for ssd heads-flat (x, z, dy (batch, L, h·p),
    B, C (batch, L, g·n): HF's), given back channel-last."""
    spec = SPECS[model]
    name, shape = spec["input"]
    required, optional = layer_inputs(model)
    needed = (name,) + tuple(required)
    allowed = needed + tuple(optional) + ("dy",)
    extra = sorted(k for k in inputs if k not in allowed)
    if extra:
        hint = " (the layer's input is hidden_states, HF's name)" \
            if extra[0] == "u" and name == "hidden_states" else ""
        raise ValueError(f"{where}: unexpected key {_q(extra[0])} for --model {model} "
                         f"(expected {', '.join(needed)}, and optionally "
                         f"{', '.join(allowed[len(needed):])}){hint}")
    bound = _Sizes(where)
    for sym, val in sizes.items():
        bound.values[sym] = (val, f"{params_where}")
    split = {}

    def read(key):
        arr = _float_array(where, key, inputs[key])
        if layout != "heads-flat" or key not in HEADS_FLAT_TENSORS:
            return arr
        sym = HEADS_FLAT_TENSORS[key]
        if sym not in split:
            split[sym] = (sizes["h"], params_where) if sym == "h" else \
                _flat_groups(where, inputs, ngroups)
        return _unflatten(where, key, arr, *split[sym])

    def bind(key, st, arr):
        try:
            bound.bind(key, st, onp.shape(arr))
        except ValueError as exc:
            if model == "ssd" and layout == "channel-last" and key in HEADS_FLAT_TENSORS \
                    and onp.ndim(arr) == 3:
                raise ValueError(f"{exc}; it fits the heads-flat layout (HF's (batch, L, "
                                 f"{HEADS_FLAT_TENSORS[key]}·{_FLAT_INNER[HEADS_FLAT_TENSORS[key]]})"
                                 "): pass --layout heads-flat") from None
            raise
    out = {}
    for key, st in [(name, shape)] + list(required.items()):
        if key not in inputs:
            raise ValueError(f"{where}: missing key {_q(key)} (expected {key} "
                             f"{_fmt_shape(st)} float64)")
        out[key] = read(key)
        bind(key, st, out[key])
        if key == "B" and model == "ssd":
            g, h = bound.get("g"), bound.get("h")
            if h % g:
                raise ValueError(f"{where}: key 'B': ngroups g = {g} does not divide nheads "
                                 f"h = {h} (expected B (batch, L, g, n) with h % g == 0; h "
                                 f"from {bound.values['h'][1]})")
    for key, st in optional.items():
        if key not in inputs:
            continue
        out[key] = read(key)
        shp = onp.shape(out[key])
        if key == "conv_state":
            # mamba_ssm's / HF's (batch, C, W), or causal-conv1d's initial_states
            # (batch, C, W - 1); C the conv's channels (E for Mamba-1, conv_dim for Mamba-2)
            W, C = sizes["W"], st[1]
            if len(shp) == 3 and shp[2] not in (W, W - 1):
                raise ValueError(f"{where}: key 'conv_state': shape {shp} (expected (batch, "
                                 f"{C}, W) = (batch, {sizes[C]}, {W}), the last W conv inputs as "
                                 f"mamba_ssm keeps them, or causal-conv1d's (batch, "
                                 f"{sizes[C]}, {W - 1}); W from key 'conv1d.weight')")
            st = ("batch", C, "W_state")
        bind(key, st, out[key])
    if "dy" in inputs:
        out["dy"] = read("dy")
        bind("dy", spec["outputs"]["y"], out["dy"])
    return out, bound.as_dict()


# ----------------------------------------------------------------------------- files
def load_npz(path, what="params"):
    """Read every array of a ``.npz`` with ``allow_pickle=False``; one-line errors.

    Returns dict key -> ndarray. Missing, truncated or corrupt archives, single
    ``.npy`` files and pickled object arrays raise ValueError naming the file (and key).

    >>> load_npz("/nonexistent/P.npz")
    Traceback (most recent call last):
    ...
    ValueError: /nonexistent/P.npz: no such file (expected a .npz params file)
    """
    label = os.fspath(path)
    if not os.path.exists(label):
        raise ValueError(f"{label}: no such file (expected a .npz {what} file)")
    if os.path.isdir(label):
        raise ValueError(f"{label}: is a directory (expected a .npz {what} file)")
    key = None
    try:
        with open(label, "rb") as fh:
            head = fh.read(16)
        _refuse_pickles(label, head)
        head = head[:4]
        if head != b"PK\x03\x04" and head != b"PK\x05\x06":
            raise ValueError(f"{label}: not a .npz archive (expected a zip of .npy arrays "
                             f"written by numpy.savez; got {len(head)} leading bytes {head!r})")
        out = {}
        with onp.load(label, allow_pickle=False) as z:
            for key in z.files:
                out[key] = z[key]
        key = None
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith(label + ":"):
            raise
        if "pickle" in msg:
            raise ValueError(f"{label}: key {_q(key)} holds pickled Python objects (expected a "
                             "float64 array; files are read with allow_pickle=False)") from None
        where = f"key {_q(key)} of " if key else ""
        raise ValueError(f"{label}: {where}archive is truncated or corrupt ({_one_line(exc)})"
                         "; expected a .npz written by numpy.savez") from None
    except Exception as exc:  # zipfile.BadZipFile, EOFError, zlib.error, OSError, ...
        where = f"key {_q(key)} of " if key else ""
        raise ValueError(f"{label}: {where}archive is truncated or corrupt ({type(exc).__name__}: "
                         f"{_one_line(exc)}); expected a .npz written by numpy.savez") from None
    if not out:
        raise ValueError(f"{label}: empty archive (expected the {what} keys)")
    return out


TORCH_HINT = ("save the tensors with numpy.savez or as .safetensors instead "
              "(docs/12-verify-mamba.md, 'Getting your tensors out')")


def _refuse_pickles(label, head):
    """PyTorch's torch.save files (a zip of pickles, or a bare pickle) are recognised and
    refused in one line: they are never unpickled, whatever their name."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ValueError(f"{label}: a Python pickle (torch.save's legacy format or "
                         f"pickle.dump), never unpickled here; {TORCH_HINT}")
    if head[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(label) as z:
            names = z.namelist()
        if any(n.endswith("data.pkl") or "/data/" in n for n in names):
            raise ValueError(f"{label}: a PyTorch torch.save file (a zip of pickles, "
                             f"{names[0]!r} ...), never unpickled here; {TORCH_HINT}")


def read_arrays(path, what="params", prefix=None):
    """Every array of a ``.npz`` or ``.safetensors`` file (told apart by their first
    bytes, not their names), and the notes worth telling the user: ``(arrays, notes)``.
    safetensors' floating tensors come back as float64 (an exact upcast: notes say from
    what). ``prefix`` (e.g. ``backbone.layers.3.mixer.``) keeps the keys that start with
    it, stripped of it; a prefix that matches nothing lists the layer prefixes found.

    >>> import os, tempfile, numpy
    >>> from rssm_ref.util import safetensors
    >>> p = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> safetensors.write(p, {"layers.0.mixer.D": numpy.ones(2, numpy.float32)})
    >>> arrays, notes = read_arrays(p, prefix="layers.0.mixer.")
    >>> sorted(arrays), notes
    (['D'], ['D upcast exactly to float64 from F32'])
    """
    label = os.fspath(path)
    notes = []
    head = b""
    if os.path.isfile(label):
        with open(label, "rb") as fh:
            head = fh.read(16)
    if safetensors.looks_like(head):
        arrays, upcast = safetensors.read(label)
    else:
        arrays, upcast = load_npz(label, what), {}
    if prefix:
        kept = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if not kept:
            found = sorted({k[:-len(leaf)] for k in arrays for leaf in ("A_log", "in_proj.weight")
                            if k.endswith(leaf)})
            raise ValueError(f"--prefix: {prefix!r} matches no key of {label} (layer prefixes "
                             f"found: {', '.join(map(repr, found)) or 'none'}; keys look like "
                             f"{next(iter(arrays))!r})")
        # a prefix short of a layer's (keys like 'mixer.A_log' left, or '.A_log' without
        # the trailing dot): name the whole layer prefixes it reaches
        deeper = sorted({prefix + k[:-len(leaf)] for k in kept for leaf in ("A_log", "in_proj.weight")
                         if k.endswith("." + leaf)})
        if deeper:
            raise ValueError(f"--prefix: {prefix!r} stops short of a layer in {label} (its keys "
                             f"still look like {sorted(kept)[0]!r}; expected a whole layer's "
                             f"prefix: {', '.join(map(repr, deeper))})")
        upcast = {k[len(prefix):]: v for k, v in upcast.items() if k.startswith(prefix)}
        arrays = kept
    # one note per source dtype, naming its tensors (a checkpoint's layer has a dozen)
    for dtype in sorted(set(upcast.values())):
        names = sorted(k for k, v in upcast.items() if v == dtype)
        notes.append(f"{', '.join(names)} upcast exactly to float64 from {dtype}"
                     if len(names) <= 3 else
                     f"{len(names)} tensors ({', '.join(names[:3])}, ...) upcast exactly to "
                     f"float64 from {dtype}")
    return arrays, notes


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text[:120] if text else type(exc).__name__


def load_params(path, model, allow_unstable=False, prefix=None, options=None):
    """Load and check a params file (.npz or .safetensors, ``read_arrays``); returns
    ``(params, sizes)`` (see ``check_params``; ``options`` for mamba2-block)."""
    arrays, _ = read_arrays(path, "params", prefix)
    return check_params(model, arrays, where=os.fspath(path), allow_unstable=allow_unstable,
                        options=options)


def load_inputs(path, model, sizes, params_where="params", layout="channel-last",
                ngroups=None):
    """Load and check an inputs file against the params' sizes (see ``check_inputs``)."""
    return check_inputs(model, load_npz(path, "inputs"), sizes, where=os.fspath(path),
                        params_where=params_where, layout=layout, ngroups=ngroups)


def encode_options(options):
    """Options dict -> uint8 array of UTF-8 JSON (loads with allow_pickle=False).

    >>> decode_options(encode_options({"model": "lti"}), "O.npz")
    {'model': 'lti'}
    """
    return onp.frombuffer(json.dumps(options, sort_keys=True).encode("utf-8"), dtype=onp.uint8).copy()


def decode_options(arr, where):
    """uint8 JSON array -> dict, or ValueError naming ``where`` and ``options_json``."""
    arr = onp.asarray(arr)
    if arr.dtype != onp.uint8 or arr.ndim != 1:
        raise ValueError(f"{where}: key {_q(OPTIONS_KEY)}: dtype {arr.dtype} shape {arr.shape} "
                         "(expected a 1-D uint8 array of UTF-8 JSON)")
    try:
        opts = json.loads(arr.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: key {_q(OPTIONS_KEY)}: not valid UTF-8 JSON "
                         f"({_one_line(exc)})") from None
    if not isinstance(opts, dict):
        raise ValueError(f"{where}: key {_q(OPTIONS_KEY)}: expected a JSON object")
    return opts


def save_npz_atomic(path, arrays):
    """Write ``arrays`` to ``path`` via a temporary file in the same directory + os.replace.

    A failure leaves no file behind, and a reader never sees a half-written file.

    >>> import tempfile, numpy, os
    >>> d = tempfile.mkdtemp(); f = os.path.join(d, "o.npz")
    >>> save_npz_atomic(f, {"y": numpy.zeros(2)}); sorted(load_npz(f))
    ['y']
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{path}: directory {folder} does not exist (expected an existing "
                         "directory for the output file)")
    atomic_savez(path, arrays)


def check_reference(arrays, where="reference"):
    """Split a ``forward`` output file into (options, params, inputs, outputs).

    Checks that the embedded params/inputs are valid for the model in the options and
    that each output tensor has the shape the format gives it. Raises ValueError naming
    ``where`` and the key. The inputs come back in the cores' (batch, L, ...) layout; the
    outputs as stored, in the file's ``layout`` (options; "channel-last" when absent).
    """
    if OPTIONS_KEY not in arrays:
        raise ValueError(f"{where}: missing key {_q(OPTIONS_KEY)} (expected a file written by "
                         "`forward` or `golden`, which embeds params, inputs and options)")
    opts = decode_options(arrays[OPTIONS_KEY], where)
    model = opts.get("model")
    if model not in SPECS:
        raise ValueError(f"{where}: key {_q(OPTIONS_KEY)}: model {model!r} (expected one of "
                         f"{', '.join(MODELS)})")
    params = {k[len(PARAM_PREFIX):]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
    inputs = {k[len(INPUT_PREFIX):]: v for k, v in arrays.items() if k.startswith(INPUT_PREFIX)}
    params, sizes = check_params(model, params, where=f"{where} (embedded {PARAM_PREFIX}*)",
                                 allow_unstable=bool(opts.get("allow_unstable", False)),
                                 options=opts)
    layout = check_layout(opts.get("layout") or "channel-last",
                          f"{where}: key {_q(OPTIONS_KEY)}: layout")
    inputs, sizes = check_inputs(model, inputs, sizes, where=f"{where} (embedded {INPUT_PREFIX}*)",
                                 layout=layout, ngroups=opts.get("ngroups"))
    allowed = allowed_output_keys(model, params)
    shapes = {k: layout_shape(k, v, layout)
              for k, v in expected_output_shapes(model, params, sizes, opts).items()}
    outputs = {}
    for key, arr in arrays.items():
        if key == OPTIONS_KEY or key.startswith(PARAM_PREFIX) or key.startswith(INPUT_PREFIX):
            continue
        if key not in allowed:
            raise ValueError(f"{where}: unexpected key {_q(key)} (expected outputs among "
                             f"{', '.join(sorted(allowed))})")
        outputs[key] = _float_array(where, key, arr)
        if outputs[key].shape != shapes[key]:
            raise ValueError(f"{where}: key {_q(key)}: shape {outputs[key].shape} (expected "
                             f"{shapes[key]})")
    if "y" not in outputs:
        raise ValueError(f"{where}: missing key 'y' (expected the output sequence)")
    return opts, params, inputs, outputs


def allowed_output_keys(model, params):
    """Output keys a forward file may hold for these params: y, intermediates, grads.

    >>> sorted(allowed_output_keys("lti", {"num": 0, "den": 0}))
    ['grad_den', 'grad_num', 'grad_u', 'y']
    """
    spec = SPECS[model]
    keys = set(spec["outputs"]) | set(spec["intermediates"]) | {"grad_" + input_key(model)}
    keys |= {f"grad_{k}" for k in params}
    for more in layer_inputs(model):
        keys |= {f"grad_{k}" for k in more}
    return keys


def expected_output_shapes(model, params, sizes, options=None):
    """Concrete shapes of every allowed output key (y, intermediates, grad_*); ssd's
    chunk_states needs the ``chunk_size`` of the file's ``options``."""
    if model == "ssd":
        sizes = dict(sizes, nchunks=-(-sizes["L"] // int((options or {}).get("chunk_size")
                                                          or SSD_CHUNK_SIZE)))
    shapes = output_shapes(model, sizes)
    if "input" in SPECS[model]:
        name, shp = SPECS[model]["input"]
        shapes["grad_" + name] = tuple(sizes[s] for s in shp)
        for key, st in {**layer_inputs(model)[0], **layer_inputs(model)[1]}.items():
            if key == "conv_state":
                st = ("batch", st[1], "W_state" if "W_state" in sizes else "W")
            shapes["grad_" + key] = tuple(sizes[s] for s in st)
    else:
        shapes["grad_u"] = (sizes["batch"], sizes["L"], sizes["m"])
    for k, v in params.items():
        shapes[f"grad_{k}"] = tuple(onp.shape(v))
    return shapes
