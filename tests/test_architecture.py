"""The floors of the house (docs/architecture.md), checked from the code's own imports.

- the core (arena_flywheel) imports no stage and not the commands;
- a stage (producers, consumers, streams, trainer) imports the core, other stages' public names only,
  and never the commands (arena_cli);
- no module imports a project module inside a function (the way cycles used to be dodged); imports of
  third-party libraries may be lazy (heavy or optional ones: torch, vllm, ...). The one exception is a project
  module that is a heavy third-party library's front, where a command's common path never needs it: LAZY
  names each such import and why, and nothing else may do it.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = "arena_flywheel"
STAGES = ("producers", "consumers", "streams", "trainer")
TOP = "arena_cli"
PROJECT = (CORE, *STAGES, TOP)


def _modules():
    for pkg in PROJECT:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield pkg, path


def _imports(path: Path):
    """(module imported, names, inside a function?, line) for every import of a project module."""
    tree = ast.parse(path.read_text(), str(path))
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    pkg_parts = (path.relative_to(ROOT) if path.is_relative_to(ROOT) else Path(path.name)).with_suffix("").parts
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(pkg_parts[:-1]) if pkg_parts[-1] != "__init__" else list(pkg_parts[:-1])
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [(mod, [a.name for a in node.names])]
        else:
            continue
        local = False
        p = parents.get(node)
        while p is not None:
            if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local = True
                break
            p = parents.get(p)
        for mod, names in targets:
            if mod.split(".")[0] in PROJECT:
                yield mod, names, local, node.lineno


def test_core_imports_no_stage_and_no_command():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {mod}"
           for pkg, path in _modules() if pkg == CORE
           for mod, _, _, line in _imports(path) if mod.split(".")[0] != CORE]
    assert not bad, "the core must not import stages or commands:\n" + "\n".join(bad)


def test_stages_import_no_command_and_no_private_name_of_another_stage():
    bad = []
    for pkg, path in _modules():
        if pkg not in STAGES:
            continue
        for mod, names, _, line in _imports(path):
            top = mod.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if top == TOP:
                bad.append(f"{where} imports the commands ({mod})")
            elif top in STAGES and top != pkg:
                private = [n for n in names if n.startswith("_")]
                private += [part for part in mod.split(".") if part.startswith("_")]
                if private:
                    bad.append(f"{where} imports private {', '.join(private)} of {mod}")
    assert not bad, "\n".join(bad)


# (module, project module it may import inside a function): why
LAZY = {
    ("arena_cli/commands/leaderboard.py", "arena_flywheel.store"):
        "SQLAlchemy and SQLModel are about 0.2 s of a whole `arena leaderboard` on a file, which never uses the "
        "ledger; only --from-ledger does (benchmarks/bench_leaderboard.py)",
}


def test_no_project_import_inside_a_function():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {mod} inside a function"
           for _, path in _modules() for mod, _, local, line in _imports(path)
           if local and (str(path.relative_to(ROOT)), mod) not in LAZY]
    assert not bad, "import project modules at the top of the module:\n" + "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
    """The checks above can fail: a core module importing a stage inside a function is seen as both."""
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from consumers.ledger import Ledger\n    return Ledger\n")
    assert list(_imports(f)) == [("consumers.ledger", ["Ledger"], True, 2)]


def test_carried_test_data_stays_under_two_megabytes():
    """tests/data holds small real-data subsets so a fresh clone skips nothing; the project caps it at 2 MB."""
    data = Path(__file__).resolve().parent / "data"
    total = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    assert 0 < total < 2_000_000, f"tests/data is {total:,} bytes"
    listed = (data / "README.md").read_text()
    for top in {p.relative_to(data).parts[0] for p in data.iterdir() if p.name != "README.md"}:
        assert f"`{top}/" in listed, f"tests/data/{top} has no source/licence line in tests/data/README.md"


def test_a_leaderboard_from_a_file_imports_neither_the_store_nor_kafka_nor_scipy(tmp_path):
    """What a whole `arena leaderboard` on a file costs is mostly imports: the lazy store import above pays off
    only if nothing else on that path imports it, kafka-python (main.py's broker lookup) or scipy (the
    bootstrap); together about 0.4 s of the 1 s the command took."""
    import subprocess
    import sys

    f = tmp_path / "b.csv"
    f.write_text("model_a,model_b,winner\nx,y,model_a\ny,x,model_a\n")
    code = ("import sys; from arena_cli.main import main; main(['leaderboard', '--battles', sys.argv[1], "
            "'--rounds', '2', '--format', 'csv']); "
            "print([m for m in ('arena_flywheel.store', 'sqlalchemy', 'kafka', 'scipy') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
