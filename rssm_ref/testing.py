"""Hypothesis strategies and a pytest assertion for projects that check against rssm-ref.

Everything a strategy draws is valid by construction (no ``assume`` filtering):
discrete poles are drawn as r·e^{iθ} with r < 1 and closed under conjugation, the
hard cases are drawn on purpose (radii 0.99-0.999, repeated poles, Jordan blocks,
reflection coefficients near ±1), and parameter dicts use the file format of
docs/formats.md, so they feed ``rssm_ref.oracle.forward.compute`` directly.

Glossary (strategies; shapes)
-----------------------------
poles(order)                       -> complex (order,), conjugate-closed, |z| < 1
stable_denominators(order)         -> den (order+1,) monic, descending powers of z
tf_arrays(p, m, order)             -> (num (p, m, k), den (p, k))
ss_arrays(n, m, p)                 -> (A (n, n), B (n, m), C (p, n), D (p, m))
transfer_functions / state_spaces  -> rssm_ref.lti.TransferFunction / StateSpace
residual_params(m, form)           -> dict (sigma_*, r_*, gate_bias)
selective_params(m, n)             -> dict (A, W_delta, W_B, W_C, delta_bias, D)
mamba_params(m, n, dt_rank)        -> dict under mamba_ssm's names (A_log, x_proj.weight,
                                      dt_proj.weight, dt_proj.bias, D)
ssd_case(batch, L, h, g, p, n)      -> (params, inputs) of Mamba-2's SSD core (--model ssd),
                                      |dt A| from 1e-6 to 50
mamba_block_params(d, E, n, W, dt_rank) -> dict: a whole Mamba-1 layer's state_dict
                                      (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj)
mamba2_block_params(d, h, p, g, n, W, d_mlp) -> dict: a whole Mamba-2 layer's state_dict
                                      (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj);
                                      g must be an int (the oracle's ngroups option)
input_sequences(batch, L, m)       -> u (batch, L, m) float64
params_and_inputs(model, m, ...)   -> (params, inputs): one width m for both, inputs
                                      {"u", "dy"} shaped for the params' output
                                      ("mamba-block", "mamba2-block": {"hidden_states",
                                      "dy"} and, when drawn, "conv_state", "ssm_state")
assert_matches_reference(model, params, inputs, outputs, precision="float64",
                         factor=None, floor=None, **options)

Sizes may be ints or strategies of ints.

>>> from hypothesis import given, settings
>>> @settings(max_examples=5, database=None)
... @given(stable_denominators(3))
... def check(den):
...     assert numpy.all(numpy.abs(numpy.roots(den)) < 1)
>>> check()
"""
import numpy
import numpy as onp
from hypothesis import strategies as st

from rssm_ref.lti import den_from_reflection, StateSpace, TransferFunction
from rssm_ref.mamba2_block import validate_mamba2_block
from rssm_ref.oracle import formats, forward, sample, verify

_ = numpy  # the module doctest uses the name ``numpy``

HARD_RADII = (0.99, 0.995, 0.999)
# A root of multiplicity k moves by ~eps^(1/k) under rounding; beyond 3 a pole at 0.999
# can be computed outside the unit circle (and the format's stability check refuses it).
MAX_MULTIPLICITY = 3


def _size(draw, x):
    return draw(x) if isinstance(x, st.SearchStrategy) else int(x)


@st.composite
def radii(draw, r_min=0.0, r_max=0.999):
    """A pole modulus in [r_min, r_max], often one of the hard radii 0.99 ... 0.999."""
    hard = [r for r in HARD_RADII if r_min <= r <= r_max]
    choices = [st.floats(r_min, r_max, allow_nan=False)]
    if hard:
        choices.append(st.sampled_from(hard))
    return draw(st.one_of(*choices))


