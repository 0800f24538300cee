"""Never corrupt a run: one writer per workdir (a renewed lease), a full disk,
SIGKILL at each point of a save, damaged and hostile files refused in one
line, and a failed run that exits. docs/reliability.md lists each fault and
the test here that injects it."""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import (
  FAST_COMPILE,
  QUICK,
  ROOT,
  RUN,
  TRAINED_RUN,
  all_params,
  assert_bitwise_equal,
  cli,
  data_dir,
  error_line,
  quick_config,
  run_cli,
  steps_on_disk,
  wait_for_checkpoint,
)
from diffusion_jax import faults
from diffusion_jax.inference import loading
from diffusion_jax.training import run_guard, workdir_lock
from diffusion_jax.training.workdir_lock import LOCK_FILE, WorkdirBusy, WorkdirLock

# ---------------------------------------------------------------- the lease


def write_lease(workdir, **fields):
  lease = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
           "renewed": time.time(), "token": "someone-else", **fields}
  (pathlib.Path(workdir) / LOCK_FILE).write_text(json.dumps(lease))
  return lease


def dead_pid() -> int:
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def test_a_live_lease_is_refused_naming_its_holder(tmp_path):
  write_lease(tmp_path, host="node-7", pid=4242)  # another host, renewed just now
  with pytest.raises(WorkdirBusy, match="host 'node-7', pid 4242"):
    WorkdirLock(tmp_path).acquire()
  write_lease(tmp_path)  # this host, a live process (this one)
  with pytest.raises(WorkdirBusy, match=f"pid {os.getpid()}"):
    WorkdirLock(tmp_path).acquire()
  assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == "someone-else"


@pytest.mark.parametrize("lease", ["dead local process", "not renewed", "unreadable"])
def test_a_stale_lease_is_taken_over_with_a_warning(tmp_path, lease, caplog):
  if lease == "dead local process":
    write_lease(tmp_path, pid=dead_pid())  # renewed just now, but its process is gone
  elif lease == "not renewed":
    write_lease(tmp_path, host="node-7", renewed=time.time() - 61)
  else:  # half a lease, whose file is old
    (tmp_path / LOCK_FILE).write_text('{"host": "no')
    os.utime(tmp_path / LOCK_FILE, (time.time() - 61,) * 2)
  lock = WorkdirLock(tmp_path, stale_after=60).acquire()
  try:
    held = json.loads((tmp_path / LOCK_FILE).read_text())
    assert held["token"] == lock.token and held["pid"] == os.getpid()
    assert "took over the stale lock" in caplog.text
  finally:
    lock.release()
  assert not (tmp_path / LOCK_FILE).exists()
  assert not list(tmp_path.glob(f"{LOCK_FILE}.*"))  # nothing left aside


def test_the_lease_is_renewed_and_a_holder_that_lost_it_stops(tmp_path):
  lock = WorkdirLock(tmp_path, renew_every=0.05, stale_after=0.5).acquire()
  try:
    first = json.loads((tmp_path / LOCK_FILE).read_text())["renewed"]
    time.sleep(0.3)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["renewed"] > first
    lock.check()  # still ours
    write_lease(tmp_path, host="node-7", pid=99)  # taken over while we "stalled"
    time.sleep(0.3)
    with pytest.raises(WorkdirBusy, match="node-7"):
      lock.check()
  finally:
    lock.release()
  assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "node-7"  # not ours to remove


def test_a_second_training_run_on_the_workdir_exits_at_once(tmp_path):
  """The issue's report: two runs on one workdir both died mid-save. Now the
  second exits with 73 naming the first, which trains on undisturbed."""
  first = cli(tmp_path, *RUN, "--config.train.num_steps=1000", wait=False)
  try:
    wait_for_checkpoint(tmp_path, first)
    second = cli(tmp_path, *RUN)
    assert second.returncode == workdir_lock.EXIT_BUSY, second.stderr[-3000:]
    assert f"pid {first.pid}" in error_line(second)
    assert "in use by another training run" in error_line(second)
    assert first.poll() is None  # undisturbed
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == run_guard.EXIT_PREEMPTED, output[-3000:]
  finally:
    first.kill()
  assert not (tmp_path / LOCK_FILE).exists()  # released on the way out


