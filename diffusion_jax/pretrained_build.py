"""Writes the shipped models from training workdirs, and the manifest.

    python -m diffusion_jax.pretrained_build --runs=runs [--only=shapes-text2im]

Each model is exported with float16 weights (half the bytes; read back as
float32). The build then loads each one back and prints, as JSON, how far
float16 storage moves its outputs: the largest weight change relative to its
tensor's largest weight, and the largest change of 8 samples with the same
seed and noise (diffusion models), in pixel levels of 255. The evaluators
(`evaluation/weights`, float32) keep their files; the manifest records the
hashes of every file of every shipped model.
"""
from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
from absl import app, flags

from diffusion_jax import pretrained
from diffusion_jax.evaluation import evaluator
from diffusion_jax.inference import loading

# name: (workdir under --runs, the config that trained it)
SOURCES = {
    "shapes-text2im": ("text2im_scenes", "configs/shapes_text2im.py (scenes of 0 to 3 "
                       "objects, v-prediction)"),
    "shapes-upsampler": ("upsample_scenes", "configs/shapes_upsample.py (scenes)"),
    "shapes-inpaint": ("inpaint_scenes", "configs/shapes_inpaint.py (scenes), started from "
                       "shapes-text2im"),
    "shapes-clip": ("clip_scenes", "configs/shapes_clip.py (scenes)"),
    "shapes-classifier": ("guidance/shapes_classifier", "configs/shapes_classifier.py"),
    "shapes-classes": ("recipe/v_long_seed0", "configs/shapes_class_cond.py (the main "
                       "job's recipe, v-prediction) at batch 64 (17 minutes): "
                       "benchmarks/recipe.py's v_long run, seed 0"),
    "digits-classes": ("digits_v", "configs/digits_class_cond.py (v-prediction)"),
}
# A shipped model's default sampler where measurement chose another than
# its training config's (`sample.*`, docs/samplers.md): written into the
# exported config, so `load(name).sample()` and --mode=sample use it.
SAMPLER_DEFAULTS: dict[str, dict] = {
    # FD 38.9 +- 1.3 against DDPM 100's 38.5 +- 1.3, at a fifth of the cost.
    "shapes-classes": {"method": "dpmpp_2m_sde", "steps": "20"},
}
STORAGE = "float16"
FIDELITY_STEPS = "25"  # respaced steps of the same-seed sample comparison

_RUNS = flags.DEFINE_string("runs", "runs", "The folder holding the training workdirs.")
_ONLY = flags.DEFINE_list("only", [], "Rebuild only these models (default: all).")


def _summary(bundle: loading.Bundle, trained_by: str) -> str:
  return f"{bundle.spec.describe()}, {bundle.step:,} steps of {trained_by}"


def _weight_change(before, after) -> float:
  """The largest change of a weight, relative to its tensor's largest weight."""
  worst = 0.0
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    worst = max(worst, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)))
  return worst


def _sample_change(before: loading.Bundle, after: loading.Bundle):
  """The largest change, in levels of 255, of 8 same-seed samples; None for
  a model that does not sample alone (a guide, an editor)."""
  if not before.spec.samples or before.spec.inpaints or before.spec.low_res_size:
    return None
  rng = np.random.default_rng(0)
  cond = {}
  if "prompts" in {c.arg for c in before.spec.conditioning}:
    cond["prompts"] = ["a red circle", "a small blue square at the top"] * 4
  elif before.spec.num_classes:
    cond["labels"] = list(rng.integers(0, before.spec.num_classes, 8))
  images = [b.sample(num=8, seed=0, steps=FIDELITY_STEPS, **cond) for b in (before, after)]
  return float(np.abs(images[0] - images[1]).max() * 127.5)


def build_one(name: str, runs: pathlib.Path) -> dict:
  workdir, trained_by = SOURCES[name]
  source = loading.load(runs / workdir)
  sampler = SAMPLER_DEFAULTS.get(name, {})
  for key, value in sampler.items():
    source.config.sample[key] = value
  output = pathlib.Path(pretrained.__file__).parent / name
  origin = {"workdir": workdir, "trained_by": trained_by, **({"sampler": sampler} if sampler
                                                              else {})}
  loading.export(source, output, origin=origin, dtype=STORAGE)
  shipped = loading.load(output)
  return {"name": name, "folder": str(output.relative_to(pretrained.PACKAGE)),
          "summary": _summary(source, trained_by),
          "weight_change": _weight_change(source.params, shipped.params),
          "sample_change_levels": _sample_change(source, shipped),
          "bytes": sum(p.stat().st_size for p in output.iterdir())}


def _entry(folder: pathlib.Path, summary: str) -> dict:
  return {"folder": str(folder.relative_to(pretrained.PACKAGE)), "summary": summary,
          "sha256": {p.name: pretrained.sha256(p) for p in sorted(folder.iterdir())
                     if p.is_file()}}


def write_manifest(summaries: dict[str, str]) -> dict:
  """The manifest of every shipped model: the built ones and the evaluators."""
  entries = {}
  for name in SOURCES:
    folder = pathlib.Path(pretrained.__file__).parent / name
    if folder.is_dir():
      entries[name] = _entry(folder, summaries[name])
  for name in evaluator.evaluator_names():
    bundle = loading.load(evaluator.WEIGHTS / name)
    entries[name] = _entry(evaluator.WEIGHTS / name,
                           f"{bundle.spec.describe()}, for measuring samples")
  pretrained.MANIFEST.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
  pretrained.manifest.cache_clear()
  return entries


def main(argv) -> None:
  del argv
  runs = pathlib.Path(_RUNS.value)
  names = _ONLY.value or list(SOURCES)
  unknown = sorted(set(names) - set(SOURCES))
  if unknown:
    sys.exit(f"error: unknown model {unknown[0]!r}; the build knows {', '.join(SOURCES)}")
  summaries = {n: e["summary"] for n, e in
               (json.loads(pretrained.MANIFEST.read_text()) if pretrained.MANIFEST.exists()
                else {}).items()}
  for name in names:
    report = build_one(name, runs)
    summaries[name] = report["summary"]
    print(json.dumps(report), flush=True)  # noqa: T201 (the build's JSON report)
  entries = write_manifest(summaries)
  total = sum((pretrained.PACKAGE / e["folder"] / f).stat().st_size
              for e in entries.values() for f in e["sha256"])
  print(json.dumps({"models": len(entries), "total_bytes": total}))  # noqa: T201


if __name__ == "__main__":
  app.run(main)
