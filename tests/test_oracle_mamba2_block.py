"""--model mamba2-block: a whole Mamba-2 layer through the oracle's commands (init, forward,
forward --step, verify), the emulated precisions verify holds it to, .safetensors and
--prefix, its bad inputs, and HF transformers' Mamba2Mixer against it (optional: skipped
with the reason when torch or transformers is missing)."""
import os

import numpy as onp
import pytest
from autograd import grad

import autograd.numpy as anp
from rssm_ref.mamba2_block import mamba2_block_params, mamba2_block_ref
from rssm_ref.mamba_block import mamba_block_params
from rssm_ref.oracle.forward import bundle, compute, resolve_options
from rssm_ref.oracle.precision import emulate
from rssm_ref.oracle.verify import verify
from rssm_ref.tolerances import rel_err, TOLERANCES
from rssm_ref.util import safetensors
from _helpers import candidate_file, run_cli


_run = run_cli


def _maxabs(a, b):
    return float(onp.max(onp.abs(onp.asarray(a) - onp.asarray(b))))


@pytest.fixture
def layer(tmp_path):
    """init's Mamba-2 layer: d_model 6, headdim 3 (h = 12 / 3 = 4 heads), d_state 2, 2 groups."""
    P, U = tmp_path / "P.npz", tmp_path / "U.npz"
    res = _run("init", "--model", "mamba2-block", "--m", 6, "--p", 3, "--n", 2, "--ngroups", 2,
               "--seed", 4, "--out", P, "--inputs-out", U, "--length", 9, "--batch", 2)
    assert res.exit_code == 0, res.output
    assert "forward them with --ngroups 2" in res.output
    return tmp_path, P, U


_candidate = candidate_file


def test_forward_verify_pass_and_fail(layer):
    d, P, U = layer
    R = d / "R.npz"
    res = _run("forward", "--model", "mamba2-block", "--ngroups", 2, "--params", P, "--inputs", U,
               "--out", R, "--grads", "--intermediates")
    assert res.exit_code == 0, res.output
    keys = set(onp.load(R).files)
    params = {k for k in onp.load(P).files}
    assert {"y", "conv_state", "ssm_state", "grad_hidden_states", "zxbcdt", "xBC_conv", "dt",
            "y_ssd", "y_norm", "y_inner"} | {"grad_" + k for k in params} <= keys
    assert onp.load(R)["ssm_state"].shape == (2, 4, 3, 2)            # (batch, h, p, n)
    _candidate(R, d / "same.npz")
    assert _run("verify", "--reference", R, "--candidate", d / "same.npz").exit_code == 0

    def flip(o):            # a convolution where a cross-correlation belongs, in the gradient
        o["grad_conv1d.weight"] = o["grad_conv1d.weight"][:, :, ::-1].copy()
    _candidate(R, d / "flip.npz", flip)
    res = _run("verify", "--reference", R, "--candidate", d / "flip.npz")
    assert res.exit_code == 1 and "grad_conv1d.weight" in res.output
    # the norm over the whole width (older transformers) instead of per group: y fails
    Pz, Uz = dict(onp.load(P)), dict(onp.load(U))
    whole = compute("mamba2-block", Pz, Uz, ngroups=2, norm_group_size=12)
    onp.savez(d / "whole.npz", y=whole["y"].astype(onp.float32))
    res = _run("verify", "--reference", R, "--candidate", d / "whole.npz")
    assert res.exit_code == 1 and "MISMATCH" in res.output, res.output
    # the reference's own tensors rounded to float32 pass at float32 (the file's dtype)
    _candidate(R, d / "f32.npz", dtype=onp.float32)
    res = _run("verify", "--reference", R, "--candidate", d / "f32.npz")
    assert res.exit_code == 0, res.output
    assert "model mamba2-block (ngroups 2, norm yes" in res.output