# ---------------------------------------------------------------- a full disk

FULL_DISK = """
set -u
mount -t tmpfs -o size=8m tmpfs "$MNT" || exit 99
"$PYTHON" -m diffusion_jax.main --mode=train {flags} --workdir="$MNT/w" \\
    > "$OUT/log.txt" 2>&1 &
pid=$!
while [ ! -d "$MNT/w/checkpoints/5" ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done
dd if=/dev/zero of="$MNT/filler" bs=64k 2>/dev/null  # the disk is now full
SECONDS=0
wait $pid; echo "status=$?" > "$OUT/status.txt"
echo "seconds=$SECONDS" >> "$OUT/status.txt"
ls "$MNT/w/checkpoints" > "$OUT/steps.txt"
rm "$MNT/filler"  # room again: the same command resumes and finishes
"$PYTHON" -m diffusion_jax.main --mode=train {flags} --workdir="$MNT/w" \\
    > "$OUT/resume.txt" 2>&1
echo "resumed=$?" >> "$OUT/status.txt"
ls "$MNT/w/checkpoints" > "$OUT/steps_after.txt"
"""


def can_mount_tmpfs() -> bool:
  if not shutil.which("unshare"):
    return False
  probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
  return probe.returncode == 0


FULL_DISK_LOGS = """
set -u
mount -t tmpfs -o size=1m tmpfs "$MNT" || exit 99
"$PYTHON" - <<'PY'
import os
from diffusion_jax.training import metrics
writer = metrics.MetricWriter(os.environ["MNT"] + "/tensorboard")
writer.write_scalars(1, {"loss": 0.5})
with open(os.environ["MNT"] + "/filler", "wb", buffering=0) as filler:
  try:
    while True:
      filler.write(bytes(65536))
  except OSError:
    pass  # the disk is now full
try:
  for step in range(2, 2000):
    writer.write_scalars(step, {"loss": 0.5, "grad_norm": 0.1, "lr": 1e-3})
except OSError as e:
  print("raised at step", step, e.strerror)
PY
"""


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs `unshare --mount` and tmpfs "
                    "(root or user namespaces) to make a small filesystem")
def test_a_full_disk_under_the_logs_raises_at_once_rather_than_hanging(tmp_path):
  """CI once hung here for 10 minutes: tensorboardX's writer thread died on
  the full disk, its bounded queue filled, and the training loop's next
  scalar blocked forever. Ours writes in the caller: an OSError at once."""
  env = dict(os.environ, MNT=str(tmp_path), PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                           FULL_DISK_LOGS], cwd=ROOT, env=env, timeout=60,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "No space left on device" in result.stdout, result.stdout
  assert int(result.stdout.split()[3]) < 100  # the events file's last 4 KB page, at most


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs `unshare --mount` and tmpfs "
                    "(root or user namespaces) to make a small filesystem")
