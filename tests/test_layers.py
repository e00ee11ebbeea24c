"""The import graph of ``refdet_core``: no cycle, no arrow up the layers of docs/architecture.md, the demo
generator imported by the entry points alone, and the library (below the entry points) names no notebook,
``params/`` or ``outputs/`` path outside a docstring.

The graph is read from the source with ``ast``: every ``import`` of a ``refdet_core`` module, at the top of a file
or inside a function (a lazy import is an arrow too).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "refdet_core"

# bottom first; a group is a subpackage (``data``) or a top-level module (``config``). An arrow between two groups
# must point to a lower row; arrows inside a group only need to be free of cycles
LAYERS = (
    ("io", "logs", "destination", "memory", "viz"),  # the standard library and third-party packages only
    ("config", "folders"),  # typed config; the run and checkpoint folder rules
    ("device", "data", "models"),  # inputs, the network
    ("losses", "checkpoint"),  # the losses (on the head's box coding); reading a checkpoint into a model
    ("train", "eval"),  # training; inference and scores
    ("speed",),  # it drives training and inference to time them
    ("demo",),  # the synthetic demo set: a tool of the entry points, which no library layer below depends on
    ("runner", "widgets"),  # entry points and views
    ("notebook",),
    ("cli",),
)
ROW = {group: row for row, groups in enumerate(LAYERS) for group in groups}
# groups that only some of the groups above them may import (the rows alone would let every higher row in)
IMPORTED_ONLY_BY = {"demo": ("runner", "notebook", "cli")}
# arrows within a row that are allowed, and why
SIDEWAYS = {
    ("refdet_core.train.reid", "refdet_core.eval.video"): "the re-ID phase mines the trained detector's proposals "
    "with the inference path itself (VideoPredictor, frame_batches), so that it trains on what inference sees",
    ("refdet_core.train.reid", "refdet_core.eval.postprocess"): "the VideoPredictor it builds needs a "
    "PostprocessConfig",
}
ENTRY_POINTS = ("cli.py", "runner.py", "notebook.py")  # these know the project's layout
LAYOUT_WORDS = re.compile(r"params/|outputs/|ipynb")  # grep -rn "params/\|outputs/\|ipynb" refdet_core
# a line outside a docstring that may name the layout, and why
LAYOUT_EXCEPTIONS = {
    ("folders.py", "_RUN_EXTRA"): "a run folder may hold the executed notebook that the runner leaves there",
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.Module, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The ``refdet_core`` modules ``tree`` imports anywhere (``from refdet_core import memory`` is the module)."""
    out: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("refdet_core") and target != name:
                out.add(target)
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    return {
        name: imported_modules(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            a, b = group(src), group(dst)
            if a and b and a != b and ROW[b] >= ROW[a] and (src, dst) not in SIDEWAYS:
                bad.append(f"{src} -> {dst} (row {ROW[a]} -> row {ROW[b]})")
    return sorted(bad)


def forbidden_importers(graph: dict[str, set[str]]) -> list[str]:
    """The arrows into an ``IMPORTED_ONLY_BY`` group from a group it does not name."""
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            a, b = group(src), group(dst)
            if a != b and b in IMPORTED_ONLY_BY and a not in IMPORTED_ONLY_BY[b]:
                bad.append(f"{src} -> {dst} ({b} is imported only by {', '.join(IMPORTED_ONLY_BY[b])})")
    return sorted(bad)


def docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def layout_lines(root: Path = PACKAGE) -> list[str]:
    """``file:line: text`` of every line below the entry points that names the layout outside a docstring."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.parent == root and path.name in ENTRY_POINTS:
            continue
        text = path.read_text()
        allowed = docstring_lines(ast.parse(text))
        for number, line in enumerate(text.splitlines(), 1):
            if LAYOUT_WORDS.search(line) and number not in allowed:
                if not any(path.name == f and word in line for f, word in LAYOUT_EXCEPTIONS):
                    found.append(f"{path.relative_to(root.parent)}:{number}: {line.strip()}")
    return found


def test_every_module_has_a_layer():
    groups = {group(m) for m in import_graph()} - {""}
    assert groups <= set(ROW), f"modules without a row in LAYERS: {sorted(groups - set(ROW))}"
    assert set(ROW) <= groups, f"rows name groups that do not exist: {sorted(set(ROW) - groups)}"


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_arrow_points_up():
    assert upward_arrows(import_graph()) == []


def test_only_the_entry_points_import_the_demo_generator():
    assert forbidden_importers(import_graph()) == []


def test_the_library_names_no_notebook_params_or_outputs_path():
    assert layout_lines() == []


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the package's sources to break on purpose."""
    copy = tmp_path / "refdet_core"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    return copy


def test_the_checks_fail_on_a_cycle_an_upward_arrow_and_a_layout_path(package_copy):
    config = package_copy / "config.py"
    config.write_text(config.read_text() + "\n\ndef _late():\n    from refdet_core.io import atomic_write_json\n")
    assert find_cycle(import_graph(package_copy)) is None  # a second arrow down is no cycle
    io = package_copy / "io.py"
    io.write_text(io.read_text() + "\n\ndef _up():\n    from refdet_core import config\n")
    assert find_cycle(import_graph(package_copy)) == ["refdet_core.config", "refdet_core.io", "refdet_core.config"]
    assert "refdet_core.io -> refdet_core.config (row 0 -> row 1)" in upward_arrows(import_graph(package_copy))
    (package_copy / "eval" / "video.py").write_text(
        (package_copy / "eval" / "video.py").read_text() + '\nDEFAULT = "outputs/demo/05_train_stage2"\n'
    )
    assert any(line.startswith("refdet_core/eval/video.py:") for line in layout_lines(package_copy))


def test_the_checks_fail_on_a_library_or_view_that_imports_the_demo_generator(package_copy):
    layout = package_copy / "data" / "layout.py"
    layout.write_text(layout.read_text() + "\n\ndef _demo():\n    from refdet_core.demo import write_demo\n")
    widgets = package_copy / "widgets.py"
    widgets.write_text(widgets.read_text() + "\nfrom refdet_core.demo.looks import Look\n")
    cli = package_copy / "cli.py"
    cli.write_text(cli.read_text() + "\nfrom refdet_core.demo.write import MARKER\n")
    graph = import_graph(package_copy)
    assert "refdet_core.data.layout -> refdet_core.demo (row 2 -> row 6)" in upward_arrows(graph)
    assert [line.split(" (")[0] for line in forbidden_importers(graph)] == [
        "refdet_core.data.layout -> refdet_core.demo",
        "refdet_core.widgets -> refdet_core.demo.looks",
    ]
