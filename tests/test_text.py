"""Text to image: GLIDE's tokenizers and noised CLIP against the reference
outputs, then the text-conditional sampler (prompts, classifier-free
guidance, prompt schedules, CLIP guidance) on tiny models, end to end through
training, `Bundle.sample` and the CLI. (GLIDE's text UNet's own parity test
is with the other reference models, in test_models.py.)"""
import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (
  ONE_DEVICE,
  TINY_FLAGS,
  TINY_MODEL,
  error_line,
  perturbed,
  quick_config,
  run_cli,
)
from diffusion_jax import guidance, masks
from diffusion_jax.data.pipeline import DatasetInfo
from diffusion_jax.inference import guide as guide_lib
from diffusion_jax.inference import loading
from diffusion_jax.inference.spec import make_spec
from diffusion_jax.models import clip as clip_lib
from diffusion_jax.models import convert
from diffusion_jax.text import tokenizer as tok_lib

SHAPES_16 = DatasetInfo(16, 3, 18, 100, captions=True)
PROMPTS = ["a red circle", "a small blue square at the top", "a green triangle"]
# The reference CLIP's size (glide_clip.npz's config).
REFERENCE_CLIP = clip_lib.ClipSpec(
    vocab_size=65536, text_ctx=16, text_width=32, text_layers=2, text_heads=4,
    image_size=16, patch_size=4, image_width=32, image_layers=2, image_heads=4,
    num_timesteps=1000, embed_dim=32)


def reference(shared_dir, name):
  path = shared_dir / "testdata" / "openai_parity" / f"{name}.npz"
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def test_gpt2_tokens_and_mask_equal_glides(shared_dir):
  data = reference(shared_dir, "glide_base")
  tokens, mask = tok_lib.pad_and_mask(list(data["prompts"]), data["tokens"].shape[1])
  np.testing.assert_array_equal(tokens, data["tokens"])
  np.testing.assert_array_equal(mask, data["mask"])


def test_clip_tokens_and_lens_equal_glides(shared_dir):
  data = reference(shared_dir, "glide_clip")
  tokens, lens = tok_lib.pad_and_lens(list(data["prompts"]), data["tokens"].shape[1])
  np.testing.assert_array_equal(tokens, data["tokens"])
  np.testing.assert_array_equal(lens, data["lens"])


def test_clip_tokenizer_normalises_case_space_and_html():
  same = tok_lib.pad_and_lens(["a red circle"], 16)[0]
  for variant in ["A  Red\tCircle", " a red circle ", "a red&#32;circle"]:
    np.testing.assert_array_equal(tok_lib.pad_and_lens([variant], 16)[0], same)


def test_long_prompts_are_cut_with_a_warning():
  prompt = "a red circle above a blue square " * 4
  with pytest.warns(UserWarning, match="kept the first 6"):
    tokens, mask = tok_lib.pad_and_mask([prompt], 6)
  assert mask.all() and tokens[0, 0] == tok_lib.gpt2().encode(prompt).ids[0]
  with pytest.warns(UserWarning, match="kept the first 4"):
    tokens, lens = tok_lib.pad_and_lens([prompt], 6)
  assert lens[0] == 6 and tokens[0, 0] == tok_lib.CLIP_START and tokens[0, 5] == tok_lib.CLIP_END


def reference_clip(shared_dir):
  """(spec-built NoisedClip params from glide_clip.npz, the reference arrays)."""
  data = reference(shared_dir, "glide_clip")
  model = clip_lib.NoisedClip(REFERENCE_CLIP)
  x = jnp.asarray(data["x_nchw"].transpose(0, 2, 3, 1))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, jnp.asarray(data["t"]),
                          clip_tokens=jnp.asarray(data["tokens"]),
                          clip_lens=jnp.asarray(data["lens"]))["params"]
  params = {tower: convert.from_torch_verbatim(
      convert.load_state_dict_npz(shared_dir / "testdata" / "openai_parity" / "glide_clip.npz",
                                  prefix=f"{tower}/"), shapes[tower])
            for tower in ("text", "image")}
  return params, data