@st.composite
def poles(draw, order, r_min=0.0, r_max=0.999, repeated=True):
    """``order`` conjugate-closed poles r·e^{iθ}, r in [r_min, r_max] (r_max < 1).

    With ``repeated`` a pole (or pair) is sometimes repeated: roots of multiplicity up to
    MAX_MULTIPLICITY = 3.
    Returns a complex ndarray (order,).
    """
    if not r_max < 1.0:
        raise ValueError(f"r_max: {r_max} (expected < 1: stable poles)")
    order = _size(draw, order)
    out = []
    mult = 0
    while len(out) < order:
        left = order - len(out)
        if repeated and out and mult < MAX_MULTIPLICITY and draw(st.integers(0, 3)) == 0:
            # repeat the previous pole (or pair) when it fits: a multiple root
            last = out[-1]
            if abs(last.imag) > 0 and left >= 2:
                out += [onp.conj(last), last]
                mult += 1
                continue
            if last.imag == 0:
                out.append(last)
                mult += 1
                continue
        mult = 1
        r = draw(radii(r_min, r_max))
        if left >= 2 and draw(st.booleans()):
            th = draw(st.floats(0.01, onp.pi - 0.01))
            z = r * onp.exp(1j * th)
            out += [z, onp.conj(z)]
        else:
            out.append(complex(r * draw(st.sampled_from([1.0, -1.0])), 0.0))
    out = onp.array(out[:order], dtype=complex)
    return out


@st.composite
def reflection_coefficients(draw, order, k_max=0.99):
    """``order`` reflection coefficients in [-k_max, k_max], often near ±k_max."""
    order = _size(draw, order)
    el = st.one_of(st.floats(-k_max, k_max), st.sampled_from([-k_max, k_max, 0.0]))
    return onp.array([draw(el) for _ in range(order)], dtype=float)


@st.composite
def stable_denominators(draw, order, method="either", r_max=0.999):
    """Monic stable denominator (order+1,), descending powers of z, by poles or reflection.

    ``method``: "poles" (roots r·e^{iθ}), "reflection" (step-up recursion from
    coefficients |k| <= 0.99, rssm_ref.lti.den_from_reflection, then roots contracted
    into |z| < r_max) or "either".
    """
    order = _size(draw, order)
    if method == "either":
        method = draw(st.sampled_from(["poles", "reflection"]))
    if method == "poles":
        return sample.den_from_poles(draw(poles(order, r_max=r_max)))
    den = onp.asarray(den_from_reflection(draw(reflection_coefficients(order))), dtype=float)
    # step-up gives roots in |z| < 1 but arbitrarily close to it (1 - 1e-14 for a run of
    # k near ±1); contracting z -> z / r_max (a_i -> a_i r_max^i) puts them in |z| < r_max
    return den.reshape(-1) * r_max ** onp.arange(order + 1)


def _normals(draw, shape, scale=1.0):
    seed = draw(st.integers(0, 2**32 - 1))
    return onp.random.default_rng(seed).standard_normal(shape) * scale


@st.composite
def tf_arrays(draw, p=1, m=1, order=st.integers(1, 4), method="either"):
    """(num (p, m, k), den (p, k)) with k = order + 1; every den row stable."""
    p, m, order = _size(draw, p), _size(draw, m), _size(draw, order)
    den = onp.stack([draw(stable_denominators(order, method=method)) for _ in range(p)])
    num = _normals(draw, (p, m, order + 1))
    return num, den


@st.composite
def ss_arrays(draw, n=st.integers(1, 5), m=1, p=1, jordan=True):
    """(A, B, C, D): A real with eigenvalues ``poles(n)`` (Jordan-coupled when drawn),
    rotated by a random orthogonal basis."""
    n, m, p = _size(draw, n), _size(draw, m), _size(draw, p)
    z = draw(poles(n))
    use_jordan = jordan and draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return sample.ss_from_poles(onp.random.default_rng(seed), z, m, p, jordan=use_jordan)


@st.composite
def transfer_functions(draw, p=1, m=1, order=st.integers(1, 4)):
    """rssm_ref.lti.TransferFunction drawn by ``tf_arrays``."""
    num, den = draw(tf_arrays(p, m, order))
    return TransferFunction(num, den)


@st.composite
def state_spaces(draw, n=st.integers(1, 5), m=1, p=1):
    """rssm_ref.lti.StateSpace drawn by ``ss_arrays``."""
    return StateSpace(*draw(ss_arrays(n, m, p)))


