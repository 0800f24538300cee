"""OpenAI's released checkpoints convert onto our modules (diffusion_jax.openai).

Two oracles: the released models' PyTorch key names and shapes at full size
(../shared/testdata/openai_keys, computed by the reference code from the
released flags), held against what our configs build, by `jax.eval_shape`
only; and the parity models (../shared/testdata/openai_parity), written as
real `.pt` files and converted through the CLI, which must reproduce the
reference outputs.
"""
import json
import os
import pathlib
import re

import flax
import jax
import numpy as np
import pytest

import diffusion_jax
from conftest import ROOT, error_line, reference_inputs, run_cli
from diffusion_jax import config_lib
from diffusion_jax.inference.spec import make_spec
from diffusion_jax.models import convert
from diffusion_jax.openai import released, torch_file

KEY_TABLES = sorted(p.stem for p in (ROOT.parent / "shared" / "testdata" / "openai_keys")
                    .glob("*.json"))


def key_table(shared_dir, name):
  return json.loads((shared_dir / "testdata" / "openai_keys" / f"{name}.json").read_text())


def kinds_of(table) -> list[str]:
  """Our kinds whose released files this table describes."""
  files = table["checkpoint"] if isinstance(table["checkpoint"], list) else [table["checkpoint"]]
  return [name for name, kind in released.KINDS.items() if set(files) & set(kind.files)]


def built_keys(kind, tower=None):
  """PyTorch key -> shape of the network our config of `kind` builds, and the spec."""
  config, info = released.config_of(kind, released.flags_of(kind))
  spec = make_spec(config, info)
  shapes = jax.eval_shape(spec.init_params, jax.random.PRNGKey(0))
  if tower:  # the CLIP keeps PyTorch's names and layouts, one file per tower
    flat = flax.traverse_util.flatten_dict(shapes[tower])
    return {".".join(k): tuple(v.shape) for k, v in flat.items()}, spec
  return convert.expected_keys(shapes), spec


@pytest.mark.parametrize("name", KEY_TABLES)
def test_released_kinds_build_the_released_state_dicts(shared_dir, name):
  """Every key, shape and the parameter count at full size; the flags after
  defaults; each attention block's head count and qkv order (which the
  shapes cannot show: a wrong order loads and computes another function)."""
  table = key_table(shared_dir, name)
  kinds = kinds_of(table)
  assert kinds, f"no kind converts {table['checkpoint']}"
  tower = {"glide_clip_image_enc": "image", "glide_clip_text_enc": "text"}.get(name)
  want = {key: tuple(shape) for key, shape, _ in table["state_dict"]}
  reference_flags = table["flags"].get("clip_config_yaml", table["flags"])
  for kind in kinds:
    flags = released.flags_of(kind)
    differs = table.get("flags_differences", {}).get(released.KINDS[kind].files[0], {})
    assert {k: flags[k] for k in reference_flags} == {**reference_flags, **differs}, kind
    got, spec = built_keys(kind, tower)
    assert got == want, (kind, sorted(set(got) ^ set(want))[:5],
                         [(k, got[k], want[k]) for k in got if k in want and got[k] != want[k]][:5])
    assert sum(int(np.prod(s)) for s in got.values()) == table["num_params"]
    for block in table.get("attention_blocks", []):
      if block["prefix"] == "out.2":  # the classifier's attention pool: always the new order
        assert block["qkv_order"] == "new"
        assert block["channels"] // spec.model.pool_head_channels == block["num_heads"]
        continue
      assert spec.model.heads(block["channels"]) == block["num_heads"], (kind, block)
      assert spec.model.legacy_attention_order == (block["qkv_order"] == "legacy"), kind


def test_imagenet64_config_is_the_released_model_and_the_papers(shared_dir):
  """configs/imagenet64_adm.py builds 64x64_diffusion.pt's network (new qkv
  order included) and trains with ADM's Table 11 settings for ImageNet 64."""
  from configs import imagenet64_adm
  config = imagenet64_adm.get_config()
  released_config, info = released.config_of("64x64_diffusion",
                                             released.flags_of("64x64_diffusion"))
  spec = make_spec(config, info)
  got = convert.expected_keys(jax.eval_shape(spec.init_params, jax.random.PRNGKey(0)))
  table = key_table(shared_dir, "64x64_diffusion")
  assert got == {key: tuple(shape) for key, shape, _ in table["state_dict"]}
  assert not spec.model.legacy_attention_order and spec.model.dropout == 0.1
  for field in ("schedule", "num_timesteps"):
    assert config.diffusion[field] == released_config.diffusion[field]
  assert config.model.learn_sigma and config.sample.steps == "250"
  # ADM's appendix, Table 11 (ImageNet 64) and its EMA rate.
  assert (config.optim.lr, config.data.batch_size, config.train.num_steps) == (3e-4, 2048, 540_000)
  assert config.train.ema_rates == (0.9999,) and config.diffusion.schedule == "cosine"


