"""no output overwrites an input (or another output), a
non-finite result is not a reference, and errors speak the CLI's language (flags as typed,
no raw OSError text, --allow-unstable only where it helps, one file mode everywhere)."""
import os
import stat

import numpy as onp
import pytest
from click.testing import CliRunner

from rssm_ref.app.cli import UserError, main, run_guarded
from rssm_ref.oracle import sample


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _line(res):
    """The single stderr line of a refusal (exit 2), without traceback."""
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output and "Errno" not in res.output
    assert lines[0].count("'") % 2 == 0            # balanced quotes
    return lines[0]


def _files(tmp_path, model="lti"):
    P = sample.init_params(model, seed=0)
    U = sample.init_inputs(model, P, seed=1, batch=1, L=8)
    onp.savez(tmp_path / "P.npz", **P)
    onp.savez(tmp_path / "U.npz", **U)
    return tmp_path / "P.npz", tmp_path / "U.npz"


def _snapshot(*paths):
    return {str(p): open(p, "rb").read() for p in paths}


# ------------------------------------------------------------------ point 1
@pytest.mark.parametrize("target,flag", [("U.npz", "--inputs"), ("P.npz", "--params"),
                                         ("sub/../U.npz", "--inputs"), ("link.npz", "--params")])
def test_forward_never_overwrites_its_inputs(tmp_path, target, flag):
    p, u = _files(tmp_path)
    (tmp_path / "sub").mkdir()
    os.symlink(p, tmp_path / "link.npz")
    before = _snapshot(p, u)
    res = _cli("forward", "--model", "lti", "--params", p, "--inputs", u,
               "--out", tmp_path / target)
    line = _line(res)
    assert line.startswith(f"error: --out: {tmp_path / target} is the same file as {flag} ")
    assert "writing it would destroy the input" in line
    assert _snapshot(p, u) == before


def test_forward_through_a_hard_link_is_refused(tmp_path):
    p, u = _files(tmp_path)
    os.link(u, tmp_path / "hard.npz")
    before = _snapshot(p, u)
    res = _cli("forward", "--model", "lti", "--params", p, "--inputs", u,
               "--out", tmp_path / "hard.npz")
    assert "--out" in _line(res) and "--inputs" in _line(res)
    assert _snapshot(p, u) == before


@pytest.mark.parametrize("second", ["X.npz", "./X.npz", "d/../X.npz"])
def test_init_outputs_must_differ(tmp_path, second):
    (tmp_path / "d").mkdir()
    res = _cli("init", "--model", "lti", "--out", tmp_path / "X.npz", "--inputs-out",
               tmp_path / second)
    line = _line(res)
    assert line.startswith(f"error: --inputs-out: {tmp_path / second} is the same file as "
                           f"--out {tmp_path / 'X.npz'}")
    assert not (tmp_path / "X.npz").exists()


