"""Command line: `python -m diffusion_jax.main --mode=MODE --config=FILE[:variant] --workdir=DIR`.

`sample`, `export` and `eval` may leave out --config: they then take the
config the model in WORKDIR was saved with, and `--config.x=y` overrides it.
They read `--model` instead of WORKDIR where it is given: a shipped model's
name (`diffusion_jax.list_models()`), an export or a workdir; the outputs
then go to WORKDIR, by default runs/MODEL:

    python -m diffusion_jax.main --mode=sample --model=shapes-text2im \
        --config.sample.prompts="a red circle|a small blue square at the top"

Modes:
  train: train the config's model in WORKDIR, resuming from its latest
    checkpoint; writes TensorBoard logs, checkpoints and sample grids.
  sample: load WORKDIR's model (its latest checkpoint, or an export folder)
    and write a grid of samples (PNG + .npz), or with
    `--config.sample.num_samples=N` N samples to one .npz in
    guided-diffusion's layout, as the config's `sample` section says.
  export: write WORKDIR's weights (`sample.ema_rate`) and config as a
    portable folder (safetensors + JSON; `--output`, default WORKDIR/export),
    which `diffusion_jax.load` reads.
  eval: measure WORKDIR's samples against the test split (FD, KID,
    precision and recall, class accuracy; bits per dim with
    `--config.eval.bpd=True`), as the config's `eval` section says.
  toy: sample a 2-D Gaussian mixture with its exact denoiser (no training).
  convert: convert a released guided-diffusion or GLIDE checkpoint
    (`--source=FILE.pt --kind=KIND [--flags="--name value ..."]`) into an
    export (`--output`, default exports/KIND); no --config or --workdir.

Exit status: 0 done, 1 failed, 2 bad input (a one-line error), 73 the workdir
is in use by another training run, 74 an I/O error such as a full disk (the
last complete checkpoint is intact), 75 preempted (SIGTERM: a checkpoint was
saved at the current step; rerun to resume). A failed run exits within
`EXIT_GRACE_S` seconds even if a library thread would keep it alive.

Override any config field with `--config.section.field=value`. Multi-host:
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or the
DIFFUSION_JAX_* environment variables, see `parallel.initialize_distributed`).
"""
from __future__ import annotations

import json
import logging as std_logging
import os
import pathlib
import re
import sys
import threading
import traceback

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax.training import run_guard, workdir_lock

EXIT_IO = 74  # EX_IOERR: a checkpoint or a log could not be written
EXIT_GRACE_S = 10.0  # a failed run's threads get this long to stop

_MODES = ("train", "sample", "export", "eval", "toy", "convert")
_SAVED_CONFIG_MODES = ("sample", "export", "eval")  # --config defaults to the model's own

FLAGS = flags.FLAGS
_MODE = flags.DEFINE_enum("mode", "train", _MODES, "What to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs go (all modes but convert).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file, e.g. configs/shapes_class_cond.py:quick.",
    lock_config=True)
_OUTPUT = flags.DEFINE_string("output", None, "Export folder (--mode=export, convert).")
_MODEL = flags.DEFINE_string(
    "model", None, "sample, eval, export: the model to read, where it is not --workdir: a "
    "shipped model's name (shapes-text2im, ...), an export folder or a workdir.")
_STORAGE = flags.DEFINE_enum("dtype", "float32", ["float32", "float16"],
                             "export, convert: the stored weights' dtype (float16: half "
                             "the bytes; read back as float32).")
_SOURCE = flags.DEFINE_string("source", None, "--mode=convert: the released .pt file "
                              "(the CLIP: both files, comma-separated).")
_KIND = flags.DEFINE_string("kind", None, "--mode=convert: the released model, by its "
                            "checkpoint name (64x64_diffusion, base, clip, ...).")