@st.composite
def residual_params(draw, m=st.integers(1, 3), form=None, order=st.integers(1, 4),
                    order_r=st.integers(1, 3)):
    """Residual SSM params dict (docs/formats.md): Σ (m x m), Σ_r (1 x m), gate_bias."""
    m = _size(draw, m)
    form = form or draw(st.sampled_from(["tf", "ss"]))
    order, order_r = _size(draw, order), _size(draw, order_r)
    P = {}
    if form == "tf":
        P["sigma_num"], P["sigma_den"] = draw(tf_arrays(m, m, order))
        P["r_num"], P["r_den"] = draw(tf_arrays(1, m, order_r))
    else:
        for pre, n, p in (("sigma_", order, m), ("r_", order_r, 1)):
            A, B, C, D = draw(ss_arrays(n, m, p))
            P.update({pre + "A": A, pre + "B": B, pre + "C": C, pre + "D": D})
    P["gate_bias"] = onp.array(draw(st.floats(-3.0, 3.0)))
    return P


@st.composite
def selective_params(draw, m=st.integers(1, 4), n=st.integers(1, 4), optional=True):
    """Selective SSM params dict: A < 0 (tiny to large |A|), W_delta, W_B, W_C,
    and (when drawn) delta_bias, D."""
    m, n = _size(draw, m), _size(draw, n)
    mag = st.one_of(st.floats(1e-3, 50.0), st.sampled_from([1e-6, 1e-3, 1.0, 100.0]))
    A = -onp.array([[draw(mag) for _ in range(n)] for _ in range(m)])
    P = {"A": A, "W_delta": _normals(draw, (m, m), 1 / onp.sqrt(m)),
         "W_B": _normals(draw, (n, m), 1 / onp.sqrt(m)),
         "W_C": _normals(draw, (n, m), 1 / onp.sqrt(m))}
    if optional and draw(st.booleans()):
        P["delta_bias"] = _normals(draw, (m,), 2.0)
    if optional and draw(st.booleans()):
        P["D"] = _normals(draw, (m,))
    return P


def _mamba_scan_arrays(draw, E, n, dt_rank, optional):
    """The selective-scan parameters of a Mamba layer of width E, as mamba_ssm names them:
    A = -exp(A_log) (E, n) from tiny to large |A|; dt_proj.bias spread so that
    softplus(bias) covers mamba_ssm's dt range [1e-3, 1e-1] and beyond."""
    mag = st.one_of(st.floats(1e-3, 50.0), st.sampled_from([1e-6, 1e-3, 1.0, 100.0]))
    A_log = onp.log(onp.array([[draw(mag) for _ in range(n)] for _ in range(E)]))
    P = {"A_log": A_log,
         "x_proj.weight": _normals(draw, (dt_rank + 2 * n, E), 1 / onp.sqrt(E)),
         "dt_proj.weight": _normals(draw, (E, dt_rank), 1 / onp.sqrt(dt_rank))}
    if optional is True or (optional and draw(st.booleans())):
        P["dt_proj.bias"] = _normals(draw, (E,), 2.0)
    if optional is True or (optional and draw(st.booleans())):
        P["D"] = _normals(draw, (E,))
    return P


@st.composite
def mamba_params(draw, m=st.integers(1, 4), n=st.integers(1, 4), dt_rank=st.integers(1, 3),
                 optional=True):
    """A Mamba layer's selective-scan params under their state_dict names (the oracle's
    ``--model mamba``): A_log (m, n), x_proj.weight (dt_rank + 2 n, m), dt_proj.weight
    (m, dt_rank) and, when drawn, dt_proj.bias (m,), D (m,).

    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, database=None)
    ... @given(mamba_params(m=3, n=2, dt_rank=1))
    ... def check(P):
    ...     assert P["x_proj.weight"].shape == (1 + 2 * 2, 3)
    >>> check()
    """
    m, n, dt_rank = _size(draw, m), _size(draw, n), _size(draw, dt_rank)
    return _mamba_scan_arrays(draw, m, n, dt_rank, optional)


