"""The Flax UNet and noisy classifier are the same functions as the OpenAI
PyTorch models: their state_dicts load onto our parameters and reproduce the
reference outputs (../shared/testdata/openai_parity)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import reference_inputs
from diffusion_jax.models import NoisyClassifier, UNet, convert, layers
from diffusion_jax.models.text import TextSpec

# The reference configs (see each .npz's `config`); attention at
# downsampling factor 2 (guided-diffusion's `attention_resolutions` "8" on 16x16).
GLIDE = dict(model_channels=32, out_channels=6, num_res_blocks=1, attention_ds=(2,),
             channel_mult=(1, 2), num_head_channels=16,
             text=TextSpec(vocab_size=50257, text_ctx=12, width=32, layers=2, heads=4))
REFERENCE_MODELS = {
    "adm_unet": (UNet, dict(model_channels=32, out_channels=6, num_res_blocks=1,
                            attention_ds=(2,), channel_mult=(1, 2),
                            num_classes=5, num_head_channels=16)),
    "adm_superres": (UNet, dict(model_channels=32, out_channels=6, num_res_blocks=1,
                                attention_ds=(2,), channel_mult=(1, 2),
                                num_classes=3, num_head_channels=16, super_res=True)),
    "adm_classifier": (NoisyClassifier, dict(
        model_channels=32, num_res_blocks=2, attention_ds=(2,),
        channel_mult=(1, 2), num_classes=4, num_head_channels=16,
        pool_head_channels=16, resblock_updown=False)),
    "glide_base": (UNet, GLIDE),
    "glide_inpaint": (UNet, dict(GLIDE, inpaint=True)),
    "glide_upsample": (UNet, dict(GLIDE, super_res=True)),
}


def load_reference(shared_dir, name):
  """(model, its parameter shapes, the reference arrays, the state_dict, inputs)."""
  path = shared_dir / "testdata" / "openai_parity" / f"{name}.npz"
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  module_cls, kwargs = REFERENCE_MODELS[name]
  model = module_cls(**kwargs)
  x, t, cond = reference_inputs(arrays)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, **cond)["params"]
  return model, shapes, arrays, convert.load_state_dict_npz(path), (x, t, cond)


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_openai_state_dict_reproduces_reference_output(shared_dir, name):
  model, shapes, arrays, state_dict, (x, t, cond) = load_reference(shared_dir, name)
  params = convert.from_torch(state_dict, shapes)
  out = np.asarray(model.apply({"params": params}, x, t, **cond))
  expected = arrays.get("output_nchw", arrays.get("output"))
  if expected.ndim == 4:
    expected = expected.transpose(0, 2, 3, 1)
  # 2e-5 of the largest value: an approximate GELU, or Flax's LayerNorm eps
  # 1e-6 for torch's 1e-5, each moves GLIDE's output by more.
  scale = np.abs(expected).max()
  np.testing.assert_allclose(out, expected, atol=2e-5 * scale, rtol=0)
  # Same parameter count as the PyTorch model: nothing extra, nothing missing.
  assert sum(p.size for p in jax.tree.leaves(params)) == sum(
      v.size for v in state_dict.values())


def test_import_names_every_mismatch(shared_dir):
  """A wrong shape, a missing key and an extra key at once: all three named,
  the shape in PyTorch's layout (what the user's file holds)."""
  model, shapes, _, state_dict, _ = load_reference(shared_dir, "adm_unet")
  broken = dict(state_dict, **{"extra.weight": np.zeros(3)})
  broken["input_blocks.1.0.in_layers.2.weight"] = np.zeros((16, 32, 3, 3), np.float32)
  del broken["label_emb.weight"]
  with pytest.raises(convert.StateDictMismatch) as caught:
    convert.from_torch(broken, shapes)
  e = caught.value
  assert e.missing == ["label_emb.weight"] and e.unused == ["extra.weight"]
  assert e.shapes == [("input_blocks.1.0.in_layers.2.weight", (16, 32, 3, 3), (32, 32, 3, 3))]
  assert "1 keys missing (label_emb.weight)" in str(e) and "\n" not in str(e)
  assert "input_blocks.1.0.in_layers.2.weight is (16, 32, 3, 3), not (32, 32, 3, 3)" in str(e)
  assert len(e.lines()) == 3


def test_expected_keys_are_the_state_dicts(shared_dir):
  """Our parameters' PyTorch names and shapes, computed without weights,
  are exactly the reference state_dict's (Conv1d [out, in, 1] included)."""
  for name in ("adm_unet", "adm_classifier", "glide_inpaint"):
    _, shapes, _, state_dict, _ = load_reference(shared_dir, name)
    assert convert.expected_keys(shapes) == {k: v.shape for k, v in state_dict.items()}, name


