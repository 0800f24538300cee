"""Every notebook runs top to bottom in quick mode, so none can rot.

Each runs in a fresh kernel on the tests' 8 simulated CPU devices (the
notebooks shard over all devices, as on a Colab TPU's 8 cores), in a scratch
folder, with the tests' prepared data and compilation cache, but with XLA's
optimisations on: the notebooks run real-size models, which the tests'
unoptimised code runs up to 6x slower. The harness is `notebooks/execute.py`,
which also makes the notebooks' saved outputs.
"""
import builtins
import importlib.util
import json

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from tests.conftest import ROOT, data_dir

_spec = importlib.util.spec_from_file_location("execute", ROOT / "notebooks" / "execute.py")
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)

NOTEBOOKS = {p.stem: p for p in execute.notebooks()}
_REAL_IMPORT = builtins.__import__
QUICK_CELL_TIMEOUT_S = 120  # the bound on a whole quick notebook, per cell here


@pytest.fixture
def kernel_environment(monkeypatch):
  monkeypatch.setenv("DIFFUSION_JAX_DATA_DIR", data_dir())
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")


def test_the_five_notebooks_are_there_with_saved_outputs():
  assert sorted(NOTEBOOKS) == ["classifier_guidance", "clip_guided", "inpaint", "text2im",
                               "train_from_scratch"]
  for name, path in NOTEBOOKS.items():
    notebook = json.loads(path.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{name}: not saved from one run in order"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"], name
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"{name}: {len(images)} pictures saved"
    assert code[-1].get("outputs"), f"{name}: the last cell's output is not saved"
    first = "".join(code[0]["source"])
    assert "except ImportError" in first and "pip" in first  # installs only where missing


def _run_install_cell(source: str, environment_source: str | None, monkeypatch):
  """Runs a notebook's first cell where `import diffusion_jax` fails; the
  pip commands it ran."""
  import subprocess
  calls = []

  def missing(name, *args, **kwargs):
    if name == "diffusion_jax" and not calls:
      raise ImportError("No module named 'diffusion_jax'")
    return _REAL_IMPORT(name, *args, **kwargs)
  monkeypatch.setattr(builtins, "__import__", missing)
  monkeypatch.setattr(subprocess, "check_call", lambda command: calls.append(command))
  if environment_source is None:
    monkeypatch.delenv("DIFFUSION_JAX_SOURCE", raising=False)
  else:
    monkeypatch.setenv("DIFFUSION_JAX_SOURCE", environment_source)
  exec(compile(source, "install cell", "exec"), {})
  return calls


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_the_install_cell_installs_only_from_a_source_the_user_names(name, monkeypatch):
  """No package named diffusion-jax is published: with no source named, the
  first cell stops with a one-line message and installs nothing; with one
  named (DIFFUSION_JAX_SOURCE here), pip installs exactly that."""
  notebook = json.loads(NOTEBOOKS[name].read_text())
  cell = "".join(next(c for c in notebook["cells"] if c["cell_type"] == "code")["source"])
  with pytest.raises(SystemExit, match="set SOURCE in this cell") as stopped:
    _run_install_cell(cell, None, monkeypatch)
  assert "\n" not in str(stopped.value)
  url = "git+https://example.org/diffusion_jax.git"
  calls = _run_install_cell(cell, url, monkeypatch)
  assert len(calls) == 1 and calls[0][-1] == url and calls[0][1:4] == ["-m", "pip", "install"]


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_a_notebook_runs_top_to_bottom_in_quick_mode(name, tmp_path, kernel_environment):
  notebook = nbformat.read(NOTEBOOKS[name], as_version=4)
  execute.execute(notebook, tmp_path, quick=True, timeout=QUICK_CELL_TIMEOUT_S)
  errors = [o for c in notebook.cells for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  printed = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
  assert "8 x cpu (cpu)" in printed  # all 8 simulated devices seen


def test_a_broken_cell_fails_the_run(tmp_path, kernel_environment):
  """The harness fails on a raising cell (not just records it), and names it."""
  notebook = nbformat.read(NOTEBOOKS["inpaint"], as_version=4)
  notebook.cells = notebook.cells[:3] + [nbformat.v4.new_code_cell(
      "raise RuntimeError('a deliberately broken cell')")] + notebook.cells[3:]
  with pytest.raises(CellExecutionError, match="a deliberately broken cell"):
    execute.execute(notebook, tmp_path, quick=True, timeout=QUICK_CELL_TIMEOUT_S)
