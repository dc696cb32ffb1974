"""--model mamba-block: a whole Mamba-1 layer through the oracle's commands (init, forward,
forward --step, verify), its bad inputs, and real mambapy code against it (optional:
skipped with the reason when torch or mambapy is missing)."""
import os

import numpy as onp
import pytest
from autograd import grad

import autograd.numpy as anp
from rssm_ref.mamba_block import (conv_state_to_initial_states, mamba_block_params,
                                  mamba_block_ref)
from rssm_ref.oracle.forward import compute
from rssm_ref.tolerances import TOLERANCES
from _helpers import candidate_file, run_cli


_run = run_cli


def _maxabs(a, b):
    return float(onp.max(onp.abs(onp.asarray(a) - onp.asarray(b))))


@pytest.fixture
def layer(tmp_path):
    P, U = tmp_path / "P.npz", tmp_path / "U.npz"
    res = _run("init", "--model", "mamba-block", "--m", 6, "--n", 3, "--seed", 4,
               "--out", P, "--inputs-out", U, "--length", 9, "--batch", 2)
    assert res.exit_code == 0, res.output
    return tmp_path, P, U


_candidate = candidate_file


def test_forward_verify_pass_and_fail(layer):
    d, P, U = layer
    R = d / "R.npz"
    res = _run("forward", "--model", "mamba-block", "--params", P, "--inputs", U, "--out", R,
               "--grads", "--intermediates")
    assert res.exit_code == 0, res.output
    keys = set(onp.load(R).files)
    assert {"y", "conv_state", "ssm_state", "grad_hidden_states", "grad_in_proj.weight",
            "grad_conv1d.weight", "xz", "x_conv", "x_act", "delta", "y_ssm", "z"} <= keys
    _candidate(R, d / "same.npz")
    assert _run("verify", "--reference", R, "--candidate", d / "same.npz").exit_code == 0

    def flip(o):            # a convolution where a cross-correlation belongs, in the gradient
        o["grad_conv1d.weight"] = o["grad_conv1d.weight"][:, :, ::-1].copy()
    _candidate(R, d / "flip.npz", flip)
    res = _run("verify", "--reference", R, "--candidate", d / "flip.npz")
    assert res.exit_code == 1 and "grad_conv1d.weight" in res.output
    # the same tensors rounded to float32 pass at float32 (the file's dtype says so)
    _candidate(R, d / "f32.npz", dtype=onp.float32)
    res = _run("verify", "--reference", R, "--candidate", d / "f32.npz")
    assert res.exit_code == 0, res.output


def test_prefill_then_step_equals_one_forward(layer):
    d, P, U = layer
    Pz = {k: v for k, v in onp.load(P).items()}
    h = onp.load(U)["hidden_states"]                     # (2, 9, 6)
    L = 6
    onp.savez(d / "pre.npz", hidden_states=h[:, :L])
    assert _run("forward", "--model", "mamba-block", "--params", P, "--inputs", d / "pre.npz",
                "--out", d / "pre_out.npz").exit_code == 0
    state = onp.load(d / "pre_out.npz")
    conv, ssm = state["conv_state"], state["ssm_state"]
    for t in range(L, 9):
        onp.savez(d / "tok.npz", hidden_states=h[:, t:t + 1], conv_state=conv, ssm_state=ssm)
        res = _run("forward", "--model", "mamba-block", "--step", "--params", P, "--inputs",
                   d / "tok.npz", "--out", d / "tok_out.npz")
        assert res.exit_code == 0, res.output
        o = onp.load(d / "tok_out.npz")
        whole = mamba_block_ref(Pz, h[:, :t + 1])       # the loop twin, independent path
        assert _maxabs(o["y"][:, 0], whole["y"][:, t]) <= TOLERANCES["prefill_vs_forward"]
        conv, ssm = o["conv_state"], o["ssm_state"]
    whole = mamba_block_ref(Pz, h)
    assert _maxabs(conv, whole["conv_state"]) <= TOLERANCES["prefill_vs_forward"]
    assert _maxabs(ssm, whole["ssm_state"]) <= TOLERANCES["prefill_vs_forward"]


