"""``diagnose --model mamba-block`` names the slips a port of the Mamba-1 layer makes.

Every candidate is computed by a layer written here, from (M1)-(M9) of
rssm_ref.mamba_block, with the slip put in by hand (never by rssm_ref's slip code, so a
wrong slip there fails these tests), and judged through the CLI: a slip is exit 1 with
the slip ranked first and named; the layer itself is exit 0 as "no slip". Optional:
mambapy's MambaBlock with each slip injected into a copy of its forward. Then the
layer's bad inputs: exit 2, one line naming the file, the key and the shape expected,
nothing written.
"""
import json
import os

import numpy as onp
import pytest
from click.testing import CliRunner

from rssm_ref.app.cli import main
from rssm_ref.mamba_block import mamba_block_params
from rssm_ref.oracle.precision import round_to
from rssm_ref.oracle.slips import SLIPS

# the words a porter reads in the report, written here again: a renamed slip must show up
WORDS = {
    "xz_swapped": "z and x swapped in the in_proj split",
    "conv_flipped": "the conv flipped",
    "conv_bias_missing": "the conv bias missing",
    "conv_right_padded": "right instead of left padding",
    "conv_silu_missing": "SiLU after the conv missing",
    "dt_bias_twice": "dt_proj.bias added twice",
    "dt_bias_missing": "dt_proj.bias never added",
    "softplus_missing": "softplus missing on delta",
    "A_is_A_log": "A used as A_log",
    "zoh_B": "ZOH for B",
    "output_before": "y read from the state before the update",
    "D_missing": "the skip D x missing",
    "gate_before_D": "the gate applied before the D skip",
    "gate_on_x": "the gate applied to the wrong tensor",
}


# ----------------------------------------------------------- the layer, written again
def _silu(v):
    return v / (1 + onp.exp(-v))


def _layer(P, h, slip=None, dtype=onp.float64):
    """(M1)-(M9) in plain NumPy, in ``dtype`` throughout, with one slip put in by hand."""
    P = {k: onp.asarray(v, dtype) for k, v in P.items()}
    h = onp.asarray(h, dtype)
    batch, L, _ = h.shape
    E, N = P["A_log"].shape
    R, W = P["dt_proj.weight"].shape[1], P["conv1d.weight"].shape[2]
    xz = h @ P["in_proj.weight"].T + P.get("in_proj.bias", 0)
    x, z = (xz[..., E:], xz[..., :E]) if slip == "xz_swapped" else (xz[..., :E], xz[..., E:])
    w = P["conv1d.weight"][:, 0, :]
    if slip == "conv_flipped":
        w = w[:, ::-1]                                     # torch.flip: a true convolution
    x_conv = onp.zeros((batch, L, E), dtype)
    for t in range(L):
        for k in range(W):
            # causal: tap k reads token t - (W-1) + k; right-padded: token t + k
            s = t + k if slip == "conv_right_padded" else t - (W - 1) + k
            if 0 <= s < L:
                x_conv[:, t] += w[:, k] * x[:, s]
    if slip != "conv_bias_missing":
        x_conv = x_conv + P["conv1d.bias"]
    u = x_conv if slip == "conv_silu_missing" else _silu(x_conv)
    dbl = u @ P["x_proj.weight"].T
    dt, B, C = dbl[..., :R], dbl[..., R:R + N], dbl[..., R + N:]
    bias_times = {"dt_bias_missing": 0, "dt_bias_twice": 2}.get(slip, 1)
    pre = dt @ P["dt_proj.weight"].T + bias_times * P["dt_proj.bias"]
    delta = pre if slip == "softplus_missing" else onp.log1p(onp.exp(pre))
    A = P["A_log"] if slip == "A_is_A_log" else -onp.exp(P["A_log"])
    state, ys = onp.zeros((batch, E, N), dtype), []
    for t in range(L):
        dA = delta[:, t, :, None] * A
        Bt = onp.expm1(dA) / A if slip == "zoh_B" else delta[:, t, :, None]
        before = state
        state = onp.exp(dA) * state + Bt * B[:, t, None, :] * u[:, t, :, None]
        ys.append(onp.einsum("ben,bn->be", before if slip == "output_before" else state,
                             C[:, t]))
    hC = onp.stack(ys, axis=1)
    gate = _silu(u if slip == "gate_on_x" else z)
    if slip == "D_missing":
        gated = hC * gate
    elif slip == "gate_before_D":
        gated = hC * gate + P["D"] * u
    else:
        gated = (hC + P["D"] * u) * gate
    return gated @ P["out_proj.weight"].T + P.get("out_proj.bias", 0)


