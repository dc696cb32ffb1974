"""Mamba-2's chunked SSD (rssm_ref.ssd, (S1)-(S9)) as one autograd primitive with a
hand-written, itself chunked, VJP. ``rssm_ref.ssd.ssd_chunked`` validates and calls
:func:`ssd_core`; autograd through :func:`ssd_core_ref` (the same einsums, traced) and
through the time loop ``rssm_ref.ssd.ssd_ref`` are the oracles for its gradient.

Glossary (shapes; as in rssm_ref.ssd)
-------------------------------------
x, z (batch, L, h, p); dt (batch, L, h); A, dt_bias (h,); D (h,) or (h, p);
B, C (batch, L, g, n); H0 = initial_states, final (batch, h, p, n); r = h // g
Q = chunk_size; a chunk c holds q = Q positions (the last one L mod Q when Q does not divide L)
dt' (S1), a = dt' A, X = dt' x;  y_core = (S5) + (S9), before D x and the z-gate
S (..., q+1, q+1)   segsum of [0, a_0, ..., a_{q-1}] inside one chunk (S6): every decay of
                    the chunk, exp(S[t+1, s+1]) = L_ts, exp(S[t+1, 0]) from the chunk start
                    to t, exp(S[q, s+1]) from s to the chunk end, S[q, 0] the whole chunk
H_enter(c), H_end(c) (p, n)   the state entering / leaving chunk c (S8)

The VJP (per batch row and head; ȳ the cotangent of y_core, F̄ of H_end(c)):
(V1)  reverse state pass over chunks:  F̄(last) = final̄ + chunk_states̄(last),
      F̄(c-1) = chunk_states̄(c-1) + Ē(c) + exp(S_c[q, 0]) F̄(c),
      Ē(c) = sum_t exp(S[t+1, 0]) ȳ_t C_t^T  (the cotangent of H_enter(c) through (S9));
      initial_states̄ = Ē(0) + exp(S_0[q, 0]) F̄(0)
(V2)  diagonal block (S7): M̄_ts = ȳ_t . X_s;  X̄_s += sum_t M_ts ȳ_t;
      (C B^T)̄_ts = sum_(heads of the group) M̄_ts L_ts;  C̄_t += sum_s (C B^T)̄_ts B_s,
      B̄_s += sum_t (C B^T)̄_ts C_t
(V3)  chunk states (S8): X̄_s += exp(S[q, s+1]) F̄ B_s,  B̄_s += exp(S[q, s+1]) F̄^T X_s
(V4)  every decay is exp of a segment sum, so each gives d/dS = (its cotangent) x (its
      value): S̄[t+1, s+1] = M̄_ts M_ts, S̄[t+1, 0] = ȳ_t . Y_off_t, S̄[q, s+1] +=
      exp(S[q, s+1]) X_s^T F̄ B_s, S̄[q, 0] += exp(S[q, 0]) <H_enter, F̄>; then
      ā_v = sum over (t, s) with s < v <= t of S̄[t, s] (:func:`segsum_vjp`). No exponent is
      ever a difference of long sums: the backward reuses the forward's decays (S6).
(V5)  the elementwise ends: (S4) z̄ = ȳ (y_core + D x) silu'(z), ȳ_core = ȳ silu(z);
      (S3) D̄ = sum ȳ_core x, x̄ = ȳ_core D + X̄ dt'; dt'̄ = sum_p X̄ x + ā A, Ā = sum ā dt';
      (S1) zero where the clamp binds (dt' outside [lo, hi]: mamba_ssm's rule, which passes
      the gradient at the bounds themselves), times softplus' = σ.
"""
import math

import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp_argnums, primitive

from rssm_ref.kernels.nonlinear import sigmoid, sigmoid_slope, silu, softplus, softplus_slope
from rssm_ref.util.kept import park, take

DT_LIMIT_NONE = (0.0, math.inf)