TINY = dict(model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
            attention_ds=(2,), num_head_channels=16, num_groups=8)


@pytest.fixture(scope="module")
def tiny_unet_and_params():
  model = UNet(out_channels=6, num_classes=4, dropout=0.1, **TINY)
  x = jnp.zeros((2, 8, 8, 3))
  params = jax.jit(lambda: model.init(jax.random.key(0), x, jnp.zeros(2, int),
                                      y=jnp.zeros(2, int)))()["params"]
  return model, params


def test_output_shapes_and_extra_inputs():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  t = jnp.array([3, 700])
  for kwargs, cond, out_channels in [
      (dict(out_channels=3), {}, 3),
      (dict(out_channels=6, num_classes=5), dict(y=jnp.array([0, 4])), 6),
      (dict(out_channels=3, super_res=True), dict(low_res=jnp.zeros((2, 4, 4, 3))), 3),
      (dict(out_channels=3, inpaint=True), dict(inpaint_image=jnp.zeros((2, 8, 8, 3)),
                                                inpaint_mask=jnp.ones((2, 8, 8, 1))), 3)]:
    model = UNet(**kwargs, **TINY)
    out, variables = jax.eval_shape(
        lambda x, t, c, m=model: m.init_with_output(jax.random.key(0), x, t, **c), x, t, cond)
    assert out.shape == (2, 8, 8, out_channels) and out.dtype == jnp.float32
    in_kernel = variables["params"]["input_blocks_0_0"]["kernel"]
    assert in_kernel.shape[2] == 3 + sum(v.shape[-1] for v in cond.values() if v.ndim == 4)
  classifier = NoisyClassifier(num_classes=7, pool_head_channels=16, **TINY)
  logits, _ = jax.eval_shape(lambda x, t: classifier.init_with_output(jax.random.key(0), x, t),
                             x, t)
  assert logits.shape == (2, 7)


def test_inpaint_super_res_input_is_glides():
  """GLIDE's `InpaintSuperResText2ImUNet` input: [x, image * mask, mask,
  upsampled low_res], the image multiplied by the mask inside, missing
  inpainting inputs zeros. The same weights as a plain UNet fed that
  concatenation compute the same function; a swapped order would not."""
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.randn(2, 8, 8, 3), jnp.float32)
  image = jnp.asarray(rs.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  mask = jnp.asarray(rs.rand(2, 8, 8, 1) < 0.5, jnp.float32)
  low_res = jnp.asarray(rs.uniform(-1, 1, (2, 4, 4, 3)), jnp.float32)
  t = jnp.array([3, 700])
  model = UNet(out_channels=3, inpaint=True, super_res=True, **TINY)
  params = model.init(jax.random.key(0), x, t, low_res=low_res)["params"]
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape),
                        params)
  apply = jax.jit(lambda **c: model.apply({"params": params}, x, t, **c))
  up = jax.image.resize(low_res, (2, 8, 8, 3), "bilinear")
  plain = UNet(out_channels=3, **TINY)
  expected = plain.apply({"params": params}, jnp.concatenate([x, image * mask, mask, up], -1), t)
  got = apply(inpaint_image=image, inpaint_mask=mask, low_res=low_res)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  zeros = plain.apply({"params": params},
                      jnp.concatenate([x, jnp.zeros((2, 8, 8, 4)), up], -1), t)
  np.testing.assert_allclose(apply(low_res=low_res), zeros, atol=1e-5)
  with pytest.raises(ValueError, match="low_res must be given"):
    apply(inpaint_image=image, inpaint_mask=mask)
  with pytest.raises(ValueError, match="no inpainting inputs"):
    plain.apply({"params": params}, x, t, inpaint_mask=mask)


