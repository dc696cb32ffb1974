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
float32    NumPy float32 arithmetic, forward and backward: every elementwise result and
           every cotangent is float32 (checked at each rounding point: a float64 leak
           is an AssertionError); dot products accumulate in float32.
float16    Values held in float32, every result rounded to IEEE half (11-bit
           significand, overflow to inf): elementwise ops are correctly rounded, dot
           products accumulate in float32 and are rounded once, like tensor cores.
bfloat16   Values held in float32, every result rounded to 8 significand bits
           (round-to-nearest-even on the float32 bit pattern); dot products as float16.

Gradients are autograd's reverse mode through the same rounded computation; every
cotangent passing a rounding point is rounded too (the VJP of rounding is rounding), and
the three loops over time are custom primitives whose VJPs (adjoint recursions run
backwards in time) round every result, so the backward pass runs in the same precision.
A parameter's gradient sums over every (batch, t): ``seq_sum``/``seq_outer_sum`` add the
terms one after the other in the working dtype (the order of a plain loop, the least
favourable common one), one sum per use of the parameter (``Arith.expand``, ``proj``).

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
seq_sum(x, lead), seq_outer_sum(g, x)   sums over (batch, t) one term after the other
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

from rssm_ref.mamba2_block import validate_mamba2_block
from rssm_ref.oracle.formats import input_key as formats_input_key
from rssm_ref.oracle.slips import check_slip, MAMBA2_CORE, SSD_SLIPS
from rssm_ref.oracle.formats import layer_inputs, mamba2_options, ssd_limit, SSD_CHUNK_SIZE

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
        if precision == "float64" and seed is None:
            self.q = self.qn
        else:
            # every rounding point, forward and backward, also checks that its value is in
            # the working dtype: a float64 leak (e.g. autograd's VJP of np.maximum or
            # np.where makes float64 zeros) would accumulate in float64 and under-state
            # the precision's error (docs/verify.md), so it is an error, not a silent upcast
            self.q = primitive(lambda x: self._round(x, "forward"))
            defvjp(self.q, lambda ans, x: lambda g: self._round(g, "backward"))
        # partial sums of the long reductions (over batch and time, in the parameter
        # gradients): working-dtype arithmetic when rounding to nearest; a stochastic
        # run rounds them to float32, the accumulator they stand for (stochastically
        # when float32 is the precision itself)
        if seed is None or precision == "float64":
            self.qa = None
        elif precision == "float32":
            self.qa = self.qn
        else:
            self.qa = _to_float32_held

    def _round(self, x, where):
        dtype = onp.result_type(x)
        if dtype != self.dtype:
            raise AssertionError(f"emulation of {self.precision}: a {where} intermediate is "
                                 f"{dtype} (expected every result in {onp.dtype(self.dtype)})")
        return self.qn(x)

    def cast(self, x):
        """float64 -> working dtype, rounded (outside any differentiated function)."""
        x = onp.asarray(x, dtype=onp.float64).astype(self.dtype)
        return onp.asarray(self.qn(x)).reshape(x.shape)

    def zeros(self, shape):
        return onp.zeros(shape, dtype=self.dtype)

    def expand(self, p, lead):
        """A parameter ``p`` broadcast over the leading axes ``lead`` (e.g. (batch, L));
        its gradient is summed over them term by term (``seq_sum``)."""
        return _expand(p, tuple(lead), self.qa)

    def proj(self, x, W):
        """einsum("...j,ij->...i", x, W): x (..., J), W (I, J) -> (..., I); the gradient
        of W is summed over the leading axes term by term (``seq_outer_sum``)."""
        return _proj(x, W, self.qa)


def _to_float32_held(x):
    return onp.asarray(x, dtype=onp.float32).astype(onp.float64)


# ------------------------------------------------------ sums over batch and time
# A parameter's gradient is a sum over every (batch, t): 2048 terms at batch 2, L = 1024.
# A plain float32 implementation accumulates it one term at a time (a loop over t, or
# einsum's outer loops; mamba_ssm's scan kernel accumulates dA, dD that way), which
# costs far more than NumPy's pairwise np.sum; the emulation adds in that order, the
# least favourable common one, so that a candidate is not failed for its summation order.
def seq_sum(x, lead, qa=None):
    """Sum of ``x`` over its first ``lead`` axes, one term after the other (batch-major),
    in x's dtype; ``qa`` rounds every partial sum. Shapes: (d_1..d_lead, *rest) -> rest.

    >>> import numpy
    >>> seq_sum(numpy.ones((2, 3, 4)), 2).tolist()
    [6.0, 6.0, 6.0, 6.0]
    """
    x = onp.asarray(x)
    flat = x.reshape((-1,) + x.shape[lead:])
    acc = flat[0].copy()
    for i in range(1, flat.shape[0]):
        acc = acc + flat[i]
        if qa is not None:
            acc = qa(acc)
    return onp.asarray(acc, dtype=x.dtype).reshape(x.shape[lead:])