def test_a_full_disk_stops_the_run_with_74_and_keeps_the_last_checkpoint(tmp_path):
  """A real full filesystem (an 8 MB tmpfs in a private mount namespace,
  filled after the first checkpoint): the next save fails, the run logs one
  error and exits 74 within seconds; step 5 stays readable; after freeing
  space, the same command resumes from it and finishes."""
  out, mnt = tmp_path / "out", tmp_path / "mnt"
  out.mkdir()
  mnt.mkdir()
  flags = " ".join([QUICK, *RUN, "--config.train.num_steps=40"]).replace("()", "'()'")
  env = dict(os.environ, MNT=str(mnt), OUT=str(out), PYTHON=sys.executable,
             DIFFUSION_JAX_DATA_DIR=data_dir(), JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {FAST_COMPILE}")
  subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                  FULL_DISK.format(flags=flags)], cwd=ROOT, env=env, timeout=600, check=True)
  status = dict(line.split("=") for line in (out / "status.txt").read_text().split())
  log = (out / "log.txt").read_text()
  assert status["status"] == "74", log[-3000:]
  assert float(status["seconds"]) < 30
  errors = [line for line in log.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "no space left on device" in errors[0], errors
  assert "the checkpoint of step 5 is intact" in errors[0]
  assert "5" in (out / "steps.txt").read_text().split()
  resume = (out / "resume.txt").read_text()
  assert status["resumed"] == "0", resume[-3000:]
  assert "resumed from the checkpoint at step 5" in resume
  assert (out / "steps_after.txt").read_text().split()[-1] == "40"
  assert not [n for n in (out / "steps_after.txt").read_text().split() if "tmp" in n]


# ---------------------------------------------------------------- SIGKILL mid-save


@pytest.mark.slow
def test_sigkill_at_each_point_of_a_save_then_resume_is_bitwise_equal(tmp_path,
                                                                     uninterrupted_run):
  """Killed while step 10's arrays are written, then before step 15's folder
  is renamed, then after step 20's rename but before step 5 is deleted:
  each resume starts from the newest complete step, and the end is bitwise
  the uninterrupted run's."""
  run = (*RUN, "--config.train.keep_checkpoints=3")
  for point, step, newest in (("writing", 10, 5), ("before_rename", 15, 10),
                              ("before_delete", 20, 20)):
    result = cli(tmp_path, *run, env={faults.ENV: f"{point}@{step}"})
    assert result.returncode == -signal.SIGKILL, (point, result.stderr[-3000:])
    complete = steps_on_disk(tmp_path)
    assert max(complete) == newest, (point, complete)
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]
    if point != "before_delete":
      assert leftovers == [f"{step}.orbax-checkpoint-tmp"], (point, leftovers)
    else:
      assert complete == [5, 10, 15, 20]  # 5 was to be deleted
  result = cli(tmp_path, *run)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from the checkpoint at step 20" in result.stderr
  assert_bitwise_equal(all_params(tmp_path), uninterrupted_run)


def test_fault_points_are_checked():
  with pytest.raises(ValueError, match="POINT@STEP"):
    os.environ[faults.ENV] = "nowhere@3"
    try:
      faults.after_save_started(3)
    finally:
      del os.environ[faults.ENV]


# ---------------------------------------------------------------- damaged and hostile files


@pytest.fixture(scope="module")
def export_dir(trained_workdir, tmp_path_factory):
  return loading.export(loading.load(trained_workdir), tmp_path_factory.mktemp("export"))


def damaged_copy(folder, tmp_path, damage):
  copy = tmp_path / "copy"
  shutil.copytree(folder, copy)
  damage(copy)
  return copy


def truncate(path, fraction=0.5):
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * fraction)])


def other_architecture(folder):
  config = json.loads((folder / "config.json").read_text())
  config["model"]["channels"] *= 2
  (folder / "config.json").write_text(json.dumps(config))


EXPORT_DAMAGE = {
    "truncated params": (lambda f: truncate(f / loading.PARAMS_FILE), "safetensors"),
    "params cut to a few bytes": (lambda f: truncate(f / loading.PARAMS_FILE, 0.001),
                                  "safetensors"),
    "config of another architecture": (other_architecture, "shape"),
    "config not JSON": (lambda f: (f / "config.json").write_text("model: {"), "config.json"),
    "meta without the data": (lambda f: (f / "meta.json").write_text(
        json.dumps({"format_version": 1, "step": 4})), "meta.json"),
    "meta missing": (lambda f: (f / "meta.json").unlink(), "meta.json"),
}


@pytest.mark.parametrize("damage", EXPORT_DAMAGE)
def test_a_damaged_export_is_refused_in_one_line(export_dir, tmp_path, damage):
  make, words = EXPORT_DAMAGE[damage]
  folder = damaged_copy(export_dir, tmp_path, make)
  with pytest.raises((ValueError, FileNotFoundError), match=words) as error:
    loading.load(folder)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("item", ["state", "config", "meta"])
