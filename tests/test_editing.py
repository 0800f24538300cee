"""Editing: inpainting (GLIDE's paste into x_0, and x_t replacement for any
model, with RePaint resampling), re-noise edits, outpainting, label swaps and
upsampling, proven with the exact denoiser of a finite image set; kept
pixels returned exactly; new masks reuse the compiled sampler; bad input is
one clear error."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ONE_DEVICE, TINY_MODEL, perturbed, quick_config
from diffusion_jax import masks as masks_lib
from diffusion_jax import oracles, sampling, schedules
from diffusion_jax.data.pipeline import DatasetInfo
from diffusion_jax.inference import editing, loading
from diffusion_jax.inference.spec import ModelSpec, make_spec

SHAPES_16 = DatasetInfo(16, 3, None, 100, captions=True)


def finite_set(num=6, size=8, seed=0):
  """N random images [N, S, S, 1] in [-1, 1]; any half of one's pixels
  tells it from the others by far more than the final noise levels."""
  return jnp.asarray(np.random.RandomState(seed).uniform(-1, 1, (num, size, size, 1)),
                     jnp.float32)


@pytest.mark.parametrize("mode,resample,restored", [("x_t", 1, 5), ("x0", 1, 4), ("x_t", 10, 6)])
def test_inpainting_with_the_ideal_denoiser_restores_the_consistent_image(mode, resample,
                                                                          restored):
  """With the exact denoiser of a finite set, inpainting fills the hole with
  the one training image whose kept pixels match: row i keeps the left half
  of image i and should return all of image i (unguided it would land on any
  of the six). x_t replacement commits early, when the kept half says little
  (over 8 seeds 2 of 48 rows land on another image; GLIDE's x_0 paste, for
  models trained to inpaint, 8 of 48); RePaint's resampling (10) harmonises
  every row. The kept pixels come back bitwise."""
  images = finite_set()
  base = schedules.make_schedule("cosine", 1000)
  schedule = schedules.respace(base, "50")
  model_fn = oracles.finite_set_model_fn(images, base)
  mask = jnp.broadcast_to(jnp.asarray(masks_lib.strip(8, "right", 4)), images.shape)
  known = sampling.Known(images, mask)
  out = sampling.sample(model_fn, schedule, images.shape, jax.random.key(3), method="ddpm",
                        known=known, known_mode=mode, resample=resample, jump=5)
  error = np.abs(np.asarray(out) - np.asarray(images)).reshape(len(images), -1).max(1)
  assert np.sum(error < 0.02) >= restored, error
  kept = np.asarray(mask) == 1
  np.testing.assert_array_equal(np.asarray(out)[np.broadcast_to(kept, out.shape)],
                                np.asarray(images)[np.broadcast_to(kept, out.shape)])
  # Without the known pixels the same seed does not restore every image.
  free = sampling.sample(model_fn, schedule, images.shape, jax.random.key(3), method="ddpm")
  assert np.abs(np.asarray(free) - np.asarray(images)).max() > 0.5


def test_known_region_of_each_state_is_the_image_at_that_level():
  """x_t replacement: after the step at index t, the known region of
  x_{t-1} is q(x_{t-1} | image), the image noised to abar_prev[t]: its
  standardised residual is N(0, 1) at every step (a level off by one step,
  abar[t], gives another spread near the end), and the image itself last."""
  images = jnp.tile(finite_set(num=8), (8, 1, 1, 1))  # [64, 8, 8, 1]
  schedule = schedules.respace(schedules.make_schedule("cosine", 1000), "20")
  mask = jnp.broadcast_to(jnp.asarray(masks_lib.strip(8, "right", 4)), images.shape)
  model_fn = oracles.finite_set_model_fn(images[:8], schedules.make_schedule("cosine", 1000))
  _, trajectory = sampling.sample(model_fn, schedule,
                                  images.shape, jax.random.key(0), method="ddpm",
                                  known=sampling.Known(images, mask), return_trajectory=True)
  kept = np.broadcast_to(np.asarray(mask) == 1, images.shape)
  abar_prev = np.asarray(schedule.alphas_cumprod_prev)
  for step, t in enumerate(range(schedule.num_timesteps - 1, 0, -1)):
    x = np.asarray(trajectory["x"][step])
    residual = (x - np.sqrt(abar_prev[t]) * np.asarray(images)) / np.sqrt(1 - abar_prev[t])
    assert abs(residual[kept].mean()) < 0.1 and 0.9 < residual[kept].std() < 1.1, t
  np.testing.assert_array_equal(np.asarray(trajectory["x"][-1])[kept], np.asarray(images)[kept])


def test_repaint_plan_follows_repaints_schedule():
  plain = sampling.repaint_plan(6, jump=2, resample=1)
  assert plain.tolist() == [[t, 0] for t in range(5, -1, -1)]
  plan = sampling.repaint_plan(6, jump=2, resample=2)
  levels = [6]
  for t, up in plan.tolist():
    assert levels[-1] == (t if up else t + 1)  # every step starts where the last ended
    levels.append(t + 1 if up else t)
  assert levels[-1] == 0 and max(levels) == 6
  ups = int(plan[:, 1].sum())
  assert ups == 2 * 3  # one jump of 2 levels back up at levels 0, 2 and 4
  assert len(plan) == 6 + 2 * ups


def test_renoise_edit_keeps_the_image_at_small_strength():
  """SDEdit with the ideal denoiser: at strength 0.2 each image comes back
  itself (its noised version is nearest to it); at strength 1 the start is
  noise and the result any training image."""
  images = finite_set()
  base = schedules.make_schedule("cosine", 1000)
  schedule = schedules.respace(base, "50")
  model_fn = oracles.finite_set_model_fn(images, base)
  edit = lambda s: sampling.sample(model_fn, schedule, images.shape, jax.random.key(5),  # noqa: E731
                                   method="ddim", init_image=images, strength=s)
  np.testing.assert_allclose(edit(0.2), images, atol=0.02)
  full = np.asarray(edit(1.0))
  nearest = np.argmin(((full[:, None] - np.asarray(images)[None]) ** 2).sum((2, 3, 4)), 1)
  np.testing.assert_allclose(full, np.asarray(images)[nearest], atol=0.02)
  assert (nearest != np.arange(len(images))).any()


@pytest.fixture(scope="module")
def inpaint_bundle():
  """The quick inpainting model (one-level UNet), random weights."""
  config = quick_config("shapes_inpaint", **ONE_DEVICE, **TINY_MODEL)
  config.sample.steps = "3"
  spec = make_spec(config, SHAPES_16)
  params = perturbed(jax.jit(spec.init_params)(jax.random.PRNGKey(0)))
  return loading.Bundle(config, params, spec, SHAPES_16, 0, 0.0)


def scene(seed=0):
  return np.random.RandomState(seed).randint(0, 256, (16, 16, 3)).astype(np.uint8)


def test_inpainting_model_returns_kept_pixels_and_reuses_the_program(inpaint_bundle,
                                                                    monkeypatch):
  bundle = inpaint_bundle
  image = scene()
  left = masks_lib.strip(16, "right", 6)
  out = bundle.inpaint(image, left, num=2, prompts=["a red circle"] * 2)
  assert out.shape == (2, 16, 16, 3)
  expected = image.astype(np.float32) / 127.5 - 1
  keep = left[..., 0] == 1
  np.testing.assert_array_equal(out[:, keep], np.broadcast_to(expected[keep], out[:, keep].shape))
  assert not np.allclose(out[:, ~keep], expected[~keep], atol=0.05)
  traces = []  # a new trace of the sampler would call the network again
  apply = ModelSpec.apply
  monkeypatch.setattr(ModelSpec, "apply",
                      lambda *args, **kwargs: (traces.append(1), apply(*args, **kwargs))[1])
  cell = masks_lib.cell(16, 4)
  again = bundle.inpaint(scene(1), cell, num=2, prompts=["a blue square"] * 2)
  np.testing.assert_array_equal(again[:, cell[..., 0] == 1],
                                np.broadcast_to((scene(1).astype(np.float32) / 127.5 - 1)
                                                [cell[..., 0] == 1], (2, 16 * 16 - 36, 3)))
  assert not traces  # a new mask, image and prompt: the same compiled program
  # An inpainting model without known pixels draws from nothing (zeros in).
  assert bundle.sample(num=1, prompts=["a red circle"]).shape == (1, 16, 16, 3)


def test_outpaint_grows_the_canvas_and_keeps_the_original(inpaint_bundle):
  image = scene(2)
  grown = inpaint_bundle.outpaint(image, "left", 4, times=2, prompts=["a red circle"])
  assert grown.shape == (16, 24, 3)
  np.testing.assert_array_equal(grown[:, 8:], image.astype(np.float32) / 127.5 - 1)
  tall = inpaint_bundle.outpaint(image, "bottom", 6, prompts=["a red circle"])
  assert tall.shape == (22, 16, 3)
  np.testing.assert_array_equal(tall[:16], image.astype(np.float32) / 127.5 - 1)
  wide = editing.panorama(inpaint_bundle, image, 30, prompts=["a red circle"])
  assert wide.shape == (16, 30, 3)


def test_build_scene_builds_a_batch_stage_by_stage_keeping_what_each_mask_keeps(
    inpaint_bundle):
  """Each stage changes only its mask's hole (a stage that redrew the whole
  picture, or inpainted the first scene again instead of the last, fails);
  `num` builds that many scenes at once, each from its own noise."""
  stages = [("a red circle", None), ("and a blue square", masks_lib.cell(16, 2)),
            ("and a green triangle", masks_lib.cell(16, 7))]
  built = editing.build_scene(inpaint_bundle, stages, seed=3, num=2)
  assert [s.shape for s in built] == [(2, 16, 16, 3)] * 3
  assert not np.allclose(built[0][0], built[0][1])
  for before, after, (_, mask) in zip(built, built[1:], stages[1:]):
    keep = mask[..., 0] == 1
    np.testing.assert_allclose(after[:, keep], before[:, keep], atol=1 / 127.5)
    assert not np.allclose(after[:, ~keep], before[:, ~keep], atol=0.05)
  one = editing.build_scene(inpaint_bundle, stages[:2], seed=3)
  assert [s.shape for s in one] == [(16, 16, 3)] * 2
  with pytest.raises(ValueError, match="num must be at least 1"):
    editing.build_scene(inpaint_bundle, stages, num=0)


@pytest.mark.parametrize("call,message", [
    (lambda b: b.inpaint(scene(), np.ones((8, 8))), r"mask must have shape \[B, H, W, 1\]"),
    (lambda b: b.inpaint(scene(), np.full((16, 16), 0.5)), "mask values must be 0"),
    (lambda b: b.inpaint(scene(), np.ones((16, 16))), "nothing to fill"),
    (lambda b: b.inpaint(scene().astype(np.int32), masks_lib.cell(16, 0)),
     "must be uint8 .0, 255. or float .-1, 1.; got int32"),
    (lambda b: b.inpaint(scene().astype(np.float32), masks_lib.cell(16, 0)),
     r"must lie in \[-1, 1\]"),
    (lambda b: b.inpaint(np.zeros((8, 8, 3), np.uint8), masks_lib.cell(16, 0)),
     "are 8x8 but the model takes 16x16"),
    (lambda b: b.edit(scene(), 1.5), r"strength must be in \(0, 1\]"),
    (lambda b: b.edit(scene(), 0.0), r"strength must be in \(0, 1\]"),
    (lambda b: b.outpaint(scene(), "up", 4), "no side 'up'"),
    (lambda b: b.outpaint(scene(), "left", 16), r"pixels must be in \[1, 15\]"),
    (lambda b: b.upsample(scene()), "not an upsampler"),
])
def test_bad_edit_input_is_one_clear_error(inpaint_bundle, call, message):
  with pytest.raises(ValueError, match=message):
    call(inpaint_bundle)


def test_any_model_inpaints_and_edits_with_labels(trained_workdir):
  """A class-conditional model not trained to inpaint: x_t replacement
  (and RePaint) keep the pixels; label swaps share the starting noise."""
  bundle = loading.load(trained_workdir)
  image = scene(3)
  mask = masks_lib.cell(16, 4)
  keep = mask[..., 0] == 1
  expected = image.astype(np.float32) / 127.5 - 1
  # RePaint's jumps back need a one-step sampler; the model's default is a
  # multistep solver (DPM-Solver++ 2M SDE), which refuses them.
  for kwargs in ({}, {"resample": 2, "jump": 2, "method": "ddpm"}):
    out = bundle.inpaint(image, mask, labels=[0, 5], steps="4", **kwargs)
    np.testing.assert_array_equal(out[:, keep], np.broadcast_to(expected[keep], out[:, keep].shape))
  edited = bundle.edit(image, 0.5, labels=[1], steps="4")
  assert edited.shape == (1, 16, 16, 3) and np.all(np.abs(edited) <= 1)
  rows = editing.label_swap(bundle, [0, 7], num=2, steps="4", seed=4)
  assert rows.shape == (2, 2, 16, 16, 3)
  # Each row is DDIM eta = 0 from the seed's noise: the same as sampling the
  # label alone (the seed's noise does not depend on the label).
  alone = bundle.sample(labels=[7, 7], steps="4", seed=4, method="ddim", eta=0.0)
  np.testing.assert_array_equal(rows[1], alone)


def test_upsampler_and_cascade():
  """A random quick upsampler takes low-res images of its size (and the
  prompts), and a cascade feeds it the base model's samples."""
  config = quick_config("shapes_upsample", **ONE_DEVICE, **TINY_MODEL)
  config.sample.steps = "3"
  info = DatasetInfo(32, 3, None, 100, captions=True)
  spec = make_spec(config, info)
  assert spec.describe() == "a 32x32 text-conditional upsampler (from 16x16)"
  up = loading.Bundle(config, perturbed(jax.jit(spec.init_params)(jax.random.PRNGKey(0))),
                      spec, info, 0, 0.0)
  low = np.zeros((2, 16, 16, 3), np.uint8)
  assert up.upsample(low, prompts=["a red circle"] * 2).shape == (2, 32, 32, 3)
  with pytest.raises(ValueError, match="low_res are 32x32 but the model takes 16x16"):
    up.upsample(np.zeros((1, 32, 32, 3), np.uint8), prompts=["a"])
  base_config = quick_config("shapes_text2im", **ONE_DEVICE, **TINY_MODEL)
  base_config.sample.steps = "3"
  base_spec = make_spec(base_config, SHAPES_16)
  base = loading.Bundle(base_config, jax.jit(base_spec.init_params)(jax.random.PRNGKey(1)),
                        base_spec, SHAPES_16, 0, 0.0)
  small, large = editing.cascade(base, up, prompts=["a red circle"])
  assert small.shape == (1, 16, 16, 3) and large.shape == (1, 32, 32, 3)


