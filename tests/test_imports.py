"""The package's import graph: no cycle, config a leaf, one door to Horovod.

Read from the source (every import statement, at module level or inside a function), so a lazy import that
hides a cycle counts too."""
import ast
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "hvdfast"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports(name: str, path: Path, known: set) -> set:
    """The hvdfast modules `name` imports (a package's submodule where `from pkg import sub` names one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "hvdfast"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "hvdfast":
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & known
            out |= subs or {target}
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def find_cycle(g: dict[str, set]):
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(g):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    g = graph()
    assert len(g) > 40 and "hvdfast.run.fit" in g and "hvdfast.dist.buckets" in g["hvdfast.dist.optimizer"]
    cycle = find_cycle(g)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_config_is_a_leaf():
    assert graph()["hvdfast.config"] == set()


def test_only_dist_core_imports_horovod_torch():
    importers = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.startswith("horovod.torch") for n in names):
                importers.append(name)
    assert sorted(set(importers)) == ["hvdfast.dist.core"]


def test_the_launcher_process_does_not_import_torch():
    """`hvdfast launch` only builds and runs a launcher command: importing torch there (2.1 s here) delayed every
    job's start. Horovod's environment knobs come from hvdfast.knobs, which is pure. Its ssh preflight probes this
    host in a process of its own, beside the remote probes (in the launcher it took 743 MB and 5 s)."""
    import subprocess
    import sys
    code = ("import sys, hvdfast.cli, hvdfast.launch, hvdfast.launch.commands, hvdfast.knobs, hvdfast.tuned, "
            "hvdfast.preflight; reports, problems = hvdfast.preflight.check([]); "
            "print(problems, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'horovod', 'numpy')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert p.returncode == 0 and p.stdout.strip() == "[] []", p.stdout + p.stderr