def test_a_checkpoint_missing_an_item_falls_back_or_is_refused(trained_workdir, tmp_path, item,
                                                              caplog):
  """Step 4 without one of its items: step 2 is loaded, with a warning;
  with both steps damaged, one line says no checkpoint is readable."""
  workdir = damaged_copy(trained_workdir, tmp_path, lambda w: shutil.rmtree(
      w / "checkpoints" / "4" / item))
  assert loading.load(workdir).step == 2
  assert "step 4" in caplog.text and "unreadable" in caplog.text
  shutil.rmtree(workdir / "checkpoints" / "2" / item)
  with pytest.raises(FileNotFoundError, match="no readable checkpoint"):
    loading.load(workdir)


def test_cli_refuses_damaged_files_in_one_line(export_dir, tmp_path):
  """Through the command line: a truncated export, a config file that is
  not a config, and a pickle in a samples file; each one `error:` line."""
  folder = damaged_copy(export_dir, tmp_path, lambda f: truncate(f / loading.PARAMS_FILE))
  result = run_cli("--mode=sample", QUICK, f"--workdir={folder}")
  assert result.returncode == run_guard.EXIT_BAD_INPUT
  assert "safetensors" in error_line(result)
  not_a_config = tmp_path / "notes.py"
  not_a_config.write_text("print('hello')\n")
  result = run_cli("--mode=train", f"--config={not_a_config}", f"--workdir={tmp_path}/w")
  assert result.returncode == run_guard.EXIT_BAD_INPUT
  assert "notes.py is not a config file" in error_line(result)
  not_python = tmp_path / "config.yaml"
  not_python.write_text("model: {channels: 64}\n")
  result = run_cli("--mode=train", f"--config={not_python}", f"--workdir={tmp_path}/w")
  assert result.returncode == run_guard.EXIT_BAD_INPUT
  assert "config.yaml is not a Python config file" in error_line(result)
  hostile = tmp_path / "samples.npz"
  np.savez(hostile, arr_0=np.array([object()], dtype=object))  # unpickling would run code
  result = run_cli("--mode=eval", QUICK, f"--workdir={export_dir}",
                   f"--config.eval.samples={hostile}")
  assert result.returncode == run_guard.EXIT_BAD_INPUT
  assert "pickle" in error_line(result).lower()


def test_no_full_unpickler_runs_anywhere():
  """Every load of a user's file in the package refuses pickles: no
  `pickle` import, `np.load` only with allow_pickle=False, `torch.load`
  only with weights_only=True."""
  offenders = []
  for path in (ROOT / "diffusion_jax").rglob("*.py"):
    for number, line in enumerate(path.read_text().splitlines(), 1):
      code = line.split("#")[0]
      where = f"{path.relative_to(ROOT)}:{number}"
      if "import pickle" in code or "pickle.load" in code or "allow_pickle=True" in code:
        offenders.append(where)
      if "np.load(" in code and "allow_pickle=False" not in code:
        offenders.append(where)
      if "torch.load(" in code and "weights_only=True" not in code:
        offenders.append(where)
  assert not offenders, offenders


# ---------------------------------------------------------------- a failed run exits

STUCK = textwrap.dedent("""
    import sys, threading, time
    from diffusion_jax import main
    main.EXIT_GRACE_S = 1.0
    def stuck():
      time.sleep(600)  # a library's non-daemon thread that never ends
    def failing(argv):
      threading.Thread(target=stuck).start()
      raise RuntimeError("a bad step")
    main.main = failing
    sys.argv = ["diffusion_jax.main", "--workdir=unused"]
    main.run()
""")


