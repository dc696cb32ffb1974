"""One flag vocabulary: --json everywhere (errors too), options that do
nothing refused, whole sentences in --help, three ways to run the same commands."""
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rssm_ref.app.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_top_level_help_shows_whole_first_sentences():
    out = CliRunner().invoke(main, ["--help"]).stdout
    commands = " ".join(out.split("Commands:")[1].split())
    assert "..." not in commands
    for cmd in main.commands.values():
        first = " ".join(cmd.help.split("\n\n")[0].split())
        sentence = first.split("; ")[0].split(". ")[0].rstrip(".")
        assert sentence + "." in commands, sentence


@pytest.mark.parametrize("args, flag", [
    (["init", "--model", "lti", "--tokens"], "--tokens"),
    (["init", "--model", "lti", "--batch", "4"], "--batch"),
    (["init", "--model", "lti", "--no-dy"], "--no-dy"),
    (["init", "--model", "selective", "--p", "3"], "p: given for --model selective"),
    (["init", "--model", "selective", "--order", "3"], "order: given for --model selective"),
    (["init", "--model", "lti", "--n", "3"], "n: given for --model lti"),
])
def test_init_refuses_options_that_do_nothing(tmp_path, args, flag):
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "P.npz")])
    assert res.exit_code == 2 and flag in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1
    assert not os.listdir(tmp_path)


def test_forward_intermediates_for_lti_refused_and_json_output(tmp_path):
    r = CliRunner()
    P, U, O = (str(tmp_path / f) for f in ("P.npz", "U.npz", "O.npz"))
    res = r.invoke(main, ["init", "--model", "lti", "--out", P, "--inputs-out", U, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["inputs"] == U
    res = r.invoke(main, ["forward", "--model", "lti", "--params", P, "--inputs", U, "--out", O,
                          "--intermediates"])
    assert res.exit_code == 2 and "intermediates: does nothing for --model lti" in res.stderr
    assert not os.path.exists(O)
    res = r.invoke(main, ["forward", "--model", "lti", "--params", P, "--inputs", U, "--out", O,
                          "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["y_shape"] == [2, 32, 1]


def test_json_failures_are_json_with_the_exit_code(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"),
                          "--candidate", str(tmp_path / "C.npz"), "--json"])
    assert res.exit_code == 2
    err = json.loads(res.stdout)
    assert err["exit_code"] == 2 and "O.npz" in err["error"]
    assert res.stderr.startswith("error: ")
    # a usage error (unknown option) under --json is JSON as well
    res = r.invoke(main, ["golden", "--check", str(tmp_path), "--json", "--bogus"])
    assert res.exit_code == 2 and "--bogus" in json.loads(res.stdout)["error"]


@pytest.mark.parametrize("entry", [[sys.executable, "-m", "rssm_ref"],
                                   [sys.executable, os.path.join(ROOT, "cli.py")]])
def test_module_and_clone_entry_points(tmp_path, entry):
    # from another folder: python -m rssm_ref (installed package) and ./cli.py (a clone)
    res = subprocess.run(entry + ["init", "--model", "lti", "--out", "P.npz", "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["params"] == "P.npz" and (tmp_path / "P.npz").exists()


def test_one_name_for_each_size_across_init_and_forward():
    """The Mamba-2 sizes go by one name on every command: --ngroups (not --groups) and
    --n for the state size (not --d-state)."""
    for cmd in ("init", "forward"):
        text = CliRunner().invoke(main, [cmd, "--help"]).stdout
        assert "--ngroups" in text and "--n " in text, cmd
        assert "--groups" not in text.replace("--ngroups", "") and "--d-state" not in text, cmd
