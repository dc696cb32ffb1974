"""A plainly written float32 implementation of the three models, forward and gradients.

This is what a user's fast kernel computes (mamba_ssm / mambapy style): float32 arrays,
float32 einsums, the loops over time written out, gradients by the hand-written adjoint
recursions. It shares NO code with rssm_ref (it is the "someone else's implementation"
that ``verify --precision float32`` must pass), and each model has a
wrong-convention twin that ``verify`` must still fail.

Symbols (rssm_ref/oracle/formats.py): u (batch, L, m); dy (batch, L, p|m) the cotangent;
every function returns a dict of float32 arrays: ``y`` and ``grad_<key>`` of sum(y * dy)
for every parameter key and for ``u``.

lti_ss(P, u, dy, wrong=False)        x(t+1) = A x(t) + B u(t), y(t) = C x(t) + D u(t)
                                     (wrong: y(t) = C x(t+1) + D u(t), an off-by-one)
lti_tf(P, u, dy, wrong=False)        a_0 y(t) + sum_{l>=1} a_l y(t-l) = sum_l b_l u(t-l)
                                     (wrong: coefficients read in ascending powers of z)
residual(P, u, dy, gate, wrong=False)  Fig. 3 / eq. (5) (wrong: the other gate)
selective(P, u, dy, disc, out, wrong=False)  eqs. (2)-(4) (wrong: the other discretization)
"""
import numpy as np

F = np.float32


def _f(x):
    return np.asarray(x, dtype=F)


# ---------------------------------------------------------------------------- LTI, SS
def _ss_fwd(A, B, C, D, u, wrong=False):
    b, L, _ = u.shape
    n = A.shape[0]
    X = np.zeros((b, L + 1, n), F)                 # X[:, t] = x(t), x(0) = 0
    w = np.einsum("blm,nm->bln", u, B)
    for t in range(L):
        X[:, t + 1] = np.einsum("bk,nk->bn", X[:, t], A) + w[:, t]
    read = X[:, 1:] if wrong else X[:, :-1]
    y = np.einsum("bln,pn->blp", read, C) + np.einsum("blm,pm->blp", u, D)
    return y, X


def _ss_bwd(A, B, C, D, u, X, dy, wrong=False):
    b, L, _ = u.shape
    n = A.shape[0]
    read = X[:, 1:] if wrong else X[:, :-1]
    gC = np.einsum("blp,bln->pn", dy, read)
    gD = np.einsum("blp,blm->pm", dy, u)
    gread = np.einsum("blp,pn->bln", dy, C)         # dLoss/d(read state)
    # lam[:, t] = dLoss/dx(t+1), t = 0..L-1 (x(L) is read only by the wrong twin)
    lam = np.zeros((b, L, n), F)
    nxt = np.zeros((b, n), F)
    for t in range(L - 1, -1, -1):
        if wrong:
            direct = gread[:, t]
        else:
            direct = gread[:, t + 1] if t + 1 < L else np.zeros((b, n), F)
        nxt = direct + (np.einsum("bk,kn->bn", nxt, A) if t + 1 < L else 0)
        lam[:, t] = nxt
    gA = np.einsum("bln,blk->nk", lam, X[:, :-1])
    gB = np.einsum("bln,blm->nm", lam, u)
    gu = np.einsum("bln,nm->blm", lam, B) + np.einsum("blp,pm->blm", dy, D)
    return {"A": gA, "B": gB, "C": gC, "D": gD}, gu


def lti_ss(P, u, dy, wrong=False):
    A, B, C, D = (_f(P[k]) for k in "ABCD")
    u, dy = _f(u), _f(dy)
    y, X = _ss_fwd(A, B, C, D, u, wrong)
    g, gu = _ss_bwd(A, B, C, D, u, X, dy, wrong)
    return dict({"y": y, "grad_u": gu}, **{f"grad_{k}": v for k, v in g.items()})


# ---------------------------------------------------------------------------- LTI, TF
def _tf_fwd(num, den, u):
    b, L, _ = u.shape
    p, _, k = num.shape
    upad = np.concatenate([np.zeros((b, k - 1, u.shape[2]), F), u], axis=1)
    y = np.zeros((b, L + k - 1, p), F)              # k-1 leading zeros
    for t in range(L):
        acc = np.zeros((b, p), F)
        for lag in range(k):
            acc = acc + np.einsum("bj,ij->bi", upad[:, k - 1 + t - lag], num[:, :, lag])
        for lag in range(1, k):
            acc = acc - y[:, k - 1 + t - lag] * den[:, lag]
        y[:, k - 1 + t] = acc / den[:, 0]
    return y


