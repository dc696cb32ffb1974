"""The oracle rerun in a candidate's precision: how large an error that precision makes.

``verify`` holds a candidate computed in float32, float16 or bfloat16 to the error that
the reference algorithm itself makes in that precision (times a factor, plus a floor;
see ``rssm_ref.tolerances``). This module computes that low-precision run by
*emulation*: the sequential algorithm written straight from the equations (the
``_ref``-style recurrence of each model, never the FFT route), with every arithmetic
result rounded to the target format.

How each precision is emulated (documented in docs/verify.md):

float64    NumPy float64; no extra rounding. (Used as a second, independent float64
           implementation: its distance to the reference is a few ulps.)
float32    NumPy float32 arithmetic: every elementwise result is float32; dot products
           accumulate in float32.
float16    Values held in float32, every result rounded to IEEE half (11-bit
           significand, overflow to inf): elementwise ops are correctly rounded, dot
           products accumulate in float32 and are rounded once, like tensor cores.
bfloat16   Values held in float32, every result rounded to 8 significand bits
           (round-to-nearest-even on the float32 bit pattern); dot products as float16.

Gradients are autograd's reverse mode through the same rounded computation; every
cotangent passing a rounding point is rounded too (the VJP of rounding is rounding), and
the three loops over time are custom primitives whose VJPs (adjoint recursions run
backwards in time) round every result, so the backward pass runs in the same precision.

Stochastic rounding (``seed=``): the same computation with every result rounded up or
down at random, with probability given by the distance to each neighbour (values held
in float64). One such run is a sample of "the same algorithm in another rounding
order"; ``verify`` measures the oracle's low-precision error as the worst of the
round-to-nearest run and a few stochastic runs, so that a correct candidate whose
rounding happens to be less lucky than ours is not failed (observed spread between
correct float32 implementations: up to ~4x for a quadruple pole).

Glossary
--------
precision        one of PRECISIONS
q(x)             round x to the precision (identity for float64/float32)
u                (batch, L, m) input; y (batch, L, p|m) output
emulate(model, params, inputs, options, precision, grads=False, seed=None) -> dict
Arith(precision, seed=None)   working dtype, rounding ``qn`` (plain) and ``q`` (autograd)
diag_scan, state_scan, iir_scan   the loops over time, custom primitives (+ ``_ref`` twins)
round_to(x, precision) -> float64 array holding the rounded values

>>> import numpy
>>> x = [1.0 + 2**-10]
>>> float(round_to(x, "bfloat16")[0]), float(round_to(x, "float16")[0])
(1.0, 1.0009765625)
"""
import autograd.numpy as np
import numpy as onp
from autograd import make_vjp
from autograd.tracer import getval
from autograd.extend import defvjp, defvjp_argnums, primitive

PRECISIONS = ("float64", "float32", "float16", "bfloat16")
_WORKING = {"float64": onp.float64, "float32": onp.float32, "float16": onp.float32,
            "bfloat16": onp.float32}


def _check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} (expected one of {', '.join(PRECISIONS)})")


def _bf16_bits(x):
    # round-to-nearest-even to the top 16 bits of the float32 pattern; inf and NaN survive
    # (NaN payloads keep a set mantissa bit because 0x7FC00000 + 0x7FFF stays a NaN).
    x = onp.array(x, dtype=onp.float32, order="C", ndmin=1)
    shape = onp.shape(x)
    bits = x.view(onp.uint32)
    bias = onp.uint32(0x7FFF) + ((bits >> onp.uint32(16)) & onp.uint32(1))
    return ((bits + bias) & onp.uint32(0xFFFF0000)).view(onp.float32).reshape(shape)


def _q_bf16_plain(x):
    return _bf16_bits(x).reshape(onp.shape(x))


def _q_f16_plain(x):
    return onp.asarray(x, onp.float32).astype(onp.float16).astype(onp.float32)