def test_gradients_against_autograd_through_the_loop_twin():
    P = mamba_block_params(d_model=4, d_state=2, d_conv=3, dt_rank=2, seed=1, bias=True)
    rng = onp.random.default_rng(2)
    h = rng.normal(size=(2, 7, 4))
    c0, s0 = rng.normal(size=(2, 8, 3)), rng.normal(size=(2, 8, 2))
    dy = rng.normal(size=(2, 7, 4))
    out = compute("mamba-block", P, {"hidden_states": h, "conv_state": c0, "ssm_state": s0,
                                     "dy": dy}, grads=True)
    keys = sorted(P)

    def f(args):
        Q = dict(zip(keys, args[:len(keys)]))
        return anp.sum(mamba_block_ref(Q, args[-3], args[-2], args[-1])["y"] * dy)
    g = grad(f)([P[k] for k in keys] + [h, c0, s0])
    for k, gk in zip(keys + ["hidden_states", "conv_state", "ssm_state"], g):
        scale = max(1.0, float(onp.max(onp.abs(gk))))
        assert _maxabs(out["grad_" + k], gk) / scale <= TOLERANCES["vjp_vs_autograd"], k
    # the oldest conv-state column never reaches an output: its gradient is exactly zero
    assert not out["grad_conv_state"][:, :, 0].any()


def test_causal_conv1d_initial_states_layout_is_accepted():
    P = mamba_block_params(d_model=4, d_state=2, d_conv=4, seed=3)
    rng = onp.random.default_rng(0)
    h, c0 = rng.normal(size=(1, 5, 4)), rng.normal(size=(1, 8, 4))
    a = compute("mamba-block", P, {"hidden_states": h, "conv_state": c0})
    b = compute("mamba-block", P, {"hidden_states": h,
                                   "conv_state": conv_state_to_initial_states(c0)})
    assert _maxabs(a["y"], b["y"]) == 0.0 and _maxabs(a["conv_state"], b["conv_state"]) == 0.0


@pytest.mark.parametrize("edit, flags, needle", [
    (lambda P, U: U.update(conv_state=onp.zeros((2, 12, 2))), [],
     "key 'conv_state': shape (2, 12, 2) (expected (batch, E, W)"),
    (lambda P, U: P.update({"in_proj.weight": P["in_proj.weight"][:-1]}), [],
     "key 'in_proj.weight': 23 rows (expected 2 E"),
    (lambda P, U: U.update(u=U.pop("hidden_states")), [], "hidden_states, HF's name"),
    (lambda P, U: None, ["--step"], "step: one decoding step needs hidden_states (batch, 1, d)"),
    (lambda P, U: P.update(bogus=onp.zeros(1)), [], "unexpected key 'bogus'"),
    (lambda P, U: None, ["--discretization", "zoh"], "verify another convention on the scan"),
])
def test_bad_input_is_exit_2_naming_the_key(tmp_path, edit, flags, needle):
    P = {k: v for k, v in mamba_block_params(d_model=6, d_state=2, seed=0).items()}
    U = {"hidden_states": onp.ones((2, 5, 6))}
    edit(P, U)
    onp.savez(tmp_path / "P.npz", **P)
    onp.savez(tmp_path / "U.npz", **U)
    res = _run("forward", "--model", "mamba-block", "--params", tmp_path / "P.npz",
               "--inputs", tmp_path / "U.npz", "--out", tmp_path / "O.npz", *flags)
    assert res.exit_code == 2, res.output
    assert needle in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "O.npz")


# ------------------------------------------------------------- real mambapy, optional
def _mambapy():
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install torch "
                                "(CPU) to run mambapy against the oracle")
    mp = pytest.importorskip("mambapy.mamba", reason="mambapy is not installed: pip install "
                             "mambapy")
    return torch, mp