@st.composite
def mamba_block_params(draw, d=st.integers(1, 4), E=st.integers(1, 6), n=st.integers(1, 4),
                       W=st.integers(2, 4), dt_rank=st.integers(1, 3), biases=None):
    """A whole Mamba-1 layer's state_dict (the oracle's ``--model mamba-block``):
    in_proj.weight (2E, d), conv1d.weight (E, 1, W), conv1d.bias (E,), the scan's
    params as ``mamba_params`` (dt_proj.bias and D always, as mamba_ssm's Mamba has
    them), out_proj.weight (d, E); ``biases`` (default: drawn) adds in_proj.bias and
    out_proj.bias (mamba_ssm's ``bias=True``) and may drop conv1d.bias
    (``conv_bias=False``).

    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, database=None)
    ... @given(mamba_block_params(d=3, E=4, n=2, W=3, dt_rank=1))
    ... def check(P):
    ...     assert P["in_proj.weight"].shape == (8, 3) and P["conv1d.weight"].shape == (4, 1, 3)
    >>> check()
    """
    d, E, n = _size(draw, d), _size(draw, E), _size(draw, n)
    W, dt_rank = _size(draw, W), _size(draw, dt_rank)
    P = {"in_proj.weight": _normals(draw, (2 * E, d), 1 / onp.sqrt(d)),
         "conv1d.weight": _normals(draw, (E, 1, W), 1 / onp.sqrt(W)),
         **_mamba_scan_arrays(draw, E, n, dt_rank, optional=True),
         "out_proj.weight": _normals(draw, (d, E), 1 / onp.sqrt(E))}
    linear_bias = draw(st.booleans()) if biases is None else bool(biases)
    conv_bias = draw(st.booleans()) if biases is None else True
    if conv_bias:
        P["conv1d.bias"] = _normals(draw, (E,))
    if linear_bias:
        P["in_proj.bias"] = _normals(draw, (2 * E,))
        P["out_proj.bias"] = _normals(draw, (d,))
    return P


@st.composite
def mamba2_block_params(draw, d=st.integers(1, 4), h=st.integers(1, 4), p=st.integers(1, 3),
                        g=1, n=st.integers(1, 3), W=st.integers(2, 4), d_mlp=None,
                        norm=None, D_per_channel=None, biases=None):
    """A whole Mamba-2 layer's state_dict (the oracle's ``--model mamba2-block``, shapes of
    ``rssm_ref.mamba2_block``): d_ssm = h·p, conv_dim = d_ssm + 2gn, in_proj.weight
    (2 d_mlp + 2 d_ssm + 2gn + h, d), conv1d.weight (conv_dim, 1, W), dt_bias (h,) spread
    so that softplus covers Mamba-2's dt range [1e-3, 1e-1] and beyond, A_log (h,) from
    tiny to large |A|, D (h,) or per channel (d_ssm,) (``D_per_channel``), norm.weight
    (d_ssm,) (``norm``), out_proj.weight (d, d_mlp + d_ssm), biases as mamba_ssm's
    ``bias`` and ``conv_bias``. ``g`` must divide every h drawn and is an int (the layer's
    shapes give only g·n: pass the same g as the oracle's ngroups); the flags that are
    None are drawn, d_mlp from 0..2 (mamba_ssm's default 0 half the time).

    >>> from hypothesis import given, settings
    >>> from rssm_ref.mamba2_block import validate_mamba2_block
    >>> @settings(max_examples=5, database=None)
    ... @given(mamba2_block_params(d=3, h=2, p=2, g=2, n=3, W=4, d_mlp=0))
    ... def check(P):
    ...     assert validate_mamba2_block(P, ngroups=2)["dims"]["conv_dim"] == 16
    >>> check()
    """
    if not isinstance(g, (int, onp.integer)) or isinstance(g, bool) or g < 1:
        raise ValueError(f"g: {g!r} (expected an int >= 1: the oracle needs it as ngroups)")
    d, n, W, p = _size(draw, d), _size(draw, n), _size(draw, W), _size(draw, p)
    h = g * _size(draw, h) if isinstance(h, st.SearchStrategy) else _size(draw, h)
    if h % g:
        raise ValueError(f"h: {h} heads for g = {g} groups (expected g to divide h)")
    m = draw(st.one_of(st.just(0), st.integers(1, 2))) if d_mlp is None else _size(draw, d_mlp)
    s, cd = h * p, h * p + 2 * g * n
    rows, d_inner = 2 * m + 2 * s + 2 * g * n + h, m + s
    mag = st.one_of(st.floats(1e-3, 50.0), st.sampled_from([1e-6, 1e-3, 1.0, 16.0]))
    P = {"in_proj.weight": _normals(draw, (rows, d), 1 / onp.sqrt(d)),
         "conv1d.weight": _normals(draw, (cd, 1, W), 1 / onp.sqrt(W)),
         "dt_bias": _normals(draw, (h,), 2.0) - 2.0,
         "A_log": onp.log(onp.array([draw(mag) for _ in range(h)])),
         "out_proj.weight": _normals(draw, (d, d_inner), 1 / onp.sqrt(d_inner))}
    per_channel = draw(st.booleans()) if D_per_channel is None else bool(D_per_channel)
    P["D"] = _normals(draw, (s,) if per_channel else (h,))
    if (draw(st.booleans()) if norm is None else norm):
        P["norm.weight"] = 1.0 + 0.3 * _normals(draw, (s,))
    if draw(st.booleans()) if biases is None else True:
        P["conv1d.bias"] = _normals(draw, (cd,))
    if draw(st.booleans()) if biases is None else bool(biases):
        P["in_proj.bias"] = _normals(draw, (rows,))
        P["out_proj.bias"] = _normals(draw, (d,))
    return P


