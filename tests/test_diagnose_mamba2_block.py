"""``diagnose --model mamba2-block`` names the slips a port of the whole Mamba-2 layer makes.

Every candidate is computed by a Mamba-2 layer written here in plain NumPy from
(B1)-(B10) of rssm_ref.mamba2_block, with the slip put in by hand (never by rssm_ref's
slip code, so a wrong slip there fails these tests), and judged through the CLI: a slip
is exit 1 with the slip ranked first and named; the layer itself is exit 0 as "no slip".
A reference made with --ngroups diagnoses without the flag given again. Optional: HF
transformers' Mamba2Mixer with its gated norm over the whole width, and with heads paired
to groups by ``repeat``.
"""
import json

import numpy as onp
import pytest

from rssm_ref.mamba2_block import mamba2_block_params, mamba2_block_ref
from rssm_ref.oracle.slips import MAMBA2_SLIPS
from rssm_ref.tolerances import rel_err
from _helpers import run_cli

# the words a porter reads in the report, written here again: a renamed slip must show up
WORDS = {
    "z_xBC_swapped": "z and xBC swapped in the in_proj split",
    "dt_first": "dt taken from the front of the in_proj split",
    "conv_flipped": "the conv flipped",
    "conv_bias_missing": "the conv bias missing",
    "conv_right_padded": "right instead of left padding",
    "conv_silu_missing": "SiLU after the conv missing",
    "conv_state_ignored": "conv_state ignored",
    "dt_bias_missing": "dt_bias never added",
    "dt_bias_twice": "dt_bias added twice",
    "softplus_missing": "softplus missing on dt",
    "softplus_twice": "softplus applied twice to dt",
    "dt_limit_ignored": "the dt_limit clamp ignored",
    "A_dt_missing": "A not multiplied by dt",
    "A_dt_twice": "A multiplied by dt twice",
    "x_dt_missing": "x not multiplied by dt",
    "x_dt_twice": "x multiplied by dt twice",
    "groups_repeat": "heads paired with groups the wrong way",
    "ssm_state_ignored": "ssm_state ignored",
    "D_missing": "the skip D x missing",
    "D_repeat": "D (h,) spread over the channels the wrong way",
    "D_flat_order": "D (d_ssm,) per channel read in the wrong order",
    "norm_whole_width": "the norm over the whole width",
    "norm_per_group": "the norm per group",
    "norm_before_gate": "the norm applied before the gate",
    "norm_after_gate": "the norm applied after the gate",
    "padding_leak": "padding leaking into ssm_state",
    "mlp_dropped": "the gated MLP part dropped",
    "mlp_ungated": "the gated MLP part ungated",
}
Q = 4                   # chunk_size; L = 10 leaves a pad of 2
# case A: 2 groups of 2 heads, D (h,), the norm per group after the gate, a binding clamp,
# both states given, no MLP. Case B: a gated MLP, D (d_ssm,), the norm over the whole
# width before the gate (g = 2), no clamp
A_SLIPS = ["z_xBC_swapped", "dt_first", "conv_flipped", "conv_bias_missing",
           "conv_right_padded", "conv_silu_missing", "conv_state_ignored", "dt_bias_missing",
           "dt_bias_twice", "softplus_missing", "softplus_twice", "dt_limit_ignored",
           "A_dt_missing", "A_dt_twice", "x_dt_missing", "x_dt_twice", "groups_repeat",
           "ssm_state_ignored", "D_missing", "D_repeat", "norm_whole_width",
           "norm_before_gate", "padding_leak"]
B_SLIPS = ["D_flat_order", "norm_per_group", "norm_after_gate", "mlp_dropped", "mlp_ungated"]


# ------------------------------------------------------- the layer, written again
def _silu(v):
    return v / (1 + onp.exp(-v))


def _softplus(v):
    return onp.logaddexp(0, v)


