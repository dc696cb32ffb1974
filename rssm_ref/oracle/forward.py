"""``forward``: the float64 oracle's outputs, intermediates and gradients for a user's files.

One call computes, for ``--model lti|residual|selective``, the output ``y`` (and with
``intermediates`` the model's internal signals, with ``grads`` the gradients of
sum(y * dy) for ``u`` and every parameter key), and writes them together with
everything needed to recompute them: the params as ``param__<key>``, the inputs as
``input__<key>`` and the options as JSON in ``options_json`` (see docs/formats.md).

Glossary
--------
u (batch, L, m)        input sequence (or tokens (batch, L) with params["embedding"])
y (batch, L, p|m)      output; dy the cotangent (same shape; ones when absent)
ForwardConfig          model and options (path, gate, discretization, output, ...)
compute(model, params, inputs, **options) -> dict of float64 arrays
run_forward(config, params_path, inputs_path, out_path) -> dict summary
backend                "numpy" (default: the autograd cores) or "cupy" / "array_api_strict"
                       (the neutral kernels of rssm_ref.xp.models on that array module;
                       parameters stay on the host, see docs/11-backends.md)
layout                 "channel-last" (batch, L, m) or "channel-first" (batch, m, L), for
                       u, dy and every sequence output (rssm_ref.oracle.formats.layout_shape);
                       ssd: channel-last or "heads-flat" (x, z, y (batch, L, h·p), B, C
                       (batch, L, g·n), HF's), with ``ngroups`` g

Models (the computation is delegated to the cores; this module only dispatches):
lti        y = Σ u with Σ in state-space (A, B, C, D) or transfer-function form (num, den)
residual   Fig. 3 / eq. (5): y(t+1) = y(t) + (y_s(t) - y(t)) s(t), s = σ(r + gate_bias)
selective  eqs. (2)-(4)
mamba      the same core under a Mamba layer's names (A_log, x_proj.weight, dt_proj.*, D),
           gradients for those keys (rssm_ref.oracle.mamba); defaults euler / after
mamba-block  a whole Mamba-1 layer (rssm_ref.mamba_block) on hidden_states
mamba2-block a whole Mamba-2 layer (rssm_ref.mamba2_block) on hidden_states; options
           ngroups or d_state, norm_before_gate, norm_group_size, dt_limit, chunk_size, eps
ssd        Mamba-2's SSD core (rssm_ref.ssd.ssd_chunked, mamba_chunk_scan_combined's names):
           y and final_states of x, dt, B, C (+ z, initial_states) under A_log or A, D,
           dt_bias; options dt_softplus, dt_limit (lo, hi), chunk_size

>>> import numpy
>>> P = {"num": numpy.array([[[1.0, 0.0]]]), "den": numpy.array([[1.0, -0.5]])}
>>> out = compute("lti", P, {"u": numpy.ones((1, 3, 1))}, grads=True)
>>> out["y"].ravel().round(6).tolist(), out["grad_u"].ravel().round(6).tolist()
([1.0, 1.5, 1.75], [1.75, 1.5, 1.0])
"""
import dataclasses
import math
import os
from typing import Optional

import autograd.numpy as np
import numpy as onp
from autograd import grad, make_vjp
from autograd.tracer import getval

from rssm_ref import residual_ssm as rs
from rssm_ref.convolution import ss_fft_filter, tf_fft_filter
from rssm_ref.mamba2_block import mamba2_block, mamba2_block_step
from rssm_ref.mamba_block import mamba_block, mamba_block_step
from rssm_ref.oracle import formats, mamba
from rssm_ref.recurrence import ss_filter, tf_filter
from rssm_ref.selective_ssm import selective_ssm
from rssm_ref.ssd import ssd_chunked
from rssm_ref.util.paths import check_outputs
from rssm_ref.util.version import VERSION
from rssm_ref.validation import check_option, DISCRETIZATIONS, GATES, OUTPUTS, PATHS
from rssm_ref.xp.backend import get_backend_name, namespace, to_backend, to_host
from rssm_ref.xp.models import compute_xp

LAYOUTS = formats.LAYOUTS
# per model: the options that apply and their defaults (the paper's for selective and
# residual; mamba_ssm's for mamba). Residual output "after" is y(1..L), "before" y(0..L-1).
DEFAULTS = {
    "lti": {},
    "residual": {"gate": "euler", "output": "after"},
    "selective": {"discretization": "zoh", "output": "before"},
    "mamba": {"discretization": "euler", "output": "after"},
    "mamba-block": {"discretization": "euler", "output": "after"},
    "ssd": {},
    "mamba2-block": {},
}


