"""Valid random parameters and inputs in the file format (the ``init`` command), seeded.

Stability holds by construction: discrete poles are drawn as r·e^{iθ} with r < 1 and
closed under conjugation, denominators are the monic polynomials with those roots
(descending powers of z), state matrices are real block-diagonal realizations of such
poles (2x2 rotation-scaling blocks; optional Jordan coupling for repeated poles) under
an orthogonal change of basis; selective ``A`` is negative (eq. (3a)).

Glossary
--------
poles (k-1,) complex, conjugate-closed;  den (k,) monic, descending powers of z
A (n, n), B (n, m), C (p, n), D (p, m);  num (p, m, k), den (p, k)
init_params(model, seed, form="tf", **sizes) -> dict;  init_inputs(...) -> dict

>>> P = init_params("lti", seed=0, form="tf", m=2, p=1, order=3)
>>> P["num"].shape, P["den"].shape
((1, 2, 4), (1, 4))
>>> bool(numpy.all(numpy.abs(numpy.roots(P["den"][0])) < 1))
True
"""
import dataclasses
import os
from typing import Optional

import numpy
import numpy as onp

from rssm_ref.mamba2_block import mamba2_block_params
from rssm_ref.mamba_block import mamba_block_params
from rssm_ref.oracle import formats
from rssm_ref.oracle.mamba import random_params
from rssm_ref.util.paths import check_outputs

_ = numpy  # the doctests above use the name ``numpy``


def random_poles(rng, order, r_min=0.3, r_max=0.95):
    """``order`` conjugate-closed poles with moduli in [r_min, r_max] (complex array).

    >>> p = random_poles(onp.random.default_rng(0), 5)
    >>> len(p), bool(onp.all(onp.abs(p) < 1))
    (5, True)
    """
    out = []
    while len(out) < order:
        r = rng.uniform(r_min, r_max)
        if order - len(out) >= 2 and rng.uniform() < 0.6:
            th = rng.uniform(0.05, onp.pi - 0.05)
            out += [r * onp.exp(1j * th), r * onp.exp(-1j * th)]
        else:
            out.append(r * (1.0 if rng.uniform() < 0.7 else -1.0) + 0j)
    return onp.array(out)


def den_from_poles(poles):
    """Monic real polynomial (descending powers of z) with the given conjugate-closed roots.

    >>> den_from_poles([0.5, 0.5]).tolist()
    [1.0, -1.0, 0.25]
    """
    return onp.real(onp.poly(onp.asarray(poles, dtype=complex))).astype(onp.float64)


def realize_poles(poles, jordan=False):
    """Real block-diagonal A with eigenvalues ``poles`` (conjugate pairs adjacent after sorting).

    ``jordan=True`` couples equal consecutive blocks (a defective, repeated pole).

    >>> A = realize_poles([0.9, 0.9], jordan=True); A.tolist()
    [[0.9, 1.0], [0.0, 0.9]]
    """
    poles = list(onp.asarray(poles, dtype=complex))
    blocks = []
    while poles:
        z = poles.pop(0)
        if abs(z.imag) > 1e-14:
            # find its conjugate
            j = min(range(len(poles)), key=lambda i: abs(poles[i] - onp.conj(z)))
            poles.pop(j)
            a, b = z.real, abs(z.imag)
            blocks.append((z, onp.array([[a, -b], [b, a]])))
        else:
            blocks.append((z, onp.array([[z.real]])))
    n = sum(b.shape[0] for _, b in blocks)
    A = onp.zeros((n, n))
    i = 0
    for idx, (z, b) in enumerate(blocks):
        s = b.shape[0]
        A[i:i + s, i:i + s] = b
        if jordan and idx > 0:
            z_prev, b_prev = blocks[idx - 1]
            same = min(abs(z_prev - z), abs(z_prev - onp.conj(z))) < 1e-12
            if same and b_prev.shape == b.shape:
                A[i - s:i, i:i + s] = onp.eye(s)      # Jordan coupling: defective pole
        i += s
    return A