def test_the_layer_written_here_is_the_oracles(tmp_path):
    """Without a slip the hand-written layer is rssm_ref's (so its slips are the only
    difference the tests below can see)."""
    from rssm_ref.mamba_block import mamba_block_ref
    P, h = _params(), _hidden()
    assert onp.max(onp.abs(_layer(P, h) - mamba_block_ref(P, h)["y"])) <= 1e-13
    assert set(WORDS) == set(SLIPS)


# ----------------------------------------------------------- files and the CLI
def _params(seed=4):
    # a layer whose scan matters, as a trained one's does: step sizes Δ ~ 0.1-1, B and C
    # (x_proj) three times nn.Linear's initial scale, D away from 1. At mamba_ssm's
    # initialisation (Δ ~ 0.001-0.1) the scan is ~1e-3 of y, and so are its slips
    P = mamba_block_params(d_model=4, d_state=3, d_conv=3, dt_rank=2, seed=seed, bias=True,
                           dt_min=0.1, dt_max=1.0)
    P["x_proj.weight"] = 3 * P["x_proj.weight"]
    P["D"] = onp.random.default_rng(seed).uniform(0.5, 1.5, size=P["D"].shape)
    return P


def _hidden(seed=1):
    return onp.random.default_rng(seed).normal(size=(2, 7, 4))


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _reference(d, P, h, *flags):
    out = d / f"R{''.join(flags)}.npz"              # one file per set of flags
    onp.savez(d / "P.npz", **P)
    onp.savez(d / "U.npz", hidden_states=h)
    res = _run("forward", "--model", "mamba-block", "--params", d / "P.npz", "--inputs",
               d / "U.npz", "--out", out, *flags)
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
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("layer")
    P, h = _params(), _hidden()
    return d, P, h, _reference(d, P, h)


def test_the_layer_itself_is_no_slip_and_passes(case):
    d, P, h, ref = case
    code, rep = _diagnose(d, ref, {"y": _layer(P, h)})
    assert code == 0 and rep["passed"] and rep["slip"] is None, rep["advice"]
    assert rep["rows"][0]["conventions"]["slip"] == "none" and rep["rows"][0]["is_reference"]
    assert rep["rows"][0]["label"].startswith("no slip")
    assert rep["precision"] == "float64"
    assert "matches the reference's own conventions" in rep["advice"]
    # every slip was tried, each as its own row
    assert {s for s, _ in _ranking(rep)} == {"none"} | set(SLIPS)


@pytest.mark.parametrize("slip", list(WORDS))
def test_each_slip_fails_ranked_first_and_named(case, slip):
    d, P, h, ref = case
    code, rep = _diagnose(d, ref, {"y": _layer(P, h, slip)})
    rank = _ranking(rep)
    assert code == 1 and not rep["passed"], rep["advice"]
    assert rank[0][0] == slip and rep["slip"] == slip, rank[:3]
    assert rep["precision"] == "float64"            # matched to float64's rounding
    # the slip explains the candidate; the next best explanation is far off
    assert rank[0][1] <= 1e-12 and rank[1][1] >= 1e-3, rank[:2]
    assert WORDS[slip] in rep["rows"][0]["label"]
    assert rep["advice"].startswith("FAIL") and WORDS[slip] in rep["advice"]
    assert "fix: " in rep["advice"]


