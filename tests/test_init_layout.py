"""``init --layout`` writes the inputs in the layout ``forward --layout`` reads (docs/12
works channel-first, as mamba_ssm's selective_scan_fn does), and refuses it where it
means nothing."""
import os

import numpy as onp
import pytest
from click.testing import CliRunner

from rssm_ref.app.cli import main
from rssm_ref.tolerances import assert_close


def _run(*args):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("model", ["lti", "selective", "mamba"])
def test_channel_first_inputs_are_the_same_draws_transposed(tmp_path, model):
    p, last, first = (str(tmp_path / f) for f in ("P.npz", "U_last.npz", "U_first.npz"))
    assert _run("init", "--model", model, "--out", p, "--inputs-out", last,
                "--length", "7").exit_code == 0
    os.remove(p)
    res = _run("init", "--model", model, "--out", p, "--inputs-out", first, "--length", "7",
               "--layout", "channel-first")
    assert res.exit_code == 0, res.output
    assert "forward --layout channel-first" in res.output
    with onp.load(last) as a, onp.load(first) as b:
        assert set(a.files) == set(b.files) == {"u", "dy"}
        for k in a.files:
            assert b[k].shape == (a[k].shape[0], a[k].shape[2], a[k].shape[1])
            assert onp.array_equal(b[k], a[k].transpose(0, 2, 1))
    # forward reads them in that layout, and gives the channel-last run's outputs, transposed
    o_last, o_first = str(tmp_path / "O_last.npz"), str(tmp_path / "O_first.npz")
    assert _run("forward", "--model", model, "--params", p, "--inputs", last, "--out", o_last,
                "--grads").exit_code == 0
    res = _run("forward", "--model", model, "--params", p, "--inputs", first, "--out", o_first,
               "--grads", "--layout", "channel-first")
    assert res.exit_code == 0, res.output
    with onp.load(o_last) as a, onp.load(o_first) as b:
        for k in ("y", "grad_u"):
            assert_close(b[k], a[k].transpose(0, 2, 1), "layout_agreement", k)


def test_layout_refused_where_it_means_nothing(tmp_path):
    p, u = str(tmp_path / "P.npz"), str(tmp_path / "U.npz")
    res = _run("init", "--model", "mamba", "--out", p, "--layout", "channel-first")
    assert res.exit_code == 2 and "--layout" in res.output and "--inputs-out" in res.output
    res = _run("init", "--model", "mamba-block", "--out", p, "--inputs-out", u,
               "--layout", "channel-first")
    assert res.exit_code == 2 and "--layout" in res.output and "hidden_states" in res.output
    assert not os.path.exists(p) and not os.path.exists(u)