_REFERENCE_FLAGS = flags.DEFINE_string(
    "flags", "", "--mode=convert: guided-diffusion's or GLIDE's flags on top of the kind's, "
    "e.g. \"--image_size 128 --num_channels 256\".")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def fail(message: str, status: int = run_guard.EXIT_BAD_INPUT) -> None:
  """Exits with a one-line error (default status: bad input), no traceback."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _run_toy(config, workdir):
  from diffusion_jax import toy
  summary = toy.run(config, workdir)
  print(json.dumps(summary, indent=2))
  print(f"wrote {workdir}/samples.png, samples.npz and summary.json")


def _run_train(config, workdir):
  from diffusion_jax import filtering
  from diffusion_jax.training import loop
  drop_fn = filtering.classifier_drop_fn(config.data.filter)
  state = loop.train_and_evaluate(config, workdir, drop_fn)
  grid = pathlib.Path(workdir) / "samples" / f"step_{int(state.step):06d}.png"
  grids = f" and sample grids (the last: {grid})" if grid.exists() else ""
  print(f"trained to step {int(state.step)}; checkpoints and TensorBoard logs{grids} "
        f"are in {workdir}")


def _run_sample(config, workdir):
  from diffusion_jax.inference import sample_mode
  path = sample_mode.run(config, workdir, model=_MODEL.value)
  what = path if path.suffix == ".npz" else f"{path} and {path.with_suffix('.npz')}"
  print(f"wrote {what}")


def _run_export(config, workdir):
  from diffusion_jax.inference import loading
  bundle = loading.load(_MODEL.value or workdir, loading.ema_choice(config.sample))
  path = loading.export(bundle, _OUTPUT.value or f"{workdir}/export", dtype=_STORAGE.value)
  print(f"exported {bundle} to {path}; load it with diffusion_jax.load({str(path)!r})")


def _run_eval(config, workdir):
  from diffusion_jax.evaluation import eval_mode
  path = eval_mode.run(config, workdir, model=_MODEL.value)
  print(path.read_text().strip())
  print(f"wrote {path} and {path.with_suffix('.png')}")


_RUNS = {"toy": _run_toy, "train": _run_train, "sample": _run_sample, "export": _run_export,
         "eval": _run_eval}


def _run_convert():
  from diffusion_jax.openai import converter
  if not _SOURCE.value or not _KIND.value:
    from diffusion_jax.openai import released
    fail("--mode=convert needs --source=FILE.pt and --kind=KIND (one of "
         f"{', '.join(released.KINDS)})")
  print(converter.run(_SOURCE.value, _KIND.value, _REFERENCE_FLAGS.value, _OUTPUT.value,
                      _STORAGE.value))


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if _MODE.value == "convert":
    try:
      return _run_convert()
    except (ValueError, FileNotFoundError, ImportError) as e:
      fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  workdir = _WORKDIR.value
  if not workdir and _MODEL.value and _MODE.value in _SAVED_CONFIG_MODES:
    workdir = f"runs/{pathlib.Path(_MODEL.value).name}"
  if not workdir:
    fail(f"--mode={_MODE.value} needs --workdir")
  config = _CONFIG.value
  if config is None:
    fail("--config is required, e.g. --config=configs/shapes_class_cond.py")
  if not isinstance(config, ml_collections.ConfigDict):  # config_flags' lazy error
    path = config_flags.get_config_filename(FLAGS["config"])
    fail(f"could not load the config file {path!r} (is the path right?)")
  try:
    if _MODE.value != "toy":
      from diffusion_jax import config_lib
      config_lib.check(config)
    from diffusion_jax import parallel
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                    _PROCESS_ID.value)
    logging.info("mode=%s workdir=%s\n%s", _MODE.value, workdir, config)
    _RUNS[_MODE.value](config, workdir)
  except run_guard.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(run_guard.EXIT_PREEMPTED)
  except run_guard.NonFiniteError as e:
    fail(str(e), run_guard.EXIT_FAILED)
  except workdir_lock.WorkdirBusy as e:
    fail(str(e), workdir_lock.EXIT_BUSY)
  except (ValueError, FileNotFoundError) as e:  # bad input: one line, no traceback
    logging.debug("%s", traceback.format_exc())
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except OSError as e:  # a full disk, an I/O error: checkpoint.SaveError says what is intact
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__, EXIT_IO)


class _NoLibraryTracebacks(std_logging.Filter):
  """Keeps the message of a library's logged exception, not its traceback:
  Orbax logs each failed background write with one (a full disk gives
  dozens); the run's own `error:` line says what happened."""

  def filter(self, record):
    if record.exc_info and ("/orbax/" in record.pathname or record.name == "asyncio"):
      record.exc_info, record.exc_text = None, None
    return True


