"""The toy job (the Quickstart's main command) end to end, on its quick config."""
import json
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_main(*args):
  return subprocess.run([sys.executable, "-m", "diffusion_jax.main", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_toy_job_writes_png_npz_and_a_good_summary(tmp_path):
  result = run_main("--mode=toy", "--config=configs/toy_mixture.py:quick",
                    f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-2000:]
  image = Image.open(tmp_path / "samples.png")
  assert image.size[0] > 600 and image.size[1] > 400
  assert np.asarray(image).std() > 10  # not a blank canvas
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert len(summary) == 5
  for title, panel in summary.items():
    # 300 samples per panel: the share near each component is within ~0.1.
    assert panel["max_share_error"] < 0.1, (title, panel)
  with np.load(tmp_path / "samples.npz") as samples:
    assert samples["panel1"].shape == (300, 2)


def test_unknown_config_key_is_a_one_line_error(tmp_path):
  result = run_main("--mode=toy", "--config=configs/toy_mixture.py:quick",
                    f"--workdir={tmp_path}", "--config.sample.nmu=3")
  assert result.returncode != 0
  assert "nmu" in result.stderr and "Traceback" not in result.stderr