def _tf_bwd(num, den, u, ypad, dy):
    b, L, m = u.shape
    p, _, k = num.shape
    # w solves a_0 w(t) + sum_{l>=1} a_l w(t+l) = dy(t): the filter run backwards
    w = np.zeros((b, L + k - 1, p), F)               # k-1 trailing zeros
    for t in range(L - 1, -1, -1):
        acc = dy[:, t]
        for lag in range(1, k):
            acc = acc - w[:, t + lag] * den[:, lag]
        w[:, t] = acc / den[:, 0]
    w = w[:, :L]
    upad = np.concatenate([np.zeros((b, k - 1, m), F), u], axis=1)
    gnum = np.stack([np.einsum("bti,btj->ij", w, upad[:, k - 1 - lag:k - 1 - lag + L])
                     for lag in range(k)], axis=2)
    gden = np.stack([-np.einsum("bti,bti->i", w, ypad[:, k - 1 - lag:k - 1 - lag + L])
                     for lag in range(k)], axis=1)
    wpad = np.concatenate([w, np.zeros((b, k - 1, p), F)], axis=1)
    gu = np.zeros((b, L, m), F)
    for lag in range(k):
        gu = gu + np.einsum("bti,ij->btj", wpad[:, lag:lag + L], num[:, :, lag])
    return gnum, gden, gu


def lti_tf(P, u, dy, wrong=False):
    num, den = _f(P["num"]), _f(P["den"])
    if wrong:
        num, den = num[:, :, ::-1].copy(), den[:, ::-1].copy()
    u, dy = _f(u), _f(dy)
    ypad = _tf_fwd(num, den, u)
    gnum, gden, gu = _tf_bwd(num, den, u, ypad, dy)
    if wrong:
        gnum, gden = gnum[:, :, ::-1], gden[:, ::-1]
    k = num.shape[2]
    return {"y": ypad[:, k - 1:], "grad_num": gnum, "grad_den": gden, "grad_u": gu}


# ---------------------------------------------------------------------------- residual
def _block(P, pre, u):
    if pre + "num" in P:
        num, den = _f(P[pre + "num"]), _f(P[pre + "den"])
        ypad = _tf_fwd(num, den, u)
        k = num.shape[2]
        return ypad[:, k - 1:], ("tf", num, den, ypad)
    A, B, C, D = (_f(P[pre + k]) for k in "ABCD")
    y, X = _ss_fwd(A, B, C, D, u)
    return y, ("ss", A, B, C, D, X)


def _block_bwd(pre, saved, u, dy):
    if saved[0] == "tf":
        _, num, den, ypad = saved
        gnum, gden, gu = _tf_bwd(num, den, u, ypad, dy)
        return {pre + "num": gnum, pre + "den": gden}, gu
    _, A, B, C, D, X = saved
    g, gu = _ss_bwd(A, B, C, D, u, X, dy)
    return {pre + k: v for k, v in g.items()}, gu


def residual(P, u, dy, gate="euler", wrong=False):
    """y_s = Σ u, r = Σ_r (y_s - u), s = σ(r + c), y(t+1) = keep y(t) + take y_s(t)."""
    if wrong:
        gate = "zoh" if gate == "euler" else "euler"
    u, dy = _f(u), _f(dy)
    b, L, m = u.shape
    ys, s_sig = _block(P, "sigma_", u)
    e = ys - u
    r3, s_r = _block(P, "r_", e)
    c = _f(P.get("gate_bias", 0.0))
    z = r3[:, :, 0] + c
    with np.errstate(over="ignore"):
        s = F(1) / (F(1) + np.exp(-z))
    if gate == "euler":
        keep, take = F(1) - s, s
    else:
        keep, take = np.exp(-s), -np.expm1(-s)
    Y = np.zeros((b, L + 1, m), F)                 # Y[:, t] = y(t), y(0) = 0
    for t in range(L):
        Y[:, t + 1] = keep[:, t, None] * Y[:, t] + take[:, t, None] * ys[:, t]
    # backward: mu[:, t] = dLoss/dy(t+1)
    mu = np.zeros((b, L, m), F)
    nxt = np.zeros((b, m), F)
    for t in range(L - 1, -1, -1):
        nxt = dy[:, t] + (keep[:, t + 1, None] * nxt if t + 1 < L else 0)
        mu[:, t] = nxt
    gkeep = np.einsum("blm,blm->bl", mu, Y[:, :-1])
    gtake = np.einsum("blm,blm->bl", mu, ys)
    gys = mu * take[:, :, None]
    if gate == "euler":
        gs = gtake - gkeep
    else:
        gs = (gtake - gkeep) * np.exp(-s)
    gz = gs * s * (F(1) - s)
    grads = {}
    if "gate_bias" in P:
        grads["gate_bias"] = np.asarray(np.sum(gz), F)
    gr, ge = _block_bwd("r_", s_r, e, gz[:, :, None])
    grads.update(gr)
    gys = gys + ge
    gsig, gu = _block_bwd("sigma_", s_sig, u, gys)
    grads.update(gsig)
    gu = gu - ge
    out = {"y": Y[:, 1:], "grad_u": gu}
    out.update({f"grad_{k}": v for k, v in grads.items()})
    return out


