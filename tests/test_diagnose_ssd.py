"""``diagnose --model ssd`` names the slips a port of Mamba-2's SSD core makes, and the
heads-flat layout (HF's Mamba2Mixer: x (batch, L, h·p), B, C (batch, L, g·n)).

Every candidate is computed by an SSD recurrence written here in plain NumPy from
(S1)-(S4) of rssm_ref.ssd, with the slip put in by hand (never by rssm_ref's slip code, so
a wrong slip there fails these tests), and judged through the CLI: a slip is exit 1 with
the slip ranked first and named; the core itself is exit 0 as "no slip". Then the
heads-flat layout: forward, verify and diagnose in it, and its bad inputs (exit 2, one
line). Optional: HF transformers' torch SSD scan, as it is and with the group pairing
slipped in a float64 copy.
"""
import json
import os

import numpy as onp
import pytest

from rssm_ref.oracle.slips import SSD_SLIPS
from rssm_ref.ssd import ssd_params
from rssm_ref.tolerances import TOLERANCES, rel_err
from _helpers import run_cli

# the words a porter reads in the report, written here again: a renamed slip must show up
WORDS = {
    "groups_repeat": "heads paired with groups the wrong way",
    "dt_bias_missing": "dt_bias never added",
    "dt_bias_twice": "dt_bias added twice",
    "softplus_missing": "softplus missing on dt",
    "softplus_twice": "softplus applied twice to dt",
    "softplus_unwanted": "softplus applied to dt where dt_softplus is off",
    "dt_limit_ignored": "the dt_limit clamp ignored",
    "dt_clamped_at_zero": "dt clamped to (0, inf) with no dt_limit set",
    "A_dt_missing": "A not multiplied by dt",
    "A_dt_twice": "A multiplied by dt twice",
    "x_dt_missing": "x not multiplied by dt",
    "x_dt_twice": "x multiplied by dt twice",
    "initial_states_ignored": "initial_states ignored",
    "D_missing": "the skip D x missing",
    "D_unsqueeze_missing": "D (h,) applied per channel",
    "D_flat_order": "D (h, p) read in the wrong order",
    "padding_leak": "padding leaking into the final state",
}
# the slips each case below can show: the one with softplus and a clamp, and the raw one
SOFT_SLIPS = ["groups_repeat", "dt_bias_missing", "dt_bias_twice", "softplus_missing",
              "softplus_twice", "dt_limit_ignored", "A_dt_missing", "A_dt_twice",
              "x_dt_missing", "x_dt_twice", "initial_states_ignored", "D_missing",
              "D_unsqueeze_missing", "padding_leak"]
RAW_SLIPS = ["softplus_unwanted", "dt_clamped_at_zero", "D_flat_order"]
Q = 4                                       # chunk_size; L = 10 leaves a pad of 2


# ------------------------------------------------------- the SSD core, written again
def _softplus(v):
    return onp.logaddexp(0, v)