def _layer(P, U, c, slip=None, dtype=onp.float64):
    """(B1)-(B10) as loops in plain NumPy, in ``dtype`` throughout, with one slip put in by
    hand. ``c``: the case's sizes and options. Returns y, conv_state, ssm_state."""
    P = {k: onp.asarray(v, dtype) for k, v in P.items()}
    U = {k: onp.asarray(v, dtype) for k, v in U.items()}
    u = U["hidden_states"]
    batch, L, _ = u.shape
    m, s, h, p, g, n = (c[k] for k in ("d_mlp", "d_ssm", "h", "p", "g", "n"))
    cd, _, W = P["conv1d.weight"].shape
    # (B1) the split, in mamba_ssm's order or the slip's
    zx = u @ P["in_proj.weight"].T + P.get("in_proj.bias", 0)
    order = {"z_xBC_swapped": ["z0", "x0", "xBC", "z", "dt"],
             "dt_first": ["dt", "z0", "x0", "z", "xBC"]}.get(slip, ["z0", "x0", "z", "xBC", "dt"])
    width = {"z0": m, "x0": m, "z": s, "xBC": cd, "dt": h}
    part, at = {}, 0
    for name in order:
        part[name] = zx[..., at:at + width[name]]
        at += width[name]
    # (B2) the causal depthwise conv over [the W - 1 inputs kept before t = 0 ; xBC]
    xBC = part["xBC"]
    prev = U["conv_state"][:, :, -(W - 1):].transpose(0, 2, 1) if W > 1 else \
        onp.zeros((batch, 0, cd), dtype)
    if slip == "conv_state_ignored":
        prev = onp.zeros_like(prev)
    xt = onp.concatenate([prev, xBC], axis=1)
    w = P["conv1d.weight"][:, 0, :]
    if slip == "conv_flipped":
        w = w[:, ::-1]
    conv = onp.zeros((batch, L, cd), dtype)
    for t in range(L):
        for k in range(W):
            if slip == "conv_right_padded":           # reads xBC[t + k], zeros past the end
                if t + k < L:
                    conv[:, t] += w[:, k] * xBC[:, t + k]
            else:
                conv[:, t] += w[:, k] * xt[:, t + k]
    if slip != "conv_bias_missing":
        conv = conv + P["conv1d.bias"]
    act = conv if slip == "conv_silu_missing" else _silu(conv)
    # (B3)
    x = act[..., :s].reshape(batch, L, h, p)
    B = act[..., s:s + g * n].reshape(batch, L, g, n)
    C = act[..., s + g * n:].reshape(batch, L, g, n)

    def step(raw):                                    # (B4)
        times = {"dt_bias_missing": 0, "dt_bias_twice": 2}.get(slip, 1)
        d = raw + times * P["dt_bias"]
        for _ in range({"softplus_missing": 0, "softplus_twice": 2}.get(slip, 1)):
            d = _softplus(d)
        lim = c.get("dt_limit")
        return d if lim is None or slip == "dt_limit_ignored" else onp.clip(d, *lim).astype(dtype)
    dt = step(part["dt"])
    A = -onp.exp(P["A_log"])                          # (B5)
    group = [i % g if slip == "groups_repeat" else i // (h // g) for i in range(h)]
    D = P["D"]
    if D.shape == (h,):
        spread = [D[(i * p + j) % h] if slip == "D_repeat" else D[i]
                  for i in range(h) for j in range(p)]
        Dhp = onp.array(spread, dtype).reshape(h, p)
    else:
        Dhp = D.reshape(p, h).T if slip == "D_flat_order" else D.reshape(h, p)
    if slip == "D_missing":
        Dhp = 0 * Dhp
    H = U["ssm_state"].copy() if "ssm_state" in U else onp.zeros((batch, h, p, n), dtype)
    if slip == "ssm_state_ignored":
        H = onp.zeros_like(H)
    ys = []
    for t in range(L):                                # (B6)-(B7)
        d = dt[:, t]
        dA = {"A_dt_missing": A + 0 * d, "A_dt_twice": d * d * A}.get(slip, d * A)
        dd = {"x_dt_missing": 1 + 0 * d, "x_dt_twice": d * d}.get(slip, d)
        H = onp.exp(dA)[..., None, None] * H + \
            (dd[..., None] * x[:, t])[..., None] * B[:, t][:, group][:, :, None, :]
        ys.append(onp.einsum("bhpn,bhn->bhp", H, C[:, t][:, group]) + Dhp * x[:, t])
    if slip == "padding_leak":
        d_pad = step(onp.zeros((batch, h), dtype))    # the pad: raw dt = 0, x = 0
        for _ in range(-L % Q):
            H = onp.exp(d_pad * A)[..., None, None] * H
    y_ssd = onp.stack(ys, axis=1).reshape(batch, L, s)
    z = part["z"]
    if "norm.weight" not in P:
        y_norm = y_ssd * _silu(z)
    else:                                             # (B8)
        G = c["group_size"]
        G = {"norm_whole_width": s, "norm_per_group": s // g}.get(slip, G)
        before = {"norm_before_gate": True, "norm_after_gate": False}.get(
            slip, c["norm_before_gate"])
        v = y_ssd if before else y_ssd * _silu(z)
        vg = v.reshape(batch, L, s // G, G)
        vg = vg / onp.sqrt((vg * vg).mean(-1, keepdims=True) + dtype(1e-5))
        y_norm = vg.reshape(batch, L, s) * P["norm.weight"]
        if before:
            y_norm = y_norm * _silu(z)
    if m:                                             # (B9)
        mlp = {"mlp_dropped": 0 * part["x0"], "mlp_ungated": part["x0"]}.get(
            slip, _silu(part["z0"]) * part["x0"])
        y_norm = onp.concatenate([mlp, y_norm], axis=-1)
    y = y_norm @ P["out_proj.weight"].T + P.get("out_proj.bias", 0)      # (B10)
    full = onp.concatenate([onp.zeros((batch, W, cd), dtype) if slip == "conv_state_ignored"
                            else U["conv_state"].transpose(0, 2, 1), xBC], axis=1)
    return {"y": y, "conv_state": full[:, -W:].transpose(0, 2, 1), "ssm_state": H}


# ------------------------------------------------------------------ the two cases
def _case(name):
    rng = onp.random.default_rng({"A": 3, "B": 5}[name])
    if name == "A":
        P = mamba2_block_params(d_model=4, d_state=3, d_conv=4, headdim=2, ngroups=2,
                                bias=True, seed=3, dt_min=0.1, dt_max=1.0)
        c = dict(d_mlp=0, d_ssm=8, h=4, p=2, g=2, n=3, group_size=4, norm_before_gate=False)
        P["D"] = rng.uniform(0.5, 1.5, size=4)
    else:
        P = mamba2_block_params(d_model=6, d_state=2, d_conv=3, headdim=2, ngroups=2, d_ssm=8,
                                D_has_hdim=True, bias=True, seed=5, dt_min=0.1, dt_max=1.0)
        c = dict(d_mlp=4, d_ssm=8, h=4, p=2, g=2, n=2, group_size=8, norm_before_gate=True)
        P["D"] = rng.uniform(0.5, 1.5, size=8)
    # the scan matters, as in a trained layer: B and C rows of in_proj at 3x their scale
    s, gn = c["d_ssm"], c["g"] * c["n"]
    rows = slice(2 * c["d_mlp"] + 2 * s, 2 * c["d_mlp"] + 2 * s + 2 * gn)
    P["in_proj.weight"][rows] *= 3
    P["norm.weight"] = rng.uniform(0.5, 1.5, size=s)
    cd, _, W = P["conv1d.weight"].shape
    d = P["in_proj.weight"].shape[1]
    U = {"hidden_states": rng.normal(size=(2, 10, d)),
         "conv_state": rng.normal(size=(2, cd, W)),
         "ssm_state": rng.normal(size=(2, c["h"], c["p"], c["n"]))}
    flags = ["--ngroups", 2, "--chunk-size", Q]
    if name == "A":
        zx = U["hidden_states"] @ P["in_proj.weight"].T + P["in_proj.bias"]
        dtp = _softplus(zx[..., -c["h"]:] + P["dt_bias"])
        c["dt_limit"] = tuple(float(v) for v in onp.quantile(dtp, [0.15, 0.85]))
        flags += ["--dt-limit", *c["dt_limit"]]
    else:
        flags += ["--norm-before-gate", "--norm-group-size", 8]
    return P, U, c, flags


_run = run_cli


def _forward(d, name, P, U, flags):
    onp.savez(d / f"P{name}.npz", **P)
    onp.savez(d / f"U{name}.npz", **U)
    out = d / f"R{name}.npz"
    res = _run("forward", "--model", "mamba2-block", "--params", d / f"P{name}.npz",
               "--inputs", d / f"U{name}.npz", "--out", out, *flags)
    assert res.exit_code == 0, res.output
    return out


def _diagnose(d, ref, cand, *extra):
    onp.savez(d / "C.npz", **cand)
    res = _run("diagnose", "--reference", ref, "--candidate", d / "C.npz", "--json", *extra)
    assert res.exit_code in (0, 1), res.output
    return res.exit_code, json.loads(res.output)


def _ranking(rep):
    return [(r["conventions"]["slip"], r["rel_err"]) for r in rep["rows"]]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    out = {}
    for name in ("A", "B"):
        d = tmp_path_factory.mktemp(name)
        P, U, c, flags = _case(name)
        out[name] = (d, P, U, c, _forward(d, name, P, U, flags))
    return out


def test_the_layer_written_here_is_the_oracles(cases):
    """Without a slip the hand-written layer is rssm_ref's loop twin and the forward file
    (so its slips are the only difference the tests below see); the slips listed are the
    oracle's."""
    for name, (d, P, U, c, ref) in cases.items():
        o = onp.load(ref)
        opts = dict(ngroups=2, norm_before_gate=c["norm_before_gate"],
                    norm_group_size=c["group_size"], dt_limit=c.get("dt_limit", (0, onp.inf)))
        twin = mamba2_block_ref(P, U["hidden_states"], U["conv_state"], U["ssm_state"], **opts)
        ours = _layer(P, U, c)
        for k in ("y", "conv_state", "ssm_state"):
            assert rel_err(ours[k], o[k]) <= 1e-13 and rel_err(ours[k], twin[k]) <= 1e-13, \
                (name, k)
    assert set(WORDS) == set(MAMBA2_SLIPS) == set(A_SLIPS) | set(B_SLIPS)


def _check_named(code, rep, slip, top=1e-12):
    rank = _ranking(rep)
    assert code == 1 and not rep["passed"], rep["advice"]
    assert rank[0][0] == slip and rep["slip"] == slip, rank[:3]
    # the slip explains the candidate; the next best explanation is far off
    assert rank[0][1] <= top and rank[1][1] >= 1e-3, rank[:2]
    assert WORDS[slip] in rep["rows"][0]["label"]
    assert rep["advice"].startswith("FAIL") and WORDS[slip] in rep["advice"]
    assert "the Mamba-2 layer with a slip" in rep["advice"] and "fix: " in rep["advice"]


@pytest.mark.parametrize("name", ["A", "B"])
def test_the_layer_itself_is_no_slip_and_passes(cases, name):
    d, P, U, c, ref = cases[name]
    code, rep = _diagnose(d, ref, _layer(P, U, c))
    assert code == 0 and rep["passed"] and rep["slip"] is None, rep["advice"]
    assert rep["rows"][0]["conventions"]["slip"] == "none" and rep["rows"][0]["is_reference"]
    assert rep["rows"][0]["label"].startswith("no slip: mamba_ssm's Mamba2 layer")
    assert rep["precision"] == "float64"
    assert "matches the reference's own conventions" in rep["advice"]
    # every slip that applies here was tried, each as its own row, and no other
    tried = {s for s, _ in _ranking(rep)}
    want = A_SLIPS if name == "A" else [s for s in MAMBA2_SLIPS if s not in (
        "dt_limit_ignored", "D_repeat", "norm_whole_width", "norm_before_gate")]
    assert tried == {"none"} | set(want)


@pytest.mark.parametrize("slip", A_SLIPS)
def test_each_slip_fails_ranked_first_and_named(cases, slip):
    d, P, U, c, ref = cases["A"]
    code, rep = _diagnose(d, ref, _layer(P, U, c, slip))
    _check_named(code, rep, slip)
    assert rep["precision"] == "float64"


@pytest.mark.parametrize("slip", B_SLIPS)
def test_each_slip_of_the_mlp_and_norm_case_fails_ranked_first_and_named(cases, slip):
    d, P, U, c, ref = cases["B"]
    code, rep = _diagnose(d, ref, _layer(P, U, c, slip))
    _check_named(code, rep, slip)


def test_slips_that_change_nothing_are_not_tried(tmp_path):
    """g = 1, no norm.weight, W = 1, no conv bias, D = 1, no states, y alone: no group, norm,
    conv-tap, bias, D-spread, state or padding slip is a row."""
    P = mamba2_block_params(d_model=4, d_state=2, d_conv=1, headdim=2, ngroups=1,
                            rmsnorm=False, conv_bias=False, seed=0)
    U = {"hidden_states": onp.random.default_rng(0).normal(size=(2, 5, 4))}
    ref = _forward(tmp_path, "n", P, U, ["--ngroups", 1, "--chunk-size", Q])
    y = onp.load(ref)["y"]
    code, rep = _diagnose(tmp_path, ref, {"y": y})
    assert code == 0 and rep["slip"] is None, rep["advice"]
    tried = {s for s, _ in _ranking(rep)}
    assert tried == {"none", "z_xBC_swapped", "dt_first", "conv_silu_missing",
                     "dt_bias_missing", "dt_bias_twice", "softplus_missing", "softplus_twice",
                     "A_dt_missing", "A_dt_twice", "x_dt_missing", "x_dt_twice", "D_missing"}


@pytest.mark.parametrize("slip", ["groups_repeat", "norm_whole_width", "padding_leak"])
def test_a_float32_candidate_with_a_slip_is_named_at_float32(cases, slip):
    d, P, U, c, ref = cases["A"]
    code, rep = _diagnose(d, ref, _layer(P, U, c, slip, onp.float32))
    rank = _ranking(rep)
    assert code == 1 and rep["slip"] == slip and rank[0][0] == slip, rank[:3]
    assert rep["allowed_precision"] == "float32" and rep["precision"] == "float32"
    assert rank[0][1] <= 1e-5 and rank[1][1] >= 1e-3, rank[:2]


def test_a_float32_candidate_without_a_slip_passes(cases):
    d, P, U, c, ref = cases["A"]
    code, rep = _diagnose(d, ref, _layer(P, U, c, None, onp.float32))
    assert code == 0 and rep["slip"] is None and rep["precision"] == "float32", rep["advice"]


def test_a_reference_made_with_ngroups_diagnoses_without_the_flag_again(tmp_path):
    """init's layer forwarded with --ngroups 2: diagnose rereads the groups (and every
    other option) from the reference file; it used to stop with "ngroups: required"."""
    P, U, R = tmp_path / "P.npz", tmp_path / "U.npz", tmp_path / "R.npz"
    res = _run("init", "--model", "mamba2-block", "--m", 6, "--p", 3, "--n", 2, "--ngroups", 2,
               "--seed", 4, "--out", P, "--inputs-out", U, "--length", 9, "--batch", 2)
    assert res.exit_code == 0, res.output
    res = _run("forward", "--model", "mamba2-block", "--ngroups", 2, "--norm-before-gate",
               "--params", P, "--inputs", U, "--out", R)
    assert res.exit_code == 0, res.output
    onp.savez(tmp_path / "C.npz", y=onp.load(R)["y"])
    res = _run("diagnose", "--reference", R, "--candidate", tmp_path / "C.npz")
    assert res.exit_code == 0, res.output
    assert "ngroups 2" in res.output and "norm_before_gate yes" in res.output
    assert "matches the reference's own conventions" in res.output.splitlines()[-1]


def test_text_report_names_the_slip_and_what_to_fix(cases):
    d, P, U, c, ref = cases["A"]
    onp.savez(d / "C.npz", y=_layer(P, U, c, "norm_whole_width")["y"])
    res = _run("diagnose", "--reference", ref, "--candidate", d / "C.npz")
    assert res.exit_code == 1
    lines = res.output.splitlines()
    first = lines[lines.index(next(l for l in lines if l.strip().startswith("rel_err"))) + 1]
    assert WORDS["norm_whole_width"] in first and "<- best" in first
    assert "not against the reference" in res.output
    assert lines[-1].startswith("FAIL") and "group_size=d_ssm // ngroups" in lines[-1]


# ------------------------------------------------- HF transformers' Mamba2Mixer, optional
def _hf(tmp_path):
    """HF's Mamba2Mixer (random Mamba2Config, no download), its torch path (eval), 2 groups,
    float32-exact params and input, run in float32; the reference forwarded by the CLI."""
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install torch "
                                "(CPU) to run HF's Mamba2Mixer against the oracle")
    M = pytest.importorskip("transformers.models.mamba2.modeling_mamba2",
                            reason="transformers (with Mamba2) is not installed: pip install "
                                   "transformers")
    from transformers import Mamba2Config
    h, p, n, d = 4, 3, 3, 6
    cfg = Mamba2Config(hidden_size=d, num_heads=h, head_dim=p, state_size=n, n_groups=2,
                       conv_kernel=4, expand=2, chunk_size=5, num_hidden_layers=1, use_bias=True,
                       use_conv_bias=True, vocab_size=8)
    torch.manual_seed(0)
    mixer = M.Mamba2Mixer(cfg, layer_idx=0).double().eval()
    rng = onp.random.default_rng(0)
    with torch.no_grad():
        for _, prm in mixer.named_parameters():
            prm.copy_(torch.tensor(rng.uniform(-0.6, 0.6, size=tuple(prm.shape))))
        mixer.dt_bias.copy_(torch.tensor(rng.uniform(-1.0, 1.0, size=h)))
        mixer.norm.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, size=h * p)))
        for prm in mixer.parameters():
            prm.copy_(prm.float().double())
    P = {k: v.detach().numpy().copy() for k, v in mixer.state_dict().items()}
    u = rng.normal(size=(2, 13, d)).astype(onp.float32).astype(float)
    ref = _forward(tmp_path, "hf", P, {"hidden_states": u}, ["--ngroups", 2, "--chunk-size", 5])
    mixer = mixer.float()

    def run():
        with torch.no_grad():
            return {"y": mixer(torch.tensor(u, dtype=torch.float32)).numpy()}
    return torch, M, mixer, run, ref