def test_coordinates_are_two_more_input_channels_of_row_and_column():
  """`coordinates=True` (CoordConv): the row and column of each pixel center
  in [-1, 1], concatenated after the other inputs. The same weights as a
  plain UNet fed that concatenation compute the same function, and the
  output moves when the coordinate weights do (a position signal the
  convolutions see); rows and columns swapped would not match."""
  from diffusion_jax.models.unet import coordinate_channels
  grid = np.asarray(coordinate_channels((2, 4, 8, 3)))
  assert grid.shape == (2, 4, 8, 2)
  np.testing.assert_allclose(grid[0, :, 0, 0], [-0.75, -0.25, 0.25, 0.75])  # rows
  np.testing.assert_allclose(grid[1, 0, :, 1], (np.arange(8) + 0.5) / 4 - 1)  # columns
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  t = jnp.array([3, 700])
  model = UNet(out_channels=3, coordinates=True, **TINY)
  params = model.init(jax.random.key(0), x, t)["params"]
  assert params["input_blocks_0_0"]["kernel"].shape[2] == 5
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape),
                        params)
  plain = UNet(out_channels=3, **TINY)
  expected = plain.apply({"params": params},
                         jnp.concatenate([x, coordinate_channels(x.shape)], -1), t)
  got = model.apply({"params": params}, x, t)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  kernel = params["input_blocks_0_0"]["kernel"]
  blind = {**params, "input_blocks_0_0": {**params["input_blocks_0_0"],
                                          "kernel": kernel.at[:, :, 3:].set(0.0)}}
  assert np.abs(model.apply({"params": blind}, x, t) - got).max() > 1e-3


def test_attention_sits_at_downsampling_levels():
  """Pixel resolutions at the trained size become downsampling factors, so
  the same weights on a larger canvas keep their attention layers."""
  from diffusion_jax.models.unet import attention_ds_of
  assert attention_ds_of((32, 16, 8), 64, 4) == (2, 4, 8)
  assert attention_ds_of((8,), 16, 2) == (2,)
  with pytest.raises(ValueError, match="12 is no feature-map size of a 16x16 UNet"):
    attention_ds_of((12,), 16, 3)
  model = UNet(out_channels=3, **TINY)
  small = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                         jnp.zeros(1, int))
  wide = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                        jnp.zeros(1, int))
  assert jax.tree.map(lambda a: a.shape, small) == jax.tree.map(lambda a: a.shape, wide)
  assert "input_blocks_3_1" in small["params"]  # attention at factor 2


def test_dropout_remat_and_bf16(tiny_unet_and_params):
  model, params = tiny_unet_and_params
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
  t, y = jnp.array([10, 500]), jnp.array([1, 3])
  # Perturb the zero-initialised output convs so every layer matters.
  params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(3), p.shape),
                        params)

  def apply(module, train=False):
    rngs = {"dropout": jax.random.key(4)} if train else None
    return jax.jit(lambda p: module.apply({"params": p}, x, t, y=y, train=train,
                                          rngs=rngs))(params)
  ref = apply(model)
  np.testing.assert_array_equal(ref, apply(model))
  assert not np.allclose(apply(model, train=True), ref)
  np.testing.assert_allclose(apply(model.clone(remat=True)), ref, atol=1e-6)
  half = apply(model.clone(dtype=jnp.bfloat16))
  assert half.dtype == jnp.float32
  np.testing.assert_allclose(half, ref, atol=0.05 * float(jnp.abs(ref).max()))
  # jax.nn.dot_product_attention computes our attention (its "cudnn" kernel,
  # the GPU's, is the same call; the CPU has only "xla").
  np.testing.assert_allclose(apply(model.clone(attention_impl="xla")), ref, atol=1e-5)


def test_attention_implementations_agree_with_a_text_sequence():
  """GLIDE's case: the text's keys and values prepended, Lk != Lq."""
  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.randn(2, 16, 4, 8), jnp.float32)
  k, v = (jnp.asarray(rng.randn(2, 21, 4, 8), jnp.float32) for _ in range(2))
  ours = layers.dot_product_attention(q, k, v)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum("bhqk,bkhd->bqhd", weights, v)  # the formula, in numpy
  np.testing.assert_allclose(ours, expected, atol=1e-5)
  np.testing.assert_allclose(layers.dot_product_attention(q, k, v, "xla"), expected, atol=1e-5)