def _stochastic(precision, rng):
    """Stochastic rounding to ``precision`` of float64 arrays (returned as float64): round
    up with probability equal to the distance to the lower neighbour in ulps."""
    if precision == "bfloat16":
        def q(x):
            x = onp.asarray(x, dtype=onp.float64)
            # to float32 first (error 2^-24, far below a bfloat16 ulp), then add 16 random
            # low bits before truncating: P(up) = discarded bits / 2^16
            bits = onp.array(x, dtype=onp.float32, order="C", ndmin=1).view(onp.uint32)
            r = rng.integers(0, 1 << 16, size=bits.shape, dtype=onp.uint32)
            out = ((bits + r) & onp.uint32(0xFFFF0000)).view(onp.float32)
            return out.astype(onp.float64).reshape(onp.shape(x))
        return q
    t = {"float32": onp.float32, "float16": onp.float16}[precision]

    def q(x):
        x = onp.asarray(x, dtype=onp.float64)
        near = x.astype(t)
        d = x - near.astype(onp.float64)
        other = onp.nextafter(near, onp.where(d > 0, onp.inf, -onp.inf).astype(t))
        gap = other.astype(onp.float64) - near.astype(onp.float64)
        p = onp.where(gap != 0, d / onp.where(gap != 0, gap, 1.0), 0.0)  # in [0, 1/2]
        return onp.where(rng.random(x.shape) < p, other, near).astype(onp.float64)
    return q


def round_to(x, precision):
    """Values of ``x`` rounded to ``precision``, returned as float64 (any shape).

    >>> import numpy
    >>> bool(round_to([1/3], "float32")[0] == numpy.float32(1/3))
    True
    """
    _check_precision(precision)
    x = onp.asarray(x, dtype=onp.float64)
    with onp.errstate(over="ignore"):
        if precision == "float64":
            return x.copy()
        if precision == "float32":
            return x.astype(onp.float32).astype(onp.float64)
        if precision == "float16":
            return x.astype(onp.float16).astype(onp.float64)
        return _bf16_bits(x.astype(onp.float32)).reshape(x.shape).astype(onp.float64)


class Arith:
    """Working dtype and rounding for one precision.

    ``qn`` rounds plain arrays, ``q`` is the same as an autograd primitive whose VJP
    rounds the cotangent. ``seed=None``: round to nearest (float32 in float32
    arithmetic, float16/bfloat16 held in float32); ``seed=int``: stochastic rounding,
    values held in float64 (not for float64).
    """

    def __init__(self, precision, seed=None):
        _check_precision(precision)
        self.precision = precision
        self.seed = seed
        if seed is not None and precision != "float64":
            self.dtype = onp.float64
            self.qn = _stochastic(precision, onp.random.default_rng(seed))
        else:
            self.dtype = _WORKING[precision]
            self.qn = {"bfloat16": _q_bf16_plain, "float16": _q_f16_plain}.get(precision)
        if self.qn is None:
            self.qn = lambda x: x
            self.q = self.qn
        else:
            self.q = primitive(self.qn)
            defvjp(self.q, lambda ans, x: lambda g: self.q(g))

    def cast(self, x):
        """float64 -> working dtype, rounded (outside any differentiated function)."""
        x = onp.asarray(x, dtype=onp.float64).astype(self.dtype)
        return onp.asarray(self.qn(x)).reshape(x.shape)

    def zeros(self, shape):
        return onp.zeros(shape, dtype=self.dtype)


# ------------------------------------------------------------ the three scans
# Every loop over time is one of three custom primitives. The forward is a plain NumPy
# loop in the working dtype with every result rounded; the VJP is the adjoint
# recursion run backwards in time, rounded the same way (no autograd tape per step:
# that costs ~30x and grows with L). Each has a `_ref` twin written as a plain loop
# through autograd, used by the tests to check the VJPs.

@primitive
def diag_scan(a, b, qn):
    """h(t+1) = a_t ⊙ h(t) + b_t, h(0) = 0, every product and sum rounded.

    Shapes: a, b (batch, L, ...) (same shape). Returns H (batch, L, ...), H[:, t] = h(t+1).
    """
    q = qn
    H = onp.empty_like(b)
    h = onp.zeros_like(b[:, 0])
    for t in range(b.shape[1]):
        h = q(q(a[:, t] * h) + b[:, t])
        H[:, t] = h
    return H