def seq_outer_sum(g, x, qa=None):
    """sum over the leading axes of g ⊗ x, one (batch, t) term after the other.
    Shapes: g (..., I), x (..., J) with the same leading axes -> (I, J)."""
    G = g.reshape(-1, g.shape[-1])
    X = x.reshape(-1, x.shape[-1])
    acc = onp.zeros((G.shape[1], X.shape[1]), dtype=onp.result_type(G, X))
    for i in range(G.shape[0]):
        acc = acc + onp.multiply.outer(G[i], X[i])
        if qa is not None:
            acc = qa(acc)
    return onp.asarray(acc, dtype=acc.dtype)


@primitive
def _expand(p, lead, qa):
    return onp.broadcast_to(p, lead + onp.shape(p))


defvjp(_expand, lambda ans, p, lead, qa: lambda g: seq_sum(g, len(lead), qa))


@primitive
def _proj(x, W, qa):
    return onp.einsum("...j,ij->...i", x, W)


defvjp(_proj,
       lambda ans, x, W, qa: lambda g: onp.einsum("...i,ij->...j", g, W),
       lambda ans, x, W, qa: lambda g: seq_outer_sum(g, x, qa))


def _check_cotangent(G, out):
    if onp.result_type(G) != out.dtype:
        raise AssertionError(f"emulation: a scan's cotangent is {onp.result_type(G)} "
                             f"(expected {out.dtype}, the dtype of its forward)")


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
        _check_cotangent(G, H)
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
def state_scan(A, w, qn, qa=None):
    """x(t+1) = A x(t) + w(t), x(0) = 0. Shapes: A (n, n), w (batch, L, n) -> X (batch, L, n),
    X[:, t] = x(t+1); the matrix-vector products accumulate in the working dtype (the
    gradient of A over (batch, t) term by term, partial sums rounded by ``qa``)."""
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
    A, w, q = args[:3]
    qa = args[3] if len(args) > 3 else None

    def vjp(G):
        _check_cotangent(G, X)
        # mu_t = dLoss/dx(t+1) = G_t + A^T mu_{t+1}
        mu = onp.empty_like(G)
        m = onp.zeros_like(G[:, 0])
        for t in range(G.shape[1] - 1, -1, -1):
            m = q(G[:, t] + q(m @ A)) if t + 1 < G.shape[1] else G[:, t]
            mu[:, t] = m
        Xprev = onp.concatenate([onp.zeros_like(X[:, :1]), X[:, :-1]], axis=1)
        grads = {0: q(seq_outer_sum(mu, Xprev, qa)), 1: mu}
        return tuple(grads[i] for i in argnums)
    return vjp


defvjp_argnums(state_scan, _state_scan_vjp)


@primitive
def iir_scan(a, v, qn, qa=None):
    """y(t) = v(t) - sum_{l=1}^{r} a_l y(t-l), zero initial conditions, per row p.

    Shapes: a (p, r), v (batch, L, p) -> y (batch, L, p). The sum over l accumulates in
    the working dtype and is rounded once (the gradient of a: over (batch, t) term by
    term, partial sums rounded by ``qa``).
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
    a, v, q = args[:3]
    qa = args[3] if len(args) > 3 else None
    r = a.shape[1]

    def vjp(G):
        _check_cotangent(G, y)
        # lam(t) = dLoss/dy(t) = G(t) - sum_l a_l lam(t+l): the filter run backwards
        batch, L, p = G.shape
        lam = onp.zeros((batch, L + r, p), dtype=G.dtype)      # r trailing zeros
        for t in range(L - 1, -1, -1):
            ahead = lam[:, t + 1:t + 1 + r]                     # lam(t+1), ..., lam(t+r)
            lam[:, t] = q(G[:, t] - q(onp.einsum("brp,pr->bp", ahead, a)))
        lam = lam[:, :L]
        # dLoss/da_l = -sum_t lam(t) y(t-l)
        ga = onp.stack([-q(seq_sum(lam[:, l:] * y[:, :L - l], 2, qa))
                        for l in range(1, r + 1)], axis=1).astype(G.dtype)
        grads = {0: ga, 1: lam}
        return tuple(grads[i] for i in argnums)
    return vjp


defvjp_argnums(iir_scan, _iir_scan_vjp)


# ------------------------------------------------------------------ building blocks
# Selection and max(z, 0) as primitives whose VJPs keep the cotangent's dtype: autograd's
# own VJPs of np.where and np.maximum build float64 masks/zeros, which would carry a
# float32 gradient into float64 (docs/verify.md). Shapes: c, x, y, z all the same shape.
@primitive
def _select(c, x, y):
    """where(c, x, y) for same-shaped x, y."""
    return onp.where(c, x, y)


defvjp(_select, None,
       lambda ans, c, x, y: lambda g: onp.where(c, g, onp.zeros_like(g)),
       lambda ans, c, x, y: lambda g: onp.where(c, onp.zeros_like(g), g))


@primitive
def _relu(z):
    """max(z, 0), exact in every format; VJP g * [z > 0] in g's dtype."""
    return onp.where(z > 0, z, onp.zeros_like(z))