@st.composite
def ssd_case(draw, batch=st.integers(1, 2), L=st.integers(1, 40), h=st.integers(1, 4),
             g=None, p=st.integers(1, 3), n=st.integers(1, 4), dy=True):
    """(params, inputs) of Mamba-2's SSD core in the oracle's names (``--model ssd``):
    params A_log (h,) (or A, drawn either way), optional D (h,) or (h, p), optional
    dt_bias (h,); inputs x (batch, L, h, p), dt (batch, L, h), B, C (batch, L, g, n), and
    when drawn z (batch, L, h, p), initial_states (batch, h, p, n), dy. g divides h by
    construction (default: drawn among h's divisors); dt is drawn so that the step's
    |dt A| runs from 1e-6 to 50 (log-uniform), the hard ends of the segment sums.
    Use with ``dt_softplus=False`` (dt is the step itself).

    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, database=None)
    ... @given(ssd_case(h=4, g=2))
    ... def check(case):
    ...     P, U = case
    ...     assert U["B"].shape[2] == 2 and U["x"].shape[2] == 4
    >>> check()
    """
    batch, L, h, p, n = (_size(draw, v) for v in (batch, L, h, p, n))
    g = _size(draw, g) if g is not None else draw(st.sampled_from(
        [k for k in range(1, h + 1) if h % k == 0]))
    A = -onp.exp(onp.array([draw(st.floats(-1.0, 1.0)) for _ in range(h)]))
    P = {"A_log": onp.log(-A)} if draw(st.booleans()) else {"A": A}
    D = draw(st.sampled_from([None, "h", "hp"]))
    if D:
        P["D"] = _normals(draw, (h,) if D == "h" else (h, p))
    if draw(st.booleans()):
        P["dt_bias"] = _normals(draw, (h,), 0.1)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = onp.random.default_rng(seed)
    # |dt' A| log-uniform on [1e-6, 50] (dt' = dt + dt_bias, positive by construction)
    target = onp.exp(rng.uniform(onp.log(1e-6), onp.log(50.0), size=(batch, L, h)))
    dt = target / onp.abs(A) - P.get("dt_bias", onp.zeros(h))
    dt = onp.where(dt + P.get("dt_bias", 0.0) > 0, dt, 1e-6 / onp.abs(A) - P.get("dt_bias", 0.0))
    U = {"x": rng.standard_normal((batch, L, h, p)), "dt": dt,
         "B": rng.standard_normal((batch, L, g, n)), "C": rng.standard_normal((batch, L, g, n))}
    if draw(st.booleans()):
        U["z"] = rng.standard_normal((batch, L, h, p))
    if draw(st.booleans()):
        U["initial_states"] = rng.standard_normal((batch, h, p, n))
    if dy:
        U["dy"] = rng.standard_normal((batch, L, h, p))
    return P, U