def ss_from_poles(rng, poles, m, p, jordan=False, rotate=True):
    """Random (A, B, C, D) whose A has eigenvalues ``poles``; A = Q blockdiag Q^T.

    >>> A, B, C, D = ss_from_poles(onp.random.default_rng(1), [0.5, 0.2], m=2, p=3)
    >>> sorted(onp.round(onp.linalg.eigvals(A).real, 6).tolist()), B.shape, C.shape, D.shape
    ([0.2, 0.5], (2, 2), (3, 2), (3, 2))
    """
    A = realize_poles(poles, jordan=jordan)
    n = A.shape[0]
    if rotate:
        Q, _ = onp.linalg.qr(rng.standard_normal((n, n)))
        A = Q @ A @ Q.T
    B = rng.standard_normal((n, m))
    C = rng.standard_normal((p, n)) / onp.sqrt(n)
    D = rng.standard_normal((p, m)) * 0.5
    return A, B, C, D


def _tf(rng, p, m, order, r_max=0.95):
    den = onp.stack([den_from_poles(random_poles(rng, order, r_max=r_max)) for _ in range(p)])
    decay = 0.3 ** onp.arange(order + 1)
    num = rng.standard_normal((p, m, order + 1)) * 0.5 * decay
    return num, den


# the ``init`` flag of each argument, for the messages (they speak the CLI's language)
FLAGS = {"m": "--m", "p": "--p", "order": "--order", "order_r": "--order-r", "n": "--n",
         "vocab": "--vocab", "batch": "--batch", "L": "--length", "form": "--form",
         "heads": "--heads", "groups": "--ngroups"}


def init_params(model, seed, form=None, m=None, p=None, order=None, n=None, order_r=None,
                vocab=None, heads=None, groups=None):
    """Valid random params for ``model`` (dict key -> float64 array), seeded.

    Sizes (defaults): lti m=1, p=1, order=2 (k = order + 1, or n = order);
    residual m=2, order=4, order_r=4 (Σ and Σ_r in ``form``, default "tf"); selective m=4, n=8 (no
    ``form``); mamba m=4 (d_inner), n=8 (d_state), dt_rank = ceil(m / 16), initialised as
    mamba_ssm (rssm_ref.oracle.mamba.random_params); ssd heads=4, groups=2, p=4 (head
    dimension), n=8 (``ssd_init``); mamba2-block m=8 (d_model), p=4 (headdim), n=4
    (d_state), groups=1 (ngroups, mamba_ssm's default), d_conv 4, expand 2, biases on,
    initialised as mamba_ssm (``rssm_ref.mamba2_block.mamba2_block_params``). ``vocab``
    adds an ``embedding`` (vocab, m) for token inputs.

    >>> sorted(init_params("selective", seed=1, m=2, n=3))
    ['A', 'D', 'W_B', 'W_C', 'W_delta', 'delta_bias']
    """
    formats.check_model(model)
    for name, val in (("m", m), ("p", p), ("order", order), ("n", n), ("order_r", order_r),
                      ("vocab", vocab), ("heads", heads), ("groups", groups)):
        if val is not None and (not isinstance(val, (int, onp.integer)) or val < 1):
            raise ValueError(f"{FLAGS[name]}: {val!r} (expected a positive integer)")
    if not isinstance(seed, (int, onp.integer)) or seed < 0:
        raise ValueError(f"--seed: {seed!r} (expected a non-negative integer)")
    rng = onp.random.default_rng(seed)
    P = {}
    if heads is not None and model != "ssd":
        raise ValueError(f"--heads: given for --model {model} (expected it only with --model ssd)")
    if groups is not None and model not in ("ssd", "mamba2-block"):
        raise ValueError(f"--ngroups: given for --model {model} (expected it only with --model "
                         "ssd or mamba2-block)")
    if model == "mamba2-block":
        if form is not None or order is not None or vocab is not None:
            raise ValueError("--form/--order/--vocab: given for --model mamba2-block (expected "
                             "only --m (d_model), --p (headdim), --n (d_state), --ngroups)")
        return _mamba2_init(seed, m or 8, p or 4, n or 4, groups or 1)
    if model == "ssd":
        if form is not None or m is not None or order is not None or vocab is not None:
            raise ValueError("--form/--m/--order/--vocab: given for --model ssd (expected only "
                             "--heads, --ngroups, --p (head dimension) and --n (d_state))")
        return ssd_init(rng, heads or 4, groups or 2, n or 8, p or 4)
    if model == "mamba-block":
        if form is not None or p is not None or order is not None or vocab is not None:
            raise ValueError("--form/--p/--order/--vocab: given for --model mamba-block (expected "
                             "only --m (d_model) and --n (d_state))")
        # a whole Mamba-1 layer, mamba_ssm's initialisation (d_conv 4, expand 2, biases on)
        P = mamba_block_params(d_model=m or 8, d_state=n or 4, seed=int(seed), conv_bias=True,
                               bias=True)
    elif model == "mamba":
        if form is not None:
            raise ValueError(f"--form: {form!r} given for --model mamba (expected none: it has "
                             "one form)")
        P = random_params(m=m or 4, n=n or 8, seed=int(seed))
    elif model == "selective":
        if form not in (None, "diag"):
            raise ValueError(f"--form: {form!r} given for --model selective (expected none: it "
                             "has one form)")
        m, n = m or 4, n or 8
        # S4D-real style: A_ij = -(j + 1), jittered; Δ bias so softplus gives Δ in [1e-3, 1e-1]
        P["A"] = -onp.arange(1, n + 1, dtype=float)[None, :] * onp.exp(0.1 * rng.standard_normal((m, n)))
        P["W_delta"] = rng.standard_normal((m, m)) / onp.sqrt(m)
        dt = onp.exp(rng.uniform(onp.log(1e-3), onp.log(1e-1), size=m))
        P["delta_bias"] = dt + onp.log(-onp.expm1(-dt))      # softplus^{-1}(dt)
        P["W_B"] = rng.standard_normal((n, m)) / onp.sqrt(m)
        P["W_C"] = rng.standard_normal((n, m)) / onp.sqrt(m)
        P["D"] = rng.standard_normal(m)
    else:
        form = form or "tf"
        if form not in ("tf", "ss"):
            raise ValueError(f"--form: {form!r} (expected tf or ss)")
        if model == "lti":
            m, p, order = m or 1, p or 1, order or 2
            if form == "tf":
                P["num"], P["den"] = _tf(rng, p, m, order)
            else:
                A, B, C, D = ss_from_poles(rng, random_poles(rng, order), m, p)
                P.update(A=A, B=B, C=C, D=D)
        else:
            if p is not None:
                raise ValueError("--p: given for --model residual (expected none: Σ is m x m "
                                 "and Σ_r is 1 x m)")
            m, order, order_r = m or 2, order or 4, order_r or 4
            if form == "tf":
                P["sigma_num"], P["sigma_den"] = _tf(rng, m, m, order)
                P["r_num"], P["r_den"] = _tf(rng, 1, m, order_r)
            else:
                for pre, o, pp in (("sigma_", order, m), ("r_", order_r, 1)):
                    A, B, C, D = ss_from_poles(rng, random_poles(rng, o), m, pp)
                    P.update({pre + "A": A, pre + "B": B, pre + "C": C, pre + "D": D})
            P["gate_bias"] = onp.array(rng.standard_normal())
    if vocab is not None:
        P["embedding"] = rng.standard_normal((vocab, P_width(model, P)))
    return {k: onp.asarray(v, dtype=onp.float64) for k, v in P.items()}