def _ssd(P, U, softplus, limit=None, slip=None, dtype=onp.float64):
    """(S1)-(S4) as a loop over time in plain NumPy, in ``dtype`` throughout, with one slip
    put in by hand. Returns y (batch, L, h, p) and final_states (batch, h, p, n)."""
    P = {k: onp.asarray(v, dtype) for k, v in P.items()}
    U = {k: onp.asarray(v, dtype) for k, v in U.items()}
    x, B, C = U["x"], U["B"], U["C"]
    batch, L, h, p = x.shape
    g, n = B.shape[2:]

    def step(raw):                                            # (S1) on raw dt (..., h)
        bias = P.get("dt_bias", onp.zeros(h, dtype))
        d = raw + {"dt_bias_missing": 0, "dt_bias_twice": 2}.get(slip, 1) * bias
        times = int(softplus) + {"softplus_missing": -1, "softplus_twice": 1,
                                 "softplus_unwanted": 1}.get(slip, 0)
        for _ in range(times):
            d = _softplus(d)
        lo_hi = None if slip == "dt_limit_ignored" else limit
        if slip == "dt_clamped_at_zero":
            lo_hi = (0.0, onp.inf)
        return d if lo_hi is None else onp.clip(d, *lo_hi).astype(dtype)

    A = -onp.exp(P["A_log"]) if "A_log" in P else P["A"]
    group = [i % g if slip == "groups_repeat" else i // (h // g) for i in range(h)]
    D = P.get("D")
    if D is not None and D.ndim == 2 and slip == "D_flat_order":
        D = D.reshape(-1).reshape(p, h).T                       # '(p h) -> h p' on (h p) data
    H = U.get("initial_states", onp.zeros((batch, h, p, n), dtype))
    if slip == "initial_states_ignored":
        H = onp.zeros_like(H)
    d_all = step(U["dt"])
    ys = []
    for t in range(L):
        d = d_all[:, t]                                          # (batch, h)
        dA = {"A_dt_missing": A + 0 * d, "A_dt_twice": d * d * A}.get(slip, d * A)
        X = {"x_dt_missing": x[:, t], "x_dt_twice": (d * d)[..., None] * x[:, t]}.get(
            slip, d[..., None] * x[:, t])
        Bt, Ct = B[:, t][:, group], C[:, t][:, group]             # (batch, h, n)
        H = onp.exp(dA)[..., None, None] * H + X[..., None] * Bt[:, :, None, :]
        y = onp.einsum("bhpn,bhn->bhp", H, Ct)
        if D is not None and slip != "D_missing":
            if D.ndim == 2:
                y = y + D * x[:, t]
            elif slip == "D_unsqueeze_missing":
                y = y + x[:, t] * D                              # D[j] on x[..., i, j]
            else:
                y = y + D[:, None] * x[:, t]
        if "z" in U:
            zt = U["z"][:, t]
            y = y * zt / (1 + onp.exp(-zt))
        ys.append(y)
    if slip == "padding_leak":
        d_pad = step(onp.zeros((batch, h), dtype))               # raw dt = 0 at the pad
        for _ in range(-L % Q):
            H = onp.exp(d_pad * A)[..., None, None] * H           # x = 0: only the decay
    return onp.stack(ys, axis=1), H


# ------------------------------------------------------------- files and the CLI
_run = run_cli


PARAM_KEYS = ("A", "A_log", "D", "dt_bias")
INPUT_KEYS = ("x", "dt", "B", "C", "z", "initial_states")


def _split(P):
    return ({k: P[k] for k in PARAM_KEYS if k in P}, {k: P[k] for k in INPUT_KEYS if k in P})


def _forward(d, name, params, inputs, *flags):
    onp.savez(d / f"P{name}.npz", **params)
    onp.savez(d / f"U{name}.npz", **inputs)
    out = d / f"R{name}.npz"
    res = _run("forward", "--model", "ssd", "--params", d / f"P{name}.npz", "--inputs",
               d / f"U{name}.npz", "--out", out, "--chunk-size", Q, *flags)
    assert res.exit_code == 0, res.output
    return out


def _diagnose(d, ref, cand, *extra):
    onp.savez(d / "C.npz", **cand)
    res = _run("diagnose", "--reference", ref, "--candidate", d / "C.npz", "--json", *extra)
    assert res.exit_code in (0, 1), res.output
    return res.exit_code, json.loads(res.output)


def _ranking(rep):
    return [(r["conventions"]["slip"], r["rel_err"]) for r in rep["rows"]]


def _soft_case():
    """softplus on, a clamp that binds, D (h,) with p == h (so D's broadcast can slip), 2
    groups of 2 heads, dt_bias, initial_states, z; L = 10 is not a multiple of Q = 4."""
    P = ssd_params(batch=2, L=10, h=4, g=2, p=4, n=3, seed=7, dtA=(0.05, 1.5), D="h", z=True,
                   dt_bias=True, initial_states=True, dt_softplus=True, A_log=True)
    dtp = _softplus(P["dt"] + P["dt_bias"])
    limit = tuple(float(v) for v in onp.quantile(dtp, [0.15, 0.85]))
    return P, limit


def _raw_case():
    """softplus off and no clamp, a few negative dt' (so a clamp at 0 shows), D (h, p)."""
    P = ssd_params(batch=2, L=10, h=4, g=2, p=3, n=3, seed=8, dtA=(0.05, 1.5), D="hp",
                   z=True, dt_bias=True, initial_states=True, A_log=True)
    neg = onp.random.default_rng(3).random(P["dt"].shape) < 0.2
    P["dt"] = onp.where(neg, -0.3 - P["dt_bias"], P["dt"])     # dt' = -0.3 there
    return P


@pytest.fixture(scope="module")
def soft(tmp_path_factory):
    d = tmp_path_factory.mktemp("soft")
    P, limit = _soft_case()
    params, inputs = _split(P)
    ref = _forward(d, "soft", params, inputs, "--dt-softplus", "--dt-limit", *limit)
    return d, params, inputs, limit, ref


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    params, inputs = _split(_raw_case())
    return d, params, inputs, _forward(d, "raw", params, inputs)


def test_the_core_written_here_is_the_oracles(soft, raw):
    """Without a slip the hand-written core is rssm_ref's (so its slips are the only
    difference the tests below see), and the slips listed are the oracle's."""
    for d, params, inputs, ref, on, limit in [(*soft[:3], soft[4], True, soft[3]),
                                              (*raw, False, None)]:
        o = onp.load(ref)
        y, final = _ssd(params, inputs, on, limit)
        assert rel_err(y, o["y"]) <= 1e-13 and rel_err(final, o["final_states"]) <= 1e-13
    assert set(WORDS) == set(SSD_SLIPS) == set(SOFT_SLIPS) | set(RAW_SLIPS)


def test_the_core_itself_is_no_slip_and_passes(soft):
    d, params, inputs, limit, ref = soft
    y, final = _ssd(params, inputs, True, limit)
    code, rep = _diagnose(d, ref, {"y": y, "final_states": final})
    assert code == 0 and rep["passed"] and rep["slip"] is None, rep["advice"]
    assert rep["rows"][0]["conventions"]["slip"] == "none" and rep["rows"][0]["is_reference"]
    assert rep["rows"][0]["label"].startswith("no slip")
    assert rep["precision"] == "float64"
    assert "matches the reference's own conventions" in rep["advice"]
    # every slip that applies here was tried, each as its own row (4-D y: channel-last only)
    assert {s for s, _ in _ranking(rep)} == {"none"} | set(SOFT_SLIPS)
    assert {r["conventions"]["layout"] for r in rep["rows"]} == {"channel-last"}


def _check_named(code, rep, slip, top=1e-12):
    rank = _ranking(rep)
    assert code == 1 and not rep["passed"], rep["advice"]
    assert rank[0][0] == slip and rep["slip"] == slip, rank[:3]
    # the slip explains the candidate; the next best explanation is far off
    assert rank[0][1] <= top and rank[1][1] >= 1e-3, rank[:2]
    assert WORDS[slip] in rep["rows"][0]["label"]
    assert rep["advice"].startswith("FAIL") and WORDS[slip] in rep["advice"]
    assert "Mamba-2's SSD core" in rep["advice"] and "fix: " in rep["advice"]


@pytest.mark.parametrize("slip", SOFT_SLIPS)
def test_each_slip_fails_ranked_first_and_named(soft, slip):
    d, params, inputs, limit, ref = soft
    y, final = _ssd(params, inputs, True, limit, slip)
    code, rep = _diagnose(d, ref, {"y": y, "final_states": final})
    _check_named(code, rep, slip)
    assert rep["precision"] == "float64"            # matched to float64's rounding


@pytest.mark.parametrize("slip", RAW_SLIPS)
def test_each_slip_without_softplus_fails_ranked_first_and_named(raw, slip):
    d, params, inputs, ref = raw
    y, final = _ssd(params, inputs, False, None, slip)
    code, rep = _diagnose(d, ref, {"y": y, "final_states": final})
    _check_named(code, rep, slip)


def test_slips_that_change_nothing_are_not_tried(raw):
    """No softplus: its missing/twice slips are not rows; no clamp: not ignored; D (h, p):
    no broadcast slip; and with y alone the padding cannot show."""
    d, params, inputs, ref = raw
    y, _ = _ssd(params, inputs, False)
    code, rep = _diagnose(d, ref, {"y": y})
    assert code == 0 and rep["slip"] is None, rep["advice"]
    tried = {s for s, _ in _ranking(rep)}
    assert not tried & {"softplus_missing", "softplus_twice", "dt_limit_ignored",
                        "D_unsqueeze_missing", "padding_leak"}
    assert {"softplus_unwanted", "dt_clamped_at_zero", "D_flat_order"} <= tried


@pytest.mark.parametrize("slip", ["groups_repeat", "dt_bias_twice", "padding_leak"])
def test_a_float32_candidate_with_a_slip_is_named_at_float32(soft, slip):
    d, params, inputs, limit, ref = soft
    y, final = _ssd(params, inputs, True, limit, slip, onp.float32)
    code, rep = _diagnose(d, ref, {"y": y, "final_states": final})
    rank = _ranking(rep)
    assert code == 1 and rep["slip"] == slip and rank[0][0] == slip, rank[:3]
    assert rep["allowed_precision"] == "float32" and rep["precision"] == "float32"
    assert rank[0][1] <= 1e-5 and rank[1][1] >= 1e-3, rank[:2]


def test_a_float32_candidate_without_a_slip_passes(soft):
    d, params, inputs, limit, ref = soft
    y, final = _ssd(params, inputs, True, limit, None, onp.float32)
    code, rep = _diagnose(d, ref, {"y": y, "final_states": final})
    assert code == 0 and rep["slip"] is None and rep["precision"] == "float32", rep["advice"]


def test_text_report_names_the_slip_and_what_to_fix(soft):
    d, params, inputs, limit, ref = soft
    y, _ = _ssd(params, inputs, True, limit, "groups_repeat")
    onp.savez(d / "C.npz", y=y)
    res = _run("diagnose", "--reference", ref, "--candidate", d / "C.npz")
    assert res.exit_code == 1
    lines = res.output.splitlines()
    first = lines[lines.index(next(l for l in lines if l.strip().startswith("rel_err"))) + 1]
    assert WORDS["groups_repeat"] in first and "<- best" in first
    assert "not against the reference" in res.output
    assert lines[-1].startswith("FAIL") and "repeat_interleave(h // g, dim=2)" in lines[-1]


def test_slips_rank_on_gradients_too(soft):
    """A candidate with a gradient (grad_dt by central differences of the hand-written
    core, step 1e-6): the slip's row is still first, its gradients the slipped core's."""
    d, params, inputs, limit, _ = soft
    ref = _forward(d, "grads", params, inputs, "--dt-softplus", "--dt-limit", *limit,
                   "--grads")
    dy = onp.load(ref)["input__dy"]
    g = onp.zeros_like(inputs["dt"])
    for idx in onp.ndindex(g.shape):
        e = onp.zeros_like(g)
        e[idx] = 1e-6
        up = _ssd(params, dict(inputs, dt=inputs["dt"] + e), True, limit, "x_dt_twice")[0]
        down = _ssd(params, dict(inputs, dt=inputs["dt"] - e), True, limit, "x_dt_twice")[0]
        g[idx] = onp.sum((up - down) * dy) / 2e-6
    y = _ssd(params, inputs, True, limit, "x_dt_twice")[0]
    code, rep = _diagnose(d, ref, {"y": y, "grad_dt": g}, "--precision", "float32")
    rank = _ranking(rep)
    assert code == 1 and rep["slip"] == "x_dt_twice" and rank[0][0] == "x_dt_twice", rank[:3]
    assert "grad_dt" in rep["keys"] and rank[0][1] <= 1e-7 and rank[1][1] >= 1e-2, rank[:2]


# ------------------------------------------------------------------ heads-flat layout
def _flat(inputs):
    """The inputs as HF's Mamba2Mixer holds them: x, z (batch, L, h·p), B, C (batch, L, g·n)."""
    return {k: (v.reshape(v.shape[:2] + (-1,)) if k in ("x", "z", "B", "C", "dy") else v)
            for k, v in inputs.items()}


def test_forward_in_heads_flat_is_channel_last_reshaped_and_verifies(soft):
    d, params, inputs, limit, _ = soft
    dy = onp.random.default_rng(5).normal(size=inputs["x"].shape)
    flags = ("--dt-softplus", "--dt-limit", *limit, "--grads", "--intermediates")
    last = onp.load(_forward(d, "last", params, dict(inputs, dy=dy), *flags))
    flat_ref = _forward(d, "flat", params, _flat(dict(inputs, dy=dy)), *flags,
                        "--layout", "heads-flat", "--ngroups", 2)
    flat = onp.load(flat_ref)
    outs = [k for k in last.files if not k.startswith(("param__", "input__", "options"))]
    assert sorted(outs) == sorted(k for k in flat.files
                                  if not k.startswith(("param__", "input__", "options")))
    merged = {"y", "grad_x", "grad_z", "grad_B", "grad_C"}
    for k in outs:
        want = last[k].reshape(last[k].shape[:2] + (-1,)) if k in merged else last[k]
        assert flat[k].shape == want.shape and rel_err(flat[k], want) <= 1e-14, k
    assert flat["y"].shape == (2, 10, 16) and flat["grad_B"].shape == (2, 10, 6)
    opts = json.loads(bytes(flat["options_json"]).decode())
    assert (opts["layout"], opts["ngroups"]) == ("heads-flat", 2)
    onp.savez(d / "Cflat.npz", **{k: flat[k] for k in outs})
    res = _run("verify", "--reference", flat_ref, "--candidate", d / "Cflat.npz")
    assert res.exit_code == 0 and "PASS" in res.output, res.output
    # the channel-last tensors against the heads-flat file: refused, naming the layout
    onp.savez(d / "Clast.npz", y=last["y"])
    res = _run("verify", "--reference", flat_ref, "--candidate", d / "Clast.npz")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "key 'y'" in res.output and "--layout channel-last" in res.output


def test_heads_flat_takes_g_from_initial_states(soft):
    d, params, inputs, limit, _ = soft
    ref = _forward(d, "flat_is", params, _flat(inputs), "--dt-softplus", "--layout",
                   "heads-flat")
    o = onp.load(ref)
    y, _ = _ssd(params, inputs, True)
    assert rel_err(o["y"], y.reshape(2, 10, -1)) <= 1e-13
    assert json.loads(bytes(o["options_json"]).decode())["ngroups"] == 2


def test_diagnose_finds_a_layout_mix_up(soft):
    """HF's flat y against a channel-last reference matches in heads-flat (exit 0, the
    rerun flags name the layout and g), and a flat candidate's slip is still named."""
    d, params, inputs, limit, ref = soft
    y, final = _ssd(params, inputs, True, limit)
    code, rep = _diagnose(d, ref, {"y": y.reshape(2, 10, -1), "final_states": final})
    assert code == 0 and rep["best"]["layout"] == "heads-flat", rep["advice"]
    assert rep["best"]["slip"] == "none" and rep["precision"] == "float64"
    assert rep["rerun_flags"] == "--layout heads-flat --ngroups 2"
    y, final = _ssd(params, inputs, True, limit, "groups_repeat")
    code, rep = _diagnose(d, ref, {"y": y.reshape(2, 10, -1), "final_states": final})
    _check_named(code, rep, "groups_repeat")
    assert rep["best"]["layout"] == "heads-flat"
    # and the other way round: channel-last tensors against a heads-flat reference
    flat_ref = _forward(d, "flat_d", params, _flat(inputs), "--dt-softplus", "--dt-limit",
                        *limit, "--layout", "heads-flat", "--ngroups", 2)
    y, final = _ssd(params, inputs, True, limit)
    code, rep = _diagnose(d, flat_ref, {"y": y, "final_states": final})
    assert code == 0 and rep["best"]["layout"] == "channel-last", rep["advice"]
    assert rep["rerun_flags"] == "--layout channel-last"


def test_init_writes_heads_flat_inputs_that_forward_reads(tmp_path):
    P, U = tmp_path / "P.npz", tmp_path / "U.npz"
    res = _run("init", "--model", "ssd", "--heads", 4, "--ngroups", 2, "--p", 3, "--n", 2,
               "--length", 6, "--out", P, "--inputs-out", U, "--layout", "heads-flat")
    assert res.exit_code == 0 and "--layout heads-flat --ngroups 2" in res.output, res.output
    flat = onp.load(U)
    assert flat["x"].shape == (2, 6, 12) and flat["B"].shape == (2, 6, 4)
    assert flat["initial_states"].shape == (2, 4, 3, 2)
    res = _run("forward", "--model", "ssd", "--params", P, "--inputs", U, "--out",
               tmp_path / "O.npz", "--layout", "heads-flat", "--ngroups", 2)
    assert res.exit_code == 0, res.output
    inputs = {k: flat[k] for k in INPUT_KEYS}
    inputs.update(x=flat["x"].reshape(2, 6, 4, 3), z=flat["z"].reshape(2, 6, 4, 3),
                  B=flat["B"].reshape(2, 6, 2, 2), C=flat["C"].reshape(2, 6, 2, 2))
    y, _ = _ssd(dict(onp.load(P)), inputs, False)
    assert rel_err(onp.load(tmp_path / "O.npz")["y"], y.reshape(2, 6, 12)) <= 1e-13


def _bad(tmp_path, inputs_edit, flags, model="ssd"):
    P = ssd_params(batch=2, L=5, h=4, g=2, p=3, n=2, seed=0, A_log=True, D="h", z=True,
                   dt_bias=True)
    params, inputs = _split(P)
    inputs = inputs_edit(inputs)
    onp.savez(tmp_path / "P.npz", **params)
    onp.savez(tmp_path / "U.npz", **inputs)
    res = _run("forward", "--model", model, "--params", tmp_path / "P.npz", "--inputs",
               tmp_path / "U.npz", "--out", tmp_path / "O.npz", *flags)
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not os.path.exists(tmp_path / "O.npz")
    return res.output


@pytest.mark.parametrize("edit, flags, needles", [
    # g unknown: no --ngroups and no initial_states
    (_flat, ["--layout", "heads-flat"],
     ["U.npz: key 'B': shape (2, 5, 4) is (batch, L, g·n) in the heads-flat layout",
      "--ngroups G"]),
    # the channel-last arrays given with --layout heads-flat, and the reverse
    (lambda U: U, ["--layout", "heads-flat", "--ngroups", 2],
     ["U.npz: key 'x': shape (2, 5, 4, 3)", "it fits the channel-last layout"]),
    (_flat, [], ["U.npz: key 'x': expected 4 dimensions", "pass --layout heads-flat"]),
    # a flat width that h (from the params) does not divide
    (lambda U: dict(_flat(U), x=onp.ones((2, 5, 13))), ["--layout", "heads-flat", "--ngroups", 2],
     ["U.npz: key 'x': shape (2, 5, 13): 13 is not a multiple of h = 4"]),
    (_flat, ["--layout", "heads-flat", "--ngroups", 3],
     ["U.npz: key 'B': shape (2, 5, 4): 4 is not a multiple of g = 3"]),
    (lambda U: U, ["--ngroups", 2], ["ngroups: given with layout 'channel-last'"]),
])
def test_heads_flat_bad_input_is_one_line_exit_2(tmp_path, edit, flags, needles):
    out = _bad(tmp_path, edit, flags)
    for n in needles:
        assert n in out, (n, out)


def test_heads_flat_is_ssd_s_alone(tmp_path):
    onp.savez(tmp_path / "P.npz", num=onp.ones((1, 1, 2)), den=onp.array([[1.0, -0.5]]))
    onp.savez(tmp_path / "U.npz", u=onp.ones((1, 3, 1)))
    res = _run("forward", "--model", "lti", "--params", tmp_path / "P.npz", "--inputs",
               tmp_path / "U.npz", "--out", tmp_path / "O.npz", "--layout", "heads-flat")
    assert res.exit_code == 2 and "layout: 'heads-flat' given for --model lti" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "O.npz")


