"""The PyTorch twin of the benchmarks (benchmarks/torch_unet.py) is the same
function as our Flax UNet and hybrid loss, so `train_speed.py` compares like
with like. Skips when torch is not installed."""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import torch_unet  # noqa: E402
import train_speed  # noqa: E402
from diffusion_jax import diffusion, schedules  # noqa: E402
from diffusion_jax.models import convert  # noqa: E402


def nchw(a):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def make_twins(fields, image_size, seed, classes=None):
  """(twin, our UNet, our params) of `fields` with the same random weights
  (the zero-initialised output convs perturbed so every layer matters);
  class-conditional with `classes`."""
  torch.manual_seed(seed)
  net = torch_unet.UNet(in_channels=3, image_size=image_size, num_classes=classes, **fields)
  with torch.no_grad():
    for p in net.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model = train_speed.jax_unet(dict(fields, num_classes=classes) if classes else fields,
                               image_size=image_size)
  labels = {"y": jnp.zeros(1, jnp.int32)} if classes else {}
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, image_size, image_size, 3)), jnp.zeros(1, jnp.int32),
                          **labels)["params"]
  params = convert.from_torch({k: v.numpy() for k, v in net.state_dict().items()}, shapes)
  return net, model, params


def labelled_outputs(twins, seed, t, y):
  """(ours, the twin's) outputs NHWC on random 16x16 images with labels y."""
  net, model, params = twins
  x = np.random.RandomState(seed).randn(2, 16, 16, 3).astype(np.float32)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, x, t, y=y))
  with torch.no_grad():
    theirs = net(nchw(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
  return ours, theirs.transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def twins():
  """The benchmark's UNet in both frameworks with the same random weights."""
  return make_twins(train_speed.MODEL, 32, seed=0)


def test_same_parameters_and_outputs(twins):
  net, model, params = twins
  assert sum(p.size for p in jax.tree.leaves(params)) == sum(
      p.numel() for p in net.parameters())
  x = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
  t = np.array([0, 999])
  out = np.asarray(jax.jit(model.apply)({"params": params}, x, t))  # [B, H, W, 6]
  with torch.no_grad():
    expected = net(nchw(x), torch.from_numpy(t)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(out, expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-4)


def test_class_labels_too():
  """The class-conditional twin (the sampling benchmark's CFG model): its
  `label_emb` loads as ours, and the labels change the output the same way."""
  small = dict(train_speed.MODEL, model_channels=32, attention_resolutions=(8,))
  ours, theirs = labelled_outputs(make_twins(small, 16, seed=1, classes=5), 0,
                                  np.array([5, 900]), np.array([0, 4]))
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_the_adm64_architecture_too():
  """ADM ImageNet-64's layout (fair_train_speed.ADM64: four levels, three
  ResBlocks a level, attention at three resolutions, 64 channels a head) at
  32 channels on 16x16 images: the GPU suite's comparison is like with like."""
  import fair_train_speed
  fields = dict(fair_train_speed.ADM64, model_channels=32, num_head_channels=16,
                attention_resolutions=(8, 4, 2))
  net, model, params = adm = make_twins(fields, 16, seed=2, classes=7)
  assert sum(p.size for p in jax.tree.leaves(params)) == sum(
      p.numel() for p in net.parameters())
  ours, theirs = labelled_outputs(adm, 3, np.array([3, 700]), np.array([1, 6]))
  np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max(), rtol=1e-4)


def test_same_parameter_gradients(twins):
  """Backward passes agree too (our GroupNorm has a hand-written gradient):
  each parameter's gradient of a random projection of the output."""
  net, model, params = twins
  rs = np.random.RandomState(2)
  x, up = rs.randn(2, 32, 32, 3).astype(np.float32), rs.randn(2, 32, 32, 6).astype(np.float32)
  t = np.array([10, 600])
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, t) * up)))(params)
  net.zero_grad()
  (net(nchw(x), torch.from_numpy(t)) * nchw(up)).sum().backward()
  expected = convert.from_torch({k: p.grad.numpy() for k, p in net.named_parameters()},
                                params)
  for (path, ours), theirs in zip(jax.tree_util.tree_leaves_with_path(grads),
                                  jax.tree.leaves(expected)):
    scale = np.abs(theirs).max() + 1e-6
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-4 * scale, rtol=2e-3,
                               err_msg=jax.tree_util.keystr(path))


def test_same_hybrid_loss():
  sched = schedules.make_schedule("cosine", 1000)
  rs = np.random.RandomState(1)
  x0 = np.clip(rs.randn(4, 8, 8, 3), -1, 1).astype(np.float32)
  noise = rs.randn(4, 8, 8, 3).astype(np.float32)
  output = (0.5 * rs.randn(4, 8, 8, 6)).astype(np.float32)
  t = np.array([0, 1, 500, 999])
  ours = diffusion.training_losses(sched, output, x0, t, noise, parameterization="eps",
                                   variance="learned_range")["loss"]
  theirs = torch_unet.hybrid_loss(torch_unet.CosineSchedule(sched), nchw(output), nchw(x0),
                                  torch.from_numpy(t), nchw(noise))
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-5)


def test_analytic_flops_match_torch_flop_counter(twins):
  """The benchmark's architectural FLOP count is what PyTorch's counter sees."""
  from torch.utils.flop_counter import FlopCounterMode
  net = twins[0]
  with FlopCounterMode(display=False) as counter, torch.no_grad():
    net(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
  assert counter.get_total_flops() == train_speed.forward_flops_per_image()
