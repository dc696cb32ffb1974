"""The recurrence path's primitives with their hand-written VJPs (eq. (1) run as a
difference equation or a state scan). Public names inside an internal layer: the
paper's modules (``rssm_ref.recurrence``, ``rssm_ref.lti``, ``rssm_ref.residual_ssm``)
validate their inputs and call these; nothing here checks its arguments.

Glossary (shapes)
-----------------
b, a (k,)              numerator and denominator of one SISO filter, descending powers of z
num (p, m, k), den (p, k)   a transfer matrix, one common denominator per output row
h (L, p, m)            its impulse response (Markov parameters)
A (n, n), v (L, batch, n), x0 (batch, n), X (L+1, batch, n)   the state scan, time-major
"""
import numpy as onp
import scipy.signal as ssig
from autograd.extend import defvjp, defvjp_argnums, primitive


# ------------------------------------------------------------------ lfilter primitive
def reverse_time(x):
    return x[..., ::-1]


def lagged_dot(g, w, k):
    """c_j = sum over all axes of g[..., t] w[..., t - j], j = 0 .. k-1 (correlation)."""
    L = onp.shape(g)[-1]
    g2 = onp.reshape(g, (-1, L))
    w2 = onp.reshape(onp.broadcast_to(w, onp.shape(g)), (-1, L))
    # einsum on the strided views: no copies of the shifted slices
    return onp.array([onp.einsum("ij,ij->", g2[:, j:], w2[:, :L - j]) if j < L else 0.0
                      for j in range(k)])


def adjoint_g(dy, a):
    """g = T_a^-T dy: the all-pole filter 1/a(z) run backwards in time (last axis)."""
    return reverse_time(ssig.lfilter(onp.ones(1), a, reverse_time(onp.asarray(dy)), axis=-1))


def fir_adjoint(b, g):
    """T_b^T g: the FIR filter b run backwards in time (last axis)."""
    return reverse_time(ssig.lfilter(b, onp.ones(1), reverse_time(g), axis=-1))


@primitive
def lfilter_kernel(b, a, x):
    """The primitive behind :func:`lfilter_prim` (no input checks)."""
    return ssig.lfilter(b, a, x, axis=-1)


def lfilter_vjp(argnums, ans, args, kwargs):
    b, a, x = args

    def vjp(dy):
        # g = T_a^-T dy once, shared by the three gradients
        g = adjoint_g(dy, a)
        out = {0: lambda: lagged_dot(g, x, len(b)),        # db_j = sum_t g(t) x(t-j)
               1: lambda: -lagged_dot(g, ans, len(a)),     # da_i = -sum_t g(t) y(t-i)
               2: lambda: fir_adjoint(b, g)}               # dx = T_b^T g
        return tuple(out[n]() for n in argnums)
    return vjp


defvjp_argnums(lfilter_kernel, lfilter_vjp)


# ------------------------------------------------------------ impulse response
def lags(x, k):
    """(L, k, ...) with [t, l] = x[t - l] (zero for t < l): the k most recent samples."""
    L = x.shape[0]
    xp = onp.concatenate([onp.zeros((k - 1,) + x.shape[1:]), x], axis=0)
    return onp.stack([xp[k - 1 - l:k - 1 - l + L] for l in range(k)], axis=1)


def all_pole_impulses(den, L):
    """g (L, p): g_i = lfilter([1], den_i, delta), the impulse response of 1/a_i(q)."""
    delta = onp.zeros(L)
    delta[0] = 1.0
    return onp.stack([ssig.lfilter(onp.ones(1), a_i, delta) for a_i in den], axis=1)


def impulse_forward(num, den, L):
    """The Markov parameters h (L, p, m) and the lagged all-pole impulses G (L, k, p)
    their VJP reuses."""
    # h_ij = b_ij * g_i: h[t, i, j] = sum_l num[i, j, l] g_i(t - l)
    G = lags(all_pole_impulses(den, L), num.shape[2])          # (L, k, p)
    return onp.einsum("tli,ijl->tij", G, num), G


@primitive
def impulse_kernel(num, den, L):
    return impulse_forward(num, den, L)[0]


def impulse_backward(num, den, L, h, dh, G=None, argnums=(0, 1)):
    """{0: d num, 1: d den} of the Markov parameters h for their cotangent dh (L, p, m);
    ``G`` from :func:`impulse_forward` (recomputed when None)."""
    k = num.shape[2]
    dh = onp.asarray(dh)                                           # (L, p, m)
    out = {}
    if 0 in argnums:   # dnum[i, j, l] = sum_t dh[t, i, j] g_i(t - l)
        G = G if G is not None else lags(all_pole_impulses(den, L), k)
        out[0] = onp.einsum("tij,tli->ijl", dh, G)
    if 1 in argnums:   # T_(a_i) h_ij = T_(b_ij) delta  =>  dden[i, l] = -sum_j,t lam_ij(t) h_ij(t - l)
        lam = onp.stack([adjoint_g(dh[:, i, :].T, den[i]) for i in range(den.shape[0])],
                        axis=1)                                    # (m, p, L): T_(a_i)^-T dh_ij
        out[1] = -onp.einsum("jit,tlij->il", lam, lags(h, k))
    return out


