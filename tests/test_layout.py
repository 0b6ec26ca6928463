"""The layering of the code base, checked from the source (``ast``), so that the structure stays.

Bottom to top: ``lslo_common`` (torch-free: errors, atomic writes, language-set files);
``lslo_data_prep`` stands apart on it; in ``fairseq_lslo``: ``errors`` and ``languages`` at the
bottom, ``modules/`` and ``criterions/`` on them, then ``models/``, ``optim/``, ``deploy/``,
``evaluation/`` and the rest, with ``cli/`` (thin ``main``s) on top; ``bench/`` and ``tests/``
stand outside and nothing imports them.  No import cycles, function-level imports included.
"""
import ast
import os
from typing import Dict, Iterator, List, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("lslo_common", "lslo_data_prep", "fairseq_lslo", "bench")
TOP = "fairseq_lslo"


def modules() -> Dict[str, str]:
    """Dotted module name -> file, for every .py file of our packages."""
    out = {}
    for package in PACKAGES:
        for folder, _dirs, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return out


MODULES = modules()
#: tests/ helpers that a script could import by putting tests/ on sys.path (conftest, base_fixture, ...)
TEST_HELPERS = {f[:-3] for f in os.listdir(os.path.join(ROOT, "tests")) if f.endswith(".py")}


def imports_of(name: str, path: str) -> Iterator[Tuple[str, int]]:
    """(imported module, line) for every import in the file, at any depth, relative ones resolved."""
    is_package = path.endswith("__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:  # `from pkg import module` imports the module itself
                sub = f"{target}.{alias.name}"
                yield (sub if sub in MODULES else target), node.lineno


def ours(target: str) -> str:
    """The module of ours that an import names (the longest known prefix), or '' for third-party ones."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in MODULES:
            return candidate
    return ""


def edges() -> List[Tuple[str, str, int]]:
    out = []
    for name, path in MODULES.items():
        for target, line in imports_of(name, path):
            if target.split(".")[0] == "tests" or target.split(".")[0] in TEST_HELPERS:
                out.append((name, "tests", line))
            elif ours(target) and ours(target) != name:
                out.append((name, ours(target), line))
    return out


EDGES = edges()


def under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(rule) -> List[str]:
    return [f"{a} imports {b} (line {line})" for a, b, line in EDGES if rule(a, b)]


def test_the_import_parser_sees_the_imports():
    # guards the rules below against passing because nothing was found
    assert ("fairseq_lslo.cli.merge", "fairseq_lslo.deploy.merge") in {(a, b) for a, b, _ in EDGES}
    assert ("fairseq_lslo.models.lslo_transformer", "fairseq_lslo.modules.spec") in {(a, b) for a, b, _ in EDGES}
    assert ("lslo_data_prep.langsets", "lslo_common.langset_file") in {(a, b) for a, b, _ in EDGES}
    assert len(MODULES) > 50


def test_lslo_common_is_the_bottom_and_torch_free():
    bad = violations(lambda a, b: under(a, "lslo_common") and not under(b, "lslo_common"))
    for name, path in MODULES.items():
        if under(name, "lslo_common"):
            bad += [f"{name} imports {t} (line {line})" for t, line in imports_of(name, path)
                    if t.split(".")[0] in ("torch", "fairseq", "numpy")]
    assert not bad


def test_data_prep_stands_apart_from_the_plugin():
    assert not violations(lambda a, b: under(a, "lslo_data_prep") and under(b, TOP, "bench", "tests"))


def test_errors_and_languages_are_the_plugins_bottom():
    bottom = ("fairseq_lslo.errors", "fairseq_lslo.languages")
    assert not violations(lambda a, b: under(a, *bottom) and under(b, TOP) and not under(b, *bottom))


def test_modules_and_criterions_do_not_import_upward():
    upper = [f"{TOP}.{p}" for p in ("models", "optim", "cli", "deploy", "evaluation", "serve", "inference", "demo",
                                    "testing", "translator")]
    assert not violations(lambda a, b: under(a, f"{TOP}.modules", f"{TOP}.criterions") and under(b, *upper))


def test_only_cli_imports_cli_and_nothing_imports_bench_or_tests():
    assert not violations(lambda a, b: under(b, f"{TOP}.cli") and not under(a, f"{TOP}.cli"))
    assert not violations(lambda a, b: under(b, "bench") and not under(a, "bench"))
    assert not violations(lambda a, b: b == "tests")


def test_the_plugin_does_not_import_its_test_support():
    assert not violations(lambda a, b: under(b, f"{TOP}.testing") and under(a, TOP) and not under(a, f"{TOP}.testing"))


def strongly_connected(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's algorithm: the components with more than one module are the import cycles."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph: Dict[str, Set[str]] = {}
    for a, b, _ in EDGES:
        # importing a module runs its package's __init__ too; that is not an edge of ours
        if not a.startswith(b + "."):
            graph.setdefault(a, set()).add(b)
    assert strongly_connected(graph) == []
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_error_class_derives_from_the_root():
    classes: Dict[str, List[str]] = {}
    where: Dict[str, str] = {}
    for name, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
                         if isinstance(b, (ast.Name, ast.Attribute))]
                classes[node.name] = bases
                where[node.name] = name

    builtin = {n for n in dir(__builtins__ if isinstance(__builtins__, dict) else __builtins__.__dict__)} | set(
        dir(__import__("builtins")))

    def is_exception(cls: str, seen=()) -> bool:
        if cls in seen:
            return False
        if cls in builtin:
            value = getattr(__import__("builtins"), cls, None)
            return isinstance(value, type) and issubclass(value, BaseException)
        return any(is_exception(b, seen + (cls,)) for b in classes.get(cls, ()))

    def rooted(cls: str, seen=()) -> bool:
        if cls == "LSLoError":
            return True
        return cls not in seen and any(rooted(b, seen + (cls,)) for b in classes.get(cls, ()))

    ours_ = [c for c in classes if is_exception(c) and not under(where[c], "bench")]
    assert "CheckpointError" in ours_ and "DataPrepError" in ours_
    assert [f"{where[c]}.{c}" for c in ours_ if not rooted(c)] == []


def test_the_wheel_holds_the_packages_and_not_bench_or_tests():
    from setuptools import find_packages

    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "find_packages"]
    include = ast.literal_eval([k.value for k in call.keywords if k.arg == "include"][0])
    packages = set(find_packages(ROOT, include=include))
    assert {"fairseq_lslo", "fairseq_lslo.deploy", "fairseq_lslo.evaluation", "fairseq_lslo.testing", "lslo_common",
            "lslo_data_prep"} <= packages
    assert not [p for p in packages if under(p, "bench", "tests")]
    # every package of ours that has modules is installed (a new folder needs no setup.py change)
    assert {m.rsplit(".", 1)[0] for m in MODULES if not under(m, "bench") and "." in m} <= packages


def test_cli_holds_thin_mains_that_go_through_the_runner():
    tools = [m for m in MODULES if under(m, f"{TOP}.cli") and m not in (f"{TOP}.cli", f"{TOP}.cli.runner")]
    assert len(tools) >= 6
    for name in tools:
        with open(MODULES[name], encoding="utf-8") as f:
            source = f.read()
        tree = ast.parse(source)
        functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert "main" in functions and "run_tool(" in source, name
        assert not [n.name for n in tree.body if isinstance(n, ast.ClassDef)], f"{name}: classes belong in the library"
        assert len(source.splitlines()) <= 100, f"{name}: {len(source.splitlines())} lines; library code goes elsewhere"