def test_causal_attention_is_the_masked_formula_and_the_text_model_reads_only_earlier_tokens():
  """`model.xf_causal`: query i weighs keys 0 ... i only (numpy's formula,
  ours and XLA's); a causal text model's slot i is unchanged by later tokens,
  GLIDE's bidirectional one is not."""
  from diffusion_jax.models.text import TextEncoder
  rng = np.random.RandomState(1)
  q, k, v = (jnp.asarray(rng.randn(2, 6, 2, 8), jnp.float32) for _ in range(3))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
  logits = np.where(np.tril(np.ones((6, 6), bool)), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  expected = np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), v)
  for implementation in ("", "xla"):
    np.testing.assert_allclose(layers.dot_product_attention(q, k, v, implementation, causal=True),
                               expected, atol=1e-5)
  tokens = jnp.array([[5, 6, 7, 8, 9, 10], [5, 6, 7, 11, 12, 13]])  # first 3 shared
  mask = jnp.ones(tokens.shape, bool)
  for causal in (True, False):
    encoder = TextEncoder(TextSpec(vocab_size=20, text_ctx=6, width=16, layers=2, heads=2,
                                   causal=causal), out_dim=8)
    params = encoder.init(jax.random.key(0), tokens, mask)
    _, sequence = encoder.apply(params, tokens, mask)  # [2, 6, 16]
    moved = np.abs(np.asarray(sequence[0, :3] - sequence[1, :3])).max()
    assert (moved == 0) if causal else (moved > 1e-3), (causal, moved)

def test_bad_image_size_and_labels_raise():
  model = UNet(out_channels=3, **TINY)
  with pytest.raises(ValueError, match=r"divisible by 2.*\(2, 7, 8, 3\)"):
    model.init(jax.random.key(0), jnp.zeros((2, 7, 8, 3)), jnp.zeros(2, int))
  with pytest.raises(ValueError, match="class labels y"):
    model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), jnp.zeros(2, int),
               y=jnp.zeros(2, int))


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_group_norm_value_and_gradient_match_autodiff_of_flax(offset):
  """Our GroupNorm has a hand-written backward pass (layers.group_norm_fn):
  its value and its gradients with respect to x, scale and bias equal
  autodiff through `nn.GroupNorm(use_fast_variance=False)`. The offset
  input (mean 30, std ~1) catches a one-pass E[x^2] - E[x]^2 variance."""
  import flax.linen as nn

  from diffusion_jax.models import layers
  rs = np.random.RandomState(3)
  batch, height, width, channels, groups = 3, 4, 5, 16, 4
  x = jnp.asarray(rs.randn(batch, height, width, channels) + offset, jnp.float32)
  scale = jnp.asarray(1 + 0.3 * rs.randn(channels), jnp.float32)
  bias = jnp.asarray(0.3 * rs.randn(channels), jnp.float32)
  probe = jnp.asarray(rs.randn(batch, height, width, channels), jnp.float32)

  def ours(x, scale, bias):
    flat = x.reshape(batch, -1, channels)
    return layers.group_norm_fn(flat, scale, bias, groups, 1e-5).reshape(x.shape)

  def reference(x, scale, bias):
    norm = nn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=False)
    return norm.apply({"params": {"scale": scale, "bias": bias}}, x)

  np.testing.assert_allclose(ours(x, scale, bias), reference(x, scale, bias), atol=2e-5)
  # A loss whose gradient is not a constant: sum(probe * y^2).
  loss = lambda f: lambda *a: jnp.sum(probe * f(*a) ** 2)  # noqa: E731
  got = jax.grad(loss(ours), argnums=(0, 1, 2))(x, scale, bias)
  want = jax.grad(loss(reference), argnums=(0, 1, 2))(x, scale, bias)
  for name, g, w in zip(["x", "scale", "bias"], got, want):
    np.testing.assert_allclose(g, w, atol=1e-4 * float(jnp.abs(w).max()), err_msg=name)
