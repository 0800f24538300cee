"""Distances between sets of images, computed on feature vectors.

- `FeatureStats`: the mean and covariance of features, accumulated in
  float64 batch by batch (50k samples never sit in memory at once).
- `frechet_distance`: `|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))` in
  float64; the trace of the matrix square root is taken as the sum of the
  square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), a symmetric
  positive semi-definite matrix, so no complex parts or `sqrtm` failures.
  On Inception pool3 features this is FID; on our evaluators' features we
  call it "FD in evaluator features".
- `kernel_inception_distance`: the unbiased MMD^2 with the cubic polynomial
  kernel (x.y / d + 1)^3 (Binkowski et al. 2018), averaged over random
  subsets, with its standard error: unbiased at any sample size, where FD
  is biased at the 1-2k samples a CPU affords.
- `precision_recall`: Kynkaenniemi et al. 2019: each set's manifold is the
  union of balls reaching each point's k-th nearest neighbour (k = 3, as
  they and ADM's evaluator use); precision is the fraction of samples inside
  the real manifold, recall the fraction of real images inside the samples'.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class FeatureStats:
  """Running sums of features [..., D] in float64: `add` batches, then read
  `mean` and `covariance` (unbiased, N - 1)."""
  dim: int
  count: int = 0
  total: Optional[np.ndarray] = None
  outer: Optional[np.ndarray] = None

  def __post_init__(self):
    if self.total is None:
      self.total = np.zeros(self.dim, np.float64)
      self.outer = np.zeros((self.dim, self.dim), np.float64)

  def add(self, features) -> FeatureStats:
    x = np.asarray(features, np.float64).reshape(-1, self.dim)
    self.count += len(x)
    self.total += x.sum(0)
    self.outer += x.T @ x
    return self

  @property
  def mean(self) -> np.ndarray:
    return self.total / max(self.count, 1)

  @property
  def covariance(self) -> np.ndarray:
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
    mean = self.mean
    return (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)

  @classmethod
  def of(cls, features) -> FeatureStats:
    features = np.asarray(features)
    return cls(features.shape[-1]).add(features)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
  """The Frechet distance between Gaussians fitted to two feature sets."""
  if a.dim != b.dim:
    raise ValueError(f"features of different sizes: {a.dim} and {b.dim}")
  cov_a, cov_b = a.covariance, b.covariance
  root_a = _sqrt_psd(cov_a)
  middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
  trace_root = float(np.sum(np.sqrt(np.clip(middle, 0, None))))
  diff = a.mean - b.mean
  return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, float64."""
  d = x.shape[1]
  k_xx = (x @ x.T / d + 1) ** 3
  k_yy = (y @ y.T / d + 1) ** 3
  k_xy = (x @ y.T / d + 1) ** 3
  m, n = len(x), len(y)
  within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
  within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
  return float(within_x + within_y - 2 * k_xy.mean())


def kernel_inception_distance(real, fake, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0, blocks: int = 10) -> tuple[float, float]:
  """(KID, its standard error).

  KID is the unbiased polynomial-kernel MMD^2 averaged over `subsets` random
  subsets of min(`subset_size`, N) of each set (Binkowski et al.). Those
  subsets overlap (all of them hold every sample when N <= subset_size), so
  their spread says nothing of the samples' own randomness. The standard
  error comes instead from `blocks` disjoint pairs of blocks (each set
  shuffled and cut into equal parts): independent unbiased estimates,
  their spread over sqrt(blocks). A block is smaller than a subset, so the
  error is conservative: it is the block average's, which varies more than
  the subset average reported.

  Raises:
    ValueError: fewer than 4 samples in a set.
  """
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  smallest = min(len(real), len(fake))
  if smallest < 4:
    raise ValueError(f"KID needs at least 4 samples in each set, got {len(real)} and "
                     f"{len(fake)}")
  size = min(subset_size, smallest)
  rng = np.random.default_rng(seed)
  values = [_polynomial_mmd2(real[rng.choice(len(real), size, replace=False)],
                             fake[rng.choice(len(fake), size, replace=False)])
            for _ in range(subsets)]
  blocks = min(blocks, smallest // 2)
  block = min(subset_size, smallest // blocks)
  real_order, fake_order = rng.permutation(len(real)), rng.permutation(len(fake))
  independent = [_polynomial_mmd2(real[real_order[i * block:(i + 1) * block]],
                                  fake[fake_order[i * block:(i + 1) * block]])
                 for i in range(blocks)]
  return float(np.mean(values)), float(np.std(independent, ddof=1) / np.sqrt(blocks))


@jax.jit
def _squared_distances(a, b):
  """[N, M] squared L2 distances, float32 (matmul form, clipped at 0)."""
  return jnp.maximum(jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None]
                     - 2 * a @ b.T, 0.0)


def _in_batches(a: np.ndarray, b: np.ndarray, fn, batch: int = 2048) -> np.ndarray:
  """fn(squared distances of a[i:i+batch] to all b) for each row batch, joined."""
  b = jnp.asarray(b, jnp.float32)
  return np.concatenate([np.asarray(fn(_squared_distances(jnp.asarray(a[i:i + batch],
                                                                      jnp.float32), b)))
                         for i in range(0, len(a), batch)])


def knn_radii(features, k: int = 3) -> np.ndarray:
  """The squared distance from each point to its k-th nearest other point [N]."""
  features = np.asarray(features, np.float32)
  if len(features) <= k:
    raise ValueError(f"k = {k} nearest neighbours need more than {k} samples, "
                     f"got {len(features)}")
  # The k-th smallest after the point itself (distance 0) is index k.
  return _in_batches(features, features, lambda d: jnp.sort(d, axis=1)[:, k])


def _coverage(points, manifold, radii) -> float:
  """The fraction of `points` inside some ball (center in `manifold`, squared radius)."""
  radii = jnp.asarray(radii, jnp.float32)
  return float(np.mean(_in_batches(np.asarray(points, np.float32), manifold,
                                   lambda d: jnp.any(d <= radii[None], axis=1))))


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
  """(precision, recall) of `fake` against `real` features [N, D], [M, D]."""
  real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
  precision = _coverage(fake, real, knn_radii(real, k))
  recall = _coverage(real, fake, knn_radii(fake, k))
  return precision, recall
