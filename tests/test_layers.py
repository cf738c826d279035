"""Imports point one way (README "Layout"): a module never imports from a layer above its own, nor
another module's private (``_``) names. Checked on the source of every module, imports inside
functions included."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eqtb"

#: layer of each module (longest matching prefix wins); imports may only go to the same or a lower layer
LAYERS = {
    "eqtb.basis": 0, "eqtb.structure": 0, "eqtb.bonds": 0, "eqtb.so3": 0, "eqtb.blocks": 0,
    "eqtb.operator": 0, "eqtb.quantities": 0, "eqtb.hints": 0, "eqtb.distributed": 0, "eqtb.domains": 0,
    "eqtb.nn": 1, "eqtb.data": 1, "eqtb.tb": 1, "eqtb.metrics": 1, "eqtb.plotting": 1, "eqtb.config": 1,
    "eqtb.models": 2,
    "eqtb.train": 3, "eqtb.predict": 3, "eqtb.trajectory": 3,
    "eqtb.cli": 4, "eqtb.demo": 4, "eqtb": 4,
}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise KeyError(f"module {module} has no layer: add it to LAYERS (and to README's Layout)")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(path: Path):
    """(imported module, name or None, line) of every eqtb import in the file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "eqtb":
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                yield (target if target.replace(".", "/") in _SUBMODULES else node.module), alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "eqtb":
                    yield alias.name, None, node.lineno


_SUBMODULES = {str(p.relative_to(PACKAGE.parent).with_suffix("")) for p in PACKAGE.rglob("*.py")} | {
    str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*") if p.is_dir()}


def test_every_module_has_a_layer():
    for module, _ in modules():
        layer(module)


@pytest.mark.parametrize("module, path", list(modules()), ids=[m for m, _ in modules()])
def test_imports_point_down(module, path):
    own = layer(module)
    bad = []
    for target, name, line in imports(path):
        if target == "eqtb" and name == "__version__":
            continue  # the version string, defined in the package's __init__
        if layer(target) > own:
            bad.append(f"line {line}: {target} (layer {layer(target)}) from layer {own}")
        if name and name.startswith("_") and not name.startswith("__") and target != module:
            bad.append(f"line {line}: private name {name} of {target}")
    assert not bad, f"{module}: " + "; ".join(bad)


def test_the_check_can_fail(tmp_path):
    """The parser sees imports inside functions too."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from eqtb.train.trainer import Trainer\n")
    assert [(t, n) for t, n, _ in imports(f)] == [("eqtb.train.trainer", "Trainer")]
    assert layer("eqtb.train.trainer") > layer("eqtb.data.folder")
