"""Converts a released guided-diffusion or GLIDE checkpoint into an export.

    bundle = convert("64x64_diffusion.pt", kind="64x64_diffusion")
    export(bundle, "exports/64x64_diffusion")   # or: convert(..., output=...)

The kind gives the architecture (`released.KINDS`), `flags` changes it
(the reference's own flag string, for other checkpoints). The network our
config builds says which PyTorch keys and shapes it needs
(`models.convert.expected_keys`); a checkpoint that differs in any key or
shape is refused, naming every difference, and nothing is written.
"""
from __future__ import annotations

import hashlib
import pathlib
from typing import Sequence

import jax
from absl import logging

from diffusion_jax.inference import loading
from diffusion_jax.inference.spec import make_spec
from diffusion_jax.models import convert as convert_lib
from diffusion_jax.openai import released, torch_file

# The CLIP's two released files, told apart by a key only each tower has.
_CLIP_TOWERS = {"image": "blocks.input.patch_proj", "text": "blocks.input.w_voc"}


def describe(state_dict) -> str:
  """What a state_dict looks like it holds, from keys that only one family has."""
  keys = set(state_dict)
  conv = state_dict.get("input_blocks.0.0.weight")
  channels = conv.shape[1] if conv is not None and len(conv.shape) == 4 else None
  if _CLIP_TOWERS["image"] in keys:
    return "the noised CLIP's image encoder"
  if _CLIP_TOWERS["text"] in keys:
    return "the noised CLIP's text encoder"
  if "out.2.qkv_proj.weight" in keys:
    return "a noisy classifier (guided-diffusion EncoderUNetModel)"
  if "transformer_proj.weight" in keys:
    what = {3: "base", 6: "upsampler", 7: "inpainting base", 10: "inpainting upsampler"}
    return f"a GLIDE text-conditional UNet ({what.get(channels, f'{channels} input channels')})"
  if channels is not None:
    classes = "class-conditional" if "label_emb.weight" in keys else "unconditional"
    what = "upsampler" if channels == 6 else "diffusion UNet"
    return f"a {classes} guided-diffusion {what}"
  return "no model of guided-diffusion or GLIDE"


def _fingerprint(paths: Sequence[pathlib.Path]) -> list[dict]:
  """Each source's name, size and SHA-256, for the export's record."""
  out = []
  for path in paths:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 24), b""):
        digest.update(block)
    out.append({"file": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()})
  return out


def _towers(paths, state_dicts) -> dict:
  """The CLIP's state_dicts by tower ("image", "text"), in any order given."""
  found = {}
  for path, sd in zip(paths, state_dicts):
    tower = next((t for t, key in _CLIP_TOWERS.items() if key in sd), None)
    if tower is None:
      raise ValueError(f"{path} holds {describe(sd)}, not a tower of the noised CLIP")
    if tower in found:
      raise ValueError(f"both files hold the CLIP's {tower} encoder; give "
                       "clip_image_enc.pt and clip_text_enc.pt")
    found[tower] = sd
  return found


def _params(kind: str, spec, paths, state_dicts):
  target = jax.eval_shape(spec.init_params, jax.random.PRNGKey(0))
  what = f"a {kind} model ({spec.describe()})"
  if released.KINDS[kind].family == "glide_clip":
    towers = _towers(paths, state_dicts)
    return {tower: _fill(convert_lib.from_torch_verbatim, towers[tower], target[tower],
                         f"the {tower} tower of {what}", paths)
            for tower in ("image", "text")}
  return _fill(convert_lib.from_torch, state_dicts[0], target, what, paths)


def _fill(fill_fn, state_dict, target, what, paths):
  try:
    return fill_fn(state_dict, target, what)
  except convert_lib.StateDictMismatch as e:
    for line in e.lines():
      logging.info("%s", line)
    holds = describe(state_dict)
    raise ValueError(f"{', '.join(map(str, paths))} ({holds}): {e}; nothing was written "
                     "(every difference is in the log; check --kind and --flags)") from None


def convert(sources: str | pathlib.Path | Sequence, kind: str, flags: str = "",
            output: str | pathlib.Path | None = None,
            dtype: str = "float32") -> loading.Bundle:
  """A `Bundle` of a released checkpoint, and its export when `output` is given.

  Args:
    sources: the `.pt` file; for `kind="clip"`, both CLIP files
      (clip_image_enc.pt and clip_text_enc.pt, in any order).
    kind: a released model (`released.KINDS`: "64x64_diffusion", "base", ...).
    flags: reference flags on top of the kind's ("--image_size 128 ...").
    output: where to write the export (`diffusion_jax.load(output)` reads it).
    dtype: the export's stored weights, "float32" or "float16" (half the
      bytes, as the released fp16 checkpoints).

  Raises:
    ValueError: an unknown kind or flag, a refused or damaged file, or a
      checkpoint whose keys or shapes differ from the model (all named).
    ImportError: torch is not installed.
  """
  spec_kind = released.kind_of(kind)
  paths = [pathlib.Path(p) for p in
           (str(sources).split(",") if isinstance(sources, (str, pathlib.Path)) else sources)]
  if len(paths) != len(spec_kind.files):
    raise ValueError(f"a {kind} model is {len(spec_kind.files)} file(s) "
                     f"({', '.join(spec_kind.files)}); got {len(paths)}")
  all_flags = released.flags_of(kind, flags)
  config, info = released.config_of(kind, all_flags)
  spec = make_spec(config, info)
  state_dicts = [torch_file.read_state_dict(p) for p in paths]
  params = _params(kind, spec, paths, state_dicts)
  rate = config.sample.ema_rate if config.sample.use_ema else loading.RAW
  bundle = loading.Bundle(config, jax.tree.map(jax.numpy.asarray, params), spec, info, 0, rate)
  if output is not None:
    origin = {"kind": kind, "flags": flags, "sources": _fingerprint(paths)}
    loading.export(bundle, output, origin=origin, dtype=dtype)
  return bundle


def run(sources: str, kind: str, flags: str, output: str | None,
        dtype: str = "float32") -> str:
  """`--mode=convert`: writes the export; returns a line saying what was written."""
  output = output or f"exports/{kind}"
  bundle = convert(sources, kind, flags, output, dtype)
  count = sum(p.size for p in jax.tree.leaves(bundle.params))
  return (f"converted {sources} ({kind}: {count:,} parameters) to {output}; sample it with "
          f"python -m diffusion_jax.main --mode=sample --workdir={output}")