defvjp(_relu, lambda ans, z: lambda g: onp.where(z > 0, g, onp.zeros_like(g)))


def _sigmoid(ar, z):
    # s = σ(z) in the two-sided form: exp of a non-positive number never overflows.
    q = ar.q
    e = q(np.exp(-np.abs(z)))
    one_e = q(1.0 + e)
    return _select(getval(z) >= 0, q(1.0 / one_e), q(e / one_e))


def _softplus(ar, z):
    # τ(z) = log(1 + e^z) = max(z, 0) + log1p(e^{-|z|}), eq. (4a)
    q = ar.q
    return q(_relu(z) + q(np.log1p(q(np.exp(-np.abs(z))))))


def _shift(ar, H):
    """(batch, L, ...) states after each step -> states before: prepend h(0) = 0."""
    return np.concatenate([ar.zeros(H.shape[:1] + (1,) + H.shape[2:]), H[:, :-1]], axis=1)


def ss_scan(ar, A, B, C, D, u, ref=False):
    """x(t+1) = A x(t) + B u(t), y(t) = C x(t) + D u(t), x(0) = 0; every step rounded.

    Shapes: A (n, n), B (n, m), C (p, n), D (p, m), u (batch, L, m) -> y (batch, L, p).
    """
    q = ar.q
    # B u(t) and D u(t) for every t at once: no recurrence in them.
    w = q(ar.proj(u, B))
    Du = q(ar.proj(u, D))
    X = state_scan_ref(ar, A, w) if ref else state_scan(A, w, ar.qn, ar.qa)
    # y(t) = C x(t) + D u(t), x(t) the state before the update with u(t)
    return q(q(ar.proj(_shift(ar, X), C)) + Du)


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
        term = q(ar.proj(upad[:, k - 1 - lag:k - 1 - lag + L], b[:, :, lag]))
        v = term if v is None else q(v + term)
    if k == 1:
        return v
    return iir_scan_ref(ar, a, v) if ref else iir_scan(a, v, ar.qn, ar.qa)


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
    z = q(r + ar.expand(P["gate_bias"], r.shape)) if "gate_bias" in P else r
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
    h(t+1) = A_t h(t) + B_t u(t)  (2);  y(t) = C̄_t·h(t) ("before", eq. (2)) or C̄_t·h(t+1)
    ("after", mamba_ssm), + D u(t). Shapes: A (m, n), u (batch, L, m) -> y (batch, L, m),
    {"delta": (batch, L, m), "h": (batch, L, m, n) = h(t+1)}.
    """
    q = ar.q
    zd = q(ar.proj(u, P["W_delta"]))
    if "delta_bias" in P:
        zd = q(zd + ar.expand(P["delta_bias"], zd.shape[:2]))
    Bbar = q(ar.proj(u, P["W_B"]))
    Cbar = q(ar.proj(u, P["W_C"]))
    return _selective_core(ar, P["A"], zd, Bbar, Cbar, P.get("D"), u, discretization, output,
                           ref)


def mamba_scan(ar, P, u, discretization="euler", output="after", ref=False):
    """A Mamba layer's SSM under its own parameter names (rssm_ref.oracle.mamba), rounded
    in the order mamba_ssm computes: x_dbl = x_proj(u) (batch, L, dt_rank + 2n) split into
    dt, B̄, C̄; the pre-activation of Δ is dt_proj.weight·dt (+ dt_proj.bias); A = -exp(A_log).
    Then as ``selective_scan``. Shapes: A_log (m, n), u (batch, L, m) -> y (batch, L, m).
    """
    q = ar.q
    r, n = P["dt_proj.weight"].shape[1], P["A_log"].shape[1]
    x_dbl = q(ar.proj(u, P["x_proj.weight"]))
    zd = q(ar.proj(x_dbl[..., :r], P["dt_proj.weight"]))
    if "dt_proj.bias" in P:
        zd = q(zd + ar.expand(P["dt_proj.bias"], zd.shape[:2]))
    A = -q(np.exp(P["A_log"]))
    return _selective_core(ar, A, zd, x_dbl[..., r:r + n], x_dbl[..., r + n:], P.get("D"), u,
                           discretization, output, ref)


def mamba_block_scan(ar, P, h, conv_state=None, ssm_state=None, ref=False, slip=None):
    """A whole Mamba-1 layer (rssm_ref.mamba_block, (M1)-(M9)) rounded in the order
    mamba_ssm computes it: xz = in_proj(h); the causal conv as W products added one after
    the other (oldest tap first) plus the bias; SiLU; the scan of ``mamba_scan`` (from
    ``ssm_state`` when given); y_ssm · SiLU(z); out_proj. ``conv_state`` (batch, E, W) or
    (batch, E, W - 1): the conv inputs before t = 0. Returns (y, {xz, x_conv, x_act,
    delta, y_ssm, z, conv_state (batch, E, W), ssm_state (batch, E, n)}).

    ``slip``: None for the layer, or a name of rssm_ref.oracle.slips.SLIPS: the same
    computation with that one port slip (``diagnose``'s alternative references). y_ssm is
    h C + D x_act whatever the gate does.
    """
    check_slip(slip)
    q = ar.q
    E, _, W = P["conv1d.weight"].shape
    lead = h.shape[:2]
    xz = q(ar.proj(h, P["in_proj.weight"]))
    if "in_proj.bias" in P:
        xz = q(xz + ar.expand(P["in_proj.bias"], lead))
    x, z = xz[..., :E], xz[..., E:]
    if slip == "xz_swapped":
        x, z = z, x
    if conv_state is None:
        before = ar.zeros((h.shape[0], W - 1, E))
    else:
        before = np.transpose(conv_state[:, :, conv_state.shape[2] - (W - 1):], (0, 2, 1))
    xpad = np.concatenate([before, x], axis=1)                  # (batch, W - 1 + L, E)
    # the taps read read[t + k]: the W - 1 inputs before t, then x; right-padded, x first
    read = xpad if slip != "conv_right_padded" else \
        np.concatenate([x, ar.zeros((h.shape[0], W - 1, E))], axis=1)
    L = h.shape[1]
    x_conv = None
    for k in range(W):                                           # (M2): tap k on read[t + k]
        tap = W - 1 - k if slip == "conv_flipped" else k
        term = q(ar.expand(P["conv1d.weight"][:, 0, tap], lead) * read[:, k:k + L])
        x_conv = term if x_conv is None else q(x_conv + term)
    if "conv1d.bias" in P and slip != "conv_bias_missing":
        x_conv = q(x_conv + ar.expand(P["conv1d.bias"], lead))
    x_act = x_conv if slip == "conv_silu_missing" else q(x_conv * _sigmoid(ar, x_conv))
    r, n = P["dt_proj.weight"].shape[1], P["A_log"].shape[1]
    x_dbl = q(ar.proj(x_act, P["x_proj.weight"]))
    zd = q(ar.proj(x_dbl[..., :r], P["dt_proj.weight"]))
    if slip != "dt_bias_missing":
        zd = q(zd + ar.expand(P["dt_proj.bias"], lead))
    if slip == "dt_bias_twice":                   # dt_proj's own bias, then as delta_bias
        zd = q(zd + ar.expand(P["dt_proj.bias"], lead))
    A = P["A_log"] if slip == "A_is_A_log" else -q(np.exp(P["A_log"]))
    D = None if slip in ("D_missing", "gate_before_D") else P["D"]
    y_ssm, inter = _selective_core(ar, A, zd, x_dbl[..., r:r + n], x_dbl[..., r + n:], D,
                                   x_act, "zoh" if slip == "zoh_B" else "euler",
                                   "before" if slip == "output_before" else "after", ref,
                                   h0=ssm_state, softplus=slip != "softplus_missing")
    gate = x_act if slip == "gate_on_x" else z
    gated = q(y_ssm * q(gate * _sigmoid(ar, gate)))
    if slip == "gate_before_D":
        Dx = q(ar.expand(P["D"], lead) * x_act)
        gated, y_ssm = q(gated + Dx), q(y_ssm + Dx)
    y = q(ar.proj(gated, P["out_proj.weight"]))
    if "out_proj.bias" in P:
        y = q(y + ar.expand(P["out_proj.bias"], lead))
    full = np.concatenate([ar.zeros((h.shape[0], 1, E)), xpad], axis=1)   # one more on the left
    return y, {"xz": xz, "x_conv": x_conv, "x_act": x_act, "delta": inter["delta"],
               "y_ssm": y_ssm, "z": z, "conv_state": np.transpose(full[:, -W:], (0, 2, 1)),
               "ssm_state": inter["last_state"]}


def _ssd_step(ar, P, dt, dt_softplus, dt_limit, slip=None):
    """dt' of (S1), rounded: dt + dt_bias, softplus, clamp (only when dt_limit is not
    (0, inf), as mamba_ssm), or with one of ssd's dt slips. Shapes: dt (batch, L, h)."""
    q = ar.q
    times = {"dt_bias_missing": 0, "dt_bias_twice": 2}.get(slip, 1) if "dt_bias" in P else 0
    d = dt
    for _ in range(times):
        d = q(d + ar.expand(P["dt_bias"], dt.shape[:2]))
    soft = int(bool(dt_softplus)) + {"softplus_missing": -1, "softplus_twice": 1,
                                     "softplus_unwanted": 1}.get(slip, 0)
    for _ in range(soft):
        d = _softplus(ar, d)
    limit = tuple(dt_limit)
    if slip == "dt_limit_ignored":
        limit = (0.0, onp.inf)
    if limit != (0.0, onp.inf) or slip == "dt_clamped_at_zero":
        # mamba_ssm's clamp: the gradient passes at the bounds, stops strictly outside
        lo, hi = (ar.cast(onp.full(d.shape, v)) for v in limit)
        d = _select(getval(d) < lo, lo, _select(getval(d) > hi, hi, d))
    return d