def test_hf_mixer_as_it_is_passes_at_float32(tmp_path):
    _, _, _, run, ref = _hf(tmp_path)
    code, rep = _diagnose(tmp_path, ref, run())
    assert code == 0 and rep["slip"] is None and rep["precision"] == "float32", rep["advice"]


def test_hf_mixer_with_its_norm_over_the_whole_width_is_named(tmp_path, monkeypatch):
    """Older transformers normalized the whole width: HF's own RMSNormGated with
    group_size = d_ssm."""
    _, _, mixer, run, ref = _hf(tmp_path)
    monkeypatch.setattr(mixer.norm, "group_size", 12)
    code, rep = _diagnose(tmp_path, ref, run())
    rank = _ranking(rep)
    assert code == 1 and rep["slip"] == "norm_whole_width", rank[:3]
    assert rep["precision"] == "float32" and rank[0][1] <= 1e-5 and rank[1][1] >= 1e-3, rank[:2]


def test_hf_mixer_with_heads_paired_to_groups_by_repeat_is_named(tmp_path, monkeypatch):
    """HF's own scan given B and C already spread over the heads with .repeat (one group
    per head, so its repeat_interleave does nothing): head i reads group i % g."""
    torch, M, _, run, ref = _hf(tmp_path)
    scan = M.mamba2_chunk_scan

    def repeated(x, dt, A, B, C, *args, **kwargs):
        r = x.shape[2] // B.shape[2]
        return scan(x, dt, A, B.repeat(1, 1, r, 1), C.repeat(1, 1, r, 1), *args, **kwargs)
    monkeypatch.setattr(M, "mamba2_chunk_scan", repeated)
    code, rep = _diagnose(tmp_path, ref, run())
    rank = _ranking(rep)
    assert code == 1 and rep["slip"] == "groups_repeat", rank[:3]
    assert rep["precision"] == "float32" and rank[0][1] <= 1e-5 and rank[1][1] >= 1e-3, rank[:2]

