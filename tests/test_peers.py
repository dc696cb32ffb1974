"""bench --peers (benchmarks/peers.py): the bench's workloads in JAX and PyTorch,
checked against rssm-ref before they are timed.

JAX and PyTorch are optional (``pip install '.[peers]'``; CI installs neither). The tests
that need one skip with the reason ``available()`` gives; the ones about availability,
the agreement check and the key check run everywhere.
"""
import json
import math
import types

import numpy as onp
import pytest

from rssm_ref.app.bench import load_peers
from rssm_ref.tolerances import TOLERANCES

bench_peers = load_peers()
TOL = TOLERANCES["peer_agreement"]
ROW_KEYS = {"figure", "framework", "value", "unit", "baseline", "target", "pass", "detail"}


def _importable():
    return [fw for fw, (ok, _) in bench_peers.available().items() if ok]


def _need_a_peer():
    found = _importable()
    if not found:
        reasons = "; ".join(why for _, why in bench_peers.available().values())
        pytest.skip(f"neither jax nor torch is importable ({reasons})")
    return found


def _block(monkeypatch, *modules):
    """Make bench_peers' imports of these modules (and their submodules) fail as if they
    were not installed. (Not None in sys.modules: scipy's array-API helpers read
    sys.modules["torch"] and would break.)"""
    real = bench_peers._import

    def refuse(name):
        if name.split(".")[0] in modules:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name)
    monkeypatch.setattr(bench_peers, "_import", refuse)


# ------------------------------------------------------------------ everywhere
def test_available_says_why_a_framework_is_missing(monkeypatch):
    _block(monkeypatch, "jax", "torch")
    av = bench_peers.available()
    assert sorted(av) == ["jax-jit", "torch-eager"]
    for fw, module in (("jax-jit", "jax"), ("torch-eager", "torch")):
        ok, why = av[fw]
        assert ok is False
        assert why.startswith(f"{module} not importable: ModuleNotFoundError")
        assert why.endswith("pip install '.[peers]'")
    assert bench_peers.peer_rows(quick=True) == []


def test_available_blocks_one_framework_only(monkeypatch):
    before = bench_peers.available()
    _block(monkeypatch, "jax")
    after = bench_peers.available()
    assert after["jax-jit"][0] is False and "jax not importable" in after["jax-jit"][1]
    assert after["torch-eager"] == before["torch-eager"]


def test_available_reports_the_version_of_an_importable_framework(monkeypatch):
    fake = types.ModuleType("torch")
    fake.__version__ = "9.9.9"
    real = bench_peers._import
    monkeypatch.setattr(bench_peers, "_import",
                        lambda name: fake if name == "torch" else real(name))
    assert bench_peers.available()["torch-eager"] == (True, "torch 9.9.9")


def test_agreement_check_fails_loudly_above_the_tolerance():
    a = onp.linspace(-1.0, 2.0, 7)
    assert bench_peers._agree({"x": (a, a)}, "w") == 0.0
    close = bench_peers._agree({"x": (a * (1 + 1e-13), a)}, "w")
    assert 0.0 < close <= TOL
    with pytest.raises(AssertionError, match=r"w: max_rel_err_vs_rssm_ref 2\.0+e-08 in 'grad E'"):
        bench_peers._agree({"loss": (a, a), "grad E": (a + 2e-8 * 2.0, a)}, "w")


def test_unknown_parameter_arrays_fail_loudly():
    cfg = types.SimpleNamespace(model="residual")
    core = {k: onp.zeros(1) for k in bench_peers.RESIDUAL_KEYS}
    bench_peers._check_keys(dict(core, c=onp.zeros(())), cfg)          # the optional bias
    with pytest.raises(AssertionError, match="update benchmarks/peers.py"):
        bench_peers._check_keys(dict(core, gate_scale=onp.zeros(())), cfg)
    with pytest.raises(AssertionError, match="need"):
        bench_peers._check_keys({k: v for k, v in core.items() if k != "r_theta"}, cfg)


def test_constants_follow_the_configuration():
    cfg = types.SimpleNamespace(gate_gain=3.0, reflection_bound=0.5, readout="linear")
    K = bench_peers._constants(cfg)
    assert (K["GAIN"], K["BOUND"], K["readout"]) == (3.0, 0.5, "linear")
    from rssm_ref.training import head as models
    assert K["SCALE"] == models.SCALE


def test_toeplitz_solve_kernel_is_the_impulse_response():
    """The peers' kernel (T_den h = num) against scipy's lfilter on an impulse, in NumPy."""
    import scipy.signal as ssig
    L = 12
    num, den = onp.array([0.3, -1.0, 0.5]), onp.array([1.0, -0.9, 0.2])
    idx, mask = bench_peers._toeplitz_index(L)
    Ta = onp.concatenate([den, onp.zeros(L - 3)])[idx] * mask
    h = onp.linalg.solve(Ta, onp.concatenate([num, onp.zeros(L - 3)]))
    assert onp.max(onp.abs(h - ssig.lfilter(num, den, onp.eye(1, L)[0]))) < 1e-15


# ------------------------------------------------------------------ with a peer
@pytest.fixture(scope="module")
def quick_rows():
    _need_a_peer()
    return bench_peers.peer_rows(quick=True)