@dataclasses.dataclass(frozen=True)
class ForwardConfig:
    """What ``forward`` computes. ``None`` options take the model's default.

    >>> ForwardConfig("residual").options()["gate"]
    'euler'
    """
    model: str
    path: Optional[str] = None
    gate: Optional[str] = None
    discretization: Optional[str] = None
    output: Optional[str] = None
    allow_unstable: bool = False
    grads: bool = False
    intermediates: bool = False
    backend: Optional[str] = None   # None: $RSSM_REF_BACKEND, else "numpy"
    layout: Optional[str] = None    # None: "channel-last"
    step: bool = False              # the layers: one decoding step (Mamba.step, Mamba2.step)
    prefix: Optional[str] = None    # keep the params keys starting with it, stripped
    dt_softplus: bool = False       # ssd: dt' = softplus(dt + dt_bias) (S1)
    dt_limit: Optional[tuple] = None  # ssd: the clamp (lo, hi) of dt'; None: (0, inf), none
    chunk_size: Optional[int] = None  # ssd, mamba2-block: the chunk length Q; None: SSD_CHUNK_SIZE
    ngroups: Optional[int] = None   # mamba2-block (or d_state), ssd heads-flat: g
    d_state: Optional[int] = None
    norm_before_gate: bool = False  # mamba2-block: mamba_ssm's RMSNormGated option
    norm_group_size: Optional[int] = None  # mamba2-block: None: d_ssm / ngroups
    eps: Optional[float] = None     # mamba2-block: the gated norm's; None: formats.MAMBA2_EPS

    def options(self):
        """Resolved options dict (the JSON stored in ``options_json``), checked."""
        spec = formats.SPECS.get(self.model, {})
        if self.intermediates and "intermediates" in spec and not spec["intermediates"]:
            raise ValueError(f"intermediates: does nothing for --model {self.model} (it has no "
                             "internal signals; expected it only with a model that has some)")
        return resolve_options(self.model, path=self.path, gate=self.gate,
                               discretization=self.discretization, output=self.output,
                               allow_unstable=self.allow_unstable, grads=self.grads,
                               intermediates=self.intermediates, layout=self.layout,
                               step=self.step, dt_softplus=self.dt_softplus,
                               dt_limit=self.dt_limit, chunk_size=self.chunk_size,
                               ngroups=self.ngroups, d_state=self.d_state,
                               norm_before_gate=self.norm_before_gate,
                               norm_group_size=self.norm_group_size, eps=self.eps)


def _choice(name, value, allowed, model, applies):
    if value is None:
        return None
    if model not in applies:
        raise ValueError(f"{name}: {value!r} given for --model {model} (expected it only with "
                         f"--model {' or '.join(applies)})")
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} (expected one of {', '.join(allowed)})")
    return value


def resolve_options(model, path=None, gate=None, discretization=None, output=None,
                    allow_unstable=False, grads=False, intermediates=False, layout=None,
                    step=False, dt_softplus=False, dt_limit=None, chunk_size=None,
                    ngroups=None, d_state=None, norm_before_gate=False, norm_group_size=None,
                    eps=None):
    """Check the options against the model and fill in defaults.

    Defaults (``DEFAULTS``): path "recurrent", layout "channel-last"; residual gate
    "euler" (eq. (5)) and output "after" (y(1..L)); selective discretization "zoh"
    (eq. (3b)) and output "before" (eq. (2)); mamba "euler" and "after" (mamba_ssm's);
    ssd dt_softplus False, dt_limit [0, None] (no clamp; None stands for +inf in the JSON)
    and chunk_size formats.SSD_CHUNK_SIZE (mamba_chunk_scan_combined's and Mamba-2's);
    ngroups (ssd, layout "heads-flat" only: g of B, C (batch, L, g·n); None leaves it to
    initial_states' n) is stored when given.
    mamba2-block dt_limit and chunk_size as ssd, ngroups and d_state None (the params
    check asks for one), norm_before_gate False, norm_group_size None (d_ssm / g), eps
    formats.MAMBA2_EPS (mamba_ssm's), step False.

    >>> resolve_options("selective")["output"]
    'before'
    >>> resolve_options("lti", gate="zoh")
    Traceback (most recent call last):
    ...
    ValueError: gate: 'zoh' given for --model lti (expected it only with --model residual)
    """
    formats.check_model(model)
    if path is not None:
        check_option("path", path, PATHS)
    if step and model not in formats.LAYER_MODELS:
        raise ValueError(f"step: given for --model {model} (expected it only with --model "
                         "mamba-block or mamba2-block: one decoding step from conv_state and "
                         "ssm_state)")
    if model == "mamba-block":
        for name, value, only in (("discretization", discretization, "euler"),
                                  ("output", output, "after")):
            if value not in (None, only):
                raise ValueError(f"{name}: {value!r} given for --model mamba-block (the layer "
                                 f"computes mamba_ssm's Mamba: {name} {only!r}; verify another "
                                 "convention on the scan alone with --model mamba)")
    layout = formats.check_model_layout(model, layout or "channel-last")
    ssd_opts = _ssd_options(model, dt_softplus, dt_limit, chunk_size,
                            ngroups if model == "ssd" else None, layout)
    ssd_opts.update(_mamba2_options(model, None if model == "ssd" else ngroups, d_state,
                                    norm_before_gate, norm_group_size, eps))
    if model in ("selective", "mamba", "mamba-block", "ssd", "mamba2-block") and path == "fft":
        raise ValueError(f"path: 'fft' given for --model {model} (a time-varying system has "
                         "no convolution kernel; expected recurrent)")
    opts = {
        "format": formats.FORMAT_VERSION,
        "model": model,
        "path": path or "recurrent",
        "gate": _choice("gate", gate, GATES, model, ("residual",)),
        "discretization": _choice("discretization", discretization, DISCRETIZATIONS, model,
                                  ("selective", "mamba", "mamba-block")),
        "output": _choice("output", output, OUTPUTS, model,
                          ("residual", "selective", "mamba", "mamba-block")),
        "allow_unstable": bool(allow_unstable),
        "grads": bool(grads),
        "intermediates": bool(intermediates),
        "layout": layout,
    }
    for key, default in DEFAULTS[model].items():
        opts[key] = opts[key] or default
    if model in formats.LAYER_MODELS:
        opts["step"] = bool(step)          # only the layers' files carry the key
    opts.update(ssd_opts)
    return opts