def _mamba2_init(seed, d, headdim, n, g):
    """A Mamba-2 layer (d_conv 4, expand 2, biases on), its sizes refused in init's flags."""
    try:
        return mamba2_block_params(d_model=d, d_state=n, headdim=headdim, ngroups=g,
                                   seed=int(seed), bias=True, conv_bias=True)
    except ValueError as exc:
        name, rest = str(exc).split(": ", 1)
        flag = {"headdim": "--p", "ngroups": "--ngroups"}.get(name, name)
        raise ValueError(f"{flag}: {rest} (--model mamba2-block: d_ssm = 2 --m, "
                         "h = d_ssm / --p)") from None


def ssd_init(rng, h, g, n, p):
    """SSD params (A_log, D, dt_bias (h,)) and the sizes its inputs need: A = -exp(A_log)
    with A_log = log U(1, 16) (Mamba-2's A_init_range), D ~ N(0, 1), dt_bias ~ U(0.01, 0.1)
    (positive, so that dt + dt_bias > 0 for the positive dt of ``init_inputs``: valid with
    and without --dt-softplus). g must divide h; p and n are recorded by the inputs.

    >>> sorted(ssd_init(onp.random.default_rng(0), 4, 2, 3, 2))
    ['A_log', 'D', 'dt_bias']
    """
    if h % g:
        raise ValueError(f"--ngroups: {g} does not divide --heads {h} (expected h % g == 0: "
                         "head i reads group i // (h / g))")
    return {"A_log": onp.log(rng.uniform(1.0, 16.0, size=h)), "D": rng.standard_normal(h),
            "dt_bias": rng.uniform(0.01, 0.1, size=h)}