def impulse_vjp(argnums, ans, args, kwargs):
    num, den, L = args

    def vjp(dh):
        out = impulse_backward(num, den, L, ans, dh, argnums=argnums)
        return tuple(out[n] for n in argnums)
    return vjp


defvjp_argnums(impulse_kernel, impulse_vjp)


# ------------------------------------------------------------------- state space
@primitive
def state_scan(A, v, x0):
    """States X (L+1, batch, n) of x(t+1) = A x(t) + v(t), x(0) = x0, time-major.

    v (L, batch, n), x0 (batch, n). Time-major so that every x(t) is one contiguous
    (batch, n) block: the loop over t is L small matrix products, vectorized over batch.
    """
    L, batch, n = onp.shape(v)
    AT = onp.ascontiguousarray(onp.transpose(A))
    X = onp.empty((L + 1, batch, n))
    X[0] = x0
    for t in range(L):
        # x(t+1) = A x(t) + v(t)   (rows: x(t)^T A^T)
        onp.matmul(X[t], AT, out=X[t + 1])
        X[t + 1] += v[t]
    return X


def adjoint_scan(A, dX):
    """lam(t) = A^T lam(t+1) + dX(t), lam(L) = dX(L), run backwards; lam (L+1, batch, n)."""
    dX = onp.asarray(dX)
    L1 = dX.shape[0]
    lam = onp.empty_like(dX)
    lam[L1 - 1] = dX[L1 - 1]
    for t in range(L1 - 2, -1, -1):
        # rows: (A^T lam)^T = lam^T A
        onp.matmul(lam[t + 1], A, out=lam[t])
        lam[t] += dX[t]
    return lam


def scan_vjp(argnums, ans, args, kwargs):
    A, v, x0 = args

    def vjp(dX):
        # one backward adjoint scan, shared by the three gradients
        lam = adjoint_scan(A, dX)
        n = onp.shape(A)[0]
        out = {0: lambda: onp.dot(lam[1:].reshape(-1, n).T, onp.asarray(ans)[:-1].reshape(-1, n)),
               1: lambda: lam[1:],   # dv(t) = lam(t+1)
               2: lambda: lam[0]}    # dx0 = lam(0)
        # dA = sum over t = 0 .. L-1 and batch of lam(t+1) x(t)^T
        return tuple(out[k]() for k in argnums)
    return vjp


defvjp_argnums(state_scan, scan_vjp)


@primitive
def take_rows(X, start, stop):
    """X[start:stop] along the first axis. A primitive because autograd's own VJP of a
    slice scatters with numpy.add.at, ~10x slower than writing into zeros."""
    return X[start:stop]


def take_rows_vjp(ans, X, start, stop):
    def vjp(g):
        out = onp.zeros(onp.shape(X))
        out[start:stop] = g
        return out
    return vjp


defvjp(take_rows, take_rows_vjp)  # start, stop are ints: no gradient


@primitive
def tf_filter_kernel(num, den, u):
    """y (batch, L, p), y_i = sum_j lfilter(num[i, j], den[i], u_j): the primitive of tf_filter."""
    p, m, _ = num.shape
    chans = [u[:, :, j] for j in range(m)]
    rows = []
    for i in range(p):
        y_i = ssig.lfilter(num[i, 0], den[i], chans[0], axis=-1)
        for j in range(1, m):
            y_i += ssig.lfilter(num[i, j], den[i], chans[j], axis=-1)
        rows.append(y_i)
    # p = 1: a view, no copy (the benchmarked SISO case is one lfilter call)
    return rows[0][:, :, None] if p == 1 else onp.stack(rows, axis=-1)


def tf_filter_vjp(argnums, ans, args, kwargs):
    num, den, u = args
    p, m, k = num.shape

    def vjp(dy):
        dy = onp.asarray(dy)
        # g_i = T_(a_i)^-T dy_i: one backward all-pole filter per output row
        gs = [adjoint_g(dy[:, :, i], den[i]) for i in range(p)]
        out = []
        for n in argnums:
            if n == 0:    # dnum[i, j, l] = sum_t g_i(t) u_j(t - l)
                out.append(onp.array([[lagged_dot(gs[i], u[:, :, j], k) for j in range(m)]
                                      for i in range(p)]))
            elif n == 1:  # dden[i, l] = -sum_t g_i(t) y_i(t - l)
                out.append(onp.array([-lagged_dot(gs[i], ans[:, :, i], k) for i in range(p)]))
            else:         # du_j = sum_i T_(b_ij)^T g_i
                du = onp.stack([sum(fir_adjoint(num[i, j], gs[i]) for i in range(p))
                                for j in range(m)], axis=-1)
                out.append(du)
        return tuple(out)
    return vjp


defvjp_argnums(tf_filter_kernel, tf_filter_vjp)