def _ssd_options(model, dt_softplus, dt_limit, chunk_size, ngroups=None,
                 layout="channel-last"):
    """ssd's options (mamba2-block's dt_limit and chunk_size) checked, as stored in
    options_json ({} for another model): the clamp as [lo, hi] with hi None for +inf
    (JSON has no infinity); ssd's ngroups with heads-flat only."""
    given = [name for name, v in (("dt_softplus", dt_softplus), ("dt_limit", dt_limit),
                                  ("chunk_size", chunk_size), ("ngroups", ngroups))
             if v is not None and v is not False]
    if model == "mamba2-block" and dt_softplus:
        raise ValueError("dt_softplus: given for --model mamba2-block (the layer always takes "
                         "dt = softplus(dt + dt_bias), as Mamba2 does; expected it only with "
                         "--model ssd)")
    if model not in ("ssd", "mamba2-block"):
        if given:
            also = "" if given[0] == "dt_softplus" else " or mamba2-block"
            raise ValueError(f"{given[0]}: given for --model {model} (expected it only with "
                             f"--model ssd{also})")
        return {}
    lo, hi = 0.0, None
    if dt_limit is not None:
        try:
            lo, hi = (float(v) if v is not None else math.inf for v in dt_limit)
            ok = len(dt_limit) == 2 and math.isfinite(lo) and not math.isnan(hi) and lo <= hi
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"dt_limit: {dt_limit!r} (expected LO HI with LO finite and "
                             "LO <= HI; HI may be inf; 0 inf means no clamp)")
        hi = None if hi == math.inf else hi
    if chunk_size is not None and not (isinstance(chunk_size, (int, onp.integer))
                                       and not isinstance(chunk_size, bool) and chunk_size >= 1):
        raise ValueError(f"chunk_size: {chunk_size!r} (expected an integer >= 1)")
    out = {"dt_softplus": bool(dt_softplus), "dt_limit": [lo, hi],
           "chunk_size": int(chunk_size or formats.SSD_CHUNK_SIZE)}
    if ngroups is not None:
        if layout != "heads-flat":
            raise ValueError(f"ngroups: given with layout {layout!r} (it splits B, C "
                             "(batch, L, g·n) of the heads-flat layout; channel-last B is "
                             "(batch, L, g, n); expected it only with --layout heads-flat)")
        if not (isinstance(ngroups, (int, onp.integer)) and not isinstance(ngroups, bool)
                and ngroups >= 1):
            raise ValueError(f"ngroups: {ngroups!r} (expected an integer >= 1)")
        out["ngroups"] = int(ngroups)
    if model == "mamba2-block":
        del out["dt_softplus"]
    return out