def test_training_masks_are_boxes_and_strokes():
  masks = np.asarray(masks_lib.random_masks(jax.random.key(0), 64, 16, 16))
  assert masks.shape == (64, 16, 16, 1) and set(np.unique(masks)) <= {0.0, 1.0}
  holes = 1 - masks[..., 0]
  filled = holes.mean((1, 2))
  assert (filled > 0).all() and (filled < 1).all()  # something kept, something filled
  rows, cols = holes.any(2), holes.any(1)
  boxes = (holes.sum((1, 2)) == rows.sum(1) * cols.sum(1))  # a hole that fills its bbox
  assert 10 < boxes.sum() < 60  # about half boxes, half strokes


def test_scene_training_masks_erase_grid_cells_mostly_occupied_ones():
  """Given a scene's occupied cells, a third of the masks are whole grid
  cells, the user's `masks.cell`, and three in four of those an occupied one
  (an empty scene: any cell)."""
  batch = 3000
  occupied = np.zeros((batch, 9), bool)
  occupied[:, 2] = occupied[:, 6] = True
  occupied[::10] = False  # empty scenes
  masks = np.asarray(masks_lib.random_masks(jax.random.key(3), batch, 16, 16,
                                            jnp.asarray(occupied)))
  cell_masks = np.stack([masks_lib.cell(16, p) for p in range(9)])  # [9, 16, 16, 1]
  match = (masks[:, None] == cell_masks[None]).all((2, 3, 4))  # [B, 9]
  is_cell = match.any(1)
  assert abs(is_cell.mean() - 1 / 3) < 0.04
  scenes = is_cell & occupied.any(1)
  on_object = (match & occupied).any(1)[scenes].mean()
  # 0.75 aimed, plus the unaimed quarter's 2 in 9
  assert abs(on_object - (0.75 + 0.25 * 2 / 9)) < 0.05
  empty = is_cell & ~occupied.any(1)
  assert len(set(match[empty].argmax(1))) == 9  # any cell
  unaimed = np.asarray(masks_lib.random_masks(jax.random.key(3), 64, 16, 16))
  np.testing.assert_array_equal(
      unaimed, np.asarray(masks_lib.random_masks(jax.random.key(3), 64, 16, 16, None)))


