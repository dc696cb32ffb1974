"""The convolution path's training primitive: the causal convolution y = h * u (the
paper's (C1) form of eq. (1)) as one autograd primitive with a hand-written VJP.
Public names inside an internal layer: ``rssm_ref.convolution`` validates and calls it.

Glossary (shapes)
-----------------
h (L, p, m)       kernel (Markov parameters), u (batch, L, m), y (batch, L, p)
K                 an even FFT length >= 2L (autograd's rfft VJP needs it even)
"""
import functools

import numpy as onp
from autograd.extend import defvjp_argnums, primitive


# --------------------------------------------------------------------------- helpers
def even_fast_len(n):
    """Smallest even 2^a 3^b 5^c (a >= 1) that is >= n: FFT sizes pocketfft does fast."""
    n = max(int(n), 2)
    best = None
    p2 = 2
    while True:
        p23 = p2
        while True:
            p235 = p23
            while p235 < n:
                p235 *= 5
            if best is None or p235 < best:
                best = p235
            if p23 >= n:
                break
            p23 *= 3
        if p2 >= n:
            break
        p2 *= 2
    return best


# ------------------------------------------- (C1) by length: direct or FFT, hand VJP
# direct (block-Toeplitz matmul) up to this L, FFT above: at m = 2 the matmul's L^2 cost
# meets the FFT's L log L near L = 64 (bench: residual training and evaluation)
DIRECT_MAX_L = 64


@functools.lru_cache(maxsize=64)
def toeplitz_index(L, p, m):
    """Indices that lay a kernel h (L, p, m) out as the block-Toeplitz matrix
    T (L m, L p), T[(s, j), (t, i)] = h[t - s, i, j] (zero for t < s), with h padded by
    one zero block at index 0; and, for the VJP, the lag of every entry."""
    s, j, t, i = onp.meshgrid(onp.arange(L), onp.arange(m), onp.arange(L), onp.arange(p),
                              indexing="ij")
    lag = t - s
    flat = onp.where(lag >= 0, ((lag + 1) * p + i) * m + j, j)          # 0..m-1: the zero block
    return flat.reshape(L * m, L * p), lag.reshape(-1), ((lag * p + i) * m + j).reshape(-1)


def toeplitz(h, L):
    p, m = h.shape[1], h.shape[2]
    hp = onp.concatenate([onp.zeros((1, p, m)), h[:L]], axis=0).reshape(-1)
    return hp[toeplitz_index(L, p, m)[0]]


def fft_causal(h, u, K):
    """y[b, t, i] = sum_s sum_j h[t - s, i, j] u[b, s, j], t < L, by real FFTs of length K."""
    L = u.shape[1]
    Hf = onp.fft.rfft(h, K, axis=0)                                    # (F, p, m)
    Uf = onp.fft.rfft(u, K, axis=1)                                    # (batch, F, m)
    return onp.fft.irfft(onp.einsum("fij,bfj->bfi", Hf, Uf), K, axis=1)[:, :L]


@primitive
def causal_conv_kernel(h, u):
    batch, L, m = u.shape
    p = h.shape[1]
    if L <= DIRECT_MAX_L:
        # (C1) as one matmul with the block-Toeplitz matrix of h
        return (u.reshape(batch, L * m) @ toeplitz(h, L)).reshape(batch, L, p)
    return fft_causal(h[:L], u, even_fast_len(2 * L))


def causal_conv_vjp(argnums, ans, args, kwargs):
    h, u = args
    batch, L, m = u.shape
    Lh, p = h.shape[0], h.shape[1]

    def vjp(g):
        g = onp.asarray(g)
        out = {}
        if L <= DIRECT_MAX_L:
            g2 = g.reshape(batch, L * p)
            if 0 in argnums:
                # dh[d, i, j] = sum over (s, t) with t - s = d of (u^T g)[(s, j), (t, i)]
                _, lag, dst = toeplitz_index(L, p, m)
                Tbar = (u.reshape(batch, L * m).T @ g2).reshape(-1)
                keep = lag >= 0
                dh = onp.bincount(dst[keep], weights=Tbar[keep], minlength=L * p * m)
                out[0] = pad_kernel(dh.reshape(L, p, m), Lh)
            if 1 in argnums:
                out[1] = (g2 @ toeplitz(h, L).T).reshape(batch, L, m)
            return tuple(out[k] for k in argnums)
        # the adjoints are correlations: with gr = g reversed in time,
        # du[s] = sum_t h[t - s]^T g[t] = (h^T * gr)[L-1-s],  dh[d] = sum_b (gr * u)[L-1-d]
        K = even_fast_len(2 * L)
        Gf = onp.fft.rfft(g[:, ::-1], K, axis=1)                         # (batch, F, p)
        if 0 in argnums:
            Uf = onp.fft.rfft(u, K, axis=1)
            dh = onp.fft.irfft(onp.einsum("bfi,bfj->fij", Gf, Uf), K, axis=0)[:L][::-1]
            out[0] = pad_kernel(dh, Lh)
        if 1 in argnums:
            Hf = onp.fft.rfft(h[:L], K, axis=0)
            out[1] = onp.fft.irfft(onp.einsum("fij,bfi->bfj", Hf, Gf), K, axis=1)[:, :L][:, ::-1]
        return tuple(out[k] for k in argnums)
    return vjp


def pad_kernel(dh, Lh):
    """The gradient of h (Lh, p, m) from that of its first min(Lh, L) samples."""
    if Lh <= dh.shape[0]:
        return onp.ascontiguousarray(dh[:Lh])
    return onp.concatenate([dh, onp.zeros((Lh - dh.shape[0],) + dh.shape[1:])], axis=0)


defvjp_argnums(causal_conv_kernel, causal_conv_vjp)