def _mamba2_options(model, ngroups, d_state, norm_before_gate, norm_group_size, eps):
    """mamba2-block's layer options checked, as stored in options_json ({} for another
    model); those that depend on the params (ngroups divides the heads, ...) are checked
    with them (formats.check_params)."""
    given = [name for name, v in (("ngroups", ngroups), ("d_state", d_state),
                                  ("norm_before_gate", norm_before_gate),
                                  ("norm_group_size", norm_group_size), ("eps", eps))
             if v is not None and v is not False]
    if model != "mamba2-block":
        if given:
            also = " or --model ssd with --layout heads-flat" if given[0] == "ngroups" else ""
            raise ValueError(f"{given[0]}: given for --model {model} (expected it only with "
                             f"--model mamba2-block{also})")
        return {}
    for name, v in (("ngroups", ngroups), ("d_state", d_state),
                    ("norm_group_size", norm_group_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, onp.integer))
                              or v < 1):
            raise ValueError(f"{name}: {v!r} (expected an integer >= 1)")
    if eps is not None:
        try:
            ok = math.isfinite(float(eps)) and float(eps) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"eps: {eps!r} (expected a finite number > 0; mamba_ssm's is "
                             f"{formats.MAMBA2_EPS:g})")
    as_int = lambda v: None if v is None else int(v)
    return {"ngroups": as_int(ngroups), "d_state": as_int(d_state),
            "norm_before_gate": bool(norm_before_gate), "norm_group_size": as_int(norm_group_size),
            "eps": float(formats.MAMBA2_EPS if eps is None else eps)}


def _model_call(model, opts, form):
    """(P dict, u) -> (y, intermediates) using the float64 cores of rssm_ref."""
    path = opts["path"]
    if model == "lti":
        if form == "tf":
            if path == "fft":
                return lambda P, u: (tf_fft_filter(P["num"], P["den"], u), {})
            return lambda P, u: (tf_filter(P["num"], P["den"], u), {})
        if path == "fft":
            return lambda P, u: (ss_fft_filter(P["A"], P["B"], P["C"], P["D"], u), {})
        return lambda P, u: (ss_filter(P["A"], P["B"], P["C"], P["D"], u), {})
    if model == "residual":
        unstable = opts["allow_unstable"]

        def call(P, u):
            bias = P.get("gate_bias", 0.0)
            if form == "tf":
                y, inter = rs.residual_ssm_tf(P["sigma_num"], P["sigma_den"], P["r_num"],
                                              P["r_den"], bias, u, path=path, gate=opts["gate"],
                                              return_intermediates=True, allow_unstable=unstable)
            else:
                y, inter = rs.residual_ssm_ss(P["sigma_A"], P["sigma_B"], P["sigma_C"],
                                              P["sigma_D"], P["r_A"], P["r_B"], P["r_C"],
                                              P["r_D"], bias, u, path=path, gate=opts["gate"],
                                              return_intermediates=True, allow_unstable=unstable)
            return y, {k: inter[k] for k in ("y_s", "r", "s")}
        return call

    def call_sel(P, u):
        y, inter = selective_ssm(u, P["A"], P["W_delta"], P["W_B"], P["W_C"],
                                 delta_bias=P.get("delta_bias"), D=P.get("D"),
                                 discretization=opts["discretization"], output=opts["output"],
                                 return_intermediates=True)
        # last_state (batch, m, n): mamba_ssm's return_last_state, h after the last step
        return y, {"delta": inter["delta"], "h": inter["h"], "last_state": inter["h"][:, -1]}
    return call_sel


def compute(model, params, inputs, path=None, gate=None, discretization=None, output=None,
            allow_unstable=False, grads=False, intermediates=False, where=("params", "inputs"),
            backend="numpy", layout=None, dt_softplus=False, dt_limit=None, chunk_size=None,
            ngroups=None, d_state=None, norm_before_gate=False, norm_group_size=None,
            eps=None, step=False):
    """The oracle's float64 outputs for checked-or-raw ``params`` and ``inputs`` mappings.

    Shapes: see rssm_ref.oracle.formats (u (batch, L, m) or tokens (batch, L);
    y (batch, L, p|m)). Returns ``{"y", [intermediates], [grad_u, grad_<key>]}``;
    gradients are those of sum(y * dy), dy from the inputs or ones.
    Bad input raises ValueError/TypeError naming the key. ``backend`` other than
    "numpy" runs the same model with rssm_ref.xp.models on that array module (the
    outputs come back as host NumPy arrays). ``layout="channel-first"``: u, dy and the
    sequence outputs are (batch, m, L) (time last; h (batch, m, n, L)); ssd's
    ``layout="heads-flat"``: x, z, dy, y (batch, L, h·p), B, C (batch, L, g·n), g =
    ``ngroups`` (or initial_states' n).

    >>> import numpy
    >>> P = {"A": [[0.5]], "B": [[1.0]], "C": [[1.0]], "D": [[0.0]]}
    >>> P = {k: numpy.array(v) for k, v in P.items()}
    >>> compute("lti", P, {"u": numpy.ones((1, 3, 1))})["y"].ravel().round(6).tolist()
    [0.0, 1.0, 1.5]
    """
    opts = resolve_options(model, path=path, gate=gate, discretization=discretization,
                           output=output, allow_unstable=allow_unstable, grads=grads,
                           intermediates=intermediates, layout=layout, dt_softplus=dt_softplus,
                           dt_limit=dt_limit, chunk_size=chunk_size, step=step, ngroups=ngroups,
                           d_state=d_state, norm_before_gate=norm_before_gate,
                           norm_group_size=norm_group_size, eps=eps)
    params, sizes = formats.check_params(model, params, where=where[0],
                                         allow_unstable=allow_unstable, options=opts)
    inputs, sizes = formats.check_inputs(model, inputs, sizes, where=where[1],
                                         params_where=where[0], layout=opts["layout"],
                                         ngroups=ngroups)
    out = compute_checked(model, params, inputs, opts, backend)
    return {k: formats.to_layout(k, v, opts["layout"]) for k, v in out.items()}


