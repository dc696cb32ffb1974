"""The gating mechanism Sigma_g of the Residual SSM: eq. (5) and Remark 3.1's ZOH form.

Eq. (5) (``mode="euler"``), one gate value s(t) per time step shared by the m channels:

    y(t+1) = y(t) + (y_s(t) - y(t)) s(t)                                  (5)

Remark 3.1 reads (5) as the forward-Euler (first-order Taylor) discretization of
y' = -y + y_s (eq. (6)) with sampling time s(t); the exact zero-order hold (eq. (7)'s
starting point, ``mode="zoh"``) is

    y(t+1) = e^{-s(t)} y(t) + (1 - e^{-s(t)}) y_s(t),   1 - e^{-s} computed as -expm1(-s).

Both are the first-order linear recurrence y(t+1) = a(t) y(t) + b(t) y_s(t) with
(a, b) = (1 - s, s) or (e^{-s}, -expm1(-s)); a + b = 1, so with 0 <= s <= 1 (euler) or
s >= 0 (zoh) every y(t+1) is a convex combination of y(t) and y_s(t). Since
e^{-s} - (1 - s) lies in [0, s^2/2], one step of (5) and of the ZOH gate from the same
y(t), y_s(t) differ by at most s^2/2 |y(t) - y_s(t)| (Remark 3.1's Taylor bound).

Fast path: the whole batch is one lower-bidiagonal unit-triangular system
(I - diag(a) S) y = b y_s + (a(0) y0 at t = 0), S the shift by one step, solved by
forward substitution in LAPACK (``dtbtrs``): the same sequential scan as the loop, at
C speed, no cumulative products (which overflow or underflow over long sequences), so
L = 65536 with s near 0 or 1 is fine. Its VJP is the reverse-time adjoint scan (the
transposed solve). ``gate_ref`` is the plain loop of the equations.

Glossary (shapes)
-----------------
batch, L, m      sequences, length, channels
y_s (batch, L, m)  gate input y_s(0..L-1);  s (batch, L) gate values s(0..L-1)
y0 (batch, m)      initial value y(0) (default 0)
y (batch, L, m)    output y(1..L): y[:, t] = y(t+1)
a, b (batch, L)    recurrence coefficients: euler (1 - s, s), zoh (e^{-s}, 1 - e^{-s})
lam (batch, L, m)  adjoint sequence: lam(t) = g(t) + a(t+1) lam(t+1), g the cotangent of y

>>> import autograd.numpy as np
>>> y = gate(np.ones((1, 3, 1)), np.full((1, 3), 0.5))
>>> y[0, :, 0].tolist()
[0.5, 0.75, 0.875]
>>> y = gate(np.ones((1, 2, 1)), np.full((1, 2), 0.5), mode="zoh")
>>> [round(float(v), 12) for v in y[0, :, 0]]
[0.393469340287, 0.632120558829]
"""
import autograd.numpy as np
import numpy as onp
import scipy.linalg.lapack as lapack
from autograd.extend import defvjp_argnums, primitive

from rssm_ref.validation import GATES, check_array, check_option, is_traced

__all__ = ["gate", "gate_ref", "gate_step", "gate_final", "gate_final_ref"]

# rows per LAPACK call: ~2^15 rows keep the scratch (24 bytes a row for m = 1) in cache
_GROUP_ROWS = 1 << 15


# ---------------------------------------------------------------- validation


def _check_s_values(name, s, mode):
    if is_traced(s) or onp.size(s) == 0:
        return
    lo = float(onp.min(s))
    hi = float(onp.max(s))
    if mode == "euler" and not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"{name}: expected gate values in [0, 1] for mode='euler' (eq. (5)), "
                         f"got values in [{lo:.6g}, {hi:.6g}]")
    if mode == "zoh" and not lo >= 0.0:
        raise ValueError(f"{name}: expected nonnegative gate values (sampling times) for "
                         f"mode='zoh', got min {lo:.6g}")


def _check_gate_args(y_s, s, y0, mode):
    check_option("mode", mode, GATES)
    y_s = check_array("y_s", y_s, ndim=3)
    batch, L, m = onp.shape(y_s)
    if batch == 0 or L == 0 or m == 0:
        raise ValueError(f"y_s: expected shape (batch, L, m) with every size >= 1, got "
                         f"{onp.shape(y_s)}")
    s = check_array("s", s, shape=(batch, L))
    _check_s_values("s", s, mode)
    if y0 is None:
        y0 = onp.zeros((batch, m))
    else:
        y0 = check_array("y0", y0, shape=(batch, m))
    return y_s, s, y0


# ----------------------------------------------------------- coefficients a, b
def _b_np(s, mode):
    """b of y(t+1) = a y(t) + b y_s(t), plain NumPy, shape of s: s (euler) or
    -expm1(-s) (zoh; no cancellation for small s)."""
    if mode == "euler":
        return s
    b = onp.negative(s)
    onp.expm1(b, out=b)
    onp.negative(b, out=b)
    return b


def _a_np(b):
    """a = 1 - b: 1 - s (euler), or e^{-s} (zoh) to within half an ulp of 1 in absolute
    terms (within ~2 ulps relative for s <= 1), without a second transcendental."""
    return 1.0 - b