# ------------------------------------------------------------------ shared pieces
def ssd_dt(dt, dt_bias=None, dt_softplus=False, dt_limit=DT_LIMIT_NONE):
    """The effective step dt' of (S1): bias, then softplus, then the clamp.

    Shapes: dt (batch, L, h), dt_bias (h,) -> dt' (batch, L, h). The clamp is applied
    only when dt_limit differs from (0, inf), exactly as mamba_ssm decides (so a raw
    negative dt without softplus is passed through under the default). It is written
    as two selections, not np.clip, so that autograd's gradient is mamba_ssm's: zero
    only strictly outside [lo, hi] (np.clip's is also zero at the bounds).

    >>> ssd_dt(onp.array([[[-1.0, 0.0, 3.0]]]), dt_limit=(0.1, 2.0)).tolist()
    [[[0.1, 0.1, 2.0]]]
    >>> [round(v, 6) for v in ssd_dt(onp.zeros((1, 1, 2)), onp.array([0.0, 1.0]), True).ravel().tolist()]
    [0.693147, 1.313262]
    """
    d = dt if dt_bias is None else dt + dt_bias
    if dt_softplus:
        d = softplus(d)
    lo, hi = (float(dt_limit[0]), float(dt_limit[1]))
    if (lo, hi) != DT_LIMIT_NONE:
        d = np.where(d < lo, lo, np.where(d > hi, hi, d))
    return d


def segsum(a):
    """Stable segment sums (S6): S[..., t, s] = a[..., s+1] + ... + a[..., t] for s <= t
    (0 on the diagonal) and -inf above it, so exp(S) is the 1-semiseparable mask L (S5).

    Shapes: a (..., T) -> (..., T, T). Each entry is a running sum that starts at its
    own segment (a masked cumulative sum down the columns), never cumsum(a)_t -
    cumsum(a)_s, whose two long sums would cancel catastrophically.

    >>> segsum(onp.array([1.0, 2.0, 4.0])).tolist()
    [[0.0, -inf, -inf], [2.0, 0.0, -inf], [6.0, 4.0, 0.0]]
    """
    T = np.shape(a)[-1]
    strictly_below = onp.tril(onp.ones((T, T)), -1)
    # column s holds a_k for k > s only; summing down column s gives a_{s+1} + ... + a_t
    S = np.cumsum(a[..., :, None] * strictly_below, axis=-2)
    # adding -inf (not np.where) keeps autograd's broadcasting and gives exp(S) = 0 there
    return S + onp.where(onp.tril(onp.ones((T, T), dtype=bool)), 0.0, -onp.inf)


def chunk_pieces(L, Q):
    """[(start, stop, nchunks, length)]: the full chunks as one piece, then the partial
    one (no padding).

    >>> chunk_pieces(10, 4)
    [(0, 8, 2, 4), (8, 10, 1, 2)]
    """
    nfull, rem = divmod(L, Q)
    pieces = [(0, nfull * Q, nfull, Q)] if nfull else []
    if rem:
        pieces.append((nfull * Q, L, 1, rem))
    return pieces


def chunk_terms(X, a, B, C, nchunks, Q, g, r):
    """(S5)-(S8) inside each of ``nchunks`` chunks of length Q (all at once).

    X (batch, nchunks*Q, h, p) = dt' x, a (batch, nchunks*Q, h), B, C (batch, nchunks*Q, g, n).
    Heads are split as (g, r) with r = h // g, head i = group * r + member (C order),
    which is the repeat_interleave pairing without materializing the repeats.
    Autograd-traceable; the primitive reuses the same arrays for its VJP.
    """
    batch, _, h, p = np.shape(X)
    n = np.shape(B)[-1]
    Xc = np.reshape(X, (batch, nchunks, Q, g, r, p))
    Bc = np.reshape(B, (batch, nchunks, Q, g, n))
    Cc = np.reshape(C, (batch, nchunks, Q, g, n))
    ac = np.transpose(np.reshape(a, (batch, nchunks, Q, g, r)), (0, 1, 3, 4, 2))  # (b,c,g,r,Q)
    # a leading 0 makes one segsum hold every decay the chunk needs:
    # S[t+1, s+1] = a_{s+1..t} (intra-chunk), S[t+1, 0] = a_{0..t} (from the chunk start),
    # S[Q, s+1] = a_{s+1..Q-1} (to the chunk end), S[Q, 0] = the whole chunk
    S = segsum(np.concatenate([onp.zeros((batch, nchunks, g, r, 1)), ac], axis=-1))
    Lmask = np.exp(S[..., 1:, 1:])                                  # (b,c,g,r,Q,Q)   (S5)
    from_start = np.exp(S[..., 1:, 0])                              # (b,c,g,r,Q)
    to_end = np.exp(S[..., -1, 1:])                                 # (b,c,g,r,Q)
    log_total = S[..., -1, 0]                                       # (b,c,g,r)
    # optimize=True: the contractions go to BLAS (several times faster than einsum's loops)
    CB = np.einsum("bctgn,bcsgn->bcgts", Cc, Bc, optimize=True)
    M = CB[:, :, :, None] * Lmask                                   # L o C B^T      (S5)
    Y_diag = np.einsum("bcgrts,bcsgrp->bctgrp", M, Xc, optimize=True)                # (S7)
    Xd = Xc * np.transpose(to_end, (0, 1, 4, 2, 3))[..., None]
    states = np.einsum("bcsgn,bcsgrp->bcgrpn", Bc, Xd, optimize=True)                # (S8)
    return {"Y_diag": Y_diag, "states": states, "log_total": log_total,
            "from_start": np.transpose(from_start, (0, 1, 4, 2, 3)), "C": Cc,
            "B": Bc, "X": Xc, "Xd": Xd, "Lmask": Lmask, "M": M, "to_end": to_end}