INTERMEDIATES = {"lti": (), "residual": ("y_s", "r", "s"),
                 "selective": ("delta", "h", "last_state"),
                 "mamba": ("delta", "h", "last_state"),
                 "mamba-block": ("xz", "x_conv", "x_act", "delta", "y_ssm", "z"),
                 "ssd": ("chunk_states",),
                 "mamba2-block": ("zxbcdt", "xBC_conv", "dt", "y_ssd", "y_norm", "y_inner")}


def _shift_right(x):
    """(batch, L, ...) -> [0, x(0), ..., x(L-2)] along time (autograd-friendly)."""
    return np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], axis=1)


def _residual_before(params, inputs, opts, backend):
    """Residual output "before": y(0..L-1) = [0, y(1), ..., y(L-1)]. The gradients of
    sum(y_before * dy) are those of sum(y_after * dy') with dy'(t) = dy(t+1), dy'(L-1) = 0."""
    inner = dict(inputs)
    if opts["grads"]:
        u0 = params["embedding"][inputs["tokens"]] if "tokens" in inputs else inputs["u"]
        dy = inputs["dy"] if "dy" in inputs else onp.ones(onp.shape(u0))
        inner["dy"] = onp.concatenate([dy[:, 1:], onp.zeros_like(dy[:, :1])], axis=1)
    out = compute_checked("residual", params, inner, dict(opts, output="after"), backend)
    out["y"] = _shift_right(out["y"])
    return out


def _compute_on_backend(model, params, inputs, opts, backend, u0):
    """The neutral path: u and dy go to the backend, the outputs come back to the host."""
    xp = namespace(backend)
    core = {k: v for k, v in params.items() if k != "embedding"}
    dy = None
    if opts["grads"]:
        # dy from the inputs, else ones shaped like y (batch, L, p): p = m but for lti
        p = (core["num"].shape[0] if "num" in core else core["C"].shape[0]) if model == "lti" \
            else onp.shape(u0)[2]
        dy = inputs["dy"] if "dy" in inputs else onp.ones(onp.shape(u0)[:2] + (p,))
    u_dev = to_backend(u0, xp)
    res = compute_xp(model, core, u_dev, opts, dy=None if dy is None else to_backend(dy, xp))
    out = {"y": to_host(res["y"])}
    if opts["intermediates"]:
        out.update({k: to_host(res[k]) for k in INTERMEDIATES[model] if k != "last_state"})
        if "h" in out:
            out["last_state"] = out["h"][:, -1]
    if opts["grads"]:
        out.update({k: onp.asarray(v, dtype=onp.float64) for k, v in res.items()
                    if k.startswith("grad_") and k != "grad_u"})
        out["grad_u"] = to_host(res["grad_u"])
    return out


def _compute_mamba(params, inputs, opts, backend):
    # the selective core on the derived (A, W_delta, W_B, W_C, ...), gradients pulled
    # back to A_log, x_proj.weight, dt_proj.* by autograd (rssm_ref.oracle.mamba)
    extra = {"embedding": params["embedding"]} if "embedding" in params else {}
    sel_opts = dict(opts, model="selective")
    if not opts["grads"]:
        S = {k: onp.asarray(v) for k, v in mamba.to_selective(params).items()}
        return compute_checked("selective", dict(S, **extra), inputs, sel_opts, backend)
    S, pull = mamba.with_pullback(params)
    out = compute_checked("selective", dict(S, **extra), inputs, sel_opts, backend)
    grads = pull({k: out.pop("grad_" + k) for k in sorted(S)})
    out.update({"grad_" + k: g for k, g in grads.items()})
    return out


