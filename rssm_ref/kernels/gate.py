"""The gate Σ_g's primitives with hand-written VJPs (eq. (5) and Remark 3.1's ZOH form,
``rssm_ref.gate``): the whole batch as one lower-bidiagonal unit-triangular solve in
LAPACK (``dtbtrs``), its reverse-time adjoint, and the last-output-only form the
training loss needs. Public names inside an internal layer; ``rssm_ref.gate`` and the
fused Residual kernel validate and call them.

Glossary (shapes)
-----------------
y_s (batch, L, m), s (batch, L), y0 (batch, m), y (batch, L, m)   as in rssm_ref.gate
a, b (batch, L)    y(t+1) = a(t) y(t) + b(t) y_s(t): euler (1 - s, s), zoh (e^{-s}, -expm1(-s))
"""
import numpy as onp
import scipy.linalg.lapack as lapack
from autograd.extend import defvjp_argnums, primitive


# rows per LAPACK call: ~2^15 rows keep the scratch (24 bytes a row for m = 1) in cache
GROUP_ROWS = 1 << 15


# ----------------------------------------------------------- coefficients a, b
def b_coefficient(s, mode):
    """b of y(t+1) = a y(t) + b y_s(t), plain NumPy, shape of s: s (euler) or
    -expm1(-s) (zoh; no cancellation for small s)."""
    if mode == "euler":
        return s
    b = onp.negative(s)
    onp.expm1(b, out=b)
    onp.negative(b, out=b)
    return b


def a_from_b(b):
    """a = 1 - b: 1 - s (euler), or e^{-s} (zoh) to within half an ulp of 1 in absolute
    terms (within ~2 ulps relative for s <= 1), without a second transcendental."""
    return 1.0 - b


def a_coefficient(s, b, mode):
    """a to a few ulps relative: 1 - s (euler), e^{-s} (zoh; 1 - b would lose relative
    accuracy for s >~ 1 and be 0 for s > ~37, where the gradients need e^{-s})."""
    return onp.exp(-s) if mode == "zoh" else 1.0 - b