def chunked_scan(X, a, B, C, H0, Q, g, r):
    """y_core of (S5)-(S9) (before D x and the gate), the end state of every chunk, and
    what the VJP reuses. Shapes: X (batch, L, h, p), a (batch, L, h), B, C (batch, L, g, n),
    H0 (batch, h, p, n) or None -> {"y": (batch, L, h, p), "ends": (batch, nc, g, r, p, n),
    ...}. Autograd-traceable (the reference's forward) and the primitive's forward alike.
    """
    batch, L, h, p = np.shape(X)
    n = np.shape(B)[-1]
    pieces = chunk_pieces(L, Q)
    terms = [chunk_terms(X[:, s:e], a[:, s:e], B[:, s:e], C[:, s:e], c, q, g, r)
             for s, e, c, q in pieces]
    states = np.concatenate([t["states"] for t in terms], axis=1)          # (b,nc,g,r,p,n)
    decay = np.exp(np.concatenate([t["log_total"] for t in terms], axis=1))  # (b,nc,g,r)
    H = (onp.zeros((batch, g, r, p, n)) if H0 is None
         else np.reshape(H0, (batch, g, r, p, n)))
    entering, ends = [], []
    for c in range(np.shape(states)[1]):                            # (S8) state passing
        entering.append(H)
        H = decay[:, c][..., None, None] * H + states[:, c]
        ends.append(H)
    entering = np.stack(entering, axis=1)
    ys, offs, c0 = [], [], 0
    for (s, e, c, q), t in zip(pieces, terms):
        Y_off = (np.einsum("bctgn,bcgrpn->bctgrp", t["C"], entering[:, c0:c0 + c],
                           optimize=True) * t["from_start"][..., None])          # (S9)
        offs.append(Y_off)
        ys.append(np.reshape(t["Y_diag"] + Y_off, (batch, e - s, h, p)))
        c0 += c
    return {"y": np.concatenate(ys, axis=1), "ends": np.stack(ends, axis=1),
            "entering": entering, "decay": decay, "terms": terms, "Y_off": offs,
            "pieces": pieces}


def skip_and_gate(y, x, D, z):
    """(S3)-(S4): y + D x, then times silu(z). Shapes: y, x, z (batch, L, h, p), D (h,)
    or (h, p)."""
    if D is not None:
        y = y + (D if np.ndim(D) == 2 else D[:, None]) * x
    if z is not None:
        y = y * silu(z)
    return y