def test_mambapy_block_forward_step_and_gradients():
    """mambapy's MambaBlock in float64: forward, five decoding steps and every gradient.
    mambapy computes A = -exp(A_log.float()) and D.float() in float32, so the oracle is
    given the log of that float32 A (and a float32-exact D); the gradients of A_log and D
    pass through those float32 casts and are compared at float32's precision, the other
    gradients at float64's."""
    torch, mp = _mambapy()
    torch.manual_seed(0)
    cfg = mp.MambaConfig(d_model=8, n_layers=1, d_state=4, d_conv=3, expand_factor=2,
                         dt_rank=3)
    blk = mp.MambaBlock(cfg).double()
    rng = onp.random.default_rng(5)
    with torch.no_grad():
        for name, p in blk.named_parameters():
            if name not in ("A_log", "D", "dt_proj.bias"):
                p.copy_(torch.tensor(rng.uniform(-0.6, 0.6, size=tuple(p.shape))))
        blk.D.copy_(blk.D.float().double())
    P = {k: v.detach().numpy().copy() for k, v in blk.state_dict().items()}
    P["A_log"] = onp.log(torch.exp(blk.A_log.detach().float()).double().numpy())
    h = rng.normal(size=(2, 11, 8))
    dy = rng.normal(size=(2, 11, 8))
    ht = torch.tensor(h, requires_grad=True)
    y = blk(ht)
    (y * torch.tensor(dy)).sum().backward()
    ours = compute("mamba-block", P, {"hidden_states": h, "dy": dy}, grads=True)
    assert _maxabs(y.detach().numpy(), ours["y"]) <= TOLERANCES["third_party_float64"]
    assert _maxabs(ht.grad.numpy(), ours["grad_hidden_states"]) <= TOLERANCES["third_party_float64"]
    for name, p in blk.named_parameters():
        g, mine = p.grad.numpy(), ours["grad_" + name]
        rel = _maxabs(g, mine) / max(1e-300, float(onp.max(onp.abs(g))))
        key = "third_party_float32_cast" if name in ("A_log", "D") else "third_party_float64"
        assert rel <= TOLERANCES[key], (name, rel)
    # decoding: mambapy's step cache holds the last W - 1 conv inputs (causal-conv1d's)
    with torch.no_grad():
        cache = (torch.zeros(2, 16, 4, dtype=torch.float64), torch.zeros(2, 16, 2, dtype=torch.float64))
        conv, ssm = onp.zeros((2, 16, 3)), onp.zeros((2, 16, 4))
        for t in range(5):
            y_t, cache = blk.step(torch.tensor(h[:, t]), cache)
            o = compute("mamba-block", P, {"hidden_states": h[:, t:t + 1], "conv_state": conv,
                                           "ssm_state": ssm})
            assert _maxabs(y_t.numpy(), o["y"][:, 0]) <= TOLERANCES["third_party_float64"]
            conv, ssm = o["conv_state"], o["ssm_state"]
        assert _maxabs(cache[0].numpy(), ssm) <= TOLERANCES["third_party_float64"]
        assert _maxabs(cache[1].numpy(), conv[:, :, 1:]) <= TOLERANCES["third_party_float64"]


# ------------------------------------------------- real HF transformers, optional
def test_hf_mamba_mixer_float64_is_caught_computing_in_float32():
    """HF transformers' MambaMixer (random MambaConfig, no download), its torch path run in
    float64. Its scan upcasts with ``.float()`` (dt, A, B, the state: float32 inside a
    float64 model), so the oracle must not call it float64-exact: verify at float64
    FAILs, at float32 it PASSes. D and dt_proj.bias are made float32-exact and A_log the
    log of the float32 A HF uses, so the only gap left is the float32 arithmetic."""
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install torch (CPU)")
    tr = pytest.importorskip("transformers", reason="transformers is not installed")
    from rssm_ref.oracle.forward import bundle, resolve_options
    from rssm_ref.oracle.verify import verify
    MambaMixer = tr.models.mamba.modeling_mamba.MambaMixer
    cfg = tr.MambaConfig(hidden_size=8, state_size=4, conv_kernel=4, expand=2,
                         time_step_rank=3, use_bias=True, use_conv_bias=True)
    torch.manual_seed(0)
    mx = MambaMixer(cfg, layer_idx=0).double().eval()
    with torch.no_grad():
        mx.D.copy_(mx.D.float().double())
        mx.dt_proj.bias.copy_(mx.dt_proj.bias.float().double())
    P = {k: v.detach().numpy().copy() for k, v in mx.state_dict().items()}
    P["A_log"] = onp.log(torch.exp(mx.A_log.detach().float()).double().numpy())
    rng = onp.random.default_rng(0)
    h, dy = rng.normal(size=(2, 7, 8)), rng.normal(size=(2, 7, 8))
    ht = torch.tensor(h, requires_grad=True)
    y = mx(ht)
    (y * torch.tensor(dy)).sum().backward()
    U = {"hidden_states": h, "dy": dy}
    ref = bundle(resolve_options("mamba-block", grads=True), P, U,
                 compute("mamba-block", P, U, grads=True))
    cand = {"y": y.detach().numpy(), "grad_hidden_states": ht.grad.numpy()}
    cand.update({"grad_" + n: p.grad.numpy() for n, p in mx.named_parameters()})
    assert verify(ref, cand, "float64").verdict == "FAIL"
    assert verify(ref, cand, "float32").verdict == "PASS"