def ssd_scan(ar, P, x, dt, B, C, z=None, initial_states=None, dt_softplus=False,
             dt_limit=(0.0, onp.inf), chunk_size=SSD_CHUNK_SIZE, ref=False, slip=None):
    """Mamba-2's SSD core (rssm_ref.ssd, (S1)-(S4)) as its recurrence, every result rounded:
    dt' = clamp(softplus(dt + dt_bias)), a = dt' A (A = -exp(A_log) or A), then
    H_t = exp(a_t) H_{t-1} + (dt'_t x_t) B_t^T from initial_states, y_t = H_t C_t (+ D x_t),
    times silu(z_t). The chunked algorithm's sums in another order are one more rounding
    order, which the factor of ``verify`` absorbs. Shapes: x, z (batch, L, h, p),
    dt (batch, L, h), B, C (batch, L, g, n) -> y (batch, L, h, p), {"final_states":
    (batch, h, p, n), "chunk_states": (batch, ceil(L / chunk_size), h, p, n), "dt": dt'
    (batch, L, h)}.

    ``slip``: None, or a name of rssm_ref.oracle.slips.SSD_SLIPS: the same computation with
    that one port slip (``diagnose``'s alternative references).
    """
    check_slip(slip, "ssd")
    q = ar.q
    batch, L, h, p = x.shape
    r = h // B.shape[2]
    lead = dt.shape[:2]
    d = _ssd_step(ar, P, dt, dt_softplus, dt_limit, slip)
    A = -q(np.exp(P["A_log"])) if "A_log" in P else P["A"]
    a = ar.expand(A, lead) if slip == "A_dt_missing" else q(d * ar.expand(A, lead))
    if slip == "A_dt_twice":
        a = q(d * a)
    e = q(np.exp(a))                                              # (batch, L, h)
    X = x if slip == "x_dt_missing" else q(x * d[..., None])
    if slip == "x_dt_twice":
        X = q(X * d[..., None])
    if slip == "groups_repeat":                                   # head i reads group i % g
        Bh, Ch = np.concatenate([B] * r, axis=2), np.concatenate([C] * r, axis=2)
    else:
        Bh, Ch = np.repeat(B, r, axis=2), np.repeat(C, r, axis=2)  # group i // r
    b = q(X[..., None] * Bh[:, :, :, None, :])                    # (batch, L, h, p, n)
    decay = e[..., None, None] + ar.zeros(b.shape)
    if initial_states is not None and slip != "initial_states_ignored":
        b = np.concatenate([q(b[:, :1] + q(decay[:, :1] * initial_states[:, None])), b[:, 1:]],
                           axis=1)
    H = _diag(ar, decay, b, ref)                                  # H[:, t] = H_t
    y = q(np.einsum("blhpn,blhn->blhp", H, Ch))
    if "D" in P and slip != "D_missing":
        D = P["D"]
        if slip == "D_flat_order":                                # (h p) storage read as (p h)
            D = np.transpose(np.reshape(np.reshape(D, (-1,)), (p, h)))
        D = ar.expand(D, lead)
        if np.ndim(P["D"]) == 1:
            D = D[..., None, :] if slip == "D_unsqueeze_missing" else D[..., None]
        y = q(y + q(D * x))
    if z is not None:
        y = q(y * q(z * _sigmoid(ar, z)))
    ends = [min(L, c + chunk_size) - 1 for c in range(0, L, chunk_size)]
    final, chunks = H[:, -1], H[:, ends]
    if slip == "padding_leak":
        # the pad's steps: x = 0 (nothing enters), raw dt = 0, so the state only decays
        e_pad = q(np.exp(q(_ssd_step(ar, P, ar.zeros((batch, 1, h)), dt_softplus, dt_limit)
                           * ar.expand(A, (batch, 1)))))[:, 0, :, None, None]
        for _ in range((-L) % chunk_size):
            final = q(e_pad * final)
        chunks = np.concatenate([chunks[:, :-1], final[:, None]], axis=1)
    return y, {"final_states": final, "chunk_states": chunks, "dt": d}


