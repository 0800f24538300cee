"""The house's floors: no module imports a higher floor, and no import circle.

Every `import` of every module of `diffusion_jax` is read from its source
(function-level imports included, since a lazy import is still a
dependency), so the check needs no import side effects and sees the whole
graph. docs/architecture.md draws the same floors.
"""
import ast
import pathlib
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "diffusion_jax"

# Lowest first. A unit is a top-level module or a subpackage of diffusion_jax.
FLOORS = (
    ("platform", "validation", "visualize", "schedules", "parallel",  # foundations
     "text", "faults", "pretrained"),  # tokenizers; fault injection; shipped models' manifest
    ("diffusion", "solvers", "oracles", "guidance", "sampling", "masks", "likelihood"),  # the math
    ("models", "data", "checkpoint", "config_lib"),  # networks, datasets, storage
    ("inference",),  # a trained model: spec, loading, sampler, sample files
    ("training", "evaluation", "openai"),  # the loop; judging samples; released models
    ("filtering", "toy", "main", "pretrained_build", "__init__"),  # applications, API facade
)
FLOOR = {unit: level for level, units in enumerate(FLOORS) for unit in units}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
  path = PACKAGE.parent.joinpath(*name.split("."))
  return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(path: pathlib.Path) -> set[str]:
  """The diffusion_jax modules `path` imports, anywhere in its source."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("diffusion_jax"))
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffusion_jax"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        found.add(full if is_module(full) else node.module)
  return found


def unit_of(name: str) -> str:
  parts = name.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
  return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_unit_has_a_floor():
  units = {unit_of(name) for name in graph()}
  assert units == set(FLOOR), f"give these a floor: {sorted(units - set(FLOOR))}"


def test_no_module_imports_a_higher_floor():
  upward = [f"{source} -> {target}" for source, targets in graph().items()
            for target in targets if FLOOR[unit_of(target)] > FLOOR[unit_of(source)]]
  assert not upward, upward


def test_no_import_circle():
  edges = {m: {t for t in targets if t != m and t != "diffusion_jax"}
           for m, targets in graph().items()}
  state, path = {}, []

  def visit(module):
    state[module] = "open"
    path.append(module)
    for target in sorted(edges.get(module, ())):
      if state.get(target) == "open":
        raise AssertionError(" -> ".join(path[path.index(target):] + [target]))
      if target not in state:
        visit(target)
    path.pop()
    state[module] = "done"

  for module in sorted(edges):
    if module not in state:
      visit(module)


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path, monkeypatch):
  """The checks can fail: a planted upward import and circle are found."""
  planted = dict(graph())
  planted["diffusion_jax.schedules"] = planted["diffusion_jax.schedules"] | {
      "diffusion_jax.training.loop"}
  monkeypatch.setattr(sys.modules[__name__], "graph", lambda: planted)
  import pytest
  with pytest.raises(AssertionError, match="schedules -> diffusion_jax.training.loop"):
    test_no_module_imports_a_higher_floor()
  with pytest.raises(AssertionError, match="diffusion_jax.schedules"):
    test_no_import_circle()
