"""The house plan (docs/architecture.md): layers import downwards only, and no module imports itself back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_cycles_anywhere_in_pdlab() -> None:
    graph = grimp.build_graph("pdlab", exclude_type_checking_imports=False)
    # a package importing its own submodules (pdlab.x.__init__ → pdlab.x.y) is not a cycle by itself
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc import b\n")
    (pkg / "b.py").write_text("from cyc import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles(grimp.build_graph("cyc")) == [["cyc.a", "cyc.b"]]


def test_layer_contract_holds() -> None:
    r = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--config", str(ROOT / ".importlinter")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]


def test_layer_contract_catches_an_upward_import(tmp_path: Path) -> None:
    """The contract is not vacuous: a core module importing the CLI breaks it."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "pdlab", copy / "pdlab", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", copy / ".importlinter")
    (copy / "pdlab" / "core" / "bad.py").write_text("import pdlab.cli\n")
    r = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=copy, capture_output=True,
                       text=True, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0 and "pdlab.core.bad -> pdlab.cli" in r.stdout


def test_top_level_is_small() -> None:
    top = sorted(p.name for p in (ROOT / "pdlab").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "cli.py"]
