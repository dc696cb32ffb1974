"""Hints echo the way the tool was started; ``--version`` everywhere; the version in reports."""
import json
import subprocess
import sys

import numpy as onp
from click.testing import CliRunner

from rssm_ref.app.cli import main
from rssm_ref.util.invocation import prog
from rssm_ref.util.version import VERSION

ROOT = __file__.rsplit("/tests/", 1)[0]


def test_prog_matches_each_way_in():
    assert prog(["cli.py"]) == "python cli.py"
    assert prog(["../rssm-ref/cli.py"]) == "python ../rssm-ref/cli.py"
    assert prog([f"{ROOT}/rssm_ref/__main__.py"]) == "python -m rssm_ref"
    assert prog(["/venv/bin/rssm-ref"]) == "rssm-ref"
    assert prog([]) == "rssm-ref"


def test_version_flag_on_each_way_in():
    for argv in ([sys.executable, "cli.py", "--version"],
                 [sys.executable, "-m", "rssm_ref", "--version"]):
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"rssm-ref {VERSION}"


def _mismatching_files(tmp_path):
    r = CliRunner()
    p, u, ref = (str(tmp_path / f) for f in ("P.npz", "U.npz", "O.npz"))
    assert r.invoke(main, ["init", "--model", "selective", "--out", p, "--inputs-out", u,
                           "--length", "8"]).exit_code == 0
    assert r.invoke(main, ["forward", "--model", "selective", "--params", p, "--inputs", u,
                           "--out", ref]).exit_code == 0
    with onp.load(ref) as z:
        y = z["y"]
    cand = str(tmp_path / "C.npz")
    onp.savez(cand, y=y + 0.1)
    return ref, cand


def test_verify_hint_echoes_python_cli_py(tmp_path):
    """Run as a user from a clone runs it: the hint must be pasteable there."""
    ref, cand = _mismatching_files(tmp_path)
    out = subprocess.run([sys.executable, "cli.py", "verify", "--reference", ref,
                          "--candidate", cand], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert "python cli.py diagnose --reference" in out.stdout
    assert "rssm-ref diagnose" not in out.stdout


def test_reports_carry_the_version(tmp_path):
    ref, cand = _mismatching_files(tmp_path)
    r = CliRunner()
    for cmd in ("verify", "diagnose"):
        res = r.invoke(main, [cmd, "--reference", ref, "--candidate", cand, "--json"])
        assert res.exit_code == 1, res.output
        assert json.loads(res.output)["rssm_ref_version"] == VERSION