def test_noised_clip_reproduces_glides_embeddings(shared_dir):
  params, data = reference_clip(shared_dir)
  model = clip_lib.NoisedClip(REFERENCE_CLIP)
  z_image, z_text = model.apply({"params": params},
                                jnp.asarray(data["x_nchw"].transpose(0, 2, 3, 1)),
                                jnp.asarray(data["t"]), clip_tokens=jnp.asarray(data["tokens"]),
                                clip_lens=jnp.asarray(data["lens"]))
  for got, want in ((z_text, data["z_text"]), (z_image, data["z_image"])):
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max(), rtol=0)


def test_clip_cond_fn_is_glides_formula_differentiated(shared_dir):
  """The guide's gradient, against GLIDE's formula written out here (the
  normalised embeddings' dot product times exp(logit_scale) and the scale),
  differentiated by central differences in float64."""
  params, data = reference_clip(shared_dir)
  spec = dataclasses.replace(make_spec(quick_config("shapes_clip"), SHAPES_16),
                             model=clip_lib.NoisedClip(REFERENCE_CLIP))
  guide = guide_lib.ClipGuide(spec, params, 2.5)
  x = data["x_nchw"].transpose(0, 2, 3, 1).astype(np.float32)
  t = jnp.asarray(data["t"])
  cond = guide.encode_cond(params, {"clip_tokens": jnp.asarray(data["tokens"]),
                                    "clip_lens": jnp.asarray(data["lens"])})
  grad = np.asarray(guide.cond_fn(params, 2.5)(jnp.asarray(x), t, **cond), np.float64)

  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)

    @jax.jit
    def formula(x64):  # GLIDE's: sum_b scale * exp(log 100) <z_i / |z_i|, z_t / |z_t|>
      z_i = clip_lib.ImageEncoder(REFERENCE_CLIP).apply({"params": p64["image"]}, x64, t)
      z_t = clip_lib.TextEncoder(REFERENCE_CLIP).apply(
          {"params": p64["text"]}, jnp.asarray(data["tokens"]), jnp.asarray(data["lens"]))
      unit = lambda z: z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-12)  # noqa: E731
      return 2.5 * 100.0 * jnp.sum(unit(z_i) * unit(z_t))

    rng = np.random.default_rng(0)
    for _ in range(3):
      v = rng.normal(size=x.shape)
      h = 1e-4
      x64 = jnp.asarray(x, jnp.float64)
      slope = float(formula(x64 + h * v) - formula(x64 - h * v)) / (2 * h)
      np.testing.assert_allclose(np.sum(grad * v), slope, rtol=2e-3)


@pytest.fixture(scope="module")
def text_bundle():
  """The quick text-to-image model, random (perturbed) weights, in a Bundle."""
  config = quick_config("shapes_text2im", **ONE_DEVICE)
  config.sample.steps = "3"
  spec = make_spec(config, SHAPES_16)
  params = perturbed(jax.jit(spec.init_params)(jax.random.PRNGKey(0)))
  return loading.Bundle(config, params, spec, SHAPES_16, 0, 0.0)


def test_text_is_encoded_once_per_call_not_per_step(text_bundle):
  """The sampling loop's body never sees the token embedding table: the text
  model runs before the loop."""
  bundle = text_bundle
  cond = bundle.spec.prepare_cond({"prompts": PROMPTS[:2]}, 2)
  settings = loading.SampleSettings.of(bundle.config.sample)
  fn = bundle.sampler._build_sample(settings, 2, None, False)
  table = bundle.params["text"]["token_embedding"]["embedding"].shape
  jaxpr = jax.make_jaxpr(fn)(bundle.params, np.zeros(2, np.uint32), cond, None,
                             np.float32(3.0), np.int32(0), None, None, np.float32(1.0), {},
                             np.float32(1.0))
  scans = list(_equations(jaxpr.jaxpr, "scan"))
  assert scans
  for scan in scans:
    assert all(tuple(getattr(v.aval, "shape", ())) != table for v in scan.invars)


def _equations(jaxpr, name):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == name:
      yield eqn
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)
      if hasattr(inner, "eqns"):
        yield from _equations(inner, name)