# ------------------------------------------------ real checkpoints: safetensors, --prefix
def _whole_model(path, dtype=onp.float32):
    """A two-layer model's state_dict as HF names it, stored in float32."""
    from rssm_ref.util import safetensors
    arrays = {}
    for i in range(2):
        P = mamba_block_params(d_model=6, d_state=2, seed=10 + i)
        arrays.update({f"backbone.layers.{i}.mixer.{k}": v.astype(dtype) for k, v in P.items()})
        arrays[f"backbone.layers.{i}.norm.weight"] = onp.ones(6, dtype)
    arrays["backbone.embeddings.weight"] = onp.ones((5, 6), dtype)
    safetensors.write(path, arrays)
    return arrays


def test_one_layer_of_a_float32_safetensors_model(tmp_path):
    arrays = _whole_model(tmp_path / "model.safetensors")
    onp.savez(tmp_path / "U.npz", hidden_states=onp.random.default_rng(0).normal(size=(1, 4, 6)))
    res = _run("forward", "--model", "mamba-block", "--params", tmp_path / "model.safetensors",
               "--prefix", "backbone.layers.1.mixer.", "--inputs", tmp_path / "U.npz",
               "--out", tmp_path / "O.npz")
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.stderr.splitlines() if "upcast exactly to float64 from F32" in ln]
    assert len(notes) == 1 and "tensors (A_log, " in notes[0], res.stderr     # one line
    o = onp.load(tmp_path / "O.npz")
    P1 = {k.split("mixer.")[1]: v.astype(onp.float64) for k, v in arrays.items()
          if k.startswith("backbone.layers.1.mixer.")}
    assert _maxabs(o["y"], mamba_block_ref(P1, o["input__hidden_states"])["y"]) <= \
        TOLERANCES["fast_vs_ref"]
    assert all(o["param__" + k].dtype == onp.float64 and (o["param__" + k] == P1[k]).all()
               for k in P1)


def test_a_prefix_that_matches_nothing_lists_the_layers(tmp_path):
    _whole_model(tmp_path / "model.safetensors")
    onp.savez(tmp_path / "U.npz", hidden_states=onp.ones((1, 4, 6)))
    res = _run("forward", "--model", "mamba-block", "--params", tmp_path / "model.safetensors",
               "--prefix", "model.layers.1.mixer.", "--inputs", tmp_path / "U.npz",
               "--out", tmp_path / "O.npz")
    assert res.exit_code == 2
    assert "'backbone.layers.0.mixer.', 'backbone.layers.1.mixer.'" in res.output
    assert not os.path.exists(tmp_path / "O.npz")


def test_pytorch_and_pickle_files_are_recognised_never_unpickled(tmp_path):
    import pickle
    import zipfile
    fake = tmp_path / "weights.npz"          # torch.save's layout: archive/data.pkl + data/0
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("weights/data.pkl", pickle.dumps({"x": 1}))
        z.writestr("weights/data/0", b"\0" * 8)
    legacy = tmp_path / "legacy.npz"
    legacy.write_bytes(pickle.dumps({"x": 1}, protocol=2))
    onp.savez(tmp_path / "U.npz", hidden_states=onp.ones((1, 4, 6)))
    for f, what in ((fake, "a PyTorch torch.save file"), (legacy, "a Python pickle")):
        res = _run("forward", "--model", "mamba-block", "--params", f, "--inputs",
                   tmp_path / "U.npz", "--out", tmp_path / "O.npz")
        assert res.exit_code == 2 and what in res.output and "safetensors" in res.output, res.output
        assert "never unpickled" in res.output