def mamba2_block_scan(ar, P, hs, conv_state=None, ssm_state=None, *, ngroups=None,
                      d_state=None, norm_before_gate=False, norm_group_size=None,
                      dt_limit=(0.0, onp.inf), eps=1e-5, chunk_size=SSD_CHUNK_SIZE, ref=False,
                      slip=None):
    """A whole Mamba-2 layer (rssm_ref.mamba2_block, (B1)-(B10)) rounded in the order
    mamba_ssm computes it: zxbcdt = in_proj(hs) split into z0, x0, z, xBC, dt; the causal
    conv as W products added one after the other (oldest tap first) plus the bias; SiLU;
    the SSD recurrence of ``ssd_scan`` (dt' = clamp(softplus(dt + dt_bias)), from
    ``ssm_state`` when given; z gates inside only without norm.weight); the gated RMSNorm
    per group (``_rms_norm_gated``); [silu(z0) x0 | y_norm]; out_proj. Shapes: hs
    (batch, L, d); conv_state (batch, conv_dim, W) or (batch, conv_dim, W - 1), the conv
    inputs before t = 0; ssm_state (batch, h, p, n). Returns (y (batch, L, d), {zxbcdt,
    xBC_conv, dt, y_ssd, y_norm, y_inner, conv_state (batch, conv_dim, W), ssm_state}).
    ``chunk_size`` only places the padding of the ``padding_leak`` slip.

    ``slip``: None for the layer, or a name of rssm_ref.oracle.slips.MAMBA2_SLIPS: the same
    computation with that one port slip (``diagnose``'s alternative references); the SSD
    core's slips are ``ssd_scan``'s own (``slips.MAMBA2_CORE`` names them there).
    """
    check_slip(slip, "mamba2-block")
    core = MAMBA2_CORE.get(slip, slip if slip in SSD_SLIPS else None)
    q = ar.q
    # the sizes as the float64 layer derives them (the same function, the same checks)
    dm = validate_mamba2_block({k: onp.asarray(getval(v), dtype=onp.float64)
                                for k, v in P.items()}, ngroups=ngroups, d_state=d_state,
                               norm_group_size=norm_group_size)
    group, dm = dm["options"]["group_size"], dm["dims"]
    m, s, cd, h, hd, W = (dm[k] for k in ("d_mlp", "d_ssm", "conv_dim", "h", "p", "W"))
    batch, L = hs.shape[:2]
    lead = (batch, L)
    zxbcdt = q(ar.proj(hs, P["in_proj.weight"]))
    if "in_proj.bias" in P:
        zxbcdt = q(zxbcdt + ar.expand(P["in_proj.bias"], lead))
    widths = {"z0": m, "x0": m, "z": s, "xBC": cd, "dt": h}
    order = {"z_xBC_swapped": ("z0", "x0", "xBC", "z", "dt"),
             "dt_first": ("dt", "z0", "x0", "z", "xBC")}.get(slip, tuple(widths))
    ends = onp.cumsum([widths[k] for k in order])
    part = {k: zxbcdt[..., a - widths[k]:a] for k, a in zip(order, ends)}
    z0, x0, z, xBC, dt = (part[k] for k in widths)
    if conv_state is None or slip == "conv_state_ignored":
        before = ar.zeros((batch, W - 1, cd))
    else:
        before = np.transpose(conv_state[:, :, conv_state.shape[2] - (W - 1):], (0, 2, 1))
    xpad = np.concatenate([before, xBC], axis=1)                 # (batch, W - 1 + L, conv_dim)
    # the taps read read[t + k]: the W - 1 inputs before t, then xBC; right-padded, xBC first
    read = xpad if slip != "conv_right_padded" else \
        np.concatenate([xBC, ar.zeros((batch, W - 1, cd))], axis=1)
    pre = None
    for k in range(W):                                           # (B2): tap k on read[t + k]
        tap = W - 1 - k if slip == "conv_flipped" else k
        term = q(ar.expand(P["conv1d.weight"][:, 0, tap], lead) * read[:, k:k + L])
        pre = term if pre is None else q(pre + term)
    if "conv1d.bias" in P and slip != "conv_bias_missing":
        pre = q(pre + ar.expand(P["conv1d.bias"], lead))
    xBC_conv = pre if slip == "conv_silu_missing" else q(pre * _sigmoid(ar, pre))
    gn = dm["g"] * dm["n"]
    x = np.reshape(xBC_conv[..., :s], lead + (h, hd))
    B = np.reshape(xBC_conv[..., s:s + gn], lead + (dm["g"], dm["n"]))
    C = np.reshape(xBC_conv[..., s + gn:], lead + (dm["g"], dm["n"]))
    # (B4) is the core's (S1), with its dt slips
    D = P["D"]
    if slip == "D_repeat":                                       # channel c reads D[c % h]
        D = np.concatenate([D] * hd)
    D = D if np.shape(D) == (h,) else np.reshape(D, (h, hd))
    gate = None if "norm.weight" in P else np.reshape(z, lead + (h, hd))
    y4, inter = ssd_scan(ar, {"A_log": P["A_log"], "D": D, "dt_bias": P["dt_bias"]}, x, dt,
                         B, C, z=gate, initial_states=ssm_state, chunk_size=chunk_size,
                         dt_softplus=True, dt_limit=dt_limit, ref=ref, slip=core)
    y_ssd = np.reshape(y4, lead + (s,))
    y_norm = y_ssd
    if "norm.weight" in P:
        if slip in ("norm_whole_width", "norm_per_group"):
            group = s if slip == "norm_whole_width" else s // dm["g"]
        before_gate = norm_before_gate if slip not in ("norm_before_gate", "norm_after_gate") \
            else slip == "norm_before_gate"
        y_norm = _rms_norm_gated(ar, y_ssd, z, ar.expand(P["norm.weight"], lead), group, eps,
                                 before_gate)
    if m and slip == "mlp_dropped":
        y_inner = np.concatenate([ar.zeros(lead + (m,)), y_norm], axis=-1)
    elif m:
        mlp = x0 if slip == "mlp_ungated" else q(q(z0 * _sigmoid(ar, z0)) * x0)
        y_inner = np.concatenate([mlp, y_norm], axis=-1)
    else:
        y_inner = y_norm
    y = q(ar.proj(y_inner, P["out_proj.weight"]))
    if "out_proj.bias" in P:
        y = q(y + ar.expand(P["out_proj.bias"], lead))
    full = np.concatenate([ar.zeros((batch, 1, cd)), xpad], axis=1)   # one more on the left
    return y, {"zxbcdt": zxbcdt, "xBC_conv": xBC_conv, "dt": inter["dt"], "y_ssd": y_ssd,
               "y_norm": y_norm, "y_inner": y_inner,
               "conv_state": np.transpose(full[:, -W:], (0, 2, 1)),
               "ssm_state": inter["final_states"]}