def test_low_res_degradation_is_training_only_and_bounded():
  from diffusion_jax.inference import conditioning
  low = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (64, 8, 8, 3)), jnp.float32)
  out = np.asarray(conditioning.degrade_low_res(jax.random.key(1), low))
  changed = np.abs(out - np.asarray(low)).max((1, 2, 3)) > 0
  assert 16 < changed.sum() < 48 and np.all(np.abs(out) <= 1)
  spec_input = conditioning.LowResImage(8, 3)
  same = spec_input.prepare(np.asarray(low[:2]), 2)["low_res"]
  np.testing.assert_array_equal(same, np.asarray(low[:2]))  # sampling feeds it as it is


def test_cli_inpaints_a_png_and_refuses_a_bad_outpaint(tmp_path, trained_workdir):
  """`--mode=sample` with an image and a mask PNG writes the grid; its kept
  pixels are the image's. A misspelled side is one error line."""
  from PIL import Image

  from conftest import QUICK, TINY_FLAGS, error_line, run_cli
  image = scene(4)
  Image.fromarray(image).save(tmp_path / "scene.png")
  mask = masks_lib.cell(16, 0)
  Image.fromarray((mask[..., 0] * 255).astype(np.uint8)).save(tmp_path / "mask.png")
  flags = [QUICK, *TINY_FLAGS, "--config.train.ema_rates=0.995,0.9",
           "--config.train.ema_warmup=False", f"--workdir={trained_workdir}",
           f"--config.sample.init_image={tmp_path}/scene.png"]
  result = run_cli("--mode=sample", *flags, f"--config.sample.mask={tmp_path}/mask.png",
                   "--config.sample.labels=0,5", "--config.sample.per_class=2",
                   "--config.sample.steps=4", f"--config.sample.output={tmp_path}/grid")
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "grid.npz") as grid:
    images = grid["images"]
  assert images.shape == (2, 2, 16, 16, 3)
  keep = mask[..., 0] == 1
  np.testing.assert_array_equal(images[:, :, keep], np.broadcast_to(image[keep],
                                                                    images[:, :, keep].shape))
  bad = run_cli("--mode=sample", *flags, "--config.sample.outpaint=up:4")
  assert bad.returncode == 2 and error_line(bad) == (
      "error: no side 'up': choose one of left, right, top, bottom")