@pytest.mark.parametrize("slip", ["conv_right_padded", "gate_before_D", "dt_bias_twice"])
def test_a_float32_candidate_with_a_slip_is_named_at_float32(case, slip):
    d, P, h, ref = case
    code, rep = _diagnose(d, ref, {"y": _layer(P, h, slip, onp.float32)})
    rank = _ranking(rep)
    assert code == 1 and rep["slip"] == slip and rank[0][0] == slip, rank[:3]
    assert rep["allowed_precision"] == "float32" and rep["precision"] == "float32"
    assert rank[0][1] <= 1e-5 and rank[1][1] >= 1e-3, rank[:2]


def test_a_float32_candidate_without_a_slip_passes(case):
    d, P, h, ref = case
    code, rep = _diagnose(d, ref, {"y": _layer(P, h, None, onp.float32)})
    assert code == 0 and rep["slip"] is None and rep["precision"] == "float32", rep["advice"]


def test_text_report_names_the_slip_and_what_to_fix(case):
    d, P, h, ref = case
    onp.savez(d / "C.npz", y=_layer(P, h, "xz_swapped"))
    res = _run("diagnose", "--reference", ref, "--candidate", d / "C.npz")
    assert res.exit_code == 1
    lines = res.output.splitlines()
    first = lines[lines.index(next(l for l in lines if l.strip().startswith("rel_err"))) + 1]
    assert "z and x swapped in the in_proj split" in first and "<- best" in first
    assert "not against the reference" in res.output     # verify's PASS is the slip's
    assert lines[-1].startswith("FAIL") and "x, z = xz.chunk(2, dim=-1)" in lines[-1]


def test_a_correct_bfloat16_candidate_is_not_blamed_for_a_slip_it_cannot_resolve(tmp_path):
    """At mamba_ssm's initialisation (Δ ~ 0.001-0.1) ZOH and Euler B differ by ~1e-4 of
    y, below bfloat16's rounding: a correct bfloat16 candidate may sit closer to the ZOH
    row by chance; it passes as the layer itself, not failed as a slip."""
    P = mamba_block_params(d_model=4, d_state=3, d_conv=3, dt_rank=2, seed=0)
    h = _hidden(3)
    ref = _reference(tmp_path, P, h)
    y = round_to(_layer(P, h), "bfloat16").astype(onp.float32)
    code, rep = _diagnose(tmp_path, ref, {"y": y}, "--precision", "bfloat16")
    assert code == 0 and rep["slip"] is None and rep["rows"][0]["conventions"]["slip"] == "none"
    # here a slip's row (A used as A_log) is the closer one by rel_err: the case the rule is for
    assert rep["rows"][1]["rel_err"] < rep["rows"][0]["rel_err"], _ranking(rep)[:3]


def test_slips_rank_on_gradients_too(case):
    """A candidate with its gradients (here by finite differences of the hand-written
    layer in hidden_states, central, h = 1e-6): the slip's row is still first."""
    d, P, h, _ = case
    ref = _reference(d, P, h, "--grads")
    dy = onp.load(ref)["input__dy"]
    g = onp.zeros_like(h)
    for idx in onp.ndindex(h.shape):
        e = onp.zeros_like(h)
        e[idx] = 1e-6
        up, down = _layer(P, h + e, "gate_on_x"), _layer(P, h - e, "gate_on_x")
        g[idx] = onp.sum((up - down) * dy) / 2e-6
    code, rep = _diagnose(d, ref, {"y": _layer(P, h, "gate_on_x"), "grad_hidden_states": g},
                          "--precision", "float32")
    rank = _ranking(rep)
    assert code == 1 and rep["slip"] == "gate_on_x" and rank[0][0] == "gate_on_x", rank[:3]
    assert "grad_hidden_states" in rep["keys"]       # compared, with the slipped gradients
    assert rep["precision"] in ("float64", "float32") and rank[1][1] >= 1e-2