def test_flag_strings_parse_as_the_reference_parses_them():
  flags = released.flags_of("64x64_diffusion", "--num_channels=64 --learn_sigma no "
                            "--dropout 0.3 --attention_resolutions 16")
  assert (flags["num_channels"], flags["learn_sigma"], flags["dropout"]) == (64, False, 0.3)
  assert flags["attention_resolutions"] == "16" and flags["use_new_attention_order"] is True
  with pytest.raises(ValueError, match="adm models have no flag 'xf_width'"):
    released.flags_of("64x64_diffusion", "--xf_width 512")
  with pytest.raises(ValueError, match="'maybe' is not a boolean"):
    released.flags_of("base", "--inpaint maybe")
  with pytest.raises(ValueError, match="unknown kind 'base-512'.*64x64_diffusion"):
    released.kind_of("base-512")


# --- the parity models as real .pt files, converted through the CLI ---

PARITY = {"adm_unet": "64x64_diffusion", "adm_superres": "64_256_upsampler",
          "adm_classifier": "64x64_classifier", "glide_base": "base",
          "glide_inpaint": "base-inpaint", "glide_upsample": "upsample", "glide_clip": "clip"}


def fields(text: str) -> dict[str, str]:
  """The key=value pairs of a parity file's `config` text."""
  pairs = re.findall(r"(\w+)=('[^']*'|\([^)]*\)|[^,)\s;]+)", text)
  return {k: v.strip("'()").rstrip(",") for k, v in pairs}