def _layer_run(model, opts):
    """(P, h, conv_state, ssm_state) -> the layer's dict (mamba_block's, mamba2_block's):
    the whole sequence, or with opts["step"] one decoding step (Mamba.step, Mamba2.step)
    on the single token h[:, 0]."""
    if model == "mamba-block":
        whole, one = mamba_block, mamba_block_step
    else:
        kw = formats.mamba2_options(opts)

        def whole(P, h, conv_state, ssm_state):
            return mamba2_block(P, h, conv_state, ssm_state, chunk_size=opts["chunk_size"], **kw)

        def one(P, tok, conv_state, ssm_state, intermediates):
            return mamba2_block_step(P, tok, conv_state, ssm_state, intermediates=intermediates,
                                     **kw)
    if not opts.get("step"):
        return whole

    def step(P, h, conv_state, ssm_state):
        y, conv, ssm, inter = one(P, h[:, 0], conv_state, ssm_state, intermediates=True)
        out = {k: v[:, None] for k, v in inter.items()}
        out.update(y=y[:, None], conv_state=conv, ssm_state=ssm)
        return out
    return step


# models that also run on another array module (rssm_ref.xp); the layers run on NumPy only
BACKEND_MODELS = ("lti", "residual", "selective", "mamba")


def _compute_layer(model, params, inputs, opts, backend):
    # the whole layer (rssm_ref.mamba_block, rssm_ref.mamba2_block); gradients of
    # sum(y * dy) by autograd through it, for every parameter, hidden_states and the
    # initial states given
    if backend != "numpy":
        raise ValueError(f"backend: {backend!r} given for --model {model} (the layer runs "
                         "on NumPy; expected numpy)")
    run = _layer_run(model, opts)
    h = inputs["hidden_states"]
    states = [k for k in ("conv_state", "ssm_state") if k in inputs]
    res = run(params, h, inputs.get("conv_state"), inputs.get("ssm_state"))
    out = {k: onp.asarray(res[k], dtype=onp.float64) for k in ("y", "conv_state", "ssm_state")}
    if opts["intermediates"]:
        out.update({k: onp.asarray(res[k], dtype=onp.float64) for k in INTERMEDIATES[model]})
    if opts["grads"]:
        dy = inputs["dy"] if "dy" in inputs else onp.ones(out["y"].shape)
        keys = sorted(params)

        def objective(args):
            P = dict(zip(keys, args[:len(keys)]))
            given = dict(zip(states, args[len(keys) + 1:]))
            r = run(P, args[len(keys)], given.get("conv_state"), given.get("ssm_state"))
            return np.sum(r["y"] * dy)

        g = grad(objective)([params[k] for k in keys] + [h] + [inputs[k] for k in states])
        for k, gk in zip(keys + ["hidden_states"] + states, g):
            out[f"grad_{k}"] = onp.asarray(gk, dtype=onp.float64)
    return out


def _check_step(model, params, inputs):
    """One decoding step needs one token and both states, the conv state as the step keeps
    it (the last W inputs)."""
    C, ssm, step = (("E", "(batch, E, n)", "Mamba.step") if model == "mamba-block" else
                    ("conv_dim", "(batch, h, p, n)", "Mamba2.step"))
    missing = [k for k in ("conv_state", "ssm_state") if k not in inputs]
    if missing or inputs["hidden_states"].shape[1] != 1:
        raise ValueError("step: one decoding step needs hidden_states (batch, 1, d) and "
                         f"both conv_state (batch, {C}, W) and ssm_state {ssm} in "
                         f"the inputs (got hidden_states {inputs['hidden_states'].shape}"
                         + (f", missing {', '.join(missing)})" if missing else ")"))
    if inputs["conv_state"].shape[2] != params["conv1d.weight"].shape[2]:
        batch, width, W = (inputs["conv_state"].shape[0],) + params["conv1d.weight"].shape[::2]
        raise ValueError(f"step: key 'conv_state': shape {inputs['conv_state'].shape} "
                         f"(expected (batch, {C}, W) = ({batch}, {width}, {W}), as {step} "
                         f"keeps it; causal-conv1d's (batch, {C}, W - 1) is for a "
                         "whole-sequence forward)")


SSD_INPUTS = ("x", "dt", "B", "C", "z", "initial_states")


