"""The pages a new user follows (README, docs/09, docs/12, docs/14, docs/verify.md) read
straight through: every name a code snippet uses is imported or defined on the page
before it (doctests are run by pytest; this checks the plain snippets, which are not),
except the objects the page says the reader brings (their layer, their model)."""
import ast
import builtins
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/09-verify-your-implementation.md", "docs/12-verify-mamba.md",
         "docs/14-mamba2-ssd.md", "docs/verify.md"]
# what the reader holds, named so in the page's prose ("your layer", "your model")
BROUGHT = {"layer", "model", "saved", "my_project", "my_selective_scan", "my_lti_filter",
           "selective_scan_ref", "ssd_minimal_discrete", "mamba_chunk_scan_combined"}
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def plain_snippets(text):
    """The ```python blocks that are not doctests."""
    return [b for b in BLOCK.findall(text) if not b.lstrip().startswith(">>>")]


def undefined(snippets, known=()):
    """Names loaded before any binding, snippet after snippet (bindings carry over)."""
    bound = set(dir(builtins)) | set(known)
    missing = []
    for src in snippets:
        tree = ast.parse(src)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound.add(node.name)
                bound |= {a.arg for a in node.args.args} if isinstance(node, ast.FunctionDef) else set()
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                bound.add(node.id)
            elif isinstance(node, ast.comprehension):
                bound |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
                missing.append(node.id)
    return sorted(set(missing))


def test_the_check_finds_an_undefined_name():
    assert undefined(["y = x + 1"]) == ["x"]
    assert undefined(["import numpy\nx = numpy.ones(2)", "y = x + numpy.pi"]) == []
    assert undefined(["layer.state_dict()"], known=BROUGHT) == []


@pytest.mark.parametrize("page", PAGES)
def test_every_snippet_name_is_defined_on_the_page(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    assert undefined(plain_snippets(text), BROUGHT) == []