def test_an_example_ignores_the_other_prompts_in_its_batch(text_bundle):
  first = text_bundle.sample(prompts=PROMPTS, seed=3)
  changed = text_bundle.sample(prompts=[PROMPTS[0], "a yellow square", "a cyan circle"],
                               seed=3)
  np.testing.assert_allclose(changed[0], first[0], atol=1e-5)
  assert np.abs(changed[1:] - first[1:]).max() > 1e-2  # the prompts matter


def test_cfg_scale_one_is_the_conditional_model_and_zero_the_empty_prompt(text_bundle):
  spec, params = text_bundle.spec, text_bundle.params
  x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  t = jnp.array([5, 50, 90])
  cond = spec.encode_cond(params, spec.prepare_cond({"prompts": PROMPTS}, 3))
  null = spec.encode_cond(params, spec.null_cond(1))

  def model_fn(x, t, **c):
    return spec.apply(params, x, t, **c)
  empty = spec.encode_cond(params, spec.prepare_cond({"prompts": [""] * 3}, 3))
  plain = jax.jit(lambda c: model_fn(x, t, **c))
  conditional, unconditional = plain(cond), plain(empty)
  assert np.abs(conditional - unconditional).max() > 1e-2
  guided = jax.jit(lambda scale: guidance.classifier_free(model_fn, scale, null)(x, t, **cond))
  for scale, want in ((1.0, conditional), (0.0, unconditional)):
    np.testing.assert_allclose(guided(scale), want, atol=1e-5)
  # And end to end: CFG at 0 samples the empty prompt's images.
  np.testing.assert_allclose(text_bundle.sample(prompts=PROMPTS, guidance_scale=0.0, seed=2),
                             text_bundle.sample(prompts=[""] * 3, guidance_scale=1.0, seed=2),
                             atol=1e-5)
  # The scale is an argument of the compiled sampler: another one reuses it.
  compiled = len(text_bundle.sampler._compiled)
  text_bundle.sample(prompts=PROMPTS, guidance_scale=5.0, seed=2)
  assert len(text_bundle.sampler._compiled) == compiled


def test_a_prompt_schedule_at_its_ends_is_one_prompt(text_bundle):
  later = ["a yellow square", "a cyan circle", "a magenta triangle"]
  first_only = text_bundle.sample(prompts=PROMPTS, seed=4)
  later_only = text_bundle.sample(prompts=later, seed=4)
  np.testing.assert_allclose(
      text_bundle.sample(prompts=PROMPTS, prompts_after=later, switch_at=1.0, seed=4),
      first_only, atol=1e-5)
  np.testing.assert_allclose(
      text_bundle.sample(prompts=PROMPTS, prompts_after=later, switch_at=0.0, seed=4),
      later_only, atol=1e-5)
  mixed = text_bundle.sample(prompts=PROMPTS, prompts_after=later, switch_at=0.5, seed=4)
  assert np.abs(mixed - first_only).max() > 1e-3 and np.abs(mixed - later_only).max() > 1e-3


@pytest.mark.parametrize("kwargs, message", [
    ({"prompts": ["a red circle", 3]}, r"prompts\[1\] is int 3: each prompt must be a str"),
    ({"prompts": PROMPTS, "num": 2}, "3 prompts for a batch of 2"),
    ({"prompts": PROMPTS, "prompts_after": PROMPTS[:2]}, "2 prompts for a batch of 3"),
    ({"num": 2}, "needs prompts"),
    ({"labels": [1]}, "unknown argument .labels.: a 16x16 text-to-image .* takes prompts"),
])
def test_bad_prompts_get_one_line_errors(text_bundle, kwargs, message):
  with pytest.raises(ValueError, match=message) as error:
    text_bundle.sample(**kwargs)
  assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def clip_bundle():
  config = quick_config("shapes_clip", **ONE_DEVICE)
  spec = make_spec(config, SHAPES_16)
  return loading.Bundle(config, perturbed(jax.jit(spec.init_params)(jax.random.PRNGKey(1))),
                        spec, SHAPES_16, 0, 0.0)