@st.composite
def input_sequences(draw, batch=st.integers(1, 3), L=st.integers(1, 64), m=1, scale=1.0):
    """u (batch, L, m) float64: Gaussian noise, an impulse, a step or small integers."""
    batch, L, m = _size(draw, batch), _size(draw, L), _size(draw, m)
    kind = draw(st.sampled_from(["normal", "impulse", "step", "ints"]))
    if kind == "normal":
        return _normals(draw, (batch, L, m), scale)
    u = onp.zeros((batch, L, m))
    if kind == "impulse":
        u[:, draw(st.integers(0, L - 1))] = scale
    elif kind == "step":
        u[:, draw(st.integers(0, L - 1)):] = scale
    else:
        seed = draw(st.integers(0, 2**32 - 1))
        u = onp.random.default_rng(seed).integers(-3, 4, size=(batch, L, m)).astype(float) * scale
    return u


@st.composite
def params_and_inputs(draw, model="residual", m=st.integers(1, 3), batch=st.integers(1, 2),
                      L=st.integers(1, 48), dy=True, p=st.integers(1, 3), **params_kw):
    """(params, inputs) drawn together, so the input width always matches the params.

    ``model``: "lti" (``tf_arrays`` or ``ss_arrays``, p outputs), "residual"
    (``residual_params``), "selective" (``selective_params``), "mamba"
    (``mamba_params``, width m), "mamba-block" (``mamba_block_params``, d_model m) or
    "mamba2-block" (``mamba2_block_params``, d_model m; its ``g`` (default 1) is the
    ngroups to give the oracle); ``params_kw`` go to that strategy (e.g. ``form="ss"``,
    ``order``, ``n``, ``W``). inputs: ``u`` (batch, L, m) from ``input_sequences``
    (``hidden_states`` for the layers, which may also draw initial ``conv_state``
    (batch, E or conv_dim, W) and ``ssm_state`` (batch, E, n) or (batch, h, p, n)) and,
    with ``dy``, a Gaussian cotangent ``dy`` shaped like the output y (batch, L, p or m).
    Sizes may be ints or strategies.

    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, database=None)
    ... @given(params_and_inputs("selective"))
    ... def check(case):
    ...     P, U = case
    ...     assert U["u"].shape[2] == P["A"].shape[0] == U["dy"].shape[2]
    >>> check()
    """
    m = _size(draw, m)
    if model == "lti":
        p = _size(draw, p)
        form = params_kw.pop("form", None) or draw(st.sampled_from(["tf", "ss"]))
        if form == "tf":
            num, den = draw(tf_arrays(p, m, **params_kw))
            P = {"num": num, "den": den}
        else:
            A, B, C, D = draw(ss_arrays(m=m, p=p, **params_kw))
            P = {"A": A, "B": B, "C": C, "D": D}
        width = p
    elif model == "residual":
        P = draw(residual_params(m=m, **params_kw))
        width = m
    elif model == "selective":
        P = draw(selective_params(m=m, **params_kw))
        width = m
    elif model == "mamba":
        P = draw(mamba_params(m=m, **params_kw))
        width = m
    elif model == "mamba-block":
        P = draw(mamba_block_params(d=m, **params_kw))
        width = m
    elif model == "mamba2-block":
        P = draw(mamba2_block_params(d=m, **params_kw))
        width = m
    else:
        raise ValueError(f"model: {model!r} (expected 'lti', 'residual', 'selective', "
                         "'mamba', 'mamba-block' or 'mamba2-block')")
    batch, L = _size(draw, batch), _size(draw, L)
    U = {"u": draw(input_sequences(batch, L, m))}
    if model in formats.LAYER_MODELS:
        U = {"hidden_states": U["u"]}
        if draw(st.booleans()):
            C, _, W = P["conv1d.weight"].shape
            U["conv_state"] = _normals(draw, (batch, C, W))
            U["ssm_state"] = _normals(draw, (batch,) + _ssm_state_shape(model, P, params_kw))
    if dy:
        U["dy"] = _normals(draw, (batch, L, width))
    return P, U