def _compute_ssd(params, inputs, opts, backend):
    # rssm_ref.ssd.ssd_chunked (its hand-written VJP); gradients of sum(y * dy) for every
    # param and input, from one traced forward that also gives y and the states
    if backend != "numpy":
        raise ValueError(f"backend: {backend!r} given for --model ssd (the SSD core runs on "
                         "NumPy; expected numpy)")
    keys = sorted(params) + [k for k in SSD_INPUTS if k in inputs]
    kept = {}

    def run(args):
        a = dict(zip(keys, args))
        res = ssd_chunked(a["x"], a["dt"], a.get("A"), a["B"], a["C"], D=a.get("D"),
                          z=a.get("z"), dt_bias=a.get("dt_bias"),
                          initial_states=a.get("initial_states"), A_log=a.get("A_log"),
                          dt_softplus=opts["dt_softplus"], dt_limit=formats.ssd_limit(opts),
                          chunk_size=opts["chunk_size"], return_chunk_states=True)
        kept.update(final_states=getval(res["final_states"]),
                    chunk_states=getval(res["chunk_states"]))
        return res["y"]

    args = [params[k] if k in params else inputs[k] for k in keys]
    if opts["grads"]:
        vjp, y = make_vjp(run)(args)
        dy = inputs["dy"] if "dy" in inputs else onp.ones(onp.shape(y))
        grads = dict(zip(keys, vjp(dy)))
    else:
        y, grads = run(args), {}
    out = {"y": onp.asarray(y, dtype=onp.float64),
           "final_states": onp.asarray(kept["final_states"], dtype=onp.float64)}
    if opts["intermediates"]:
        out["chunk_states"] = onp.asarray(kept["chunk_states"], dtype=onp.float64)
    out.update({f"grad_{k}": onp.asarray(g, dtype=onp.float64) for k, g in grads.items()})
    return out


def compute_checked(model, params, inputs, opts, backend="numpy"):
    """The oracle's outputs for params and inputs already checked (``formats``) and
    options already resolved (:func:`resolve_options`): y, the intermediates with
    ``opts["intermediates"]``, and ``grad_<key>``, ``grad_u`` with ``opts["grads"]``
    (gradients of sum(y * dy), dy defaulting to ones). The entry point behind
    :func:`compute`, ``forward``, ``verify``, ``diagnose`` and ``golden``.
    """
    if model == "mamba":
        return _compute_mamba(params, inputs, opts, backend)
    if model == "ssd":
        return _compute_ssd(params, inputs, opts, backend)
    if model in formats.LAYER_MODELS:
        if opts.get("step"):
            _check_step(model, params, inputs)
        return _compute_layer(model, params, inputs, opts, backend)
    if model == "residual" and opts.get("output") == "before":
        return _residual_before(params, inputs, opts, backend)
    if opts["allow_unstable"] and opts["path"] == "fft":
        # a convolution kernel of an unstable system never decays: refuse, clearly
        try:
            formats.check_params(model, params, where="params")
        except ValueError as exc:
            raise ValueError(f"path: 'fft' needs a stable system ({exc}); use --path "
                             "recurrent with --allow-unstable") from None
    form = formats.param_form(model, params)
    form = next(iter(form.values()))
    fn = _model_call(model, opts, form)
    keys = sorted(k for k in params if k != "embedding")
    if "tokens" in inputs:
        u0 = params["embedding"][inputs["tokens"]]
    else:
        u0 = inputs["u"]
    if backend != "numpy":
        out = _compute_on_backend(model, params, inputs, opts, backend, u0)
        _embedding_grad(out, params, inputs)
        return out
    y, inter = fn(dict(params), u0)
    out = {"y": onp.asarray(y, dtype=onp.float64)}
    if opts["intermediates"]:
        out.update({k: onp.asarray(v, dtype=onp.float64) for k, v in inter.items()})
    if opts["grads"]:
        dy = inputs["dy"] if "dy" in inputs else onp.ones(out["y"].shape)

        def objective(args):
            P = dict(zip(keys, args[:-1]))
            return np.sum(fn(P, args[-1])[0] * dy)

        g = grad(objective)([params[k] for k in keys] + [u0])
        for k, gk in zip(keys, g[:-1]):
            out[f"grad_{k}"] = onp.asarray(gk, dtype=onp.float64).reshape(onp.shape(params[k]))
        out["grad_u"] = onp.asarray(g[-1], dtype=onp.float64)
        _embedding_grad(out, params, inputs)
    return out


def _embedding_grad(out, params, inputs):
    if "tokens" in inputs and "grad_u" in out:
        # the VJP of the gather u = embedding[tokens]: scatter-add grad_u
        ge = onp.zeros(params["embedding"].shape)
        onp.add.at(ge, inputs["tokens"], out["grad_u"])
        out["grad_embedding"] = ge