def diag_scan_ref(ar, a, b):
    """``diag_scan`` as a loop through autograd (the VJP's reference)."""
    h = ar.zeros(b.shape[:1] + b.shape[2:])
    out = []
    for t in range(b.shape[1]):
        h = ar.q(ar.q(a[:, t] * h) + b[:, t])
        out.append(h)
    return np.stack(out, axis=1)


def _diag_scan_vjp(argnums, H, args, kwargs):
    a, b, q = args

    def vjp(G):
        # adjoint mu_t = dLoss/dh(t+1): mu_t = G_t + a_{t+1} ⊙ mu_{t+1}
        mu = onp.empty_like(G)
        m = onp.zeros_like(G[:, 0])
        for t in range(G.shape[1] - 1, -1, -1):
            nxt = q(a[:, t + 1] * m) if t + 1 < G.shape[1] else m
            m = q(G[:, t] + nxt)
            mu[:, t] = m
        Hprev = onp.concatenate([onp.zeros_like(H[:, :1]), H[:, :-1]], axis=1)
        grads = {0: q(mu * Hprev), 1: mu}
        return tuple(grads[i] for i in argnums)
    return vjp


defvjp_argnums(diag_scan, _diag_scan_vjp)


@primitive
def state_scan(A, w, qn):
    """x(t+1) = A x(t) + w(t), x(0) = 0. Shapes: A (n, n), w (batch, L, n) -> X (batch, L, n),
    X[:, t] = x(t+1); the matrix-vector products accumulate in the working dtype."""
    q = qn
    X = onp.empty_like(w)
    x = onp.zeros_like(w[:, 0])
    for t in range(w.shape[1]):
        x = q(q(x @ A.T) + w[:, t])
        X[:, t] = x
    return X


def state_scan_ref(ar, A, w):
    """``state_scan`` as a loop through autograd (the VJP's reference)."""
    x = ar.zeros((w.shape[0], A.shape[0]))
    out = []
    for t in range(w.shape[1]):
        x = ar.q(ar.q(np.dot(x, A.T)) + w[:, t])
        out.append(x)
    return np.stack(out, axis=1)


def _state_scan_vjp(argnums, X, args, kwargs):
    A, w, q = args

    def vjp(G):
        # mu_t = dLoss/dx(t+1) = G_t + A^T mu_{t+1}
        mu = onp.empty_like(G)
        m = onp.zeros_like(G[:, 0])
        for t in range(G.shape[1] - 1, -1, -1):
            m = q(G[:, t] + q(m @ A)) if t + 1 < G.shape[1] else G[:, t]
            mu[:, t] = m
        Xprev = onp.concatenate([onp.zeros_like(X[:, :1]), X[:, :-1]], axis=1)
        grads = {0: q(onp.einsum("btn,btk->nk", mu, Xprev)), 1: mu}
        return tuple(grads[i] for i in argnums)
    return vjp


defvjp_argnums(state_scan, _state_scan_vjp)


@primitive
def iir_scan(a, v, qn):
    """y(t) = v(t) - sum_{l=1}^{r} a_l y(t-l), zero initial conditions, per row p.

    Shapes: a (p, r), v (batch, L, p) -> y (batch, L, p). The sum over l accumulates in
    the working dtype and is rounded once.
    """
    q = qn
    batch, L, p = v.shape
    r = a.shape[1]
    y = onp.zeros((batch, L + r, p), dtype=v.dtype)        # r leading zeros: y(-r..-1)
    for t in range(L):
        past = y[:, t:t + r][:, ::-1]                         # y(t-1), ..., y(t-r)
        y[:, t + r] = q(v[:, t] - q(onp.einsum("brp,pr->bp", past, a)))
    return y[:, r:]