def test_prefill_then_step_equals_one_forward(layer):
    d, P, U = layer
    Pz = dict(onp.load(P))
    h = onp.load(U)["hidden_states"]                     # (2, 9, 6)
    L = 6
    onp.savez(d / "pre.npz", hidden_states=h[:, :L])
    assert _run("forward", "--model", "mamba2-block", "--ngroups", 2, "--params", P,
                "--inputs", d / "pre.npz", "--out", d / "pre_out.npz").exit_code == 0
    state = onp.load(d / "pre_out.npz")
    conv, ssm = state["conv_state"], state["ssm_state"]
    for t in range(L, 9):
        onp.savez(d / "tok.npz", hidden_states=h[:, t:t + 1], conv_state=conv, ssm_state=ssm)
        res = _run("forward", "--model", "mamba2-block", "--ngroups", 2, "--step", "--params", P,
                   "--inputs", d / "tok.npz", "--out", d / "tok_out.npz", "--grads")
        assert res.exit_code == 0, res.output
        o = onp.load(d / "tok_out.npz")
        whole = mamba2_block_ref(Pz, h[:, :t + 1], ngroups=2)     # the loop twin
        assert _maxabs(o["y"][:, 0], whole["y"][:, t]) <= TOLERANCES["prefill_vs_forward"]
        conv, ssm = o["conv_state"], o["ssm_state"]
    whole = mamba2_block_ref(Pz, h, ngroups=2)
    assert _maxabs(conv, whole["conv_state"]) <= TOLERANCES["prefill_vs_forward"]
    assert _maxabs(ssm, whole["ssm_state"]) <= TOLERANCES["prefill_vs_forward"]
    # a step's float32 tensors verify at float32 against the step's reference
    _candidate(d / "tok_out.npz", d / "tok32.npz", dtype=onp.float32)
    res = _run("verify", "--reference", d / "tok_out.npz", "--candidate", d / "tok32.npz")
    assert res.exit_code == 0 and "step yes" in res.output, res.output


# two layers that differ in every option the shapes cannot tell: groups and the gated
# norm before the gate with a dt clamp; d_state given, no norm (z gates the scan), a
# gated MLP (d_ssm < d_inner), D per channel, causal-conv1d's (W - 1) conv state
LAYERS = {
    "g2-norm-before-limit": (dict(d_model=4, d_state=3, d_conv=4, headdim=2, ngroups=2,
                                  bias=True),
                             dict(ngroups=2, norm_before_gate=True, dt_limit=(0.02, 0.3),
                                  chunk_size=4), 4),
    "d_state-mlp-no-norm": (dict(d_model=4, d_state=2, d_conv=3, headdim=2, ngroups=2,
                                 d_ssm=4, D_has_hdim=True, rmsnorm=False),
                            dict(d_state=2, chunk_size=3), 2),
}


def _case(name, seed=2):
    pkw, opts, w_state = LAYERS[name]
    P = mamba2_block_params(seed=1, **pkw)
    rng = onp.random.default_rng(seed)
    h_, cd = P["A_log"].shape[0], P["conv1d.weight"].shape[0]
    p = (P["norm.weight"].shape[0] if "norm.weight" in P else pkw["d_ssm"]) // h_
    U = {"hidden_states": rng.normal(size=(2, 7, 4)),
         "conv_state": rng.normal(size=(2, cd, w_state)),
         "ssm_state": rng.normal(size=(2, h_, p, pkw["d_state"])),
         "dy": rng.normal(size=(2, 7, 4))}
    return P, U, opts


@pytest.mark.parametrize("name", list(LAYERS))
def test_gradients_against_autograd_through_the_loop_twin(name):
    P, U, opts = _case(name)
    out = compute("mamba2-block", P, U, grads=True, **opts)
    keys = sorted(P)
    ref_opts = {k: v for k, v in opts.items() if k != "chunk_size"}

    def f(args):
        Q = dict(zip(keys, args[:len(keys)]))
        return anp.sum(mamba2_block_ref(Q, *args[-3:], **ref_opts)["y"] * U["dy"])
    g = grad(f)([P[k] for k in keys] + [U["hidden_states"], U["conv_state"], U["ssm_state"]])
    for k, gk in zip(keys + ["hidden_states", "conv_state", "ssm_state"], g):
        scale = max(1.0, float(onp.max(onp.abs(gk))))
        assert out["grad_" + k].shape == onp.shape(gk), k
        assert _maxabs(out["grad_" + k], gk) / scale <= TOLERANCES["vjp_vs_autograd"], k
    if U["conv_state"].shape[2] == P["conv1d.weight"].shape[2]:
        # the oldest conv-state column never reaches an output: its gradient is exactly zero
        assert not out["grad_conv_state"][:, :, 0].any()


