"""The house rules of docs/architecture.md, checked on the source: layers, no circles, small documented modules."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "unlearnkit"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

# The stages in data-flow order (docs/architecture.md): a module may import its own stage and the ones above.
LAYERS = [
    {"errors", "io", "ownership", "progress", "config"},
    {"data"},
    {"model_names", "gguf_header", "targets", "modeling", "parallel", "flops"},
    {"objectives"},
    {"adapters"},
    {"metrics"},
    {"training", "steps", "methods", "guards", "tracking"},
    {"evaluation", "stopping"},
    {"results"},
    {"checkpoints"},
    {"loop"},
    {"reports", "model_card", "outputs", "publish", "preflight", "attacks", "runner", "sequential"},
    {"showcase"},
    {"experiments"},
    {"cli"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _stage(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """unlearnkit modules imported by ``path``: every import, or only the module-level ones (type-checking
    imports included: a circle through them is still a circle for a reader)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else [tree]
    found: set[str] = set()
    for root in nodes:
        for node in ast.walk(root):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            found |= {n for n in names if n in MODULES and n != module}
    return found


def test_every_module_imports_only_its_own_stage_and_those_above():
    wrong = []
    for module, path in MODULES.items():
        if module == "unlearnkit":
            continue
        for target in _imports(path, top_level_only=False):
            if target != "unlearnkit" and _stage(target) > _stage(module):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_no_import_circle():
    graph = {m: _imports(p, top_level_only=True) for m, p in MODULES.items()}
    # a package's __init__ importing its own submodules is how packages work, not a circle
    graph = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1:
                pytest.fail("import circle: " + " -> ".join([*trail[trail.index(target):], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_importing_the_configuration_loads_no_torch():
    probe = ("import sys, unlearnkit.config; "
             "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_modules_are_small_and_say_what_they_own():
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 450, f"{module} has {len(text.splitlines())} lines: two concepts?"
        doc = ast.get_docstring(ast.parse(text))
        assert doc and doc.splitlines()[0].strip(), f"{module} has no one-line docstring"


def _documented_tree() -> set[str]:
    """Paths of the tree drawn in docs/architecture.md (its first code block), e.g. ``adapters/flora/init.py``."""
    block = ARCHITECTURE.read_text(encoding="utf-8").split("```")[1]
    paths: set[str] = set()
    stack: list[str] = []
    for line in block.splitlines():
        match = re.match(r"^((?:│   |    )*)[├└]── (\S+)", line)
        if not match:
            continue
        depth = len(match.group(1)) // 4
        stack = [*stack[:depth], match.group(2).rstrip("/")]
        paths.add("/".join(stack) + ("/" if match.group(2).endswith("/") else ""))
    return paths


def test_architecture_document_matches_the_tree():
    documented = _documented_tree()
    actual = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if p.name != "__init__.py"}
    actual |= {p.relative_to(SRC).as_posix() + "/" for p in SRC.rglob("*")
               if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py"))}
    actual |= {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.json")}
    actual |= {p.name + "/" for p in SRC.iterdir() if p.is_dir() and any(p.rglob("*.yaml"))}  # the shipped configs
    assert documented == actual - {"/"} - {"./"}, (sorted(documented - actual), sorted(actual - documented))
    for layer in LAYERS:
        for name in layer:
            assert (SRC / name).is_dir() or (SRC / f"{name}.py").is_file(), f"stage {name} is not in the tree"


def _function_lengths() -> dict[str, int]:
    lengths = {}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths[f"{module}.{node.name}"] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_function_is_longer_than_80_lines_and_the_recipe_reads_as_named_steps():
    """A function longer than a screen is usually several steps that want names (docs/architecture.md); the
    recipe is a page of them."""
    lengths = _function_lengths()
    assert lengths["unlearnkit.loop.run_unlearning"] <= 40
    long = {name: n for name, n in lengths.items() if n > 80 and name != "unlearnkit.loop.run_unlearning"}
    assert not long, long


def test_methods_are_registered_only_by_their_module():
    """A method is its module under unlearnkit/methods/ and nothing else: no list of method names elsewhere."""
    from unlearnkit.config.plugins import builtin_names

    names = builtin_names("method")
    assert names == sorted(p.stem for p in (SRC / "methods").glob("*.py") if p.stem not in {"__init__", "base"})
    for module, path in MODULES.items():
        if module.startswith("unlearnkit.methods") or module == "unlearnkit.experiments.figures":
            continue  # figures: display labels, with a fallback for any name
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict | ast.Set | ast.List | ast.Tuple):
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                strings = {k.value for k in items if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                listed = strings & set(names)
                assert len(listed) < 2 or strings != listed, \
                    f"{module} lists methods {sorted(listed)}; a method is found by its module"


def test_built_in_plugins_import_no_torch():
    """A config names a method and an adapter and validates their options without torch: their modules import it
    lazily."""
    probe = ("import sys\nfrom unlearnkit.config.plugins import builtin_names, load_plugin\n"
             "classes = [load_plugin(kind, name) for kind in ('method', 'adapter') for name in builtin_names(kind)]\n"
             "print(len(classes), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["10", "False"], done.stderr


def test_adapters_are_asked_not_named():
    """Outside unlearnkit/adapters/ nothing compares an adapter's name: code asks the adapter's class (what it
    trains, exports, needs), so an adapter of one's own works wherever the built-in ones do."""
    from unlearnkit.config.plugins import builtin_names

    names = set(builtin_names("adapter"))
    assert names == {p.stem for p in (SRC / "adapters").iterdir()
                     if (p.suffix == ".py" or (p / "__init__.py").is_file())} - {"__init__", "base", "fisher"}
    for module, path in MODULES.items():
        if module.startswith("unlearnkit.adapters"):
            continue
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            strings = {o.value for o in operands if isinstance(o, ast.Constant) and isinstance(o.value, str)}
            about_adapters = "adapter" in (ast.get_source_segment(source, node) or "")
            assert not strings & (names - {"none"}) and not (about_adapters and strings & names), \
                f"{module}:{node.lineno} compares an adapter name; ask the adapter class instead"


def _calls_and_strings(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = {node.func.id if isinstance(node.func, ast.Name) else node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)}
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return calls, strings


def test_one_way_to_run_and_one_reader_of_run_directories():
    """Every run goes through runner.unlearn (claim → check → resume → run → write); what a run wrote is read back
    through outputs.RunDirectory alone, never by file name elsewhere."""
    for module, path in MODULES.items():
        calls, strings = _calls_and_strings(path)
        if module != "unlearnkit.runner":
            assert "run_unlearning" not in calls, f"{module} runs the loop itself; call unlearnkit.runner.unlearn"
            assert "write_run_outputs" not in calls or module == "unlearnkit.outputs", module
        # ownership knows the entries of runs written before markers; checkpoints keep a config.yaml of their own
        if module not in {"unlearnkit.outputs", "unlearnkit.ownership", "unlearnkit.checkpoints"}:
            assert not strings & {"metrics.json", "config.yaml"}, f"{module} reads a run by file name"