def test_explain_never_overwrites_its_params(tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    P = sample.init_params("lti", seed=0)
    onp.savez(out / "trace.npz", **P)                      # the name explain writes
    before = _snapshot(out / "trace.npz")
    res = _cli("explain", "--model", "lti", "--params", out / "trace.npz", "--out", out)
    line = _line(res)
    assert f"--out: {out / 'trace.npz'} is the same file as --params" in line
    assert _snapshot(out / "trace.npz") == before and sorted(os.listdir(out)) == ["trace.npz"]


@pytest.mark.parametrize("cmd", [["golden", "--out"],
                                 ["reproduce", "--steps", "2", "--eval-n", "1", "--out"],
                                 ["explain", "--model", "lti", "--out"]])
def test_an_output_folder_that_is_a_file_is_refused(tmp_path, cmd):
    f = tmp_path / "F"
    f.write_bytes(b"precious")
    extra = ["--params", str(_files(tmp_path)[0])] if cmd[0] == "explain" else []
    line = _line(_cli(*cmd, f, *extra))
    assert line == f"error: --out: {f} is an existing file (expected a folder to write into)"
    assert f.read_bytes() == b"precious"


# ------------------------------------------------------------------ point 5
def test_forward_refuses_non_finite_results(tmp_path):
    p, u = _files(tmp_path)
    P = dict(onp.load(p))
    P["num"] = P["num"] * 1e300
    U = dict(onp.load(u))
    U["u"] = U["u"] * 1e10
    onp.savez(tmp_path / "big.npz", **P)
    onp.savez(tmp_path / "bigu.npz", **U)
    with onp.errstate(over="ignore", invalid="ignore"):
        res = _cli("forward", "--model", "lti", "--params", tmp_path / "big.npz", "--inputs",
                   tmp_path / "bigu.npz", "--out", tmp_path / "O.npz", "--grads")
    line = _line(res)
    assert "outputs y, grad_den are not finite (y overflowed to inf at index" in line
    assert line.endswith("nothing was written")
    assert not (tmp_path / "O.npz").exists()


# ------------------------------------------------------------------ point 6
def test_an_out_that_is_a_directory_is_refused_before_anything_is_read(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    # the params and inputs do not even exist: --out is judged first
    line = _line(_cli("forward", "--model", "lti", "--params", tmp_path / "nope.npz",
                      "--inputs", tmp_path / "nope2.npz", "--out", d))
    assert line == f"error: --out: {d} is a directory (expected a file name to write, e.g. " \
                   f"{d / 'out.npz'})"
    assert _line(_cli("init", "--model", "lti", "--out", d)).startswith(
        f"error: --out: {d} is a directory")
    line = _line(_cli("bench", "--quick", "--only", "backend_forward", "--json-out", d))
    assert line.startswith(f"error: --json-out: {d} is a directory") and "out.json" in line
    assert os.listdir(d) == []


@pytest.mark.parametrize("args,start", [
    (["init", "--model", "lti", "--out", "{t}/P.npz", "--inputs-out", "{t}/U.npz",
      "--length", "0"], "error: --length: 0 (expected a positive integer)"),
    (["init", "--model", "lti", "--out", "{t}/P.npz", "--inputs-out", "{t}/U.npz",
      "--batch", "0"], "error: --batch: 0"),
    (["init", "--model", "lti", "--out", "{t}/P.npz", "--m", "0"], "error: --m: 0"),
    (["init", "--model", "selective", "--out", "{t}/P.npz", "--form", "ss"],
     "error: --form: given for --model selective (it does nothing there; expected only "
     "--m, --n with it)"),
    (["init", "--model", "lti", "--out", "{t}/P.npz", "--tokens", "--inputs-out",
      "{t}/U.npz"], "error: --tokens: requested without --vocab"),
    (["explain", "--length", "1", "--out", "{t}/e"], "error: --length: 1"),
    (["explain", "--steps", "0", "--out", "{t}/e"], "error: --steps: 0"),
    (["reproduce", "--steps", "-1", "--out", "{t}/r"], "error: --steps: -1"),
    (["reproduce", "--eval-n", "0", "--out", "{t}/r"], "error: --eval-n: 0"),
])
def test_messages_name_flags_as_typed(tmp_path, args, start):
    line = _line(_cli(*[a.format(t=tmp_path) for a in args]))
    assert line.startswith(start), line


def test_allow_unstable_is_suggested_only_where_it_helps(tmp_path):
    p, u = _files(tmp_path)
    P = dict(onp.load(p))
    P["den"] = onp.array([[1.0, -2.5, 1.0]])
    onp.savez(tmp_path / "unstable.npz", **P)
    line = _line(_cli("forward", "--model", "lti", "--params", tmp_path / "unstable.npz",
                      "--inputs", u, "--out", tmp_path / "O.npz"))
    assert "pass --allow-unstable (Python: allow_unstable=True) to override" in line
    assert _cli("forward", "--model", "lti", "--params", tmp_path / "unstable.npz", "--inputs",
                u, "--out", tmp_path / "O.npz", "--allow-unstable").exit_code == 0
    # selective A = 0: the flag cannot help, so it is not suggested, and with it the
    # message is the same (the file and key), not the core's
    S = sample.init_params("selective", seed=0)
    S["A"][0, 0] = 0.0
    onp.savez(tmp_path / "S.npz", **S)
    onp.savez(tmp_path / "SU.npz", **sample.init_inputs("selective", sample.init_params(
        "selective", seed=0), seed=1, batch=1, L=8))
    args = ["forward", "--model", "selective", "--params", tmp_path / "S.npz", "--inputs",
            tmp_path / "SU.npz", "--out", tmp_path / "O2.npz"]
    plain, flagged = _line(_cli(*args)), _line(_cli(*args, "--allow-unstable"))
    assert plain == flagged
    assert "key 'A': entry (0, 0) = 0 is not negative" in plain
    assert "--allow-unstable does not apply to the selective model" in plain
    assert "pass --allow-unstable" not in plain


def test_os_errors_and_quoted_values_read_as_one_clean_line():
    def raise_(exc):
        raise exc
    with pytest.raises(UserError) as e:
        run_guarded(raise_, IsADirectoryError(21, "Is a directory", ".tmp-x.npz", None, "dir"))
    assert e.value.format_message() == "dir: is a directory"
    with pytest.raises(UserError) as e:
        run_guarded(raise_, ValueError("convention: expected 'zoh' or 'euler', got 'x'"))
    assert e.value.format_message() == "convention: expected 'zoh' or 'euler', got 'x'"
    with pytest.raises(UserError) as e:
        run_guarded(raise_, KeyError("y"))
    assert e.value.format_message() == "y"


def test_every_file_the_cli_writes_has_the_same_mode(tmp_path):
    old = os.umask(0o022)
    try:
        p, u = _files(tmp_path)
        assert _cli("forward", "--model", "lti", "--params", p, "--inputs", u, "--out",
                    tmp_path / "O.npz").exit_code == 0
        assert _cli("init", "--model", "lti", "--out", tmp_path / "I.npz").exit_code == 0
        assert _cli("reproduce", "--model", "selective", "--steps", "2", "--eval-n", "1",
                    "--out", tmp_path / "r").exit_code == 0
        assert _cli("explain", "--model", "lti", "--params", p, "--out",
                    tmp_path / "e").exit_code == 0
        res = _cli("bench", "--quick", "--only", "backend_forward", "--backend-size", "2x64",
                   "--json-out", tmp_path / "b.json")
        assert res.exit_code == 0, res.output
        written = [tmp_path / "O.npz", tmp_path / "I.npz", tmp_path / "b.json"]
        written += [tmp_path / "r" / f for f in os.listdir(tmp_path / "r")]
        written += [tmp_path / "e" / f for f in os.listdir(tmp_path / "e")]
        modes = {str(f): oct(stat.S_IMODE(os.stat(f).st_mode)) for f in written}
        assert set(modes.values()) == {"0o644"}, modes
        assert any(f.endswith("selective-seed0.npz") for f in modes)         # checkpoint
        assert any(f.endswith("results.json") for f in modes)
        assert any(f.endswith(".png") for f in modes)
    finally:
        os.umask(old)