@pytest.mark.parametrize("precision", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_the_emulated_layer_is_the_oracle_in_float64_and_rounds_below(name, precision):
    """verify's yardstick (precision.mamba2_block_scan: the conv tap by tap, the SSD as its
    recurrence, every result rounded): in float64 an independent implementation of every
    output and gradient (the oracle's forward is chunked); in float32 / bfloat16 within 60
    unit roundoffs of them (measured: 11 in float32, 21 in bfloat16, grad_dt_bias and
    grad_A_log)."""
    P, U, opts = _case(name)
    ours = compute("mamba2-block", P, U, grads=True, intermediates=True, **opts)
    run = emulate("mamba2-block", P, U, resolve_options("mamba2-block", grads=True,
                                                        intermediates=True, **opts),
                  precision, grads=True)
    assert set(run) == set(ours)
    unit = {"float64": TOLERANCES["chunked_vs_recurrence"], "float32": 60 * 2.0 ** -24,
            "bfloat16": 60 * 2.0 ** -8}
    for k in ours:
        assert rel_err(run[k], ours[k]) <= unit[precision], (k, rel_err(run[k], ours[k]))
    if precision == "float64":
        assert rel_err(run["y"], ours["y"]) > 0          # two implementations, not one


def test_causal_conv1d_initial_states_layout_is_accepted():
    P = mamba2_block_params(d_model=4, d_state=2, d_conv=4, headdim=2, seed=3)
    rng = onp.random.default_rng(0)
    h, c0 = rng.normal(size=(1, 5, 4)), rng.normal(size=(1, 12, 4))
    a = compute("mamba2-block", P, {"hidden_states": h, "conv_state": c0}, ngroups=1)
    b = compute("mamba2-block", P, {"hidden_states": h, "conv_state": c0[:, :, 1:]}, ngroups=1)
    assert _maxabs(a["y"], b["y"]) == 0.0 and _maxabs(a["conv_state"], b["conv_state"]) == 0.0


# ------------------------------------------------ real checkpoints: safetensors, --prefix
def _whole_model(path, dtype=onp.float32):
    """A two-layer Mamba-2 model's state_dict as HF names it, stored in float32."""
    arrays = {}
    for i in range(2):
        P = mamba2_block_params(d_model=6, d_state=2, headdim=3, ngroups=2, seed=10 + i)
        arrays.update({f"backbone.layers.{i}.mixer.{k}": v.astype(dtype) for k, v in P.items()})
        arrays[f"backbone.layers.{i}.norm.weight"] = onp.ones(6, dtype)
    arrays["backbone.embeddings.weight"] = onp.ones((5, 6), dtype)
    safetensors.write(path, arrays)
    return arrays


def test_one_layer_of_a_float32_safetensors_model(tmp_path):
    arrays = _whole_model(tmp_path / "model.safetensors")
    onp.savez(tmp_path / "U.npz", hidden_states=onp.random.default_rng(0).normal(size=(1, 4, 6)))
    res = _run("forward", "--model", "mamba2-block", "--ngroups", 2,
               "--params", tmp_path / "model.safetensors", "--prefix", "backbone.layers.1.mixer.",
               "--inputs", tmp_path / "U.npz", "--out", tmp_path / "O.npz")
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.stderr.splitlines() if "upcast exactly to float64 from F32" in ln]
    assert len(notes) == 1 and "tensors (A_log, " in notes[0], res.stderr     # one line
    o = onp.load(tmp_path / "O.npz")
    P1 = {k.split("mixer.")[1]: v.astype(onp.float64) for k, v in arrays.items()
          if k.startswith("backbone.layers.1.mixer.")}
    assert _maxabs(o["y"], mamba2_block_ref(P1, o["input__hidden_states"], ngroups=2)["y"]) <= \
        TOLERANCES["fast_vs_ref"]
    assert all(o["param__" + k].dtype == onp.float64 and (o["param__" + k] == P1[k]).all()
               for k in P1)
    # a wrong prefix lists the Mamba-2 layers found (keys ending in A_log, in_proj.weight)
    res = _run("forward", "--model", "mamba2-block", "--ngroups", 2,
               "--params", tmp_path / "model.safetensors", "--prefix", "model.layers.1.mixer.",
               "--inputs", tmp_path / "U.npz", "--out", tmp_path / "O2.npz")
    assert res.exit_code == 2
    assert "'backbone.layers.0.mixer.', 'backbone.layers.1.mixer.'" in res.output
    # no prefix: a whole model's keys, and the prefix to select one layer
    res = _run("forward", "--model", "mamba2-block", "--ngroups", 2,
               "--params", tmp_path / "model.safetensors",
               "--inputs", tmp_path / "U.npz", "--out", tmp_path / "O2.npz")
    assert res.exit_code == 2 and "select one layer with --prefix" in res.output, res.output
    assert not os.path.exists(tmp_path / "O2.npz")


