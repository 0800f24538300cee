"""Test set-up, and the helpers every test module shares.

- 8 simulated CPU devices and a persistent compilation cache, which the
  subprocesses the tests start (CLI runs, multi-process runs) share too;
- `quick_config(name, **overrides)`: a config's `:quick` variant on the
  tests' dataset cache, with `section.field=value` overrides;
- `run_cli(...)`: the command line in a subprocess; `free_port()`;
- `run_steps(config, mesh, n)`: n train steps from a fresh state;
- `cli(workdir, *RUN)`: a quick training run from the command line, with
  `steps_on_disk`, `wait_for_checkpoint`, `all_params` (the saved state) and
  `assert_bitwise_equal`, and the session fixture `uninterrupted_run`;
- session fixtures: `shared_dir` (../shared) and `trained_workdir`, one
  quick class-conditional run that the training, reliability and inference
  tests all read (its checkpoints at steps 2 and 4, two EMA rates).
"""
import hashlib
import os
import pathlib
import socket
import subprocess
import sys
import time

# Must happen before jax is imported anywhere. The tests' tiny programs take
# longer to compile than to run: LLVM's optimisations off (the same results,
# HLO passes unchanged) compile them about 40% faster.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
_CACHE = ROOT / ".cache" / "jax"
# Through the environment, so that the subprocesses the tests start (CLI runs,
# multi-process workers) share the compilation cache too.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
if str(ROOT) not in sys.path:  # configs/
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

QUICK = "--config=configs/shapes_class_cond.py:quick"  # the CLI's quick config
# In-process runs train on one of the 8 simulated devices: the one-device
# programs compile, step and save faster (sharded training is tested on
# its own: 2 x 4 devices in-process, 2 processes x 2 devices by the CLI).
ONE_DEVICE = {"mesh.data": 1}
# A one-level UNet (attention in its middle block only), for tests of what
# is not the network (resume, preemption, loading, guidance): it compiles in
# half the quick model's time (a CLI run of 20 steps: 13 s cold, 8 s warm,
# against 25 and 16). Sharded training keeps the quick model, whose kernels
# are large enough to shard.
TINY_MODEL = {"model.channel_mult": (1,), "model.attention_resolutions": ()}
TINY_FLAGS = ("--config.model.channel_mult=1,", "--config.model.attention_resolutions=()")
# The overrides of the shared quick run: two EMA rates without warm-up, so
# that the weights each one names differ after a few steps.
# eps, not the main config's v: at step 4 an eps model's samples move far
# with its weights (its x_0 is clipped hard), which the tests of EMA choice
# and classifier steering measure; v is trained and sampled in test_recipe.
TRAINED_RUN = {"train.ema_rates": (0.995, 0.9), "train.ema_warmup": False,
               "diffusion.parameterization": "eps", **ONE_DEVICE, **TINY_MODEL}


def data_dir() -> str:
  """.cache/test_tfds/<hash of the dataset generators>: fresh data when they change."""
  from diffusion_jax.data import digits, scenes, shapes, shapes_tfds
  sources = b"".join(pathlib.Path(m.__file__).read_bytes()
                     for m in (shapes, scenes, shapes_tfds, digits))
  return str(ROOT / ".cache" / "test_tfds" / hashlib.sha256(sources).hexdigest()[:12])


def quick_config(name: str = "shapes_class_cond", **overrides):
  """configs/<name>.py:quick on the tests' data, with `section.field=value`
  overrides (`quick_config(**{"data.batch_size": 16})`)."""
  import importlib
  config = importlib.import_module(f"configs.{name}").get_config("quick")
  config.data.data_dir = data_dir()
  for key, value in overrides.items():
    *sections, field = key.split(".")
    node = config
    for section in sections:
      node = node[section]
    setattr(node, field, value)
  return config


def one_device():
  """A mesh of the first device only."""
  from diffusion_jax import parallel
  return parallel.make_mesh(devices=jax.devices()[:1])


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_cli(*args, devices: int = 1, wait: bool = True, env=None, timeout: int = 600):
  """`python -m diffusion_jax.main ARGS` on `devices` CPU devices, on the
  tests' data: a CompletedProcess (wait) or a Popen (stdout and stderr merged)."""
  cmd = [sys.executable, "-m", "diffusion_jax.main", *args]
  env = dict(os.environ, DIFFUSION_JAX_DATA_DIR=data_dir(), JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
             **(env or {}))
  if wait:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def nhwc(a):
  """A PyTorch NCHW array as our NHWC."""
  return jax.numpy.asarray(a.transpose(0, 2, 3, 1))


def reference_inputs(data):
  """(x, t, conditioning) of an openai_parity file, in our layout and names."""
  x, t = nhwc(data["x_nchw"]), jax.numpy.asarray(data["t"])
  cond = {}
  if "y" in data:
    cond["y"] = jax.numpy.asarray(data["y"])
  if "low_res_nchw" in data:
    cond["low_res"] = nhwc(data["low_res_nchw"])
  if "inpaint_image_nchw" in data:
    cond["inpaint_image"] = nhwc(data["inpaint_image_nchw"])
    cond["inpaint_mask"] = nhwc(data["inpaint_mask_nchw"])
  if "tokens" in data:
    cond["tokens"] = jax.numpy.asarray(data["tokens"])
    cond["mask"] = jax.numpy.asarray(data["mask"])
  return x, t, cond


def error_line(result) -> str:
  """The one `error:` line of a failed CLI run (asserting there is exactly one)."""
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  return errors[0]