def _a_exact(s, b, mode):
    """a to a few ulps relative: 1 - s (euler), e^{-s} (zoh; 1 - b would lose relative
    accuracy for s >~ 1 and be 0 for s > ~37, where the gradients need e^{-s})."""
    return onp.exp(-s) if mode == "zoh" else 1.0 - b


# -------------------------------------------------------------- the fast scan
def _scan(s, mode, m, write_rhs, consume, trans):
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
    nb = max(1, _GROUP_ROWS // L)
    ab = buf = None
    for lo in range(0, batch, nb):
        hi = min(batch, lo + nb)
        n = hi - lo
        if ab is None or ab.shape[1] != n * L:
            # row 0 holds the diagonal, which dtbtrs never reads with diag="U"
            ab = onp.empty((2, n * L), order="F")
            buf = onp.empty((n * L, m), order="F")
        sub = ab[1].reshape(n, L)
        b_g = _b_np(s[lo:hi], mode)
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


def _gate_forward(y_s, s, y0, mode):
    batch, L, m = y_s.shape
    y = onp.empty((batch, L, m))

    def write_rhs(lo, hi, b_g, view):
        onp.multiply(b_g[:, :, None], y_s[lo:hi], out=view)
        # y(1) = a(0) y0 + b(0) y_s(0): y0 enters the first right-hand side
        view[:, 0] += _a_exact(s[lo:hi, 0], b_g[:, 0], mode)[:, None] * y0[lo:hi]

    def consume(lo, hi, b_g, view):
        onp.copyto(y[lo:hi], view)

    _scan(s, mode, m, write_rhs, consume, trans=False)
    return y


@primitive
def _gate_prim(y_s, s, y0, mode):
    return _gate_forward(y_s, s, y0, mode)


def _gate_vjp(argnums, ans, args, kwargs):
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
                    onp.multiply(ds, _a_exact(s[lo:hi], b_g, mode), out=ds)
                if m != 1:
                    d_s[lo:hi] = ds
            if d_y0 is not None:
                onp.multiply(_a_exact(s[lo:hi, 0], b_g[:, 0], mode)[:, None], lam[:, 0],
                             out=d_y0[lo:hi])

        # adjoint scan, reverse time; lam never leaves the cache
        _scan(s, mode, m, write_rhs, consume, trans=True)
        grads = {0: d_ys, 1: d_s, 2: d_y0}
        return tuple(grads.get(k) for k in argnums)

    return vjp


defvjp_argnums(_gate_prim, _gate_vjp)


# ---------------------------------------------------------------- public API
def gate(y_s, s, y0=None, mode="euler"):
    """Run the gate of eq. (5) (mode="euler") or Remark 3.1's ZOH gate (mode="zoh").

    Shapes: y_s (batch, L, m), s (batch, L) (one gate value per step, shared by the m
    channels), y0 (batch, m) or None (zeros) -> y (batch, L, m) = y(1..L).

        euler  y(t+1) = y(t) + (y_s(t) - y(t)) s(t)                        (5)
        zoh    y(t+1) = e^{-s(t)} y(t) + (1 - e^{-s(t)}) y_s(t)            (Remark 3.1)

    s must lie in [0, 1] for "euler" (the paper's s = sigma(r) is in (0, 1)) and be >= 0
    for "zoh". A LAPACK forward-substitution scan; differentiable with autograd in y_s,
    s and y0 through a custom VJP (the reverse-time adjoint scan).

    >>> y = gate(np.ones((1, 2, 1)), np.array([[0.5, 1.0]]), y0=np.array([[3.0]]))
    >>> y[0, :, 0].tolist()
    [2.0, 1.0]
    """
    y_s, s, y0 = _check_gate_args(y_s, s, y0, mode)
    return _gate_prim(y_s, s, y0, mode)


def gate_ref(y_s, s, y0=None, mode="euler"):
    """Plain loop twin of :func:`gate`, straight from eq. (5) / Remark 3.1.

    Same shapes and arguments as :func:`gate`. Differentiable by autograd itself
    (collects the steps and stacks them). Slow: for tests.

    >>> gate_ref(np.ones((1, 3, 1)), np.full((1, 3), 0.5))[0, :, 0].tolist()
    [0.5, 0.75, 0.875]
    """
    y_s, s, y0 = _check_gate_args(y_s, s, y0, mode)
    L = onp.shape(y_s)[1]
    y = y0
    ys = []
    for t in range(L):
        s_t = s[:, t][:, None]
        if mode == "euler":
            # (5)
            y = y + (y_s[:, t] - y) * s_t
        else:
            # Remark 3.1: y(t+1) = e^{-s} y(t) + (1 - e^{-s}) y_s(t)
            y = np.exp(-s_t) * y + (-np.expm1(-s_t)) * y_s[:, t]
        ys.append(y)
    return np.stack(ys, axis=1)


# ------------------------------------------------ the last output only (training path)
def _suffix_products(a):
    """P (batch, L) with P[:, t] = prod_{k=t+1}^{L-1} a[:, k] (P[:, L-1] = 1).

    A reversed cumulative product: a lies in [0, 1], so the products only shrink
    (underflow to 0 is harmless), never overflow; relative rounding error <= (L-1-t) u.
    """
    # prod_{k>=t+1}, t = 0..L-2 (a contiguous reversed copy: cumprod is 2x slower on a
    # negatively strided view)
    P = onp.cumprod(onp.ascontiguousarray(a[:, :0:-1]), axis=1)[:, ::-1]
    return onp.concatenate([P, onp.ones((a.shape[0], 1))], axis=1)


def _projected_states(y_s, b, a, g):
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


@primitive
def _gate_final_prim(y_s, s, mode):
    b = _b_np(s, mode)
    # y(L) = sum_t b(t) prod_{k>t} a(k) y_s(t)      (eq. (5) unrolled, y(0) = 0)
    w = b * _suffix_products(_a_exact(s, b, mode))
    return _weighted_sum(w, y_s)


def _weighted_sum(w, y_s):
    """sum_t w[:, t] y_s[:, t, :]: (batch, L), (batch, L, m) -> (batch, m); one
    contiguous-row dot per channel when m is small (einsum's (…, m) inner loop is slow)."""
    m = y_s.shape[2]
    if m > 8:
        return onp.einsum("bt,btm->bm", w, y_s)
    return onp.stack([onp.einsum("bt,bt->b", w, y_s[:, :, j]) for j in range(m)], axis=1)


def _gate_final_vjp(argnums, ans, args, kwargs):
    y_s, s, mode = args

    def vjp(g):
        g = onp.asarray(g)
        b = _b_np(s, mode)
        a = _a_exact(s, b, mode)
        P = _suffix_products(a)
        out = {}
        if 0 in argnums:
            # dy(L)/dy_s(t) = b(t) P(t)
            out[0] = (b * P)[:, :, None] * g[:, None, :]
        if 1 in argnums:
            # the adjoint of y(L) reaching step t is lam(t) = P(t) g, and
            # dy(t+1)/ds(t) = y_s(t) - y(t) (euler), a(t) (y_s(t) - y(t)) (zoh),
            # with y(t) = 0, y(1), ..., y(L-1) from the full scan
            ds = P * (onp.einsum("btm,bm->bt", y_s, g) - _projected_states(y_s, b, a, g))
            out[1] = ds * a if mode == "zoh" else ds
        return tuple(out[k] for k in argnums)
    return vjp


defvjp_argnums(_gate_final_prim, _gate_final_vjp)


def gate_final(y_s, s, mode="euler"):
    """The gate's last output y(L) only, from y(0) = 0: what the models' readout uses.

    Shapes: y_s (batch, L, m), s (batch, L) -> y(L) (batch, m). Eq. (5) (or Remark 3.1
    with ``mode="zoh"``) unrolled:

        y(L) = sum_{t<L} b(t) [prod_{t<k<L} a(k)] y_s(t),   (a, b) as in :func:`gate`

    one reversed cumulative product and one weighted sum, O(batch L m) with no scan and
    no (batch, L, m) output. Its VJP (hand-written) needs the states y(t), recomputed by
    the LAPACK scan of :func:`gate`. Same checks as :func:`gate`; equal to
    ``gate(y_s, s, mode=mode)[:, -1]`` to rounding (tests: ``fast_vs_ref``).

    >>> gate_final(np.ones((1, 3, 1)), np.full((1, 3), 0.5)).tolist()
    [[0.875]]
    """
    y_s, s, _ = _check_gate_args(y_s, s, None, mode)
    return _gate_final_prim(y_s, s, mode)


def gate_final_ref(y_s, s, mode="euler"):
    """Twin of :func:`gate_final`: the loop of eq. (5) / Remark 3.1, last step kept.

    >>> gate_final_ref(np.ones((1, 3, 1)), np.full((1, 3), 0.5)).tolist()
    [[0.875]]
    """
    return gate_ref(y_s, s, None, mode)[:, -1]


def gate_step(y, y_s_t, s_t, mode="euler"):
    """One step of the gate for streaming inference: y(t) -> y(t+1).

    Shapes: y (batch, m) = y(t), y_s_t (batch, m) = y_s(t), s_t (batch,) = s(t)
    -> y(t+1) (batch, m). Same equations and value checks as :func:`gate`; running it
    for t = 0..L-1 from y(0) = y0 reproduces ``gate(y_s, s, y0, mode)``.

    >>> gate_step(np.array([[0.0]]), np.array([[1.0]]), np.array([0.25]))[0].tolist()
    [0.25]
    """
    check_option("mode", mode, GATES)
    y = check_array("y", y, ndim=2)
    batch, m = onp.shape(y)
    y_s_t = check_array("y_s_t", y_s_t, shape=(batch, m))
    s_t = check_array("s_t", s_t, shape=(batch,))
    _check_s_values("s_t", s_t, mode)
    s_c = s_t[:, None]
    if mode == "euler":
        # (5)
        return y + (y_s_t - y) * s_c
    # Remark 3.1
    return np.exp(-s_c) * y + (-np.expm1(-s_c)) * y_s_t