def test_a_bug_beyond_the_slips_is_shown_on_the_layers_own_row(case):
    """Only grad_conv1d.weight wrong (reversed in time): no slip explains it, and the
    report points at the layer's own row and that tensor, not at a slipped layer that
    blows up (softplus missing: every candidate of ordinary size is 1.0 away from it)."""
    d, P, h, _ = case
    ref = _reference(d, P, h, "--grads")
    g = onp.load(ref)["grad_conv1d.weight"][:, :, ::-1]
    code, rep = _diagnose(d, ref, {"y": _layer(P, h), "grad_conv1d.weight": g})
    assert code == 1 and rep["slip"] is None and rep["precision"] is None, rep["advice"]
    assert rep["rows"][0]["conventions"]["slip"] == "none"
    assert rep["rows"][0]["worst_tensor"] == "grad_conv1d.weight"
    assert rep["advice"].startswith("no combination of the conventions or slips")


# ------------------------------------------------------------- real mambapy, optional
def _mambapy():
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install torch "
                                "(CPU) to inject slips into mambapy's MambaBlock")
    mp = pytest.importorskip("mambapy.mamba", reason="mambapy is not installed: pip install "
                             "mambapy")
    return torch, mp


def _slipped_mambapy(torch, mp, slip):
    """mambapy's MambaBlock with its forward and ssm copied (mambapy 1.2, the torch path,
    sequential scan) and ``slip`` put in. The copy computes A and D in the model's dtype
    (mambapy casts them with .float(), a float32 detour test_oracle_mamba_block covers)."""
    F = torch.nn.functional

    class Slipped(mp.MambaBlock):
        def forward(self, x):
            _, L, _ = x.shape
            xz = self.in_proj(x)
            x, z = xz.chunk(2, dim=-1)
            if slip == "xz_swapped":
                x, z = z, x
            x = x.transpose(1, 2)
            conv = self.conv1d
            w = conv.weight.flip(-1) if slip == "conv_flipped" else conv.weight
            b = None if slip == "conv_bias_missing" else conv.bias
            x = F.conv1d(x, w, b, padding=conv.padding, groups=conv.groups)
            x = x[:, :, -L:] if slip == "conv_right_padded" else x[:, :, :L]
            x = x.transpose(1, 2)
            if slip != "conv_silu_missing":
                x = F.silu(x)
            return self.out_proj(self.ssm(x, z))

        def ssm(self, x, z):
            A = self.A_log if slip == "A_is_A_log" else -torch.exp(self.A_log)
            deltaBC = self.x_proj(x)
            cfg = self.config
            delta, B, C = torch.split(deltaBC, [cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
            if slip == "dt_bias_twice":
                delta = self.dt_proj(delta) + self.dt_proj.bias
            elif slip == "dt_bias_missing":
                delta = delta @ self.dt_proj.weight.T
            else:
                delta = self.dt_proj(delta)
            if slip != "softplus_missing":
                delta = F.softplus(delta)
            dA = delta.unsqueeze(-1) * A
            deltaB = (torch.expm1(dA) / A if slip == "zoh_B" else delta.unsqueeze(-1)) \
                * B.unsqueeze(2)
            BX = deltaB * x.unsqueeze(-1)
            h = torch.zeros(x.size(0), cfg.d_inner, cfg.d_state, dtype=x.dtype)
            hs = []
            for t in range(x.shape[1]):
                prev = h
                h = torch.exp(dA[:, t]) * h + BX[:, t]
                hs.append(prev if slip == "output_before" else h)
            y = (torch.stack(hs, dim=1) @ C.unsqueeze(-1)).squeeze(3)
            gate = F.silu(x if slip == "gate_on_x" else z)
            if slip == "D_missing":
                return y * gate
            if slip == "gate_before_D":
                return y * gate + self.D * x
            return (y + self.D * x) * gate

    torch.manual_seed(0)
    cfg = mp.MambaConfig(d_model=4, n_layers=1, d_state=3, d_conv=3, expand_factor=2,
                         dt_rank=2, bias=True, dt_min=0.1, dt_max=1.0)
    blk = Slipped(cfg).double()
    with torch.no_grad():             # a scan that matters, as in _params
        blk.x_proj.weight.mul_(3)
        blk.D.copy_(torch.linspace(0.5, 1.5, blk.D.numel(), dtype=torch.float64))
    return blk


@pytest.fixture(scope="module")
def mambapy_case(tmp_path_factory):
    torch, mp = _mambapy()
    d = tmp_path_factory.mktemp("mambapy")
    blk = _slipped_mambapy(torch, mp, None)
    P = {k: v.detach().numpy().copy() for k, v in blk.state_dict().items()}
    h = _hidden(2)
    return d, P, h, _reference(d, P, h)


@pytest.mark.parametrize("slip", [None] + list(WORDS))
def test_mambapy_block_with_each_slip_injected(mambapy_case, slip):
    torch, mp = _mambapy()
    d, P, h, ref = mambapy_case
    blk = _slipped_mambapy(torch, mp, slip)
    blk.load_state_dict({k: torch.tensor(v) for k, v in P.items()})
    with torch.no_grad():
        y = blk(torch.tensor(h)).numpy()
    code, rep = _diagnose(d, ref, {"y": y})
    rank = _ranking(rep)
    if slip is None:          # the copy without a slip is mambapy's layer: a float64 PASS
        assert code == 0 and rank[0][0] == "none", rep["advice"]
    else:
        assert code == 1 and rank[0][0] == slip and rep["slip"] == slip, rank[:3]
        assert rank[0][1] <= 1e-12 and rank[1][1] >= 1e-3, rank[:2]


# ------------------------------------------------------------------- bad input
def _bad_forward(tmp_path, edit, flags=()):
    P = dict(mamba_block_params(d_model=6, d_state=2, seed=0))       # E 12, n 2, W 4, R 1
    U = {"hidden_states": onp.ones((2, 5, 6))}
    edit(P, U)
    onp.savez(tmp_path / "P.npz", **P)
    onp.savez(tmp_path / "U.npz", **U)
    res = _run("forward", "--model", "mamba-block", "--params", tmp_path / "P.npz",
               "--inputs", tmp_path / "U.npz", "--out", tmp_path / "O.npz", *flags)
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not os.path.exists(tmp_path / "O.npz")
    return res.output


def _mamba2_keys(P, U):
    # mamba_ssm's Mamba2 (d_model 6, expand 2, one group, n 2, 3 heads): another layer
    P.clear()
    P.update({"in_proj.weight": onp.ones((2 * 12 + 2 * 2 + 3, 6)),
              "conv1d.weight": onp.ones((16, 1, 4)), "conv1d.bias": onp.ones(16),
              "dt_bias": onp.ones(3), "A_log": onp.ones(3), "D": onp.ones(3),
              "norm.weight": onp.ones(12), "out_proj.weight": onp.ones((6, 12))})


def _scan_only(P, U):
    for k in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "out_proj.weight"):
        P.pop(k)


@pytest.mark.parametrize("edit, flags, needles", [
    # a state_dict of another kind of layer
    (_mamba2_keys, [], ["P.npz", "unexpected key 'dt_bias'", "a Mamba-2 layer's keys"]),
    (_scan_only, [], ["P.npz", "missing key 'in_proj.weight'", "(2E, d)", "--model mamba"]),
    # E, n, dt_rank, d inconsistent between keys
    (lambda P, U: P.update({"A_log": P["A_log"][:-1]}), [],
     ["P.npz", "key 'A_log': shape (11, 2) gives E = 11", "key 'conv1d.weight' gives E = 12"]),
    (lambda P, U: P.update({"D": onp.ones(11)}), [], ["P.npz", "key 'D': shape (11,)", "E = 12"]),
    (lambda P, U: P.update({"dt_proj.weight": onp.ones((13, 1))}), [],
     ["P.npz", "key 'dt_proj.weight': shape (13, 1) gives E = 13", "(E, dt_rank)"]),
    (lambda P, U: P.update({"A_log": onp.ones((12, 3))}), [],
     ["P.npz", "key 'x_proj.weight': 5 rows", "dt_rank + 2 n = 1 + 2*3 = 7"]),
    (lambda P, U: P.update({"dt_proj.weight": onp.ones((12, 2))}), [],
     ["P.npz", "key 'x_proj.weight': 5 rows", "dt_rank + 2 n = 2 + 2*2 = 6"]),
    (lambda P, U: P.update({"out_proj.weight": onp.ones((5, 12))}), [],
     ["P.npz", "key 'out_proj.weight': shape (5, 12) gives d = 5", "(d, E)"]),
    (lambda P, U: P.update({"conv1d.weight": onp.ones((12, 4))}), [],
     ["P.npz", "key 'conv1d.weight'", "(E, 1, W)"]),
    # states of the wrong shape
    (lambda P, U: U.update(ssm_state=onp.zeros((2, 12, 3))), [],
     ["U.npz", "key 'ssm_state': shape (2, 12, 3) gives n = 3", "(batch, E, n)"]),
    (lambda P, U: U.update(ssm_state=onp.zeros((1, 12, 2))), [],
     ["U.npz", "key 'ssm_state': shape (1, 12, 2) gives batch = 1"]),
    (lambda P, U: U.update(conv_state=onp.zeros((2, 12, 5))), [],
     ["U.npz", "key 'conv_state': shape (2, 12, 5)", "(batch, 12, 4)"]),
    (lambda P, U: U.update(hidden_states=onp.ones((2, 1, 6)), conv_state=onp.zeros((2, 12, 3)),
                           ssm_state=onp.zeros((2, 12, 2))), ["--step"],
     ["key 'conv_state': shape (2, 12, 3)", "(batch, E, W) = (2, 12, 4)"]),
])
def test_bad_layer_input_is_one_line_exit_2(tmp_path, edit, flags, needles):
    out = _bad_forward(tmp_path, edit, flags)
    for n in needles:
        assert n in out, (n, out)


def _whole_model(path):
    arrays = {}
    for i in range(2):
        P = mamba_block_params(d_model=6, d_state=2, seed=10 + i)
        arrays.update({f"backbone.layers.{i}.mixer.{k}": v for k, v in P.items()})
        arrays[f"backbone.layers.{i}.norm.weight"] = onp.ones(6)
    arrays["backbone.embeddings.weight"] = onp.ones((5, 6))
    onp.savez(path, **arrays)


@pytest.mark.parametrize("prefix, needles", [
    (None, ["M.npz", "unexpected key 'backbone.embeddings.weight'",
            "select one layer with --prefix 'backbone.layers.0.mixer.'"]),
    ("model.layers.1.mixer.", ["--prefix: 'model.layers.1.mixer.' matches no key of",
                               "'backbone.layers.0.mixer.', 'backbone.layers.1.mixer.'"]),
])
def test_a_whole_model_file_needs_a_prefix_that_matches(tmp_path, prefix, needles):
    _whole_model(tmp_path / "M.npz")
    onp.savez(tmp_path / "U.npz", hidden_states=onp.ones((1, 4, 6)))
    res = _run("forward", "--model", "mamba-block", "--params", tmp_path / "M.npz",
               "--inputs", tmp_path / "U.npz", "--out", tmp_path / "O.npz",
               *(["--prefix", prefix] if prefix else []))
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    for n in needles:
        assert n in res.output, (n, res.output)
    assert not os.path.exists(tmp_path / "O.npz")


def test_diagnose_bad_candidate_is_one_line_exit_2(case):
    d, P, h, ref = case
    onp.savez(d / "bad.npz", y=onp.zeros((2, 7, 5)))
    res = _run("diagnose", "--reference", ref, "--candidate", d / "bad.npz")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "bad.npz" in res.output and "key 'y'" in res.output and "(2, 7, 4)" in res.output
