"""No page of docs/ (nor the README) ships an unfilled placeholder: an ALL-CAPS token such
as FIGURES_TABLE, or TODO / TBD / XXX / FIXME, where a measured figure or text belongs."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
# a placeholder: TODO-like words, or an upper-case identifier with an underscore standing
# alone on its line (FIGURES_TABLE); code spans and env variables (RSSM_REF_THREADS) are text
PLACEHOLDER = re.compile(r"^\s*[A-Z][A-Z0-9]*_[A-Z0-9_]+\s*$|\b(TODO|TBD|XXX|FIXME)\b")


def placeholders(text):
    return [line for line in text.splitlines() if PLACEHOLDER.search(line)]


def test_the_pattern_finds_a_placeholder():
    assert placeholders("intro\n\nFIGURES_TABLE\n\nmore") == ["FIGURES_TABLE"]
    assert placeholders("see `RSSM_REF_THREADS` for threads") == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_unfilled_placeholder(page):
    assert placeholders(page.read_text(encoding="utf-8")) == []