# ---------------------------------------------------------------------------- selective
def selective(P, u, dy, discretization="zoh", output="before", wrong=False):
    """eqs. (2)-(4), softplus as torch's (threshold 20), the state loop written out."""
    if wrong:
        discretization = "euler" if discretization == "zoh" else "zoh"
    A, Wd, WB, WC = (_f(P[k]) for k in ("A", "W_delta", "W_B", "W_C"))
    bd = _f(P.get("delta_bias", np.zeros(A.shape[0])))
    D = _f(P.get("D", np.zeros(A.shape[0])))
    u, dy = _f(u), _f(dy)
    b, L, m = u.shape
    n = A.shape[1]
    zd = np.einsum("blj,ij->bli", u, Wd) + bd
    with np.errstate(over="ignore"):
        delta = np.where(zd > 20, zd, np.log1p(np.exp(np.minimum(zd, F(20)))))
        sig = F(1) / (F(1) + np.exp(-zd))          # d softplus / dz
    sig = np.where(zd > 20, F(1), sig)
    Bbar = np.einsum("blj,nj->bln", u, WB)
    Cbar = np.einsum("blj,nj->bln", u, WC)
    dA = delta[..., None] * A                       # (b, L, m, n)
    Abar = np.exp(dA)
    if discretization == "zoh":
        E = np.expm1(dA) / A
        Bt = E * Bbar[:, :, None, :]
    else:
        Bt = delta[..., None] * Bbar[:, :, None, :]
    x = Bt * u[..., None]
    H = np.zeros((b, L + 1, m, n), F)              # H[:, t] = h(t), h(0) = 0
    for t in range(L):
        H[:, t + 1] = Abar[:, t] * H[:, t] + x[:, t]
    read = H[:, :-1] if output == "before" else H[:, 1:]
    y = np.einsum("blmn,bln->blm", read, Cbar) + D * u
    # backward
    gD = np.einsum("blm,blm->m", dy, u)
    gu = dy * D
    gCbar = np.einsum("blm,blmn->bln", dy, read)
    gread = dy[..., None] * Cbar[:, :, None, :]
    mu = np.zeros((b, L, m, n), F)                  # mu[:, t] = dLoss/dh(t+1)
    nxt = np.zeros((b, m, n), F)
    for t in range(L - 1, -1, -1):
        if output == "after":
            direct = gread[:, t]
        else:
            direct = gread[:, t + 1] if t + 1 < L else np.zeros((b, m, n), F)
        nxt = direct + (Abar[:, t + 1] * nxt if t + 1 < L else 0)
        mu[:, t] = nxt
    gdA = mu * H[:, :-1] * Abar
    gBt = mu * u[..., None]
    gu = gu + np.einsum("blmn,blmn->blm", mu, Bt)
    gdelta = np.zeros((b, L, m), F)
    gA = np.zeros((m, n), F)
    if discretization == "zoh":
        gE = gBt * Bbar[:, :, None, :]
        gBbar = np.einsum("blmn,blmn->bln", gBt, E)
        gdA = gdA + gE * Abar / A
        gA = gA - np.einsum("blmn,blmn->mn", gE, E) / A
    else:
        gBbar = np.einsum("blmn,blm->bln", gBt, delta)
        gdelta = gdelta + np.einsum("blmn,bln->blm", gBt, Bbar)
    gdelta = gdelta + np.einsum("blmn,mn->blm", gdA, A)
    gA = gA + np.einsum("blmn,blm->mn", gdA, delta)
    gzd = gdelta * sig
    out = {"y": y, "grad_A": gA, "grad_D": gD,
           "grad_W_B": np.einsum("bln,blj->nj", gBbar, u),
           "grad_W_C": np.einsum("bln,blj->nj", gCbar, u),
           "grad_W_delta": np.einsum("bli,blj->ij", gzd, u),
           "grad_delta_bias": np.einsum("bli->i", gzd)}
    gu = gu + np.einsum("bln,nj->blj", gBbar, WB) + np.einsum("bln,nj->blj", gCbar, WC) \
        + np.einsum("bli,ij->blj", gzd, Wd)
    out["grad_u"] = gu
    return {k: v for k, v in out.items()
            if k == "y" or k == "grad_u" or k[len("grad_"):] in P}


def run(model, P, U, opts, wrong=False):
    """The plain float32 candidate for ``model`` (dict key -> float32 array)."""
    u, dy = U["u"], U["dy"]
    if model == "lti":
        return (lti_tf if "num" in P else lti_ss)(P, u, dy, wrong=wrong)
    if model == "residual":
        return residual(P, u, dy, gate=opts.get("gate") or "euler", wrong=wrong)
    return selective(P, u, dy, discretization=opts.get("discretization") or "zoh",
                     output=opts.get("output") or "before", wrong=wrong)
