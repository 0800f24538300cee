"""Schedule formulas written out independently of the library, in float64."""
import numpy as np


def reference_alpha_bar_cosine(t, total, s=0.008):
  return np.cos((t / total + s) / (1 + s) * np.pi / 2) ** 2


def reference_betas(kind, total):
  if kind == "linear":
    scale = 1000 / total
    return np.linspace(scale * 1e-4, scale * 0.02, total)
  t = np.arange(total, dtype=np.float64)
  ratio = reference_alpha_bar_cosine(t + 1, total) / reference_alpha_bar_cosine(t, total)
  return np.minimum(1 - ratio, 0.999)


def reference_coefficients(betas):
  """Every coefficient from its definition, float64, independently of the library."""
  alphas = 1 - betas
  abar = np.cumprod(alphas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  post_var = betas * (1 - abar_prev) / (1 - abar)
  return {
      "betas": betas,
      "alphas": alphas,
      "alphas_cumprod": abar,
      "alphas_cumprod_prev": abar_prev,
      "alphas_cumprod_next": np.concatenate([abar[1:], [0.0]]),
      "sqrt_alphas_cumprod": np.sqrt(abar),
      "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - abar),
      "log_one_minus_alphas_cumprod": np.log(1 - abar),
      "sqrt_recip_alphas_cumprod": 1 / np.sqrt(abar),
      "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / abar - 1),
      "posterior_variance": post_var,
      "posterior_log_variance_clipped": np.log(np.concatenate([[post_var[1]], post_var[1:]])),
      "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1 - abar),
      "posterior_mean_coef2": (1 - abar_prev) * np.sqrt(alphas) / (1 - abar),
  }