def _exit_watchdog(status: int) -> None:
  """Ends the process with `status` if it is still alive `EXIT_GRACE_S`
  seconds from now (a non-daemon thread of a library that failed can keep
  it alive)."""
  seconds = EXIT_GRACE_S

  def force():
    sys.stderr.write(f"exiting: threads were still running {seconds:g} s after the error\n")
    sys.stderr.flush()
    os._exit(status)
  timer = threading.Timer(seconds, force)
  timer.daemon = True
  timer.start()


def _unknown_field(error: Exception, argv) -> str:
  """A sentence for config_flags' error on an override of a field that does
  not exist (a KeyError or AttributeError whose text suggests a name)."""
  text = str(error.args[0] if error.args else error).replace("\\'", "'")
  suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  quoted = re.search(r"'([^'\s]+)'", text)
  bad = suggestion.group(2) if suggestion else (quoted.group(1) if quoted else "?")
  override = next((a for a in argv[1:] if a.startswith("--config.") and
                   bad in a.split("=")[0].split(".")), None)
  where = f" in {override}" if override else ""
  hint = f"; did you mean {suggestion.group(1)!r}?" if suggestion else ""
  return f"the config has no field {bad!r}{where}{hint}"


def _config_path(argv) -> str:
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "?")
  return path.split(":")[0]


def _flag_value(argv, name: str):
  """The value of `--name=value` or `--name value` in argv, or None."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _with_saved_config(argv):
  """argv with `--config=<saved_config.py>:WORKDIR` added where a mode that
  reads a model is given no --config: the model's own config, overridable."""
  mode = _flag_value(argv, "mode")
  model = _flag_value(argv, "model") or _flag_value(argv, "workdir")
  if mode not in _SAVED_CONFIG_MODES or not model or _flag_value(argv, "config"):
    return argv
  from diffusion_jax.inference import loading, saved_config
  try:
    loading.check_model_folder(model)  # read once, by config_flags below
  except FileNotFoundError as e:
    fail(f"{str(e).splitlines()[0]}; or give --config")
  except ValueError as e:  # an unknown or damaged shipped model
    fail(str(e).splitlines()[0])
  return [argv[0], f"--config={saved_config.__file__}:{model}"] + list(argv[1:])


def _parse_flags(argv):
  """absl flag parsing with one-line errors for bad flags or config overrides."""
  argv = _with_saved_config(argv)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()]
    # config_flags embeds the config file's traceback: keep its last line.
    fail(lines[0] if len(lines) < 2 else f"{lines[0]} {lines[-1]}")
  except (AttributeError, KeyError) as e:
    if "get_config" in str(e):  # a Python file that is not a config
      fail(f"{_config_path(argv)} is not a config file: it defines no get_config() "
           "(see configs/ for examples)")
    fail(_unknown_field(e, argv))
  except (SyntaxError, ImportError, NameError, UnicodeDecodeError) as e:  # not Python
    fail(f"{_config_path(argv)} is not a Python config file "
         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
  except (ValueError, TypeError) as e:
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    where = f" (overrides: {' '.join(overrides)})" if overrides else ""
    fail(f"bad config{where}: {str(e).strip(chr(34))}")


def run():
  """Entry point of the `diffusion-jax` console script."""
  logging.get_absl_handler().addFilter(_NoLibraryTracebacks())
  try:
    app.run(main, flags_parser=_parse_flags)
  except SystemExit as e:
    if e.code not in (0, None):
      _exit_watchdog(e.code if isinstance(e.code, int) else run_guard.EXIT_FAILED)
    raise
  except BaseException:
    _exit_watchdog(run_guard.EXIT_FAILED)
    raise


if __name__ == "__main__":
  sys.exit(run())
