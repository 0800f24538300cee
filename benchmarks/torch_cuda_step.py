"""The PyTorch twin's train step on a CUDA GPU: the GPU peer of train_speed.py.

Same network, batch, loss and optimizer as `train_speed.py`'s PyTorch side,
with every tensor on the GPU. Prints one JSON object.

    XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/torch_cuda_step.py
"""
from __future__ import annotations

import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import train_speed  # noqa: E402


def main(batch: int = 64, steps: int = 20, repeats: int = 3):
  step, images, model = train_speed.build_torch_step(batch, "cuda")
  for _ in range(3):
    step(images)
  torch.cuda.synchronize()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      step(images)
    torch.cuda.synchronize()
    times.append((time.perf_counter() - start) / steps)
  median = statistics.median(times)
  flops = 3 * train_speed.forward_flops_per_image() * batch
  print(json.dumps({
      "benchmark": "train_speed_torch_cuda", "device": torch.cuda.get_device_name(),
      "torch": torch.__version__, "batch": batch, "step_s": round(median, 6),
      "images_per_s": round(batch / median, 1),
      "tflop_per_s": round(flops / median / 1e12, 3),
      "params": int(sum(p.numel() for p in model.parameters()))}, indent=2))


if __name__ == "__main__":
  main()