# ------------------------------------------------------------------ bad input
def _mamba1(P, U):
    P.clear()
    P.update(mamba_block_params(d_model=6, d_state=2, seed=0))


def _ones(*shape):
    return onp.ones(shape)


BAD = [
    (_mamba1, [], "a Mamba-1 layer's keys (Mamba has x_proj and dt_proj"),
    (lambda P, U: P.update({"in_proj.weight": P["in_proj.weight"][:-1]}), [],
     "P.npz: key 'in_proj.bias': shape (36,) gives d_in_proj = 36, but key 'in_proj.weight'"),
    (lambda P, U: P.update({"in_proj.weight": P["in_proj.weight"][:-1],
                            "in_proj.bias": P["in_proj.bias"][:-1]}), [],
     "P.npz: key 'in_proj.weight': expected shape (d_in_proj, d) = (36, 6), got (35, 6)"),
    (lambda P, U: P.update({"out_proj.weight": _ones(5, 12)}), [],
     "P.npz: key 'out_proj.weight': shape (5, 12) gives d = 5"),
    (lambda P, U: P.update(D=_ones(5)), [],
     "P.npz: key 'D': shape (5,) (expected (h,) or (d_ssm,)"),
    (lambda P, U: P.pop("dt_bias"), [], "P.npz: missing key 'dt_bias'"),
    (lambda P, U: P.update(A_log=onp.full(4, 800.0)), [], "P.npz: key 'A_log': entry 0"),
    (lambda P, U: U.update(ssm_state=_ones(2, 4, 2, 3)), [],
     "U.npz: key 'ssm_state': shape (2, 4, 2, 3) gives p = 2"),
    (lambda P, U: U.update(conv_state=_ones(2, 20, 2)), [],
     "U.npz: key 'conv_state': shape (2, 20, 2) (expected (batch, conv_dim, W) = (batch, 20, 4)"),
    (lambda P, U: U.update(u=U.pop("hidden_states")), [], "hidden_states, HF's name"),
    (lambda P, U: None, "no-ngroups", "--ngroups: required (or --n)"),
    (lambda P, U: None, ["--ngroups", 3], "--ngroups: 3 does not divide g·n = 4"),
    (lambda P, U: None, ["--ngroups", 2, "--n", 3],
     "--n: 3 with ngroups = 2 gives g·n = 6"),
    (lambda P, U: None, ["--n", 5], "--n: 5 does not divide g·n = 4"),
    (lambda P, U: None, ["--norm-group-size", 5], "--norm-group-size: 5 (expected an integer"),
    (lambda P, U: P.pop("norm.weight"), ["--norm-group-size", 4],
     "--norm-group-size: 4 given, but params has no 'norm.weight'"),
    (lambda P, U: None, ["--eps", 0], "eps: 0.0 (expected a finite number > 0"),
    (lambda P, U: None, ["--dt-limit", 2, 1], "dt_limit: (2.0, 1.0)"),
    (lambda P, U: None, ["--dt-softplus"], "dt_softplus: given for --model mamba2-block"),
    (lambda P, U: None, ["--discretization", "zoh"],
     "discretization: 'zoh' given for --model mamba2-block"),
    (lambda P, U: None, ["--path", "fft"], "path: 'fft' given for --model mamba2-block"),
    (lambda P, U: None, ["--layout", "channel-first"],
     "layout: 'channel-first' given for --model mamba2-block"),
    (lambda P, U: None, ["--step"], "step: one decoding step needs hidden_states (batch, 1, d)"),
    (lambda P, U: U.update(hidden_states=_ones(2, 1, 6), conv_state=_ones(2, 20, 3),
                           ssm_state=_ones(2, 4, 3, 2)), ["--step"],
     "step: key 'conv_state': shape (2, 20, 3) (expected (batch, conv_dim, W) = (2, 20, 4)"),
]


