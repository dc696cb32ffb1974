"""Every wall-clock figure the README gives says on what machine, when and under what
load it was measured (a time without them told a new user on a shared 2-core machine
to expect half of what they saw)."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
TIMING = re.compile(r"\b\d+(\.\d+)? ?(s|min|seconds|minutes)\b(?! with step)")
CONTEXT = (re.compile(r"\b\d+[- ]cores?\b"), re.compile(r"\b20\d\d-\d\d-\d\d\b"),
           re.compile(r"\b(idle|load|busy|shared|alone)\b", re.I))


def timing_paragraphs(text):
    return [p for p in text.split("\n\n") if TIMING.search(p) and "ETA" not in p]


def test_the_check_sees_a_bare_timing():
    bare = "Install and run it (2 min 35 s)."
    assert timing_paragraphs(bare) == [bare]
    assert not all(c.search(bare) for c in CONTEXT)


def test_every_readme_timing_states_machine_date_and_load():
    paras = timing_paragraphs(README.read_text(encoding="utf-8"))
    assert paras, "the README states the main job's run time"
    for p in paras:
        assert all(c.search(p) for c in CONTEXT), p