def test_clip_guidance_moves_the_samples_and_refuses_another_schedule(text_bundle,
                                                                      clip_bundle):
  plain = text_bundle.sample(prompts=PROMPTS, seed=5)
  guided = text_bundle.sample(prompts=PROMPTS, clip=clip_bundle, clip_scale=10.0, seed=5)
  assert np.abs(guided - plain).max() > 1e-3
  np.testing.assert_allclose(
      text_bundle.sample(prompts=PROMPTS, clip=clip_bundle, clip_scale=0.0, seed=5), plain,
      atol=1e-5)
  other = clip_bundle.config.copy_and_resolve_references()
  other.diffusion.schedule = "linear"
  linear = loading.Bundle(other, clip_bundle.params, make_spec(other, SHAPES_16),
                          SHAPES_16, 0, 0.0)
  with pytest.raises(ValueError, match="the CLIP cannot guide .* 'linear' noise schedule"):
    text_bundle.sample(prompts=PROMPTS, clip=linear)
  with pytest.raises(ValueError, match="prompt schedule .* CLIP guidance is not supported"):
    text_bundle.sample(prompts=PROMPTS, prompts_after=PROMPTS, clip=clip_bundle)


def test_train_text2im_and_clip_then_sample_from_the_cli(tmp_path):
  """The quick text-to-image model and CLIP train (captions and CLIP tokens
  through the pipeline), and the CLI samples a grid of prompts, CLIP-guided."""
  from diffusion_jax.training import loop
  text_dir, clip_dir = tmp_path / "text2im", tmp_path / "clip"
  loop.train_and_evaluate(quick_config("shapes_text2im", **ONE_DEVICE, **TINY_MODEL),
                          str(text_dir))
  loop.train_and_evaluate(quick_config("shapes_clip", **ONE_DEVICE), str(clip_dir))
  assert loading.load(clip_dir).kind == "clip"
  out = tmp_path / "grid.png"
  config = ("--config=configs/shapes_text2im.py:quick", *TINY_FLAGS)
  result = run_cli("--mode=sample", *config, f"--workdir={text_dir}",
                   "--config.sample.prompts=a red circle|a blue square at the top",
                   f"--config.sample.clip={clip_dir}", "--config.sample.clip_scale=2",
                   "--config.sample.per_class=2", f"--config.sample.output={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "grid.npz") as saved:
    assert saved["images"].shape == (2, 2, 16, 16, 3)
    assert list(saved["prompts"]) == ["a red circle", "a blue square at the top"]
  # N samples, prompts in turn, with a prompt schedule.
  many = tmp_path / "many.npz"
  result = run_cli("--mode=sample", *config, f"--workdir={text_dir}",
                   "--config.sample.prompts=a red circle|a blue square",
                   "--config.sample.prompts_after=a green circle|a cyan square",
                   "--config.sample.switch_at=0.5", "--config.sample.num_samples=3",
                   f"--config.sample.output={many}")
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(many) as saved:
    assert saved["arr_0"].shape == (3, 16, 16, 3) and saved["arr_0"].dtype == np.uint8
  # A scene in two stages: drawn, then a blue square inpainted into cell 2.
  scene = tmp_path / "scene"
  result = run_cli("--mode=sample", *config, f"--workdir={text_dir}",
                   "--config.sample.scene=a red circle|a blue square@2",
                   "--config.sample.per_class=1", f"--config.sample.output={scene}")
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "scene.npz") as saved:
    first, second = saved["images"][0]
  keep = np.asarray(masks.cell(16, 2))[..., 0] == 1
  np.testing.assert_array_equal(second[keep], first[keep])  # only cell 2 changed
  # A bad prompt list is one error line, before any sampling.
  bad = run_cli("--mode=sample", *config, f"--workdir={text_dir}", "--config.sample.prompts=",
                f"--config.sample.clip={clip_dir}")
  assert "needs sample.prompts" in error_line(bad)


def test_warnings_do_not_fire_for_the_datasets_captions():
  """Every caption of the embedded shapes fits the configs' text contexts."""
  from diffusion_jax.data import shapes
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    captions = [shapes.render_example(1, i, 16, 1)["caption"] for i in range(300)]
    tok_lib.pad_and_mask(captions, quick_config("shapes_text2im").model.text_ctx)
    tok_lib.pad_and_lens(captions, quick_config("shapes_clip").model.clip.text_ctx)
