"""The import graph of ksir and analysis: no circle, and no module importing from a layer above its own
(function-level imports count: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

from ksir.paths import REPO_ROOT

# Lowest first. A module may import from its own layer or any below it, never from one above.
LAYERS: list[tuple[str, ...]] = [
    ("ksir.paths", "ksir.errors", "ksir.resolvers", "ksir.locks", "ksir.integrity", "ksir.environment",
     "ksir.dataconfig", "ksir.kinds", "ksir.quiet"),
    ("ksir.quant.vocab", "ksir.families", "ksir.precision", "ksir.evaluate", "ksir.umup", "ksir.data.embedded",
     "ksir.tasks"),
    ("ksir.quant", "ksir.qat", "ksir.deploy"),
    ("ksir.spec", "ksir.preflight", "ksir.config", "ksir.identity", "ksir.legacy", "ksir.data", "ksir.parametrization",
     "ksir.train", "ksir.heal", "ksir.records", "ksir.checkpoints", "ksir.tracking", "ksir.zeroshot"),
    ("ksir.run", "ksir.jobs", "ksir.startup"),
    ("analysis",),
    ("ksir.claims", "ksir.repro", "ksir.cli", "hydra_plugins"),
]


def layer_of(module: str) -> int:
    if module == "ksir":  # the package's __init__: nothing but its docstring and version
        return 0
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and (best is None or len(n) > best[1]):
                best = (i, len(n))
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_imports.py: add it where it belongs")
    return best[0]


def modules() -> dict[str, Path]:
    out = {}
    for root in ("ksir", "analysis", "hydra_plugins"):
        for p in (REPO_ROOT / root).rglob("*.py"):
            parts = list(p.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules a file imports, anywhere in it (module level or inside functions)."""
    tree = ast.parse(path.read_text())
    got = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for n in names:
            while n and n not in known:
                n = n.rsplit(".", 1)[0] if "." in n else ""
            if n and n != name:
                got.add(n)
    return got


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, m, set(mods)) for m, p in mods.items()}


def test_no_module_imports_from_a_layer_above_it():
    upward = [f"{m} (layer {layer_of(m)}) -> {d} (layer {layer_of(d)})" for m, deps in graph().items() for d in deps
              if layer_of(d) > layer_of(m) and not d.startswith(m + ".")]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_circle():
    g = graph()
    # A package imports its own submodules (its __init__ re-exports them): not a circle of the design.
    g = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in g.items()}
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
                circles.append(sorted(comp))

    for v in list(g):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_checks_see_a_planted_circle_and_upward_import(tmp_path, monkeypatch):
    """The two tests above fail on a circle and on an upward import (a fault planted in a copy of the tree)."""
    import shutil

    root = tmp_path / "repo"
    for d in ("ksir", "analysis", "hydra_plugins"):
        shutil.copytree(REPO_ROOT / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    bits = root / "ksir" / "quant" / "bits.py"
    bits.write_text(bits.read_text() + "\n\ndef _planted():\n    from ksir.run import run_quantize  # noqa\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "REPO_ROOT", root)
    g = graph()
    assert "ksir.run" in g["ksir.quant.bits"]
    try:
        test_no_module_imports_from_a_layer_above_it()
    except AssertionError as e:
        assert "ksir.quant.bits (layer 2) -> ksir.run (layer 4)" in str(e)
    else:
        raise AssertionError("the upward import was not seen")
    try:
        test_the_import_graph_has_no_circle()
    except AssertionError as e:
        assert "ksir.quant.bits" in str(e)
    else:
        raise AssertionError("the circle was not seen")