def test_a_real_torch_save_file_renamed_npz_is_refused(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install torch (CPU)")
    f = tmp_path / "P.npz"
    torch.save({"A_log": torch.zeros(2, 2)}, f)
    res = _run("verify", "--reference", f, "--candidate", f)
    assert res.exit_code == 2 and "a PyTorch torch.save file" in res.output, res.output


def _float32_candidate(module, torch, h, dy):
    """Run a torch layer in float32 on float32-exact inputs: the candidate's tensors."""
    m = module.float()
    ht = torch.tensor(h, dtype=torch.float32, requires_grad=True)
    y = m(ht)
    (y * torch.tensor(dy, dtype=torch.float32)).sum().backward()
    cand = {"y": y.detach().numpy(), "grad_hidden_states": ht.grad.numpy()}
    cand.update({"grad_" + n: p.grad.numpy() for n, p in m.named_parameters()})
    return cand


def _judge_float32(P, h, dy, cand):
    """verify at the candidate's own precision (float32, from its dtype) and at float64."""
    from rssm_ref.oracle.forward import bundle, resolve_options
    from rssm_ref.oracle.verify import candidate_precision, verify
    U = {"hidden_states": h, "dy": dy}
    ref = bundle(resolve_options("mamba-block", grads=True), P, U,
                 compute("mamba-block", P, U, grads=True))
    assert candidate_precision(cand, ref)[0] == "float32"
    return verify(ref, cand, "float32"), verify(ref, cand, "float64")


def _float32_exact(torch, module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.float().double())


def test_mambapy_block_in_float32_passes_at_float32():
    """mambapy's MambaBlock run in float32 (forward and every gradient): PASS at float32,
    which its dtype claims, and FAIL at float64, which it cannot reach."""
    torch, mp = _mambapy()
    torch.manual_seed(1)
    cfg = mp.MambaConfig(d_model=8, n_layers=1, d_state=4, d_conv=4, expand_factor=2,
                         dt_rank=2)
    blk = mp.MambaBlock(cfg).double()
    _float32_exact(torch, blk)
    P = {k: v.detach().numpy().copy() for k, v in blk.state_dict().items()}
    rng = onp.random.default_rng(6)
    h, dy = (rng.normal(size=(2, 9, 8)).astype(onp.float32).astype(float) for _ in range(2))
    at32, at64 = _judge_float32(P, h, dy, _float32_candidate(blk, torch, h, dy))
    assert at32.verdict == "PASS", at32.to_text()
    assert at64.verdict == "FAIL"
    assert len(at32.tensors) == 2 + len(P)       # y, grad_hidden_states, every parameter


def test_hf_mamba_mixer_in_float32_passes_at_float32():
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install torch (CPU)")
    tr = pytest.importorskip("transformers", reason="transformers is not installed")
    MambaMixer = tr.models.mamba.modeling_mamba.MambaMixer
    cfg = tr.MambaConfig(hidden_size=8, state_size=4, conv_kernel=3, expand=2,
                         time_step_rank=2, use_bias=False, use_conv_bias=True)
    torch.manual_seed(2)
    mx = MambaMixer(cfg, layer_idx=0).double().eval()
    _float32_exact(torch, mx)
    P = {k: v.detach().numpy().copy() for k, v in mx.state_dict().items()}
    rng = onp.random.default_rng(7)
    h, dy = (rng.normal(size=(2, 8, 8)).astype(onp.float32).astype(float) for _ in range(2))
    at32, at64 = _judge_float32(P, h, dy, _float32_candidate(mx, torch, h, dy))
    assert at32.verdict == "PASS", at32.to_text()
    assert at64.verdict == "FAIL"
