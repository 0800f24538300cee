"""Runs the notebooks top to bottom: CI's check, and how their saved outputs
are made.

    python notebooks/execute.py                 # every notebook, full, outputs saved in place
    python notebooks/execute.py --quick text2im # quick mode, outputs not saved

Each notebook runs in a fresh kernel (this interpreter's), in a scratch
folder (its `runs/` go there), with DIFFUSION_JAX_QUICK set as asked. A cell
that raises stops the run with nbclient's CellExecutionError, which names
the cell and the error.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
import time

import nbclient
import nbformat

HERE = pathlib.Path(__file__).resolve().parent
CELL_TIMEOUT_S = 900  # a full-mode training cell on a 2-core CPU


def notebooks() -> list[pathlib.Path]:
  return sorted(HERE.glob("*.ipynb"))


@contextlib.contextmanager
def _environment(**values):
  saved = {k: os.environ.get(k) for k in values}
  os.environ.update(values)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def execute(notebook: nbformat.NotebookNode, workdir: str | pathlib.Path, quick: bool,
            timeout: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
  """Runs `notebook` in place in `workdir` (its cwd) and returns it, outputs
  filled. Raises nbclient.exceptions.CellExecutionError on a failing cell."""
  client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                   resources={"metadata": {"path": str(workdir)}})
  with _environment(DIFFUSION_JAX_QUICK="1" if quick else "0"):
    client.execute()
  return notebook


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*", help="notebook names (default: all)")
  parser.add_argument("--quick", action="store_true", help="quick mode; outputs not saved")
  args = parser.parse_args()
  paths = [p for p in notebooks() if not args.names or p.stem in args.names]
  if not paths:
    sys.exit(f"no notebook named {', '.join(args.names)}; there are "
             f"{', '.join(p.stem for p in notebooks())}")
  for path in paths:
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
      execute(notebook, scratch, args.quick)
    print(f"{path.name}: {time.perf_counter() - start:.0f} s", flush=True)
    if not args.quick:
      nbformat.write(notebook, path)


if __name__ == "__main__":
  main()