def iir_scan_ref(ar, a, v):
    """``iir_scan`` as a loop through autograd (the VJP's reference)."""
    batch, L, p = v.shape
    r = a.shape[1]
    ys = [ar.zeros((batch, p))] * r
    for t in range(L):
        past = np.stack(ys[-1:-r - 1:-1], axis=1)             # (batch, r, p)
        ys.append(ar.q(v[:, t] - ar.q(np.einsum("brp,pr->bp", past, a))))
    return np.stack(ys[r:], axis=1)


def _iir_scan_vjp(argnums, y, args, kwargs):
    a, v, q = args
    r = a.shape[1]

    def vjp(G):
        # lam(t) = dLoss/dy(t) = G(t) - sum_l a_l lam(t+l): the filter run backwards
        batch, L, p = G.shape
        lam = onp.zeros((batch, L + r, p), dtype=G.dtype)      # r trailing zeros
        for t in range(L - 1, -1, -1):
            ahead = lam[:, t + 1:t + 1 + r]                     # lam(t+1), ..., lam(t+r)
            lam[:, t] = q(G[:, t] - q(onp.einsum("brp,pr->bp", ahead, a)))
        lam = lam[:, :L]
        # dLoss/da_l = -sum_t lam(t) y(t-l)
        ga = onp.stack([-q(onp.einsum("btp,btp->p", lam[:, l:], y[:, :L - l]))
                        for l in range(1, r + 1)], axis=1).astype(G.dtype)
        grads = {0: ga, 1: lam}
        return tuple(grads[i] for i in argnums)
    return vjp


defvjp_argnums(iir_scan, _iir_scan_vjp)


# ------------------------------------------------------------------ building blocks
def _sigmoid(ar, z):
    # s = σ(z) in the two-sided form: exp of a non-positive number never overflows.
    q = ar.q
    e = q(np.exp(-np.abs(z)))
    one_e = q(1.0 + e)
    return np.where(z >= 0, q(1.0 / one_e), q(e / one_e))


def _softplus(ar, z):
    # τ(z) = log(1 + e^z) = max(z, 0) + log1p(e^{-|z|}), eq. (4a)
    q = ar.q
    return q(np.maximum(z, 0.0) + q(np.log1p(q(np.exp(-np.abs(z))))))


def _shift(ar, H):
    """(batch, L, ...) states after each step -> states before: prepend h(0) = 0."""
    return np.concatenate([ar.zeros(H.shape[:1] + (1,) + H.shape[2:]), H[:, :-1]], axis=1)


def ss_scan(ar, A, B, C, D, u, ref=False):
    """x(t+1) = A x(t) + B u(t), y(t) = C x(t) + D u(t), x(0) = 0; every step rounded.

    Shapes: A (n, n), B (n, m), C (p, n), D (p, m), u (batch, L, m) -> y (batch, L, p).
    """
    q = ar.q
    # B u(t) and D u(t) for every t at once: no recurrence in them.
    w = q(np.einsum("blm,nm->bln", u, B))
    Du = q(np.einsum("blm,pm->blp", u, D))
    X = state_scan_ref(ar, A, w) if ref else state_scan(A, w, ar.qn)
    # y(t) = C x(t) + D u(t), x(t) the state before the update with u(t)
    return q(q(np.einsum("bln,pn->blp", _shift(ar, X), C)) + Du)


def tf_scan(ar, num, den, u, ref=False):
    """Direct-form difference equation per output row, every step rounded.

    a_0 y_i(t) = sum_j sum_l b_ijl u_j(t-l) - sum_{l>=1} a_il y_i(t-l)  (descending
    powers of z, zero initial conditions). Shapes: num (p, m, k), den (p, k),
    u (batch, L, m) -> y (batch, L, p).
    """
    q = ar.q
    batch, L, m = u.shape
    p, _, k = num.shape
    a0 = den[:, 0:1]
    b = q(num / a0[:, :, None])
    a = q(den[:, 1:] / a0)                                    # (p, k-1)
    upad = np.concatenate([ar.zeros((batch, k - 1, m)), u], axis=1)
    # FIR part v_i(t) = sum_l sum_j b_ijl u_j(t - l), accumulated over l in the precision
    v = None
    for lag in range(k):
        term = q(np.einsum("btj,ij->bti", upad[:, k - 1 - lag:k - 1 - lag + L], b[:, :, lag]))
        v = term if v is None else q(v + term)
    if k == 1:
        return v
    return iir_scan_ref(ar, a, v) if ref else iir_scan(a, v, ar.qn)