@pytest.mark.parametrize("edit, flags, needle", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_is_exit_2_one_line_nothing_written(tmp_path, edit, flags, needle):
    P = mamba2_block_params(d_model=6, d_state=2, headdim=3, ngroups=2, seed=0, bias=True)
    U = {"hidden_states": onp.ones((2, 5, 6))}
    edit(P, U)
    onp.savez(tmp_path / "P.npz", **P)
    onp.savez(tmp_path / "U.npz", **U)
    # every case but the one without groups gives --ngroups 2 unless it sets its own
    if flags == "no-ngroups":
        flags = []
    elif "--n" not in flags and "--ngroups" not in flags:
        flags = ["--ngroups", 2] + flags
    res = _run("forward", "--model", "mamba2-block", "--params", tmp_path / "P.npz",
               "--inputs", tmp_path / "U.npz", "--out", tmp_path / "O.npz", *flags)
    assert res.exit_code == 2, res.output
    assert needle in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "O.npz")


@pytest.mark.parametrize("args, needle", [
    (["forward", "--model", "mamba-block", "--ngroups", 2],
     "ngroups: given for --model mamba-block (expected it only with --model mamba2-block or "
     "--model ssd with --layout heads-flat)"),
    (["forward", "--model", "ssd", "--norm-before-gate"],
     "norm_before_gate: given for --model ssd"),
    (["forward", "--model", "lti", "--chunk-size", 4],
     "chunk_size: given for --model lti (expected it only with --model ssd or mamba2-block)"),
    (["init", "--model", "mamba2-block", "--heads", 2], "--heads: given for --model mamba2-block"),
    (["init", "--model", "mamba2-block", "--ngroups", 3], "--ngroups: 3 does not divide nheads"),
    (["init", "--model", "mamba2-block", "--p", 5], "--p: 5 does not divide d_ssm = 16"),
])
def test_flags_that_do_not_apply_are_refused(tmp_path, args, needle):
    P = mamba2_block_params(d_model=6, d_state=2, headdim=3, ngroups=2, seed=0)
    onp.savez(tmp_path / "P.npz", **P)
    onp.savez(tmp_path / "U.npz", hidden_states=onp.ones((2, 5, 6)))
    files = (["--params", tmp_path / "P.npz", "--inputs", tmp_path / "U.npz"]
             if args[0] == "forward" else [])
    res = _run(*args, *files, "--out", tmp_path / "O.npz")
    assert res.exit_code == 2, res.output
    assert needle in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "O.npz")


def test_a_mamba2_state_dict_given_to_mamba_block_is_named(tmp_path):
    onp.savez(tmp_path / "P.npz", **mamba2_block_params(d_model=6, d_state=2, headdim=3, seed=0))
    onp.savez(tmp_path / "U.npz", hidden_states=onp.ones((2, 5, 6)))
    res = _run("forward", "--model", "mamba-block", "--params", tmp_path / "P.npz",
               "--inputs", tmp_path / "U.npz", "--out", tmp_path / "O.npz")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "a Mamba-2 layer's keys" in res.output and "use --model mamba2-block" in res.output


