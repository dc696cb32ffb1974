"""The package's layers, checked (docs/architecture.md): arrows point down only.

Read from the source with ``ast`` (nothing is imported): every import of a module of
``rssm_ref`` by another must go to the same layer or a lower one, never name another
module's ``_private`` name, sit at the top of the file (only optional packages may be
imported lazily), and the import graph has no circle. Each rule is also run on a small
hand-made package that breaks it, so a rule that cannot fail does not pass.
"""
import ast
import os
import textwrap

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rssm_ref")

# bottom to top; a module may import its own layer (no circle) or any layer below
LAYERS = [
    ("ground", ["rssm_ref.tolerances", "rssm_ref.validation", "rssm_ref.util", "rssm_ref.util.*",
                "rssm_ref.xp", "rssm_ref.xp.backend", "rssm_ref.xp.core"]),
    ("kernels", ["rssm_ref.kernels", "rssm_ref.kernels.*"]),
    ("realization", ["rssm_ref.realization"]),
    ("blocks", ["rssm_ref.recurrence", "rssm_ref.convolution", "rssm_ref.discretize",
                "rssm_ref.gate"]),
    ("objects", ["rssm_ref.lti"]),
    ("array-api twins", ["rssm_ref.xp.models"]),
    ("models", ["rssm_ref.residual_ssm", "rssm_ref.selective_ssm", "rssm_ref.mamba_block",
                "rssm_ref.ssd", "rssm_ref.mamba2_block"]),
    ("training", ["rssm_ref.training", "rssm_ref.training.*"]),
    ("oracle", ["rssm_ref.oracle", "rssm_ref.oracle.*"]),
    ("experiments", ["rssm_ref.experiments", "rssm_ref.experiments.*"]),
    ("testing", ["rssm_ref.testing"]),
    ("app", ["rssm_ref.app", "rssm_ref.app.*", "rssm_ref.__main__"]),
    ("package", ["rssm_ref"]),
]
OPTIONAL = ("matplotlib", "cupy", "jax", "jaxlib", "torch", "control", "array_api_strict",
            "safetensors", "mambapy", "transformers", "mamba_ssm")