def _lti_block(ar, P, prefix, u, ref=False):
    if prefix + "num" in P:
        return tf_scan(ar, P[prefix + "num"], P[prefix + "den"], u, ref=ref)
    return ss_scan(ar, P[prefix + "A"], P[prefix + "B"], P[prefix + "C"], P[prefix + "D"], u,
                   ref=ref)


def _diag(ar, a, b, ref):
    return diag_scan_ref(ar, a, b) if ref else diag_scan(a, b, ar.qn)


def residual_scan(ar, P, u, gate="euler", ref=False):
    """Residual SSM (Fig. 3): y_s = Σ u, r = Σ_r (y_s - u), s = σ(r + gate_bias), gate eq. (5)
    or Remark 3.1's ZOH gate; y(0) = 0, output y(1..L). Shapes: u (batch, L, m) ->
    y (batch, L, m), {"y_s": (batch, L, m), "r": (batch, L), "s": (batch, L)}.
    """
    q = ar.q
    y_s = _lti_block(ar, P, "sigma_", u, ref)
    r = _lti_block(ar, P, "r_", q(y_s - u), ref)[:, :, 0]
    z = q(r + P["gate_bias"]) if "gate_bias" in P else r
    s = _sigmoid(ar, z)[..., None]
    zeros = ar.zeros(y_s.shape)
    if gate == "euler":
        # eq. (5): y(t+1) = y(t) + (y_s(t) - y(t)) s(t) = (1 - s(t)) y(t) + s(t) y_s(t)
        keep, take = q(1.0 - s), s
    else:
        # Remark 3.1: y(t+1) = e^{-s(t)} y(t) + (1 - e^{-s(t)}) y_s(t)
        keep, take = q(np.exp(-s)), q(-np.expm1(-s))
    y = _diag(ar, keep + zeros, q(take * y_s), ref)
    return y, {"y_s": y_s, "r": r, "s": s[..., 0]}


def selective_scan(ar, P, u, discretization="zoh", output="before", ref=False):
    """Selective SSM, eqs. (2)-(4), every step rounded.

    Δ_t = softplus(W_Δ u(t) + delta_bias)  (4a);  B̄_t = W_B u(t), C̄_t = W_C u(t)  (4b-c)
    A_t = exp(Δ_t A)  (3a);  B_t = A^{-1}(exp(Δ_t A) - 1) B̄_t (ZOH, 3b) or Δ_t B̄_t (Euler)
    h(t+1) = A_t h(t) + B_t u(t)  (2);  y(t) = C̄_t·h(t) ("before", eq. 2) or C̄_t·h(t+1)
    ("after", mamba_ssm), + D u(t). Shapes: A (m, n), u (batch, L, m) -> y (batch, L, m),
    {"delta": (batch, L, m), "h": (batch, L, m, n) = h(t+1)}.
    """
    q = ar.q
    A = P["A"]
    zd = q(np.einsum("blj,ij->bli", u, P["W_delta"]))
    if "delta_bias" in P:
        zd = q(zd + P["delta_bias"])
    delta = _softplus(ar, zd)
    dA = q(delta[..., None] * A)                               # (batch, L, m, n)
    A_t = q(np.exp(dA))
    Bbar = q(np.einsum("blj,nj->bln", u, P["W_B"]))
    Cbar = q(np.einsum("blj,nj->bln", u, P["W_C"]))
    if discretization == "zoh":
        B_t = q(q(q(np.expm1(dA)) / A) * Bbar[:, :, None, :])
    else:
        B_t = q(delta[..., None] * Bbar[:, :, None, :])
    H = _diag(ar, A_t, q(B_t * u[..., None]), ref)              # H[:, t] = h(t+1)
    read = _shift(ar, H) if output == "before" else H
    y = q(np.einsum("blmn,bln->blm", read, Cbar))
    if "D" in P:
        y = q(y + q(P["D"] * u))
    return y, {"delta": delta, "h": H}


