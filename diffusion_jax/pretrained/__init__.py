"""The trained models that ship with the package, loaded by name offline.

    import diffusion_jax
    diffusion_jax.list_models()               # ["digits-classes", ..., "shapes16", ...]
    bundle = diffusion_jax.load("shapes-text2im")

Each model is an export folder (safetensors + JSON, `inference.loading`)
inside the package: the diffusion models here, the clean-image evaluators in
`evaluation/weights`. `manifest.json` records each one's folder, a summary,
and the SHA-256 of each of its files; a folder whose files differ is refused
as damaged before anything reads it. `python -m diffusion_jax.pretrained_build`
writes the folders and the manifest from training workdirs (docs/models.md).
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent  # diffusion_jax/
MANIFEST = pathlib.Path(__file__).resolve().parent / "manifest.json"


@functools.cache
def manifest() -> dict[str, dict]:
  """{name: {"folder": path under the package, "summary": str, "sha256": {file: hex}}}."""
  return json.loads(MANIFEST.read_text())


def names() -> list[str]:
  """The shipped models' names, sorted."""
  return sorted(manifest())


def summary(name: str) -> str:
  """One line saying what the shipped model `name` is."""
  return manifest()[name]["summary"]


def unknown_name_message(name: str) -> str:
  """The error for a name that is neither a folder nor a shipped model."""
  close = difflib.get_close_matches(name, names(), n=1)
  hint = f"; did you mean {close[0]!r}?" if close else ""
  return (f"no model or folder named {name!r}{hint} The package ships: {', '.join(names())} "
          "(diffusion_jax.list_models()); or give an export folder or a training workdir")


def sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def folder(name: str) -> pathlib.Path:
  """The export folder of the shipped model `name`, its files checked.

  Raises:
    ValueError: no such model, or a file is missing or differs from the one
      shipped (the message names it).
  """
  if name not in manifest():
    raise ValueError(unknown_name_message(name))
  entry = manifest()[name]
  path = PACKAGE / entry["folder"]
  for file, want in sorted(entry["sha256"].items()):
    if not (path / file).is_file():
      raise ValueError(f"the shipped model {name!r} is damaged: {path / file} is missing "
                       "(reinstall diffusion-jax)")
    have = sha256(path / file)
    if have != want:
      raise ValueError(f"the shipped model {name!r} is damaged: {path / file} has SHA-256 "
                       f"{have[:12]}..., not the shipped {want[:12]}... (reinstall "
                       "diffusion-jax)")
  return path
