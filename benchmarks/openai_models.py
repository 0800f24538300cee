"""Time and memory of OpenAI's released models in diffusion_jax, per sample.

For each kind (`diffusion_jax.openai.released.KINDS`), in a fresh process:
the network our config builds at full size, on random weights (no download:
the cost of a call does not depend on the values), jitted as the sampler
calls it. Measured: the compile time (with the first call) and the best of
3 calls (1 where the first took over a minute) of
  - the denoiser at batch 1, and at batch 2 (a CFG step: conditional and
    unconditional halves in one call);
  - a guide's gradient with respect to x at batch 1 (the noisy classifier's
    log p(y | x_t), the noised CLIP's image-text similarity);
and the process's peak resident memory. A recipe's time per sample is then
its number of steps times the calls each step makes (`RECIPES`): derived
from the measured calls, and said so. One recipe is also run end to end
(`--end_to_end`, the 64x64 model with DDIM 25 steps) to hold the derived
figure against a measured one.

    python benchmarks/openai_models.py [--kinds 64x64_diffusion,base,...] \
        [--out benchmarks/results/openai_models_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import best_of, emit, environment, markdown_table  # noqa: E402
from diffusion_jax.inference.spec import make_spec  # noqa: E402
from diffusion_jax.models import clip as clip_lib  # noqa: E402
from diffusion_jax.openai import released  # noqa: E402

# kind -> (recipe name, steps, [(call, count per step)]): the reference recipes.
RECIPES = {
    "64x64_diffusion": [("classifier-guided, 250 steps", 250,
                         [("model_b1", 1), ("guide_64x64_classifier", 1)]),
                        ("classifier-guided, DDIM 25", 25,
                         [("model_b1", 1), ("guide_64x64_classifier", 1)])],
    "128x128_diffusion": [("classifier-guided, 250 steps", 250,
                           [("model_b1", 1), ("guide_128x128_classifier", 1)])],
    "256x256_diffusion": [("classifier-guided, 250 steps", 250,
                           [("model_b1", 1), ("guide_256x256_classifier", 1)])],
    "512x512_diffusion": [("classifier-guided, 250 steps", 250,
                           [("model_b1", 1), ("guide_512x512_classifier", 1)])],
    "64_256_upsampler": [("250 steps", 250, [("model_b1", 1)])],
    "base": [("CFG 3, 100 steps", 100, [("model_b2", 1)]),
             ("CLIP-guided, 100 steps", 100, [("model_b1", 1), ("guide_clip", 1)])],
    "base-inpaint": [("CFG 5, 100 steps", 100, [("model_b2", 1)])],
    "upsample": [("fast27 (27 DDIM steps)", 27, [("model_b1", 1)])],
}
GUIDES = {"64x64_diffusion": "64x64_classifier", "128x128_diffusion": "128x128_classifier",
          "256x256_diffusion": "256x256_classifier", "512x512_diffusion": "512x512_classifier",
          "base": "clip"}


def spec_of(kind):
  config, info = released.config_of(kind, released.flags_of(kind))
  return config, make_spec(config, info)


def random_params(spec):
  """Parameters of the right shapes (N(0, 0.02)), without running an init."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(spec.init_params, jax.random.PRNGKey(0))
  return jax.tree.map(lambda s: jnp.asarray(
      rng.standard_normal(s.shape, dtype=np.float32) * 0.02), shapes)


def timed(fn, *args):
  """(compile seconds, best of 3 calls in seconds) of jit(fn)(*args)."""
  jitted = jax.jit(fn)
  start = time.perf_counter()
  jax.block_until_ready(jitted(*args))
  compile_s = time.perf_counter() - start
  repeats = 3 if compile_s < 60 else 1  # the 256 and 512 models: one call
  return compile_s, best_of(lambda: jax.block_until_ready(jitted(*args)), repeats)


def model_inputs(spec, batch):
  size, _, channels = spec.image_shape
  x = jnp.zeros((batch, size, size, channels), jnp.float32)
  cond = {}
  for c in spec.conditioning:
    cond.update(c.placeholder(batch))
  return x, jnp.full((batch,), 500, jnp.int32), cond


def measure_model(spec, params) -> dict:
  out = {}
  for batch in (1, 2):
    x, t, cond = model_inputs(spec, batch)
    encoded = spec.encode_cond(params, cond)
    compile_s, call_s = timed(lambda p, x, t, c: spec.apply(p, x, t, **c), params, x, t, encoded)
    out[f"model_b{batch}"] = {"compile_s": round(compile_s, 1), "call_s": round(call_s, 3)}
  return out