def _model_fn(model, options):
    if model == "lti":
        return lambda ar, P, u: (_lti_block(ar, P, "", u), {})
    if model == "residual":
        return lambda ar, P, u: residual_scan(ar, P, u, gate=options.get("gate") or "euler")
    if model == "selective":
        return lambda ar, P, u: selective_scan(
            ar, P, u, discretization=options.get("discretization") or "zoh",
            output=options.get("output") or "before")
    raise ValueError(f"model: {model!r} (expected lti, residual or selective)")


def emulate(model, params, inputs, options, precision, grads=False, seed=None):
    """Run ``model`` on checked ``params``/``inputs`` in emulated ``precision``.

    Returns float64 arrays (holding the rounded values): ``y``, the model's
    intermediates, and with ``grads`` ``grad_u`` and ``grad_<key>`` of sum(y * dy)
    (dy = ones when the inputs hold none). Shapes as in rssm_ref.oracle.formats.
    ``seed=None`` rounds to nearest; an integer seed rounds stochastically (one sample
    of "another rounding order"; verify takes the worst of several).

    >>> import numpy
    >>> P = {"num": numpy.array([[[1.0, 0.0]]]), "den": numpy.array([[1.0, -0.5]])}
    >>> out = emulate("lti", P, {"u": numpy.ones((1, 3, 1))}, {}, "float64")
    >>> out["y"].ravel().tolist()
    [1.0, 1.5, 1.75]
    """
    _check_precision(precision)
    ar = Arith(precision, seed=seed)
    fn = _model_fn(model, options)
    keys = sorted(k for k in params if k != "embedding")
    P0 = {k: ar.cast(params[k]) for k in keys}
    if "tokens" in inputs:
        emb = ar.cast(params["embedding"])
        u0 = emb[onp.asarray(inputs["tokens"])]
    else:
        u0 = ar.cast(inputs["u"])
    captured = {}

    def run(args):
        # q on the leaves: a no-op forward; backward it rounds each leaf's gradient
        # (the last autograd VJP step and the sum over fan-out are otherwise unrounded)
        args = [ar.q(x) for x in args]
        y, inter = fn(ar, dict(zip(keys, args[:-1])), args[-1])
        captured.update({k: getval(v) for k, v in inter.items()})
        return y

    args = [P0[k] for k in keys] + [u0]
    with onp.errstate(all="ignore"):          # low precision may overflow: that is data
        if not grads:
            out = {"y": run(args)}
        else:
            # one forward pass gives y, the intermediates and the VJP
            vjp, y = make_vjp(run)(args)
            out = {"y": y}
            dy = ar.cast(inputs["dy"]) if "dy" in inputs else onp.ones(y.shape, ar.dtype)
            g = vjp(dy)
            for k, gk in zip(keys, g[:-1]):
                out[f"grad_{k}"] = gk
            out["grad_u"] = g[-1]
            if "tokens" in inputs:
                # gather's VJP: scatter-add grad_u into the embedding rows
                ge = onp.zeros(params["embedding"].shape, dtype=ar.dtype)
                onp.add.at(ge, onp.asarray(inputs["tokens"]), g[-1])
                out["grad_embedding"] = onp.asarray(ar.qn(ge)).reshape(ge.shape)
        out.update(captured)
    result = {}
    for k, v in out.items():
        v = onp.asarray(v)
        if v.dtype != ar.dtype:
            raise AssertionError(f"emulation of {precision} leaked dtype {v.dtype} in {k!r}")
        v = v.astype(onp.float64)
        fin = onp.isfinite(v)
        if not onp.array_equal(round_to(v[fin], precision), v[fin]):
            raise AssertionError(f"emulation of {precision}: {k!r} holds unrounded values")
        result[k] = v
    return result