def parity_flags(name: str, data) -> str:
  """The reference flags of a parity file, built from its `config`."""
  text = str(data["config"])
  if name == "glide_clip":
    text_enc, image_enc = (fields(part) for part in text.split("ImageEncoder"))
    return " ".join([
        f"--max_text_len {text_enc['max_text_len']} --n_embd {text_enc['n_embd']}",
        f"--n_head_text {text_enc['n_head']} --n_head_state_text {text_enc['n_head_state']}",
        f"--n_xf_blocks_text {text_enc['n_xf_blocks']} --image_size {image_enc['image_size']}",
        f"--patch_size {image_enc['patch_size']} --n_head_image {image_enc['n_head']}",
        f"--n_head_state_image {image_enc['n_head_state']}",
        f"--n_xf_blocks_image {image_enc['n_xf_blocks']}"])
  f = fields(text)
  if name.startswith("glide"):  # GLIDE's config is create_model's own flags
    glide = {k: v for k, v in f.items() if k in released.DEFAULTS["glide"]}
    small = {"small_size": data["low_res_nchw"].shape[-1]} if "low_res_nchw" in data else {}
    return " ".join(f"--{k} {v}" for k, v in {**glide, **small}.items())
  size = int(f["image_size"])
  attention = ",".join(str(size // int(d)) for d in f["attention_resolutions"].split(",") if d)
  common = (f"--channel_mult {f['channel_mult']} --num_head_channels {f['num_head_channels']}")
  if name == "adm_classifier":
    return (f"--image_size {size} --classifier_width {f['model_channels']} "
            f"--classifier_depth {f['num_res_blocks']} --classifier_attention_resolutions "
            f"{attention} --classifier_resblock_updown {f['resblock_updown']} "
            f"--classifier_pool {f['pool']} --num_classes {f['out_channels']} {common}")
  unet = (f"--num_channels {f['model_channels']} --num_res_blocks {f['num_res_blocks']} "
          f"--attention_resolutions {attention} --num_classes {f['num_classes']} "
          f"--class_cond True --learn_sigma {f['out_channels'] == '6'} "
          f"--resblock_updown {f['resblock_updown']} --dropout 0 {common}")
  if name == "adm_superres":
    return f"{unet} --large_size {size} --small_size {data['low_res_nchw'].shape[-1]}"
  return f"{unet} --image_size {size} --use_new_attention_order {f['use_new_attention_order']}"


def torch_or_skip():
  if os.environ.get("CI"):
    import torch  # CI installs the convert extra: a missing torch fails, never skips
    return torch
  return pytest.importorskip("torch", reason="the convert extra (torch) is not installed")


def save_pt(torch, arrays: dict, path: pathlib.Path) -> pathlib.Path:
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, path)
  return path


@pytest.fixture(scope="session")
def parity_checkpoints(shared_dir, tmp_path_factory):
  """name -> (the .pt source(s), the parity arrays)."""
  torch = torch_or_skip()
  folder = tmp_path_factory.mktemp("released")
  out = {}
  for name in PARITY:
    with np.load(shared_dir / "testdata" / "openai_parity" / f"{name}.npz") as npz:
      data = {k: npz[k] for k in npz.files}
    towers = ("image", "text") if name == "glide_clip" else ("param",)
    paths = [save_pt(torch, {k[len(t) + 1:]: v for k, v in data.items() if k.startswith(f"{t}/")},
                     folder / f"{name}_{t}.pt") for t in towers]
    out[name] = (",".join(map(str, paths)), data)
  return out


CLI_KIND = "glide_base"  # converts through the command line; the others call what it runs


@pytest.mark.parametrize("name", sorted(PARITY))
def test_parity_checkpoints_convert_through_the_cli(parity_checkpoints, tmp_path, name):
  sources, data = parity_checkpoints[name]
  output = tmp_path / "export"
  if name == CLI_KIND:
    result = run_cli("--mode=convert", f"--source={sources}", f"--kind={PARITY[name]}",
                     f"--flags={parity_flags(name, data)}", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout
  else:  # `--mode=convert`'s own function, without a process start (suite time)
    from diffusion_jax.openai import converter
    printed = converter.run(sources, PARITY[name], parity_flags(name, data), str(output))
  assert f"to {output}" in printed
  bundle = diffusion_jax.load(output)
  origin = json.loads((output / "meta.json").read_text())["origin"]
  assert origin["kind"] == PARITY[name] and len(origin["sources"][0]["sha256"]) == 64
  if name == "glide_clip":
    got = bundle.spec.apply(bundle.params, jax.numpy.asarray(data["x_nchw"].transpose(0, 2, 3, 1)),
                            jax.numpy.asarray(data["t"]), clip_tokens=data["tokens"],
                            clip_lens=data["lens"])
    expected = (data["z_image"], data["z_text"])
  else:
    x, t, cond = reference_inputs(data)
    got = (bundle.spec.apply(bundle.params, x, t, **cond),)
    want = data.get("output_nchw", data.get("output"))
    expected = (want.transpose(0, 2, 3, 1) if want.ndim == 4 else want,)
  for g, w in zip(got, expected):
    np.testing.assert_allclose(np.asarray(g), w, atol=2e-5 * np.abs(w).max(), rtol=0)


def pickle_that_runs_code(path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
  torch = torch_or_skip()

  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))
  torch.save({"input_blocks.0.0.weight": Payload()}, path)
  return path



def bad_inputs(parity, tmp_path):
  """(name, CLI arguments, what the error line must say)."""
  unet, data = parity["adm_unet"]
  flags = parity_flags("adm_unet", data)
  truncated = tmp_path / "truncated.pt"
  truncated.write_bytes(pathlib.Path(unet).read_bytes()[:100_000])
  code = pickle_that_runs_code(tmp_path / "code.pt", tmp_path / "ran")
  return {
      "runs code": ([f"--source={code}", "--kind=64x64_diffusion"],
                    r"was refused: .*(posix|os)\.system.* runs no code"),
      "truncated": ([f"--source={truncated}", "--kind=64x64_diffusion", f"--flags={flags}"],
                    r"truncated\.pt is not a readable PyTorch checkpoint .* truncated"),
      "another kind": ([f"--source={parity['adm_classifier'][0]}", "--kind=64x64_diffusion",
                        f"--flags={flags}"],
                       r"\(a noisy classifier .*\): the state_dict does not fit a "
                       r"64x64_diffusion model .* keys missing .* match no parameter"),
      "flags that do not fit": (
          [f"--source={unet}", "--kind=64x64_diffusion",
           f"--flags={flags} --num_channels 64"],
          r"shapes differ \(input_blocks\.0\.0\.bias is \(32,\), not \(64,\)"),
  }


def test_unknown_kinds_and_missing_files_are_named(parity_checkpoints):
  from diffusion_jax.openai import converter
  with pytest.raises(ValueError, match="unknown kind 'base-512'"):
    converter.convert(parity_checkpoints["adm_unet"][0], "base-512")
  with pytest.raises(FileNotFoundError, match=r"nowhere\.pt: no such"):
    converter.convert("nowhere.pt", "base")
  with pytest.raises(ValueError, match=r"a clip model is 2 file\(s\)"):
    converter.convert(parity_checkpoints["adm_unet"][0], "clip")


@pytest.mark.parametrize("case", ["runs code", "truncated", "another kind",
                                  "flags that do not fit"])
def test_bad_checkpoints_get_one_line_and_no_export(parity_checkpoints, tmp_path, case):
  args, says = bad_inputs(parity_checkpoints, tmp_path)[case]
  output = tmp_path / "export"
  result = run_cli("--mode=convert", *args, f"--output={output}")
  assert result.returncode == 2, result.stderr[-2000:]
  assert re.search(says, error_line(result)), error_line(result)
  assert not output.exists() and not (tmp_path / "ran").exists()
  if case == "another kind":  # the log names every difference, one a line
    counts = re.search(r"(\d+) keys missing .* (\d+) keys match no", error_line(result))
    assert result.stderr.count("missing: ") == int(counts.group(1))
    assert result.stderr.count("unused: ") == int(counts.group(2))


def test_missing_torch_names_the_install_line(parity_checkpoints, tmp_path):
  """A `torch` that fails to import stands in for a machine without it."""
  fake = tmp_path / "no_torch" / "torch"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("raise ImportError('No module named torch')\n")
  result = run_cli("--mode=convert", f"--source={parity_checkpoints['adm_unet'][0]}",
                   "--kind=64x64_diffusion", env={"PYTHONPATH": str(fake.parent)})
  assert result.returncode == 2
  assert "needs torch: pip install 'diffusion-jax[convert]'" in error_line(result)
  with pytest.raises(ValueError, match="holds a list, not a state_dict"):
    torch = torch_or_skip()
    torch.save([1, 2], tmp_path / "list.pt")
    torch_file.read_state_dict(tmp_path / "list.pt")


def test_converted_glide_samples_with_clip_guidance_and_its_recipe(parity_checkpoints):
  """GLIDE's recipes: the base samples at CFG 3 over 100 ancestral steps,
  and the converted noised CLIP guides it (the parity models: 16x16); over
  all 8 devices, the samples are the one-device ones."""
  from diffusion_jax.openai import converter
  sources, data = parity_checkpoints["glide_base"]
  base = converter.convert(sources, "base", parity_flags("glide_base", data))
  assert (base.config.sample.method, base.config.sample.steps,
          base.config.sample.guidance_scale) == ("ddpm", "100", 3.0)
  clip_sources, clip_data = parity_checkpoints["glide_clip"]
  clip = converter.convert(clip_sources, "clip", parity_flags("glide_clip", clip_data))
  prompts = ["a red circle", "a corgi"]
  plain = base.sample(prompts=prompts, steps="4", guidance_scale=1.0)
  guided = base.sample(prompts=prompts, steps="4", guidance_scale=1.0, clip=clip,
                       clip_scale=30.0)
  assert plain.shape == guided.shape == (2, 16, 16, 3)
  assert np.abs(plain - guided).max() > 1e-3  # the guide moved the samples
  sharded = base.on_devices().sample(prompts=prompts, steps="4", guidance_scale=1.0)
  assert base.sampler.mesh.devices.size == jax.device_count() == 8
  # The same draws: only float rounding differs (another batch per device).
  np.testing.assert_allclose(sharded, plain, atol=1e-2)


def test_recipes_are_the_published_ones():
  """The sample settings each kind's export carries: guided-diffusion's
  README (250 steps, its classifier scales) and GLIDE's notebooks."""
  def sample(kind):
    return released.config_of(kind, released.flags_of(kind))[0].sample
  assert [sample(k).classifier_scale for k in ("64x64_diffusion", "128x128_diffusion",
          "256x256_diffusion", "256x256_diffusion_uncond", "512x512_diffusion")] == [
              1.0, 0.5, 1.0, 10.0, 4.0]
  assert sample("base-inpaint").guidance_scale == 5.0
  assert (sample("base").guidance_scale, sample("base").clip_scale) == (3.0, 3.0)
  up = sample("upsample")
  assert (up.method, up.steps, up.temperature) == ("ddim", "fast27", 0.997)
  config_lib.check(released.config_of("clip", released.flags_of("clip"))[0])