# ------------------------------------------------- real HF transformers, optional
def _hf_mixer(g, limit, seed=0):
    """HF's Mamba2Mixer (random Mamba2Config, no download), its torch path (eval), with
    float32-exact parameters and inputs: the float32 and float64 runs see the same numbers."""
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install torch "
                                "(CPU) to run HF's Mamba2Mixer against the oracle")
    M = pytest.importorskip("transformers.models.mamba2.modeling_mamba2",
                            reason="transformers (with Mamba2) is not installed: pip install "
                                   "transformers")
    from transformers import Mamba2Config
    h, p, n, d = 4, 3, 3, 6
    cfg = Mamba2Config(hidden_size=d, num_heads=h, head_dim=p, state_size=n, n_groups=g,
                       conv_kernel=4, expand=2, chunk_size=5, num_hidden_layers=1, use_bias=True,
                       use_conv_bias=True, vocab_size=8,
                       time_step_limit=(0.0, float("inf")) if limit is None else limit)
    torch.manual_seed(seed)
    mixer = M.Mamba2Mixer(cfg, layer_idx=0).double().eval()
    rng = onp.random.default_rng(seed)
    with torch.no_grad():
        for _, prm in mixer.named_parameters():
            prm.copy_(torch.tensor(rng.uniform(-0.6, 0.6, size=tuple(prm.shape))))
        mixer.dt_bias.copy_(torch.tensor(rng.uniform(-3.0, 0.5, size=h)))
        mixer.norm.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, size=h * p)))
        for prm in mixer.parameters():
            prm.copy_(prm.float().double())
    P = {k: v.detach().numpy().copy() for k, v in mixer.state_dict().items()}
    u, G = (rng.normal(size=(2, 13, d)).astype(onp.float32).astype(float) for _ in range(2))
    opts = {"ngroups": g, "chunk_size": 5}
    if limit is not None:
        opts["dt_limit"] = limit
    U = {"hidden_states": u, "dy": G}
    ref = bundle(resolve_options("mamba2-block", grads=True, **opts), P, U,
                 compute("mamba2-block", P, U, grads=True, **opts))
    return torch, mixer, P, u, G, ref


def _hf_candidate(torch, mixer, u, G, dtype):
    m = mixer.to(dtype)
    ut = torch.tensor(u, dtype=dtype, requires_grad=True)
    for prm in m.parameters():
        prm.grad = None
    y = m(ut)
    (y * torch.tensor(G, dtype=dtype)).sum().backward()
    cand = {"y": y.detach().numpy(), "grad_hidden_states": ut.grad.numpy()}
    cand.update({"grad_" + k: prm.grad.numpy() for k, prm in m.named_parameters()})
    return cand


HF_CASES = [(1, None), (2, None), (2, (0.05, 0.8))]


@pytest.mark.parametrize("g,limit", HF_CASES, ids=["g1", "g2", "g2-limit"])
def test_hf_mamba2_mixer_in_float32_passes_at_float32(g, limit):
    """HF's Mamba2Mixer run in float32: y and every gradient PASS at float32 (measured:
    worst 8.4e-07 of a 1.3e-06 threshold, grad_dt_bias with the limit) and FAIL at float64."""
    torch, mixer, P, u, G, ref = _hf_mixer(g, limit)
    cand = _hf_candidate(torch, mixer, u, G, torch.float32)
    assert all(v.dtype == onp.float32 for v in cand.values())
    at32 = verify(ref, cand, None)                       # the candidate's dtype: float32
    assert at32.precision == "float32" and at32.verdict == "PASS", at32.to_text()
    assert len(at32.tensors) == 2 + len(P)               # y, grad_hidden_states, every param
    assert verify(ref, cand, "float64").verdict == "FAIL"


@pytest.mark.parametrize("g,limit", HF_CASES, ids=["g1", "g2", "g2-limit"])
def test_hf_mamba2_mixer_float64_as_shipped_is_float32_inside(g, limit):
    """HF's float64 mixer casts to float32 inside (A_log.float(), the scan's .float(), the
    norm's float32): it FAILs at float64 and PASSes at float32 (measured: worst 7.4e-07,
    grad_A_log, g = 1)."""
    torch, mixer, P, u, G, ref = _hf_mixer(g, limit)
    cand = _hf_candidate(torch, mixer, u, G, torch.float64)
    assert all(v.dtype == onp.float64 for v in cand.values())
    at64 = verify(ref, cand, "float64")
    assert at64.verdict == "FAIL"
    assert "would pass at --precision float32" in at64.to_text()
    assert verify(ref, cand, "float32").verdict == "PASS"