def measure_guide(kind) -> dict:
  """The gradient a guide adds to each step, at batch 1."""
  _, spec = spec_of(kind)
  params = random_params(spec)
  size = spec.image_shape[0]
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  t = jnp.full((1,), 500, jnp.int32)
  if kind == "clip":
    tokens = jnp.zeros((1, spec.model.spec.text_ctx), jnp.int32)
    z_text = clip_lib.text_embeddings(spec.model.spec, params, tokens, jnp.ones((1,), jnp.int32))

    def score(x):
      z = clip_lib.image_embeddings(spec.model.spec, params, x, t)
      return jnp.sum(z * z_text)
  else:
    def score(x):
      logits = spec.apply(params, x, t)
      return jnp.sum(jax.nn.log_softmax(logits)[:, 0])
  compile_s, call_s = timed(jax.grad(score), x)
  return {f"guide_{kind}": {"compile_s": round(compile_s, 1), "call_s": round(call_s, 3)}}


def end_to_end(kind, steps) -> dict:
  """One recipe sample through the Bundle's compiled sampler (random weights)."""
  from diffusion_jax.inference import loading
  config, spec = spec_of(kind)
  bundle = loading.Bundle(config, random_params(spec), spec,
                          released.config_of(kind, released.flags_of(kind))[1], 0, 0.0)
  settings = dict(labels=[1], steps=steps, method="ddim")
  start = time.perf_counter()
  bundle.sample(**settings)
  first = time.perf_counter() - start
  start = time.perf_counter()
  bundle.sample(**settings)
  return {"end_to_end": {"recipe": f"DDIM {steps}, batch 1, no guide", "first_call_s":
                         round(first, 1), "sample_s": round(time.perf_counter() - start, 1)}}


def measure_kind(kind, e2e) -> dict:
  """Everything about one kind, in this process."""
  _, spec = spec_of(kind)
  params = random_params(spec)
  result = {"kind": kind, "what": spec.describe(),
            "params": int(sum(p.size for p in jax.tree.leaves(params)))}
  if spec.samples:
    result.update(measure_model(spec, params))
  del params
  if kind in GUIDES:
    result.update(measure_guide(GUIDES[kind]))
  if e2e and kind == "64x64_diffusion":
    result.update(end_to_end(kind, "ddim25"))
  result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
  return result


def per_sample(result) -> list[dict]:
  """The recipes' seconds per sample, from the measured calls."""
  rows = []
  for name, steps, calls in RECIPES.get(result["kind"], []):
    if all(c in result for c, _ in calls):
      seconds = steps * sum(result[c]["call_s"] * n for c, n in calls)
      rows.append({"recipe": name, "derived_s_per_sample": round(seconds, 1)})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kinds", default="64x64_diffusion,128x128_diffusion,base,"
                      "base-inpaint,upsample,64_256_upsampler,256x256_diffusion,"
                      "512x512_diffusion")
  parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's kind
  parser.add_argument("--end_to_end", action="store_true")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  if args.one:
    print(json.dumps(measure_kind(args.one, args.end_to_end)))
    return
  results = []
  for kind in args.kinds.split(","):
    cmd = [sys.executable, __file__, f"--one={kind}"] + (["--end_to_end"] if args.end_to_end
                                                         else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
      print(done.stderr[-2000:], file=sys.stderr)
      results.append({"kind": kind, "error": done.stderr.strip().splitlines()[-1]})
      continue
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["recipes"] = per_sample(result)
    results.append(result)
    print(json.dumps(result), file=sys.stderr, flush=True)
  report = {"benchmark": "openai_models", "environment": environment(), "results": results}
  emit(report, args.out)
  rows = [[r["kind"], f"{r.get('params', 0) / 1e6:.0f}M", r.get("peak_rss_gib"),
           r.get("model_b1", {}).get("call_s"), r.get("model_b2", {}).get("call_s"),
           "; ".join(f"{x['recipe']}: {x['derived_s_per_sample']} s" for x in r.get("recipes", []))]
          for r in results]
  print("\n".join(markdown_table(["kind", "params", "peak RSS GiB", "call b1 s", "call b2 s",
                                  "per sample (derived)"], rows)), file=sys.stderr)


if __name__ == "__main__":
  main()