def P_width(model, P):
    """The input width m of a params dict."""
    if model == "lti":
        return P["num"].shape[1] if "num" in P else P["B"].shape[1]
    if model == "residual":
        return P["sigma_num"].shape[0] if "sigma_num" in P else P["sigma_C"].shape[0]
    if model == "mamba":
        return P["A_log"].shape[0]
    if model in formats.LAYER_MODELS:
        return P["in_proj.weight"].shape[1]
    return P["A"].shape[0]


def init_inputs(model, params, seed, batch=2, L=32, dy=True, tokens=False, p=None, n=None,
                groups=None):
    """Random inputs for ``params``: ``u`` (batch, L, m) ~ N(0, 1) (or ``tokens`` when the
    params hold an embedding and ``tokens``), and a cotangent ``dy`` shaped like ``y``.
    ssd: x, z (batch, L, h, p), B, C (batch, L, g, n) ~ N(0, 1), dt > 0, initial_states
    (batch, h, p, n) ~ N(0, 1), with p, n, groups as given (4, 8, 2 by default). The
    layers: hidden_states (batch, L, d) (mamba2-block's params checked with ``groups``,
    default 1).

    >>> U = init_inputs("lti", init_params("lti", seed=0), seed=1, batch=2, L=5)
    >>> U["u"].shape, U["dy"].shape
    ((2, 5, 1), (2, 5, 1))
    """
    options = {"ngroups": groups or 1} if model == "mamba2-block" else None
    params, sizes = formats.check_params(model, params, allow_unstable=True, options=options)
    for name, val in (("batch", batch), ("L", L)):
        if not isinstance(val, (int, onp.integer)) or val < 1:
            raise ValueError(f"{FLAGS[name]}: {val!r} (expected a positive integer)")
    rng = onp.random.default_rng(seed)
    out = {}
    if model == "ssd":
        if tokens:
            raise ValueError("--tokens: given for --model ssd (its inputs are x, dt, B, C; "
                             "expected none)")
        g, p, n = groups or 2, sizes.get("p", p or 4), n or 8
        if sizes["h"] % g:
            raise ValueError(f"--ngroups: {g} does not divide the {sizes['h']} heads of the "
                             "params (expected h % g == 0)")
        h = sizes["h"]
        # dt > 0 (log-uniform on [1e-3, 1e-1], Mamba-2's dt range): dt + dt_bias > 0
        out = {"x": rng.standard_normal((batch, L, h, p)),
               "dt": onp.exp(rng.uniform(onp.log(1e-3), onp.log(1e-1), size=(batch, L, h))),
               "B": rng.standard_normal((batch, L, g, n)),
               "C": rng.standard_normal((batch, L, g, n)),
               "z": rng.standard_normal((batch, L, h, p)),
               "initial_states": rng.standard_normal((batch, h, p, n))}
        if dy:
            out["dy"] = rng.standard_normal((batch, L, h, p))
        return out
    if model in formats.LAYER_MODELS:
        if tokens:
            raise ValueError(f"--tokens: given for --model {model} (its input is "
                             "hidden_states, expected none)")
        out["hidden_states"] = rng.standard_normal((batch, L, sizes["d"]))
        if dy:
            out["dy"] = rng.standard_normal((batch, L, sizes["d"]))
        return out
    m = sizes["m"]
    if tokens:
        if "embedding" not in params:
            raise ValueError("--tokens: requested but the params hold no 'embedding' (expected "
                             "params made with a vocab size)")
        out["tokens"] = rng.integers(0, sizes["vocab"], size=(batch, L)).astype(onp.int64)
    else:
        out["u"] = rng.standard_normal((batch, L, m))
    if dy:
        sizes = dict(sizes, batch=batch, L=L)
        out["dy"] = rng.standard_normal(formats.output_shapes(model, sizes)["y"])
    return out


@dataclasses.dataclass(frozen=True)
class InitConfig:
    """What ``init`` writes: params for ``model`` (sizes as in ``init_params``) and,
    optionally, inputs (batch, length, a cotangent dy unless ``dy`` is False, token ids
    when ``tokens``)."""
    model: str
    seed: int = 0
    form: Optional[str] = None
    m: Optional[int] = None
    p: Optional[int] = None
    order: Optional[int] = None
    order_r: Optional[int] = None
    n: Optional[int] = None
    vocab: Optional[int] = None
    heads: Optional[int] = None
    groups: Optional[int] = None
    batch: int = 2
    length: int = 32
    dy: bool = True
    tokens: bool = False
    layout: Optional[str] = None     # inputs channel-last (default) or channel-first