def test_peer_rows_schema_and_agreement(quick_rows):
    found = _importable()
    assert [(r["figure"], r["framework"]) for r in quick_rows] == [
        (f"peer_{w}", fw) for w in bench_peers.WORKLOADS for fw in found]
    for r in quick_rows:
        assert set(r) == ROW_KEYS, r["figure"]
        assert (r["unit"], r["baseline"], r["target"], r["pass"]) == ("s", None, "report", None)
        assert 0.0 < r["value"] < 60.0 and math.isfinite(r["value"])
        d = r["detail"]
        assert 0.0 <= d["max_rel_err_vs_rssm_ref"] <= TOL, (r["figure"], r["framework"], d)
        assert d["compile_s"] >= 0.0 and d["rssm_ref_s"] > 0.0
        assert d["batch"] >= 1 and d["L"] >= 1
    json.dumps(quick_rows, default=float)      # what bench --json writes


def test_peer_rows_quick_sizes(quick_rows):
    for r in quick_rows:
        figure, size = r["figure"], (r["detail"]["batch"], r["detail"]["L"])
        expected = {"peer_selective_loss_grad": (16, 16), "peer_residual_eval_L1024": (250, 256),
                    "peer_lti_siso": (250, 256)}.get(figure, (64, 16))
        assert size == expected, figure


def test_a_wrong_constant_is_caught(monkeypatch):
    """The peer with the readout scale 0.1 % off no longer agrees: AssertionError."""
    fw = _need_a_peer()[0]
    true_constants = bench_peers._constants

    def off(cfg):
        return dict(true_constants(cfg), SCALE=true_constants(cfg)["SCALE"] * 1.001)
    monkeypatch.setattr(bench_peers, "_constants", off)
    o = bench_peers._ADAPTERS[fw]()
    o.enter()
    try:
        with pytest.raises(AssertionError, match=r"residual_loss \(.*\): max_rel_err_vs_rssm_ref"):
            bench_peers._run("residual_loss", o, quick=True, repeats=1)
    finally:
        o.restore()


# the model options ModelConfig may have (each skipped where this version lacks it)
OPTIONS = [
    ("residual", {"gate": "zoh"}),
    ("residual", {"gate_gain": 3.0, "gate_bias": True, "reflection_bound": 0.5}),
    ("residual", {"readout": "linear"}),
    ("selective", {"discretization": "euler", "output": "after"}),
    ("selective", {"readout": "linear"}),
    ("selective", {"window": 3}),
]


@pytest.mark.parametrize("model,options", OPTIONS, ids=[f"{m}-{'-'.join(o)}" for m, o in OPTIONS])
def test_peer_losses_follow_the_model_options(model, options):
    from rssm_ref.training.head import ModelConfig, init_params
    found = _need_a_peer()
    try:
        cfg = ModelConfig(model, "induction", **options)
    except TypeError as exc:
        pytest.skip(f"ModelConfig has no such option here: {exc}")
    params = init_params(cfg, seed=3)
    rng = onp.random.default_rng(3)
    params = {k: v + 0.1 * rng.normal(size=onp.shape(v)) for k, v in params.items()}  # off init
    tok, tgt = bench_peers._batch(cfg, onp.random.default_rng(1), 8, 16)
    # the model code is shared by the frameworks: one suffices, PyTorch's compiles nothing
    fw = "torch-eager" if "torch-eager" in found else found[0]
    o = bench_peers._ADAPTERS[fw]()
    o.enter()
    try:
        err, _, _ = bench_peers._loss_check(o, cfg, params, tok, tgt, True, f"{model} {fw}")
    finally:
        o.restore()
    assert err <= TOL


def test_torch_settings_are_restored():
    torch = pytest.importorskip("torch", reason="torch is not importable: pip install '.[peers]'")
    saved = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    try:
        o = bench_peers._Torch()
        o.enter()
        assert torch.get_default_dtype() == torch.float64
        assert torch.get_num_threads() == bench_peers._threads()
        o.restore()
        assert (torch.get_num_threads(), torch.get_default_dtype()) == (1, torch.float32)
    finally:
        torch.set_num_threads(saved[0])
        torch.set_default_dtype(saved[1])


def test_bench_peers_flag_says_what_it_skipped(monkeypatch):
    """bench --peers without JAX or PyTorch: exit 0, the figures as usual, one note per
    missing framework on stderr naming the reason (here simulated, as in CI)."""
    from click.testing import CliRunner
    bp = load_peers()
    from rssm_ref.app.cli import main
    monkeypatch.setattr(bp, "available", lambda: {"jax-jit": (False, "jax not importable: test"),
                                                  "torch-eager": (False, "torch not importable: test")})
    monkeypatch.setattr(bp, "peer_rows", lambda quick=False, repeats=7: [])
    res = CliRunner().invoke(main, ["bench", "--quick", "--only", "lti_recurrent", "--peers"])
    assert res.exit_code == 0, res.output
    assert "jax-jit skipped: jax not importable: test" in res.stderr
    assert "torch-eager skipped" in res.stderr
    assert "lti_recurrent" in res.stdout
