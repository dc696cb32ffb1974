"""The task head's numerics in plain NumPy (Section 3.1): the embedding lookup, the tied
cosine readout, the cross-entropy on the last position, each with its VJP. The autograd
primitives of ``rssm_ref.training.head`` (``embed``, ``cosine_logits``, ``cross_entropy``)
and the fused training losses of ``rssm_ref.training.fused`` are both built from these, so
the two routes do the same operations in the same order (and give the same bits).

Glossary (shapes)
-----------------
E (V, m) embedding;  tokens (batch, L) int;  u = E[tokens] (batch, L, m)
y (batch, m) the core's last output;  z (batch, N) logits over the first N rows of E
targets (batch,) int;  ‖x‖_ε = sqrt(‖x‖² + 1e-12) (no 0/0 at x = 0)
"""
import numpy as onp

NORM_EPS = 1e-12


def embed_np(E, tokens):
    """u = E[tokens] (batch, L, m) (``take``: ~25x faster than fancy indexing at
    (1000, 1024))."""
    return onp.take(E, tokens, axis=0)


def embed_vjp_np(E_shape, tokens, g):
    """dE (V, m): the cotangent rows summed per token id with one ``bincount`` (autograd's
    generic VJP of indexing, ``np.add.at``, is ~20x slower)."""
    V, m = E_shape
    idx = (onp.asarray(tokens).reshape(-1, 1) * m + onp.arange(m)).reshape(-1)
    return onp.bincount(idx, weights=onp.asarray(g).reshape(-1), minlength=V * m).reshape(V, m)


def unit_rows(x):
    """(x / ‖x‖_ε, ‖x‖_ε) row by row."""
    n = onp.sqrt(onp.sum(x * x, axis=1, keepdims=True) + NORM_EPS)
    return x / n, n


def unit_rows_vjp(x, n, g_hat):
    """x̂ = x / n, n = sqrt(|x|² + ε): dx = g/n − x (x·g) / n³."""
    return g_hat / n - x * (onp.sum(x * g_hat, axis=1, keepdims=True) / n ** 3)


def cosine_np(y, E, scale, n_rows=None, with_rows=False):
    """z = scale · cos(E_k, y) over the first ``n_rows`` rows of E; with ``with_rows``
    also the unit rows and norms of y and E (``cosine_vjp_np`` reuses them)."""
    yh, ny = unit_rows(y)
    Eh, nE = unit_rows(E[:n_rows])
    z = scale * (yh @ Eh.T)
    return (z, (yh, ny, Eh, nE)) if with_rows else z


def cosine_vjp_np(y, E_all, scale, n_rows, g, rows=None):
    """(dy, dE, dscale) of :func:`cosine_np` for the cotangent g (batch, N); dE has E_all's
    rows (zeros below the first n_rows); ``rows`` from ``cosine_np(..., with_rows=True)``
    (recomputed when None)."""
    E = E_all[:n_rows]
    yh, ny, Eh, nE = rows if rows is not None else (*unit_rows(y), *unit_rows(E))
    gs = onp.asarray(g) * scale
    dy = unit_rows_vjp(y, ny, gs @ Eh)
    dE = unit_rows_vjp(E, nE, gs.T @ yh)
    if dE.shape[0] != E_all.shape[0]:
        dE = onp.concatenate([dE, onp.zeros((E_all.shape[0] - dE.shape[0], E_all.shape[1]))])
    return dy, dE, lambda: float(onp.sum(gs * (yh @ Eh.T)) / scale)


def cross_entropy_np(z, targets):
    """Mean over the batch of −log softmax(z)[target] (the row maximum subtracted)."""
    zmax = onp.max(z, axis=1, keepdims=True)
    lse = zmax[:, 0] + onp.log(onp.sum(onp.exp(z - zmax), axis=1))
    return onp.mean(lse - z[onp.arange(len(targets)), targets])


def cross_entropy_vjp_np(z, targets, g):
    """dz = (softmax(z) − onehot(target)) g / batch."""
    p = onp.exp(z - onp.max(z, axis=1, keepdims=True))
    p /= onp.sum(p, axis=1, keepdims=True)
    p[onp.arange(len(targets)), targets] -= 1.0
    return p * (g / len(targets))