# the size options of ``init`` that mean something, per model (others are refused)
INIT_OPTIONS = {"lti": ("form", "m", "p", "order"),
                "residual": ("form", "m", "order", "order_r"),
                "selective": ("m", "n"), "mamba": ("m", "n"), "mamba-block": ("m", "n"),
                "ssd": ("p", "n", "heads", "groups"), "mamba2-block": ("m", "p", "n", "groups")}


def _refuse_unused(config, inputs_out):
    """ValueError for an option of ``config`` that would do nothing: a size that does not
    apply to the model, or an inputs option without ``inputs_out``.

    >>> _refuse_unused(InitConfig("selective", p=3), None)
    Traceback (most recent call last):
    ...
    ValueError: --p: given for --model selective (it does nothing there; expected only --m, --n with it)
    """
    applies = INIT_OPTIONS.get(config.model)
    if applies is not None:
        for name in ("form", "m", "p", "order", "order_r", "n", "heads", "groups"):
            if getattr(config, name, None) is not None and name not in applies:
                raise ValueError(f"{FLAGS[name]}: given for --model {config.model} (it does "
                                 f"nothing there; expected only "
                                 f"{', '.join(FLAGS[a] for a in applies)} with it)")
    if inputs_out is None:
        if config.tokens:
            raise ValueError("--tokens: does nothing without --inputs-out (expected --inputs-out "
                             "U.npz: token ids are inputs)")
        if not config.dy:
            raise ValueError("--no-dy: leaving dy out does nothing without --inputs-out (expected "
                             "--inputs-out U.npz)")
        if config.layout is not None:
            raise ValueError("--layout: does nothing without --inputs-out (expected --inputs-out "
                             "U.npz: the layout is the inputs')")
    if config.layout is not None:
        formats.check_model_layout(config.model, config.layout, where="--layout")


def run_init(config, out, inputs_out=None):
    """Write ``init_params`` to ``out`` (and ``init_inputs`` to ``inputs_out``), atomically.

    Everything is drawn and checked before either file is written. Returns a one-line
    summary.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> print(run_init(InitConfig("lti"), os.path.join(d, "P.npz")).split(":")[0].endswith("P.npz"))
    True
    """
    check_outputs([("--out", out), ("--inputs-out", inputs_out)])
    _refuse_unused(config, inputs_out)
    if config.tokens and config.vocab is None:
        raise ValueError("--tokens: requested without --vocab (expected --vocab V so the params "
                         "hold an embedding (V, m))")
    P = init_params(config.model, config.seed, form=config.form, m=config.m, p=config.p,
                    order=config.order, n=config.n, order_r=config.order_r, vocab=config.vocab,
                    heads=config.heads, groups=config.groups)
    U = None
    if inputs_out is not None:
        more = (dict(p=config.p, n=config.n, groups=config.groups) if config.model == "ssd" else
                dict(groups=config.groups) if config.model == "mamba2-block" else {})
        U = init_inputs(config.model, P, seed=config.seed + 1, batch=config.batch,
                        L=config.length, dy=config.dy, tokens=config.tokens, **more)
        groups = U["B"].shape[2] if config.model == "ssd" else None
        # the same draws in the layout forward --layout reads (time last for channel-first)
        U = {k: formats.to_layout(k, v, config.layout or "channel-last") for k, v in U.items()}
    for path in [out] + ([inputs_out] if inputs_out is not None else []):
        folder = os.path.dirname(os.path.abspath(os.fspath(path)))
        if not os.path.isdir(folder):
            raise ValueError(f"{os.fspath(path)}: directory {folder} does not exist (expected an "
                             "existing directory)")
    formats.save_npz_atomic(out, P)
    msg = f"{os.fspath(out)}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in P.items())
    if U is not None:
        formats.save_npz_atomic(inputs_out, U)
        msg += f"; {os.fspath(inputs_out)}: " + ", ".join(f"{k} {tuple(v.shape)}"
                                                           for k, v in U.items())
        if config.layout == "channel-first":
            msg += " (channel-first: read them with forward --layout channel-first)"
        elif config.layout == "heads-flat":
            msg += (" (heads-flat: read them with forward --layout heads-flat --ngroups "
                    f"{groups})")
    if config.model == "mamba2-block":
        msg += f" (forward them with --ngroups {config.groups or 1})"
    return msg