# ------------------------------------------------- HF transformers' SSD scan, optional
def _hf():
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install torch "
                                "(CPU) to run HF transformers' Mamba2 scan against the oracle")
    m = pytest.importorskip("transformers.models.mamba2.modeling_mamba2",
                            reason="transformers is not installed: pip install transformers")
    if not hasattr(m, "mamba2_chunk_scan"):
        pytest.skip("this transformers has no mamba2_chunk_scan (the torch SSD scan of "
                    "Mamba2Mixer, transformers >= 5)")
    return torch, m


def _hf_segment_sum(torch, x):
    T = x.size(-1)
    x = x[..., None].expand(*x.size(), T)
    x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1), 0)
    s = torch.cumsum(x, dim=-2)
    return s.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=0), -torch.inf)


def _hf_chunk_scan_f64(torch, x, dt, A, B, C, chunk, D, dt_bias, H0, slip=None):
    """HF's mamba2_chunk_scan (transformers 5.x, the torch fallback of
    mamba_chunk_scan_combined) adapted here: float64 kept (no .float()), dt_softplus on,
    and ``slip="groups_repeat"`` pairs heads with groups by .repeat, not repeat_interleave."""
    F = torch.nn.functional
    b, L, h, p = x.shape
    g = B.shape[2]
    dt = F.softplus(dt + dt_bias).clamp(min=0.0)
    if slip == "groups_repeat":
        B, C = B.repeat(1, 1, h // g, 1), C.repeat(1, 1, h // g, 1)
    else:
        B, C = B.repeat_interleave(h // g, dim=2), C.repeat_interleave(h // g, dim=2)
    pad = (chunk - L % chunk) % chunk
    D_res = D[..., None] * F.pad(x, (0, 0, 0, 0, 0, pad))
    x, A = x * dt[..., None], A * dt

    def chunks(t):
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(t.shape[0], -1, chunk, *t.shape[2:])
    x, A, B, C = (chunks(t) for t in (x, A, B, C))
    A = A.permute(0, 3, 1, 2)
    Acs = torch.cumsum(A, dim=-1)
    M = torch.einsum("bclhn,bcshn->bclsh", C, B) * torch.exp(
        _hf_segment_sum(torch, A)).permute(0, 2, 3, 4, 1)
    Y_diag = torch.einsum("bclsh,bcshp->bclhp", M, x)
    B_decay = B * torch.exp(Acs[:, :, :, -1:] - Acs).permute(0, -2, -1, 1)[..., None]
    states = torch.cat([H0[:, None], torch.einsum("bclhn,bclhp->bchpn", B_decay, x)], dim=1)
    decay = torch.exp(_hf_segment_sum(torch, F.pad(Acs[:, :, :, -1], (1, 0)))).transpose(1, 3)
    new = torch.einsum("bzch,bzhpn->bchpn", decay, states)
    Y_off = torch.einsum("bclhn,bchpn->bclhp", C, new[:, :-1]) * \
        torch.exp(Acs).permute(0, 2, 3, 1)[..., None]
    y = (Y_diag + Y_off).reshape(b, -1, h, p) + D_res
    return y[:, :L], new[:, -1]


@pytest.fixture(scope="module")
def hf_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    P = ssd_params(batch=2, L=10, h=4, g=2, p=3, n=3, seed=11, dtA=(0.05, 1.5), D="h",
                   dt_bias=True, initial_states=True, dt_softplus=True, A_log=True)
    params, inputs = _split(P)
    return d, params, inputs, _forward(d, "hf", params, inputs, "--dt-softplus")


def _hf_args(torch, params, inputs):
    t = {k: torch.tensor(v) for k, v in {**params, **inputs}.items()}
    return (t["x"], t["dt"], -torch.exp(t["A_log"]), t["B"], t["C"], Q, t["D"], t["dt_bias"],
            t["initial_states"])


def test_hf_mamba2_chunk_scan_as_it_is_passes_at_float32_in_its_flat_layout(hf_case):
    """transformers' own function (it computes in float32), its y reshaped to the mixer's
    (batch, L, h·p): diagnose finds the heads-flat layout at float32."""
    torch, m = _hf()
    d, params, inputs, ref = hf_case
    x, dt, A, B, C, _, D, bias, H0 = _hf_args(torch, params, inputs)
    with torch.no_grad():
        y, final = m.mamba2_chunk_scan(x, dt, A, B, C, chunk_size=Q, D=D, dt_bias=bias,
                                       initial_states=H0, dt_softplus=True,
                                       return_final_states=True)
    y = y.reshape(2, 10, -1).numpy().astype(onp.float32)
    code, rep = _diagnose(d, ref, {"y": y, "final_states": final.numpy().astype(onp.float32)})
    assert code == 0 and rep["best"]["layout"] == "heads-flat", rep["advice"]
    assert rep["precision"] == "float32" and rep["slip"] is None


@pytest.mark.parametrize("slip", [None, "groups_repeat"])
def test_hf_scan_copy_in_float64_with_the_group_pairing_slipped(hf_case, slip):
    torch, _ = _hf()
    d, params, inputs, ref = hf_case
    with torch.no_grad():
        y, final = _hf_chunk_scan_f64(torch, *_hf_args(torch, params, inputs), slip=slip)
    cand = {"y": y.numpy(), "final_states": final.numpy()}
    if slip is None:
        o = onp.load(ref)
        tol = TOLERANCES["third_party_float64"]
        assert rel_err(cand["y"], o["y"]) <= tol
        assert rel_err(cand["final_states"], o["final_states"]) <= tol
    code, rep = _diagnose(d, ref, cand)
    if slip is None:
        assert code == 0 and _ranking(rep)[0][0] == "none", rep["advice"]
    else:
        _check_named(code, rep, slip)