# ------------------------------------------------------------------ the _ref twin
def ssd_core_ref(x, dt, A, B, C, D, z, dt_bias, H0, dt_softplus, dt_limit, Q):
    """(S1), (S5)-(S9), (S3)-(S4) as plain autograd-traceable einsums: autograd through
    this is the reference for :func:`ssd_core`'s VJP (same forward, traced).

    Shapes as the glossary; returns (y (batch, L, h, p), final (batch, h, p, n),
    chunk_states (batch, nc, h, p, n)).
    """
    batch, L, h, p = np.shape(x)
    g, n = np.shape(B)[2:]
    dtp = ssd_dt(dt, dt_bias, dt_softplus, dt_limit)
    out = chunked_scan(x * dtp[..., None], dtp * A, B, C, H0, Q, g, h // g)
    y = skip_and_gate(out["y"], x, D, z)
    ends = np.reshape(out["ends"], (batch, -1, h, p, n))
    return y, ends[:, -1], ends


# ------------------------------------------------------------------ the fast path
def segsum_vjp(dS):
    """The adjoint of :func:`segsum`: ā_v = sum_{t >= v > s} S̄[t, s] (the entries on and
    above the diagonal carry no dependence). Shapes: (..., T, T) -> (..., T).

    >>> segsum_vjp(onp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [10.0, 100.0, 0.0]])).tolist()
    [0.0, 11.0, 110.0]
    """
    T = dS.shape[-1]
    below = onp.tril(onp.ones((T, T)), -1)
    # segsum's S[t, s] = sum_{k <= t} a_k [k > s]: the cotangent of a_k [k > s] is the
    # sum of S̄[t, s] over t >= k (a reverse cumulative sum down the columns)
    down = onp.cumsum((dS * below)[..., ::-1, :], axis=-2)[..., ::-1, :]
    return onp.einsum("...ks,ks->...k", down, below)


def _forward(x, dt, A, B, C, D, z, dt_bias, H0, dt_softplus, lo, hi, Q):
    batch, L, h, p = x.shape
    g, n = B.shape[2:]
    u = dt if dt_bias is None else dt + dt_bias
    dtp = ssd_dt(dt, dt_bias, dt_softplus, (lo, hi))
    X = x * dtp[..., None]
    out = chunked_scan(X, dtp * A, B, C, H0, Q, g, h // g)
    y_pre = skip_and_gate(out["y"], x, D, None)
    y = y_pre if z is None else y_pre * silu(z, onp)
    ends = onp.reshape(out["ends"], (batch, -1, h, p, n))
    out.update(u=u, dtp=dtp, y_pre=y_pre)
    return (y, ends[:, -1].copy(), ends), out


def _state_pass_vjp(c, gF, gCS, Ebar):
    """(V1): F̄ per chunk and initial_states̄, from the cotangents of the final state and
    of every chunk's end state, and Ē(c) (batch, nc, g, r, p, n)."""
    nc = Ebar.shape[1]
    Fbar = onp.empty_like(Ebar)
    F = gF + gCS[:, -1]
    for k in range(nc - 1, -1, -1):
        Fbar[:, k] = F
        F = Ebar[:, k] + c["decay"][:, k][..., None, None] * F
        if k:
            F = F + gCS[:, k - 1]
    return Fbar, F


def _chunk_vjp(t, gy, Y_off, entering, Fbar):
    """(V2)-(V4) for one piece of chunks: (X̄, ā, B̄, C̄) in the piece's chunked layout."""
    X, B, C, M, Lm = t["X"], t["B"], t["C"], t["M"], t["Lmask"]
    batch, nc, q = X.shape[:3]
    gfs = gy * t["from_start"][..., None]                             # ȳ exp(S[t+1, 0])
    dC = onp.einsum("bctgrp,bcgrpn->bctgn", gfs, entering, optimize=True)           # (S9)
    dM = onp.einsum("bctgrp,bcsgrp->bcgrts", gy, X, optimize=True)                  # (V2)
    dX = onp.einsum("bcgrts,bctgrp->bcsgrp", M, gy, optimize=True)
    dCB = onp.einsum("bcgrts,bcgrts->bcgts", dM, Lm)
    dC += onp.einsum("bcgts,bcsgn->bctgn", dCB, B, optimize=True)
    dB = onp.einsum("bcgts,bctgn->bcsgn", dCB, C, optimize=True)
    GB = onp.einsum("bcgrpn,bcsgn->bcsgrp", Fbar, B, optimize=True)                 # (V3)
    te = onp.transpose(t["to_end"], (0, 1, 4, 2, 3))[..., None]       # (b,c,s,g,r,1)
    dX += GB * te
    dB += onp.einsum("bcgrpn,bcsgrp->bcsgn", Fbar, t["Xd"], optimize=True)
    # (V4): the cotangent of every segment sum of the chunk, then of a
    dS = onp.zeros(M.shape[:4] + (q + 1, q + 1))
    dS[..., 1:, 1:] = dM * M
    dS[..., 1:, 0] = onp.einsum("bctgrp,bctgrp->bcgrt", gy, Y_off)
    dS[..., -1, 1:] += onp.einsum("bcsgrp,bcsgrp->bcgrs", GB, t["Xd"])
    dS[..., -1, 0] += onp.exp(t["log_total"]) * onp.einsum("bcgrpn,bcgrpn->bcgr", entering, Fbar)
    da = onp.transpose(segsum_vjp(dS)[..., 1:], (0, 1, 4, 2, 3))      # (b,c,Q,g,r)
    return dX, da, dB, dC


def _backward(c, args, gy, gF, gCS):
    """The VJP of ``_forward`` for cotangents of (y, final, chunk_states): every
    argument's gradient (None for an argument that is None)."""
    x, dt, A, B, C, D, z, dt_bias, H0, dt_softplus, lo, hi, Q = args
    batch, L, h, p = x.shape
    g, n = B.shape[2:]
    r = h // g
    # (V5), the gate and the skip
    gz = None
    if z is not None:
        gz = gy * c["y_pre"] * (sigmoid(z, onp) + z * sigmoid_slope(z))
        gy = gy * silu(z, onp)
    gD = None
    if D is not None:
        gD = onp.einsum("blhp,blhp->hp", gy, x)
        if D.ndim == 1:
            gD = gD.sum(axis=1)
    # (V1), with Ē(c) from every piece
    gys, Ebars, c0 = [], [], 0
    for (s, e, nc_, q), t in zip(c["pieces"], c["terms"]):
        gyc = onp.reshape(gy[:, s:e], (batch, nc_, q, g, r, p))
        gys.append(gyc)
        gfs = gyc * t["from_start"][..., None]
        Ebars.append(onp.einsum("bctgrp,bctgn->bcgrpn", gfs, t["C"], optimize=True))
    Ebar = onp.concatenate(Ebars, axis=1)
    Fbar, gH0 = _state_pass_vjp(c, onp.reshape(gF, (batch, g, r, p, n)),
                                onp.reshape(gCS, (batch, -1, g, r, p, n)), Ebar)
    dX, da, dB, dC, c0 = [], [], [], [], 0
    for (s, e, nc_, q), t, gyc, Y_off in zip(c["pieces"], c["terms"], gys, c["Y_off"]):
        parts = _chunk_vjp(t, gyc, Y_off, c["entering"][:, c0:c0 + nc_], Fbar[:, c0:c0 + nc_])
        for acc, part, shape in zip((dX, da, dB, dC), parts,
                                    ((h, p), (h,), (g, n), (g, n))):
            acc.append(onp.reshape(part, (batch, e - s) + shape))
        c0 += nc_
    dX, da, dB, dC = (onp.concatenate(v, axis=1) for v in (dX, da, dB, dC))
    # (V5), X = dt' x and a = dt' A, then (S1) backwards
    dtp = c["dtp"]
    gx = dX * dtp[..., None]
    if D is not None:
        gx = gx + gy * (D if D.ndim == 2 else D[:, None])
    gA = onp.einsum("blh,blh->h", da, dtp)
    gdtp = onp.einsum("blhp,blhp->blh", dX, x) + da * A
    if (lo, hi) != DT_LIMIT_NONE:
        pre = softplus(c["u"]) if dt_softplus else c["u"]
        gdtp = onp.where((pre < lo) | (pre > hi), 0.0, gdtp)
    gu = gdtp * softplus_slope(c["u"]) if dt_softplus else gdtp
    gbias = None if dt_bias is None else gu.sum(axis=(0, 1))
    gH0 = None if H0 is None else onp.reshape(gH0, (batch, h, p, n))
    return (gx, gu, gA, dB, dC, gD, gz, gbias, gH0)


@primitive
def ssd_core(x, dt, A, B, C, D, z, dt_bias, H0, dt_softplus, lo, hi, Q, keep=False):
    """(y, final_states, chunk_states) of :func:`ssd_core_ref` (the same arithmetic, so the
    same bits), as one primitive whose VJP is (V1)-(V5). ``keep``: the call is traced, so
    park the forward's arrays for the VJP (rssm_ref.util.kept)."""
    outs, cache = _forward(x, dt, A, B, C, D, z, dt_bias, H0, dt_softplus, lo, hi, Q)
    if keep:
        park(outs, cache)
    return outs


def _ssd_core_vjp(argnums, ans, args, kwargs):
    cache = take(ans)
    core = args[:13]

    def vjp(g):
        c = cache if cache is not None else _forward(*core)[1]
        grads = _backward(c, core, *(onp.asarray(v, dtype=onp.float64) for v in g))
        return tuple(grads[k] for k in argnums)
    return vjp


defvjp_argnums(ssd_core, _ssd_core_vjp)
