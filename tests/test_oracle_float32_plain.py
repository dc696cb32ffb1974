"""the float32 emulation computes in float32 everywhere, so that a
correct float32 implementation written by someone else (tests/_plain_float32.py: plain
float32 einsums and loops, hand-written gradients, no rssm_ref code) passes
``verify --precision float32``, and its wrong-convention twin still fails."""
import sys
from pathlib import Path

import autograd.numpy as np
import numpy as onp
import pytest
from autograd import make_vjp
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _plain_float32 as plain  # noqa: E402

from rssm_ref.app.cli import main  # noqa: E402
from rssm_ref.oracle import precision as pr  # noqa: E402
from rssm_ref.oracle import sample  # noqa: E402
from rssm_ref.oracle.forward import bundle, compute, resolve_options  # noqa: E402
from rssm_ref.oracle.verify import verify  # noqa: E402
from rssm_ref.tolerances import rel_err  # noqa: E402

# (model, options, init sizes): every model, every form, every convention
CASES = [
    ("lti", {}, dict(form="tf", m=2, p=2, order=3)),
    ("lti", {}, dict(form="ss", m=2, p=2, order=3)),
    ("residual", {"gate": "euler"}, dict(form="tf", m=2)),
    ("residual", {"gate": "zoh"}, dict(form="ss", m=2)),
    ("selective", {"discretization": "zoh", "output": "before"}, dict(m=3, n=4)),
    ("selective", {"discretization": "euler", "output": "after"}, dict(m=3, n=4)),
]


def _draw(model, opts, sizes, seed, L, batch=2):
    P = sample.init_params(model, seed=seed, **sizes)
    U = sample.init_inputs(model, P, seed=seed + 1000, batch=batch, L=L)
    ref = bundle(resolve_options(model, grads=True, **opts), P, U,
                 compute(model, P, U, grads=True, **opts))
    return P, U, ref


def _selective_1024(seed):
    """The draws of the issue: m = 4, n = 16, L = 1024 (batch 2), paper conventions."""
    P = sample.init_params("selective", seed=1000 + seed, m=4, n=16)
    U = sample.init_inputs("selective", P, seed=2000 + seed, batch=2, L=1024)
    opts = resolve_options("selective", grads=True)
    return P, U, bundle(opts, P, U, compute("selective", P, U, grads=True)), opts


def test_a_float64_leak_in_the_backward_pass_is_an_error():
    # autograd's VJP of np.maximum(z, 0.0) builds a float64 mask: the cotangent would
    # leave float32 (and accumulate in float64) between two rounding points
    ar = pr.Arith("float32")
    z = onp.linspace(-1, 1, 5).astype(onp.float32)
    vjp, y = make_vjp(lambda z: ar.q(np.maximum(ar.q(z), 0.0)))(z)
    assert y.dtype == onp.float32
    with pytest.raises(AssertionError, match="backward intermediate is float64"):
        vjp(onp.ones(5, onp.float32))


@pytest.mark.parametrize("model,opts,sizes", CASES)
def test_every_model_stays_in_float32_forward_and_backward(model, opts, sizes):
    P, U, _ = _draw(model, opts, sizes, seed=3, L=40)
    # every rounding point and every scan's VJP checks its dtype: no AssertionError
    out = pr.emulate(model, P, U, opts, "float32", grads=True)
    assert {"y", "grad_u"} <= set(out)


@pytest.mark.parametrize("model,opts,sizes", CASES)
def test_plain_float32_passes_and_its_wrong_twin_fails(model, opts, sizes):
    for seed in (0, 1):
        P, U, ref = _draw(model, opts, sizes, seed=seed, L=200)
        rep = verify(ref, plain.run(model, P, U, opts), "float32")
        assert rep.passed, rep.to_text()
        with onp.errstate(all="ignore"):
            twin = plain.run(model, P, U, opts, wrong=True)
        bad = verify(ref, twin, "float32")
        assert not bad.passed
        # by far: the convention costs orders of magnitude more than float32
        assert max(t.rel / t.threshold for t in bad.tensors) > 100


def test_cli_verify_passes_plain_float32_selective_at_L1024(tmp_path):
    """Draws 7 and 16 failed on the old emulation (grad_A, grad_D; grad_W_delta)."""
    runner = CliRunner()
    for seed in (7, 16):
        P, U, ref, opts = _selective_1024(seed)
        onp.savez(tmp_path / "P.npz", **P)
        onp.savez(tmp_path / "U.npz", **U)
        res = runner.invoke(main, ["forward", "--model", "selective", "--params",
                                   str(tmp_path / "P.npz"), "--inputs", str(tmp_path / "U.npz"),
                                   "--out", str(tmp_path / "O.npz"), "--grads"])
        assert res.exit_code == 0, res.output
        onp.savez(tmp_path / "C.npz", **plain.run("selective", P, U, opts))
        res = runner.invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"),
                                   "--candidate", str(tmp_path / "C.npz"),
                                   "--precision", "float32"])
        assert res.exit_code == 0, res.output
        onp.savez(tmp_path / "W.npz", **plain.run("selective", P, U, opts, wrong=True))
        res = runner.invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"),
                                   "--candidate", str(tmp_path / "W.npz"),
                                   "--precision", "float32"])
        assert res.exit_code == 1, res.output
        assert "MISMATCH" in res.output


def test_oracle_float32_error_on_grad_W_delta_is_that_of_a_plain_float32_run():
    """The old emulation accumulated grad_W_delta in float64 (the softplus' np.maximum):
    its own float32 error was ~3x (up to 10x) below a plain float32 implementation's."""
    ratios = []
    for seed in (16, 32, 40):
        P, U, ref, opts = _selective_1024(seed)
        mine = rel_err(plain.run("selective", P, U, opts)["grad_W_delta"], ref["grad_W_delta"])
        oracle = rel_err(pr.emulate("selective", P, U, opts, "float32", grads=True)
                         ["grad_W_delta"], ref["grad_W_delta"])
        ratios.append(mine / oracle)
    gmean = float(onp.exp(onp.mean(onp.log(ratios))))
    assert 0.5 < gmean < 2.0, ratios


@pytest.mark.slow
def test_plain_float32_passes_on_50_draws_each():
    """50 draws per model; the selective ones at m = 4, n = 16, L = 1024 (about 1 minute)."""
    conventions = [{"discretization": d, "output": o} for d in ("zoh", "euler")
                   for o in ("before", "after")]
    failures = []
    for i in range(50):
        P, U, ref, _ = _selective_1024(i)
        opts = conventions[i % 4]
        ref = bundle(resolve_options("selective", grads=True, **opts), P, U,
                     compute("selective", P, U, grads=True, **opts))
        rep = verify(ref, plain.run("selective", P, U, opts), "float32")
        if not rep.passed:
            failures.append(("selective", i, opts, rep.to_text()))
        if i % 10 == 0:
            assert not verify(ref, plain.run("selective", P, U, opts, wrong=True),
                              "float32").passed
    for model, opts, sizes in CASES[:4]:
        for i in range(50 // 4 + 1):
            P, U, ref = _draw(model, opts, sizes, seed=100 + i, L=512)
            rep = verify(ref, plain.run(model, P, U, opts), "float32")
            if not rep.passed:
                failures.append((model, i, opts, rep.to_text()))
    assert not failures, failures[0]