def test_a_failed_run_exits_although_a_thread_would_keep_it_alive():
  start = time.monotonic()
  result = subprocess.run([sys.executable, "-c", STUCK], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == run_guard.EXIT_FAILED, result.stderr[-2000:]
  assert time.monotonic() - start < 60
  assert "threads were still running" in result.stderr


def test_quick_config_is_trainable_with_the_lock_fields():
  """The lock's timing is checked with the config, before any work."""
  from diffusion_jax import config_lib
  config = quick_config(**TRAINED_RUN, **{"train.lock_stale_after": 5.0})
  with pytest.raises(ValueError, match="lock_stale_after"):
    config_lib.check(config)


def test_export_is_renamed_into_place_and_never_overwrites_other_files(export_dir, tmp_path):
  """A re-export replaces the folder whole (no staging folder left behind);
  a folder that is not an export is refused, not replaced."""
  bundle = loading.load(export_dir)
  target = tmp_path / "model"
  loading.export(bundle, target)
  (target / "stale.txt").write_text("from an older export")
  loading.export(bundle, target)
  assert sorted(p.name for p in target.iterdir()) == sorted(
      [loading.PARAMS_FILE, loading.CONFIG_FILE, loading.META_FILE])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "thesis.tex").write_text("years of work")
  with pytest.raises(ValueError, match="not an export"):
    loading.export(bundle, notes)
  assert (notes / "thesis.tex").read_text() == "years of work"


# ---------------------------------------------------------------- soak (not in the default suite)

SOAK_RUN = (*RUN, "--config.train.num_steps=400", "--config.train.keep_checkpoints=2")


@pytest.mark.soak
def test_soak_random_kills_then_resume_is_bitwise_equal(tmp_path):
  """`pytest -m soak`: SOAK_KILLS (default 50) SIGKILLs at random moments of
  a 400-step run (start-up, steps, saves), each followed by a restart of
  the same command; the end is bitwise equal to an uninterrupted run.
  Prints a JSON summary (docs/reliability.md quotes it)."""
  import random
  kills, rng = int(os.environ.get("SOAK_KILLS", "50")), random.Random(0)
  reference = tmp_path / "reference"
  result = cli(reference, *SOAK_RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  workdir, done, mid_save, start = tmp_path / "killed", 0, 0, time.time()
  while done < kills:
    proc = cli(workdir, *SOAK_RUN, wait=False)
    try:
      proc.wait(timeout=rng.uniform(1.0, 8.0))  # start-up takes about 5 s
      assert proc.returncode == 0, proc.stdout.read()[-3000:]
      break  # finished before the next kill
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      done += 1
      if (workdir / "checkpoints").exists():
        mid_save += any("tmp" in p.name for p in (workdir / "checkpoints").iterdir())
  assert done == kills, f"the run finished after {done} kills: lengthen SOAK_RUN"
  result = cli(workdir, *SOAK_RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_bitwise_equal(all_params(workdir), all_params(reference))
  print(json.dumps({"kills": done, "killed_during_a_save": mid_save,  # noqa: T201
                    "final_step": all_params(workdir)[0],
                    "minutes": round((time.time() - start) / 60, 1)}))


@pytest.mark.slow
def test_a_dead_process_stops_the_others(tmp_path):
  """2 processes x 2 devices: process 1 is SIGKILLed mid-run; process 0,
  waiting on a collective, notices the missing heartbeat and exits
  (DIFFUSION_JAX_HEARTBEAT_TIMEOUT=10 here; JAX's default is 100 s, after
  which it measured 89 s) instead of waiting forever."""
  from conftest import free_port
  port = free_port()
  procs = [cli(tmp_path, *RUN, "--config.train.num_steps=2000",
               f"--coordinator_address=localhost:{port}", "--num_processes=2",
               f"--process_id={i}", wait=False, devices=2,
               env={"DIFFUSION_JAX_HEARTBEAT_TIMEOUT": "10"}) for i in range(2)]
  try:
    wait_for_checkpoint(tmp_path, procs[0])
    procs[1].kill()
    start = time.monotonic()
    procs[0].communicate(timeout=120)
    assert procs[0].returncode != 0
    assert time.monotonic() - start < 60
  finally:
    for p in procs:
      p.kill()