def _rms_norm_gated(ar, y, z, weight, group, eps, before):
    """(B8) rounded: v = y silu(z) (or y when ``before``), v / √(mean_group v² + eps) ·
    weight (· silu(z) when ``before``); the mean of squares accumulates in the working
    dtype and is rounded once, like the others' reductions. y, z, weight (batch, L, width)."""
    q = ar.q
    sz = q(z * _sigmoid(ar, z))
    v = y if before else q(y * sz)
    lead, width = v.shape[:-1], v.shape[-1]
    grouped = np.reshape(v, lead + (width // group, group))
    ms = q(q(np.sum(q(grouped * grouped), axis=-1, keepdims=True)) / ar.dtype(group))
    rstd = q(1.0 / q(np.sqrt(q(ms + ar.dtype(eps)))))
    out = q(np.reshape(q(grouped * rstd), lead + (width,)) * weight)
    return q(out * sz) if before else out


def _selective_core(ar, A, zd, Bbar, Cbar, D, u, discretization, output, ref, h0=None,
                    softplus=True):
    """Eqs. (3)-(2) from the pre-activation zd of Δ and B̄_t, C̄_t (batch, L, n); ``h0``
    (batch, m, n) the state before t = 0 (zero when None); ``softplus=False``: Δ = zd
    (a port's slip, for ``diagnose``)."""
    q = ar.q
    delta = _softplus(ar, zd) if softplus else zd
    # A broadcast over (batch, L) once per use: each use's gradient is its own sum over
    # (batch, t), added at the end, as a plain implementation writes them
    dA = q(delta[..., None] * ar.expand(A, zd.shape[:2]))     # (batch, L, m, n)
    A_t = q(np.exp(dA))
    if discretization == "zoh":
        B_t = q(q(q(np.expm1(dA)) / ar.expand(A, zd.shape[:2])) * Bbar[:, :, None, :])
    else:
        B_t = q(delta[..., None] * Bbar[:, :, None, :])
    b = q(B_t * u[..., None])
    if h0 is not None:
        # h(1) = A_0 h0 + b_0: the initial state enters the first step's input
        b = np.concatenate([q(b[:, :1] + q(A_t[:, :1] * h0[:, None])), b[:, 1:]], axis=1)
    H = _diag(ar, A_t, b, ref)                                   # H[:, t] = h(t+1)
    read = _shift(ar, H) if output == "before" else H
    y = q(np.einsum("blmn,bln->blm", read, Cbar))
    if D is not None:
        y = q(y + q(ar.expand(D, u.shape[:2]) * u))
    return y, {"delta": delta, "h": H, "last_state": H[:, -1]}


def _model_fn(model, options, slip=None):
    if slip is not None and model not in ("mamba-block", "mamba2-block", "ssd"):
        raise ValueError(f"slip: {slip!r} given for --model {model} (expected it only with "
                         "--model mamba-block, mamba2-block or ssd)")
    if model == "lti":
        return lambda ar, P, u: (_lti_block(ar, P, "", u), {})
    if model == "residual":
        def residual(ar, P, u):
            y, inter = residual_scan(ar, P, u, gate=options.get("gate") or "euler")
            # output "before": y(0..L-1), the gate's state before the update with u(t)
            return (_shift(ar, y) if options.get("output") == "before" else y), inter
        return residual
    if model == "selective":
        return lambda ar, P, u: selective_scan(
            ar, P, u, discretization=options.get("discretization") or "zoh",
            output=options.get("output") or "before")
    if model == "mamba":
        return lambda ar, P, u: mamba_scan(
            ar, P, u, discretization=options.get("discretization") or "euler",
            output=options.get("output") or "after")
    if model == "mamba-block":
        return lambda ar, P, h, conv_state=None, ssm_state=None: mamba_block_scan(
            ar, P, h, conv_state, ssm_state, slip=slip)
    if model == "ssd":
        kw = dict(dt_softplus=bool(options.get("dt_softplus")), dt_limit=ssd_limit(options),
                  chunk_size=int(options.get("chunk_size") or SSD_CHUNK_SIZE))
        check_slip(slip, "ssd")

        def ssd(ar, P, x, dt, B, C, z=None, initial_states=None):
            y, inter = ssd_scan(ar, P, x, dt, B, C, z, initial_states, slip=slip, **kw)
            return y, {k: v for k, v in inter.items() if k != "dt"}    # dt is an input here
        return ssd
    if model == "mamba2-block":
        kw = dict(mamba2_options(options),
                  chunk_size=int(options.get("chunk_size") or SSD_CHUNK_SIZE))
        check_slip(slip, "mamba2-block")
        return lambda ar, P, h, conv_state=None, ssm_state=None: mamba2_block_scan(
            ar, P, h, conv_state, ssm_state, slip=slip, **kw)
    raise ValueError(f"model: {model!r} (expected lti, residual, selective, mamba, "
                     "mamba-block, mamba2-block or ssd)")


def emulate(model, params, inputs, options, precision, grads=False, seed=None, slip=None):
    """Run ``model`` on checked ``params``/``inputs`` in emulated ``precision``.

    Returns float64 arrays (holding the rounded values): ``y``, the model's
    intermediates, and with ``grads`` ``grad_u`` and ``grad_<key>`` of sum(y * dy)
    (dy = ones when the inputs hold none). Shapes as in rssm_ref.oracle.formats.
    ``seed=None`` rounds to nearest; an integer seed rounds stochastically (one sample
    of "another rounding order"; verify takes the worst of several). ``slip`` (mamba-block,
    mamba2-block and ssd): the layer with that port slip (rssm_ref.oracle.slips), for ``diagnose``.

    >>> import numpy
    >>> P = {"num": numpy.array([[[1.0, 0.0]]]), "den": numpy.array([[1.0, -0.5]])}
    >>> out = emulate("lti", P, {"u": numpy.ones((1, 3, 1))}, {}, "float64")
    >>> out["y"].ravel().tolist()
    [1.0, 1.5, 1.75]
    """
    _check_precision(precision)
    ar = Arith(precision, seed=seed)
    fn = _model_fn(model, options, slip)
    keys = sorted(k for k in params if k != "embedding")
    P0 = {k: ar.cast(params[k]) for k in keys}
    # a layer's other inputs (mamba-block's states; ssd's dt, B, C, z, initial_states)
    states = [k for more in layer_inputs(model) for k in more if k in inputs]
    if "tokens" in inputs:
        emb = ar.cast(params["embedding"])
        u0 = emb[onp.asarray(inputs["tokens"])]
    else:
        u0 = ar.cast(inputs[formats_input_key(model)])
    captured = {}
    n_p = len(keys)

    def run(args):
        # q on the leaves: a no-op forward; backward it rounds each leaf's gradient
        # (the last autograd VJP step and the sum over fan-out are otherwise unrounded)
        args = [ar.q(x) for x in args]
        extra = dict(zip(states, args[n_p + 1:]))
        y, inter = fn(ar, dict(zip(keys, args[:n_p])), args[n_p], **extra)
        captured.update({k: getval(v) for k, v in inter.items()})
        return y

    args = [P0[k] for k in keys] + [u0] + [ar.cast(inputs[k]) for k in states]
    with onp.errstate(all="ignore"):          # low precision may overflow: that is data
        if not grads:
            out = {"y": run(args)}
        else:
            # one forward pass gives y, the intermediates and the VJP
            vjp, y = make_vjp(run)(args)
            out = {"y": y}
            dy = ar.cast(inputs["dy"]) if "dy" in inputs else onp.ones(y.shape, ar.dtype)
            g = vjp(dy)
            for k, gk in zip(keys + [formats_input_key(model)] + states, g):
                out[f"grad_{k}"] = gk
            if "tokens" in inputs:
                # gather's VJP: scatter-add grad_u into the embedding rows
                ge = onp.zeros(params["embedding"].shape, dtype=ar.dtype)
                onp.add.at(ge, onp.asarray(inputs["tokens"]), g[n_p])
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
