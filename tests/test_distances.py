"""The distances between image sets: Frechet distance, KID, precision and
recall, against closed forms and direct computations."""
import numpy as np
import pytest
import scipy.linalg

from diffusion_jax.evaluation import distances


def features(n, dim=16, shift=0.0, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  mixing = np.eye(dim) + 0.3 * np.random.default_rng(99).normal(size=(dim, dim))
  return rng.normal(size=(n, dim)) @ mixing * scale + shift


def test_frechet_distance_matches_scipy_and_is_zero_to_itself():
  a, b = features(500, seed=1), features(400, shift=0.5, seed=2, scale=1.3)
  stats_a, stats_b = distances.FeatureStats.of(a), distances.FeatureStats.of(b)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = scipy.linalg.sqrtm(cov_a @ cov_b).real
  direct = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a) + np.trace(cov_b)
            - 2 * np.trace(root))
  assert distances.frechet_distance(stats_a, stats_b) == pytest.approx(direct, rel=1e-6)
  assert abs(distances.frechet_distance(stats_a, stats_a)) < 1e-6
  # Streaming in batches is the same statistic.
  streamed = distances.FeatureStats(16)
  for i in range(0, 500, 64):
    streamed.add(a[i:i + 64])
  np.testing.assert_allclose(streamed.covariance, cov_a, atol=1e-10)
  np.testing.assert_allclose(streamed.mean, a.mean(0), atol=1e-12)


def test_kid_is_unbiased_on_one_gaussian_and_positive_between_two():
  """The average KID of independent pairs of samples of one Gaussian is 0
  within its standard error (a biased V-statistic sits above: 2/n of the
  kernel's variance); a shifted Gaussian is far above."""
  same = [distances.kernel_inception_distance(features(100, seed=2 * i),
                                              features(100, seed=2 * i + 1), subsets=5)[0]
          for i in range(40)]
  assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
  shifted, error = distances.kernel_inception_distance(features(300, seed=1),
                                                       features(300, shift=0.5, seed=2),
                                                       subsets=20, subset_size=200)
  assert shifted > 4 * error > 0


def test_kid_standard_error_covers_the_truth():
  """For two samples of one Gaussian (KID 0), KID / SE stays within 2.5 in
  at least 85% of 40 draws. An error from the spread of overlapping
  subsets (each holding every sample) fails: it is several times too small."""
  z = []
  for i in range(40):
    kid, error = distances.kernel_inception_distance(
        features(100, seed=100 + 2 * i), features(100, seed=101 + 2 * i), subsets=10)
    z.append(kid / error)
  assert np.mean(np.abs(z) < 2.5) >= 0.85, np.round(z, 1)


def test_precision_and_recall_on_identical_and_disjoint_sets():
  a = features(200, seed=3)
  assert distances.precision_recall(a, a.copy()) == (1.0, 1.0)
  far = features(200, seed=4, shift=100.0)
  assert distances.precision_recall(a, far) == (0.0, 0.0)
  # Samples covering half the real set: full precision, about half recall.
  half = a[a[:, 0] > np.median(a[:, 0])]
  precision, recall = distances.precision_recall(a, half)
  assert precision == 1.0 and 0.4 < recall < 0.8
  with pytest.raises(ValueError, match="k = 3 nearest neighbours need more than 3 samples"):
    distances.precision_recall(a[:3], a)