def test_base_samples_read_from_an_npz_a_grid_or_pngs(tmp_path):
  from PIL import Image

  from diffusion_jax.inference import edit_mode
  images = np.stack([scene(i) for i in range(3)])
  np.savez(tmp_path / "samples.npz", images, np.zeros(3, np.int32))
  got, prompts = edit_mode.read_base_samples(str(tmp_path / "samples.npz"), 3)
  np.testing.assert_array_equal(got, images)
  assert prompts is None
  np.savez(tmp_path / "grid.npz", images=images.reshape(1, 3, 16, 16, 3),
           prompts=np.array(["a red circle"]))
  got, prompts = edit_mode.read_base_samples(str(tmp_path / "grid.npz"), 3)
  np.testing.assert_array_equal(got, images)
  assert prompts == ["a red circle"] * 3
  folder = tmp_path / "pngs"
  folder.mkdir()
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f"{i}.png")
  got, _ = edit_mode.read_base_samples(str(folder), 3)
  np.testing.assert_array_equal(got, images)
  assert edit_mode.parse_outpaint("right:8x3") == ("right", 8, 3)
  with pytest.raises(ValueError, match="write SIDE:PIXELS"):
    edit_mode.parse_outpaint("right:eight")
  with pytest.raises(ValueError, match="stage 2 .* says no region"):
    edit_mode.parse_scene("a red circle|a blue square", 16)