def bundle(opts, params, inputs, outputs):
    """The arrays of a forward output file: outputs + embedded params, inputs and options.

    >>> sorted(bundle({"model": "lti"}, {"A": 1}, {"u": 2}, {"y": 3}))
    ['input__u', 'options_json', 'param__A', 'y']
    """
    arrays = dict(outputs)
    arrays.update({formats.PARAM_PREFIX + k: v for k, v in params.items()})
    arrays.update({formats.INPUT_PREFIX + k: v for k, v in inputs.items()})
    meta = dict(opts)
    meta["rssm_ref_version"] = VERSION
    arrays[formats.OPTIONS_KEY] = formats.encode_options(meta)
    return arrays


def check_finite(outputs, params_where="params", inputs_where="inputs"):
    """Refuse (ValueError) outputs holding inf or NaN: a reference must be a number. The
    message names every non-finite output and where the first one went wrong.

    >>> import numpy
    >>> check_finite({"y": numpy.array([1.0, numpy.inf]), "grad_u": numpy.array([numpy.nan])})
    Traceback (most recent call last):
    ...
    ValueError: params with inputs: outputs y, grad_u are not finite (y overflowed to inf at index (1,)): the float64 computation overflowed; expected finite results (scale the params or inputs down); nothing was written
    """
    order = sorted(outputs, key=lambda k: (k != "y", k.startswith("grad_"), k))
    bad = [k for k in order if not onp.all(onp.isfinite(outputs[k]))]
    if not bad:
        return
    arr = onp.asarray(outputs[bad[0]])
    idx = tuple(int(i) for i in onp.argwhere(~onp.isfinite(arr))[0])
    what = "NaN" if onp.isnan(arr[idx]) else "inf" if arr[idx] > 0 else "-inf"
    verb = "became NaN" if what == "NaN" else f"overflowed to {what}"
    raise ValueError(f"{params_where} with {inputs_where}: output{'s' if len(bad) > 1 else ''} "
                     f"{', '.join(bad)} {'are' if len(bad) > 1 else 'is'} not finite "
                     f"({bad[0]} {verb} at index {idx}): the float64 computation overflowed; "
                     "expected finite results (scale the params or inputs down); nothing was "
                     "written")


def run_forward(config, params_path, inputs_path, out_path):
    """Load, check, compute and write atomically (no file is left on any error).

    Returns ``{"out": out_path, "keys": [...], "y_shape": (...)}``.
    """
    # before anything is read or computed: --out must not be an input, nor a directory
    check_outputs([("--out", out_path)], [("--params", params_path), ("--inputs", inputs_path)])
    opts = config.options()
    backend = config.backend or get_backend_name()
    namespace(backend)   # fail early, before reading files, if the backend cannot run here
    arrays, notes = formats.read_arrays(params_path, "params", config.prefix)
    params, sizes = formats.check_params(config.model, arrays, where=os.fspath(params_path),
                                         allow_unstable=config.allow_unstable, options=opts)
    if config.model == "selective":
        formats.check_selective_A(os.fspath(params_path), params["A"])
    inputs, sizes = formats.load_inputs(inputs_path, config.model, sizes,
                                        params_where=os.fspath(params_path),
                                        layout=opts["layout"], ngroups=config.ngroups)
    if opts["layout"] == "heads-flat":
        opts = dict(opts, ngroups=sizes["g"])   # the file rereads without initial_states' n
    folder = os.path.dirname(os.path.abspath(os.fspath(out_path)))
    if not os.path.isdir(folder):
        raise ValueError(f"{os.fspath(out_path)}: directory {folder} does not exist (expected "
                         "an existing directory for --out)")
    outputs = compute_checked(config.model, params, inputs, opts, backend)
    check_finite(outputs, os.fspath(params_path), os.fspath(inputs_path))
    if opts["grads"] and "dy" not in inputs:
        # embed the cotangent actually used, so the file recomputes without a convention
        inputs = dict(inputs, dy=onp.ones(outputs["y"].shape))
    # the file holds inputs and outputs in the user's layout (time last for channel-first)
    inputs = {k: formats.to_layout(k, v, opts["layout"]) for k, v in inputs.items()}
    outputs = {k: formats.to_layout(k, v, opts["layout"]) for k, v in outputs.items()}
    meta = dict(opts, backend=backend) if backend != "numpy" else opts
    formats.save_npz_atomic(out_path, bundle(meta, params, inputs, outputs))
    return {"out": os.fspath(out_path), "keys": sorted(outputs), "y_shape": outputs["y"].shape,
            "backend": backend, "notes": notes}