def _ssm_state_shape(model, P, params_kw):
    """The scan state of one sequence: (E, n) for Mamba-1, (h, p, n) for Mamba-2 (g from
    the strategy's keyword, 1 by default)."""
    if model == "mamba-block":
        return P["A_log"].shape
    dims = validate_mamba2_block(P, ngroups=params_kw.get("g", 1))["dims"]
    return (dims["h"], dims["p"], dims["n"])


def assert_matches_reference(model, params, inputs, outputs, precision="float64", factor=None,
                             floor=None, **options):
    """Assert a candidate's ``outputs`` match the float64 oracle at ``precision``.

    ``params``/``inputs``: dicts in the file format (docs/formats.md); ``outputs``:
    dict of the candidate's arrays with keys among ``y``, the intermediates and
    ``grad_<key>`` (gradients of sum(y * dy), dy from ``inputs`` or ones).
    ``options``: path, gate, discretization, output, layout, allow_unstable (and the
    layers' and ssd's options of ``forward.resolve_options``, e.g. ngroups). Raises
    AssertionError carrying the verify report; returns the report when it passes.

    The verdict is rel_err <= factor × oracle_err + floor per tensor (docs/verify.md).
    ``factor`` and ``floor`` override the defaults TOLERANCES["verify_factor"] (2) and
    TOLERANCES["verify_floor_<precision>"] for this call only, e.g. ``factor=4`` for a
    candidate that sums in a different order than the oracle's sequential scan; the
    report (and the AssertionError) states the values used. Loosening them is the
    caller's decision: the defaults are what the precision allows.

    >>> P = {"num": numpy.array([[[1.0, 0.5]]]), "den": numpy.array([[1.0, -0.9]])}
    >>> U = {"u": numpy.ones((1, 20, 1))}
    >>> from scipy.signal import lfilter
    >>> y32 = lfilter([1.0, 0.5], [1.0, -0.9], numpy.ones(20, numpy.float32))
    >>> assert_matches_reference("lti", P, U, {"y": y32.reshape(1, 20, 1)}, "float32").passed
    True
    """
    want_grads = any(k.startswith("grad_") for k in outputs)
    inter = set(formats.SPECS[model]["intermediates"]) if model in formats.SPECS else set()
    want_inter = any(k in inter for k in outputs)
    opts = forward.resolve_options(model, grads=want_grads, intermediates=want_inter, **options)
    params, sizes = formats.check_params(model, params,
                                         allow_unstable=opts["allow_unstable"], options=opts)
    inputs, _ = formats.check_inputs(model, inputs, sizes, layout=opts["layout"],
                                     ngroups=opts.get("ngroups") if model == "ssd" else None)
    ref_out = forward.compute_checked(model, params, inputs, opts)
    if want_grads and "dy" not in inputs:
        inputs = dict(inputs, dy=onp.ones(ref_out["y"].shape))
    # inputs and outputs in the caller's layout (options' layout="channel-first": time last)
    lay = lambda d: {k: formats.to_layout(k, v, opts["layout"]) for k, v in d.items()}
    ref = forward.bundle(opts, params, lay(inputs), lay(ref_out))
    report = verify.verify(ref, outputs, precision, where=("reference", "outputs"),
                           factor=factor, floor=floor)
    if not report.passed:
        head = ("the check is INCONCLUSIVE: its threshold would pass a candidate of zeros"
                if report.inconclusive else "candidate does not match the rssm-ref oracle")
        raise AssertionError(head + "\n" + report.to_text())
    return report