def run_steps(config, mesh, num_steps, process_index=None, process_count=None):
  """Trains `num_steps` from a fresh state on `mesh`; returns (state, losses)."""
  from diffusion_jax import parallel
  from diffusion_jax.data import pipeline
  from diffusion_jax.training import tasks
  task = tasks.make_task(config, pipeline.read_info(config.data))
  data = pipeline.ImageData(config.data, seed=config.seed,
                            global_batch_size=config.data.batch_size,
                            example_fn=task.spec.example_fn,
                            process_index=process_index, process_count=process_count)
  state, shardings = task.create_state(mesh, config.seed)
  step_fn = tasks.compile_step(task, mesh, shardings)
  losses = []
  for step in range(num_steps):
    state, metrics = step_fn(state, parallel.global_batch(data.local_batch(step), mesh))
    losses.append(float(metrics["loss"]))
  return state, losses


@jax.jit
def perturbed(params, seed=0, std=0.05):
  """Every parameter plus noise, so that none is zero (zero-initialised
  output layers would hide the conditioning)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [a + std * jax.random.normal(k, a.shape)
                                   for a, k in zip(leaves, keys)])


def flat_arrays(tree) -> dict:
  """Every leaf as a host numpy array, by key path."""
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def cli(workdir, *overrides, wait=True, devices=1, env=None):
  """A quick training run from the command line in `workdir`."""
  return run_cli("--mode=train", QUICK, f"--workdir={workdir}", *overrides, wait=wait,
                 devices=devices, env=env, timeout=900)


def steps_on_disk(workdir):
  folder = pathlib.Path(workdir) / "checkpoints"
  if not folder.exists():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def wait_for_checkpoint(workdir, proc, after=0, timeout=300):
  """Waits until a checkpoint of a step above `after` is on disk."""
  start = time.time()
  while not [s for s in steps_on_disk(workdir) if s > after]:
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() - start < timeout, "no checkpoint appeared"
    time.sleep(0.02)


def all_params(workdir, step=None):
  """(step, every array of the saved train state by name), read from disk."""
  from diffusion_jax import checkpoint as ckpt_lib
  checkpointer = ckpt_lib.Checkpointer(str(pathlib.Path(workdir) / "checkpoints"),
                                       read_only=True)
  try:
    fields = ("params", "ema_params", "opt_state", "rng", "step")
    values, _, _, _ = checkpointer.restore_fields(fields, step)
  finally:
    checkpointer.close()
  return int(values["step"]), flat_arrays(values)


# Short enough to be quick, long enough for a signal to land mid-run.
RUN = ("--config.train.num_steps=20", "--config.train.checkpoint_every=5",
       "--config.train.log_every=5", *TINY_FLAGS)


def assert_bitwise_equal(got, expected):
  assert got[0] == expected[0]
  assert got[1].keys() == expected[1].keys()
  for name, value in expected[1].items():
    np.testing.assert_array_equal(got[1][name], value, err_msg=name)


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory):
  """`all_params` of a quick CLI run of RUN never interrupted: what every
  interrupted and resumed run must equal bitwise."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = cli(workdir, *RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  return all_params(workdir)


@pytest.fixture(scope="session")
def shared_dir():
  """../shared beside the checkout: the tests that need it skip without it,
  except under CI (the CI variable set), where its absence fails them."""
  if not SHARED.is_dir():
    if os.environ.get("CI"):
      pytest.fail(f"{SHARED} is absent, and CI must not skip the parity tests")
    pytest.skip(f"{SHARED} is absent (reference test data lives there)")
  return SHARED


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """A quick class-conditional run trained to step 4 (checkpoints 2 and 4,
  EMAs 0.995 and 0.9, a sample grid). Read it; copy it before changing it."""
  from diffusion_jax.training import loop
  workdir = tmp_path_factory.mktemp("trained")
  loop.train_and_evaluate(quick_config(**TRAINED_RUN), str(workdir))
  return workdir


@pytest.fixture(scope="session")
def classifier_workdir(tmp_path_factory):
  """A quick noisy classifier of 8x8 digits (10 classes, 1 channel), trained
  to step 4: smaller images than the 16x16 digits it may judge."""
  from diffusion_jax.training import loop
  workdir = tmp_path_factory.mktemp("classifier")
  config = quick_config("shapes_classifier", **ONE_DEVICE, **TINY_MODEL,
                        **{"data.name": "digits/16", "data.image_size": 8})
  loop.train_and_evaluate(config, str(workdir))
  return workdir


# Fixtures of 10-50 s that a few tests share: pytest.ini's `--dist loadgroup`
# runs the tests using one of them on one xdist worker, so it is built once,
# not once per worker (each was built on both workers: 120 s in all).
ONE_WORKER_FIXTURES = ("fsdp_runs", "text_bundle", "classifier_workdir", "classifier_16",
                       "inpaint_bundle", "uninterrupted_run")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(config, items):
  grouped = []
  for item in items:  # before xdist, which reads the groups into the node ids
    shared = [name for name in ONE_WORKER_FIXTURES if name in item.fixturenames]
    if shared:
      item.add_marker(pytest.mark.xdist_group(shared[0]))
      grouped.append(item)
  yield
  if getattr(config.option, "loadgroup", False) and grouped and "@" not in grouped[0].nodeid:
    grouped[0].warn(pytest.PytestWarning(
        "xdist did not group the tests sharing a fixture (pytest 9.2 with pytest-xdist "
        "3.8, pytest-xdist#1386): each worker builds it; setup.py pins pytest<9.2"))