def modules(root, package="rssm_ref"):
    """{dotted name: source text} of every .py file under ``root``."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                with open(os.path.join(folder, f), encoding="utf-8") as fh:
                    out[".".join([package] + rel)] = fh.read()
    return out


def layer_of(name, layers=LAYERS):
    for rank, (_, patterns) in enumerate(layers):
        for p in patterns:
            if name == p or (p.endswith(".*") and name.startswith(p[:-1])):
                return rank
    raise AssertionError(f"{name}: in no layer of tests/test_layering.py (add it to LAYERS "
                         "and to docs/architecture.md)")


def imports(name, source, mods):
    """[(target module, imported name or None, line, inside a function?)]"""
    tree = ast.parse(source)
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}

    def in_function(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return True
        return False

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, None, node.lineno, in_function(node)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                base = ".".join(parts[:len(parts) - node.level] + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in mods:
                    out.append((full, None, node.lineno, in_function(node)))
                else:
                    out.append((base, a.name, node.lineno, in_function(node)))
    return out


def violations(mods, layers=LAYERS):
    """Every broken rule, as one line each."""
    bad, edges = [], {}
    for name, source in mods.items():
        for target, what, line, lazy in imports(name, source, mods):
            top = target.split(".")[0]
            if top in OPTIONAL:
                continue
            if top != "rssm_ref":
                continue        # the standard library, numpy, scipy, autograd, click
            where = f"{name} line {line}"
            if lazy:
                bad.append(f"{where}: imports {target} inside a function (internal imports "
                           "go at the top of the file)")
            if what and what.startswith("_") and not what.startswith("__"):
                bad.append(f"{where}: imports the private name {target}.{what}")
            if target not in mods or target == name:
                continue
            if layer_of(target, layers) > layer_of(name, layers):
                bad.append(f"{where}: imports {target}, a layer above it "
                           f"({layers[layer_of(target, layers)][0]} over "
                           f"{layers[layer_of(name, layers)][0]})")
            edges.setdefault(name, set()).add(target)
        # module._private attribute reads on an imported rssm_ref module
        tree = ast.parse(source)
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("rssm_ref") and a.asname:
                        aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rssm_ref"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in mods:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{name} line {node.lineno}: reads the private name "
                           f"{aliases[node.value.id]}.{node.attr}")
    bad += [f"import circle: {' -> '.join(c)}" for c in circles(edges)]
    return bad


def circles(edges):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_package_keeps_its_layers():
    bad = violations(modules(ROOT))
    assert not bad, "\n".join(bad)


def test_every_module_has_a_layer():
    for name in modules(ROOT):
        layer_of(name)


# ---------------------------------------------------------------- the rules can fail
TOY_LAYERS = [("low", ["rssm_ref.low", "rssm_ref.low2"]), ("high", ["rssm_ref.high"]),
              ("package", ["rssm_ref"])]


def _toy(**sources):
    return {("rssm_ref." + k if k != "pkg" else "rssm_ref"): textwrap.dedent(v)
            for k, v in sources.items()}


@pytest.mark.parametrize("sources, expect", [
    (dict(low="from rssm_ref.high import f\n", high="def f():\n    pass\n", pkg=""),
     "a layer above it"),
    (dict(low="def g():\n    from rssm_ref.low2 import h\n", low2="def h():\n    pass\n",
          high="", pkg=""), "inside a function"),
    (dict(low="from rssm_ref.low2 import _h\n", low2="def _h():\n    pass\n", high="", pkg=""),
     "private name rssm_ref.low2._h"),
    (dict(low="import rssm_ref.low2 as L\nx = L._h\n", low2="_h = 1\n", high="", pkg=""),
     "reads the private name rssm_ref.low2._h"),
    (dict(low="from rssm_ref.low2 import h\n", low2="from rssm_ref.low import g\nh = 1\n",
          high="", pkg=""), "import circle"),
])
def test_each_rule_catches_its_break(sources, expect):
    bad = violations(_toy(**sources), TOY_LAYERS)
    assert any(expect in b for b in bad), bad


def test_a_clean_toy_package_passes():
    clean = _toy(low="import numpy\n", low2="from rssm_ref.low import g\n",
                 high="from rssm_ref.low2 import h\n\n\ndef f():\n    import matplotlib\n",
                 pkg="")
    assert violations(clean, TOY_LAYERS) == []


# ---------------------------------------------------------------- one spelling, no tracker
def _package_text():
    return modules(ROOT).items()


def test_equations_are_cited_one_way():
    """`eq. (N)` everywhere, so that one grep finds every place an equation is computed."""
    import re
    loose = re.compile(r"\b[Ee]qs?\.? ?\d+[a-z]?\b")
    # a range with its second end bare ("eqs. (2)-4)") misses the grep for eq. (4)
    half_range = re.compile(r"\(\d+[a-z]?\)[-–]\d")
    docs = [(f, open(os.path.join(ROOT, "..", "docs", f), encoding="utf-8").read())
            for f in sorted(os.listdir(os.path.join(ROOT, "..", "docs"))) if f.endswith(".md")]
    bad = [f"{name}: {m.group(0)!r}" for name, src in _package_text() for m in loose.finditer(src)]
    bad += [f"{name}: {m.group(0)!r}" for name, src in list(_package_text()) + docs
            for m in half_range.finditer(src)]
    assert not bad, "\n".join(bad)


def test_no_tracker_numbers_in_the_package():
    """Comments and docstrings cite the paper or a doc page, never an issue number."""
    import re
    tracker = re.compile(r"\b[Ii]ssues? #?\d+")
    bad = [f"{name}: {m.group(0)!r}" for name, src in _package_text() for m in tracker.finditer(src)
           if "mamba_ssm issue" not in src[max(0, m.start() - 10):m.end()]]
    assert not bad, "\n".join(bad)