# -------------------------------------------------------------- the fast scan
def bidiagonal_scan(s, mode, m, write_rhs, consume, trans):
    """Solve (I - diag(a) S) z = r for all sequences with LAPACK dtbtrs, group by group.

    s (batch, L). The sub-diagonal entry (t+1, t) of a group's unit lower-bidiagonal
    matrix is -a(t+1), and 0 at each boundary between sequences, so the sequences of a
    group are decoupled. For batch rows lo:hi, with b_g = b(s[lo:hi]) (hi - lo, L):
    ``write_rhs(lo, hi, b_g, view)`` writes r into ``view`` (hi - lo, L, m), a view of
    the Fortran-ordered right-hand side that dtbtrs overwrites with z, and
    ``consume(lo, hi, b_g, view)`` then uses z while it is still in cache.
    trans=False: z(t) = r(t) + a(t) z(t-1) (the gate); trans=True:
    z(t) = r(t) + a(t+1) z(t+1) (its adjoint). Groups of ~2^15 rows keep the scratch
    in cache; memory traffic is one read of the inputs and one write of the results.
    """
    batch, L = s.shape
    nb = max(1, GROUP_ROWS // L)
    ab = buf = None
    for lo in range(0, batch, nb):
        hi = min(batch, lo + nb)
        n = hi - lo
        if ab is None or ab.shape[1] != n * L:
            # row 0 holds the diagonal, which dtbtrs never reads with diag="U"
            ab = onp.empty((2, n * L), order="F")
            buf = onp.empty((n * L, m), order="F")
        sub = ab[1].reshape(n, L)
        b_g = b_coefficient(s[lo:hi], mode)
        if mode == "zoh":                                    # -a = -e^{-s}, exact to ulps
            onp.negative(onp.exp(-s[lo:hi, 1:]), out=sub[:, :-1])
        else:
            onp.subtract(b_g[:, 1:], 1.0, out=sub[:, :-1])      # -a = -(1 - b)
        sub[:, -1] = 0.0
        view = buf.T.reshape(m, n, L).transpose(1, 2, 0)
        write_rhs(lo, hi, b_g, view)
        z, info = lapack.dtbtrs(ab, buf, uplo="L", trans="T" if trans else "N", diag="U",
                                overwrite_b=1)
        if info != 0 or z is not buf:  # unreachable; never return a wrong answer
            raise RuntimeError(f"LAPACK dtbtrs failed (info={info})")
        consume(lo, hi, b_g, view)


def gate_forward(y_s, s, y0, mode):
    batch, L, m = y_s.shape
    y = onp.empty((batch, L, m))

    def write_rhs(lo, hi, b_g, view):
        onp.multiply(b_g[:, :, None], y_s[lo:hi], out=view)
        # y(1) = a(0) y0 + b(0) y_s(0): y0 enters the first right-hand side
        view[:, 0] += a_coefficient(s[lo:hi, 0], b_g[:, 0], mode)[:, None] * y0[lo:hi]

    def consume(lo, hi, b_g, view):
        onp.copyto(y[lo:hi], view)

    bidiagonal_scan(s, mode, m, write_rhs, consume, trans=False)
    return y


@primitive
def gate_kernel(y_s, s, y0, mode):
    return gate_forward(y_s, s, y0, mode)


def gate_vjp(argnums, ans, args, kwargs):
    y_s, s, y0, mode = args
    batch, L, m = y_s.shape

    def vjp(g):
        g = onp.asarray(g)
        d_ys = onp.empty((batch, L, m)) if 0 in argnums else None
        d_s = onp.empty((batch, L)) if 1 in argnums else None
        d_y0 = onp.empty((batch, m)) if 2 in argnums else None

        def write_rhs(lo, hi, b_g, view):
            onp.copyto(view, g[lo:hi])

        def consume(lo, hi, b_g, lam):
            # lam(t) = g(t) + a(t+1) lam(t+1): the adjoint of y(t+1) = a(t) y(t) + b(t) y_s(t)
            if d_ys is not None:
                # y(t+1) depends on y_s(t) through b(t)
                onp.multiply(b_g[:, :, None], lam, out=d_ys[lo:hi])
            if d_s is not None:
                # d y(t+1)/d s(t) = y_s(t) - y(t) (euler), e^{-s(t)} (y_s(t) - y(t)) (zoh)
                # y(t) for t = 0..L-1 is y0 followed by ans[:, :-1]
                if m == 1:  # written straight into the result, no temporary
                    ds, lam_s, ys_g, y_0, y_prev = (d_s[lo:hi], lam[:, :, 0], y_s[lo:hi, :, 0],
                                                    y0[lo:hi, 0], ans[lo:hi, :-1, 0])
                else:
                    ds, lam_s, ys_g, y_0, y_prev = (onp.empty(lam.shape), lam, y_s[lo:hi],
                                                    y0[lo:hi], ans[lo:hi, :-1])
                onp.subtract(ys_g[:, 1:], y_prev, out=ds[:, 1:])
                onp.subtract(ys_g[:, 0], y_0, out=ds[:, 0])
                onp.multiply(ds, lam_s, out=ds)
                if m != 1:
                    ds = onp.sum(ds, axis=2)
                if mode == "zoh":
                    onp.multiply(ds, a_coefficient(s[lo:hi], b_g, mode), out=ds)
                if m != 1:
                    d_s[lo:hi] = ds
            if d_y0 is not None:
                onp.multiply(a_coefficient(s[lo:hi, 0], b_g[:, 0], mode)[:, None], lam[:, 0],
                             out=d_y0[lo:hi])

        # adjoint scan, reverse time; lam never leaves the cache
        bidiagonal_scan(s, mode, m, write_rhs, consume, trans=True)
        grads = {0: d_ys, 1: d_s, 2: d_y0}
        return tuple(grads.get(k) for k in argnums)

    return vjp


defvjp_argnums(gate_kernel, gate_vjp)


# ------------------------------------------------ the last output only (training path)
def suffix_products(a):
    """P (batch, L) with P[:, t] = prod_{k=t+1}^{L-1} a[:, k] (P[:, L-1] = 1).

    A reversed cumulative product: a lies in [0, 1], so the products only shrink
    (underflow to 0 is harmless), never overflow; relative rounding error <= (L-1-t) u.
    """
    # prod_{k>=t+1}, t = 0..L-2 (a contiguous reversed copy: cumprod is 2x slower on a
    # negatively strided view)
    P = onp.cumprod(onp.ascontiguousarray(a[:, :0:-1]), axis=1)[:, ::-1]
    return onp.concatenate([P, onp.ones((a.shape[0], 1))], axis=1)


def projected_states(y_s, b, a, g):
    """z (batch, L) with z[:, t] = g · y(t), y(0) = 0, y(t+1) = a(t) y(t) + b(t) y_s(t):
    the gate's states seen through g (batch, m), by the scalar recursion
    z(t+1) = a(t) z(t) + b(t) (g · y_s(t)): a loop over t on (batch,) rows (the
    training length is 16; at L = 65536 it is ~0.2 s, in a gradient only)."""
    c = onp.einsum("btm,bm->bt", y_s, g)
    batch, L = c.shape
    z = onp.empty((batch, L))
    acc = onp.zeros(batch)
    for t in range(L):
        z[:, t] = acc
        acc = a[:, t] * acc + b[:, t] * c[:, t]
    return z


def gate_final_forward(y_s, s, mode):
    """y(L) and the pieces its VJP reuses, (b, a, P): the coefficients and the suffix
    products of eq. (5) unrolled."""
    b = b_coefficient(s, mode)
    a = a_coefficient(s, b, mode)
    P = suffix_products(a)
    # y(L) = sum_t b(t) prod_{k>t} a(k) y_s(t)      (eq. (5) unrolled, y(0) = 0)
    return weighted_sum(b * P, y_s), (b, a, P)


@primitive
def gate_final_kernel(y_s, s, mode):
    return gate_final_forward(y_s, s, mode)[0]


def weighted_sum(w, y_s):
    """sum_t w[:, t] y_s[:, t, :]: (batch, L), (batch, L, m) -> (batch, m); one
    contiguous-row dot per channel when m is small (einsum's (…, m) inner loop is slow)."""
    m = y_s.shape[2]
    if m > 8:
        return onp.einsum("bt,btm->bm", w, y_s)
    return onp.stack([onp.einsum("bt,bt->b", w, y_s[:, :, j]) for j in range(m)], axis=1)


def gate_final_backward(y_s, s, mode, g, pieces=None, argnums=(0, 1)):
    """{0: d y_s, 1: d s} of y(L) for its cotangent g (batch, m); ``pieces`` = (b, a, P)
    from :func:`gate_final_forward` (recomputed when None)."""
    g = onp.asarray(g)
    b, a, P = pieces if pieces is not None else gate_final_forward(y_s, s, mode)[1]
    out = {}
    if 0 in argnums:
        # dy(L)/dy_s(t) = b(t) P(t)
        out[0] = (b * P)[:, :, None] * g[:, None, :]
    if 1 in argnums:
        # the adjoint of y(L) reaching step t is lam(t) = P(t) g, and
        # dy(t+1)/ds(t) = y_s(t) - y(t) (euler), a(t) (y_s(t) - y(t)) (zoh),
        # with y(t) = 0, y(1), ..., y(L-1) from the full scan
        ds = P * (onp.einsum("btm,bm->bt", y_s, g) - projected_states(y_s, b, a, g))
        out[1] = ds * a if mode == "zoh" else ds
    return out


def gate_final_vjp(argnums, ans, args, kwargs):
    y_s, s, mode = args

    def vjp(g):
        out = gate_final_backward(y_s, s, mode, g, argnums=argnums)
        return tuple(out[k] for k in argnums)
    return vjp


defvjp_argnums(gate_final_kernel, gate_final_vjp)
