"""A PyTorch twin of `diffusion_jax.models.UNet` and its hybrid loss, for benchmarks.

Written for `train_speed.py`: the ADM UNet (timestep embedding, ResBlocks with
GroupNorm(32) / SiLU / scale-shift norm, ResBlock up- and down-sampling,
self-attention, 2C output channels for a learned sigma) in NCHW, and the
Improved-DDPM hybrid loss (eps MSE + 0.001 T x the VLB term with a frozen
mean). Module names give the state_dict keys of guided-diffusion's
`UNetModel` (`input_blocks.1.0.in_layers.2.weight`, attention `qkv` as a
1x1 Conv1d), so `diffusion_jax.models.convert.from_torch` maps its weights
onto the Flax UNet; `tests/test_torch_twin.py` checks that both compute the
same function. Only the options the benchmarks use are implemented:
scale-shift norm, ResBlock up/down, legacy (head-major) qkv order, optional
class labels (`label_emb`, added to the timestep embedding; the sampling
benchmark's CFG), no dropout.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0):
  """[B] timesteps -> [B, dim]: cos(t f_i) then sin(t f_i), f_i = P^(-i/half)."""
  half = dim // 2
  freqs = torch.exp(-math.log(max_period)
                   * torch.arange(half, dtype=torch.float32, device=t.device) / half)
  args = t.float()[:, None] * freqs[None]
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


def zeroed(module: nn.Module) -> nn.Module:
  for p in module.parameters():
    nn.init.zeros_(p)
  return module


class ResBlock(nn.Module):
  """norm-SiLU-(resample)-conv, scale-shift norm by the embedding, SiLU-conv, skip."""

  def __init__(self, c_in: int, c_out: int, emb_dim: int, up=False, down=False,
               groups: int = 32):
    super().__init__()
    self.up, self.down = up, down
    self.in_layers = nn.Sequential(nn.GroupNorm(groups, c_in), nn.SiLU(),
                                   conv3x3(c_in, c_out))
    self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * c_out))
    self.out_layers = nn.Sequential(nn.GroupNorm(groups, c_out), nn.SiLU(),
                                    nn.Dropout(0.0), zeroed(conv3x3(c_out, c_out)))
    self.skip_connection = (nn.Identity() if c_in == c_out
                            else nn.Conv2d(c_in, c_out, 1))

  def resample(self, x):
    if self.up:
      return F.interpolate(x, scale_factor=2, mode="nearest")
    if self.down:
      return F.avg_pool2d(x, 2)
    return x

  def forward(self, x, emb):  # x: [B, C, H, W], emb: [B, E]
    norm, act, conv = self.in_layers
    h = conv(self.resample(act(norm(x))))
    x = self.resample(x)
    scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
    out_norm, out_act, drop, out_conv = self.out_layers
    h = out_conv(drop(out_act(out_norm(h) * (1 + scale) + shift)))
    return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
  """Multi-head self-attention over the H x W positions, with a residual.

  qkv channels are head-major ([head, q|k|v, d]), as guided-diffusion's
  QKVAttentionLegacy and the Flax UNet's `legacy_attention_order`.
  """

  def __init__(self, channels: int, num_heads: int, groups: int = 32):
    super().__init__()
    self.num_heads = num_heads
    self.norm = nn.GroupNorm(groups, channels)
    self.qkv = nn.Conv1d(channels, 3 * channels, 1)
    self.proj_out = zeroed(nn.Conv1d(channels, channels, 1))

  def forward(self, x):  # [B, C, H, W]
    b, c, height, width = x.shape
    qkv = self.qkv(self.norm(x).reshape(b, c, -1))  # [B, 3C, L]
    qkv = qkv.reshape(b, self.num_heads, 3, c // self.num_heads, -1)
    q, k, v = qkv.transpose(-1, -2).unbind(2)  # each [B, heads, L, d]
    a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, d]
    a = a.transpose(-1, -2).reshape(b, c, -1)
    return x + self.proj_out(a).reshape(b, c, height, width)


class Blocks(nn.Sequential):
  """A ResBlock optionally followed by attention: passes emb to ResBlocks only."""

  def forward(self, x, emb):
    for layer in self:
      x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
    return x


class UNet(nn.Module):
  """The ADM UNet of `diffusion_jax.models.UNet`, NCHW in and out; with
  `num_classes`, class-conditional (a table of that many rows)."""

  def __init__(self, in_channels: int = 3, model_channels: int = 64,
               out_channels: int = 6, num_res_blocks: int = 2,
               attention_resolutions: Sequence[int] = (16, 8),
               channel_mult: Sequence[int] = (1, 2, 2), num_heads: int = 4,
               image_size: int = 32, num_classes: int | None = None,
               num_head_channels: int = -1):
    super().__init__()
    self.model_channels = model_channels
    emb = 4 * model_channels
    self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(),
                                    nn.Linear(emb, emb))
    self.label_emb = nn.Embedding(num_classes, emb) if num_classes else None
    heads = lambda ch: ch // num_head_channels if num_head_channels > 0 else num_heads  # noqa: E731
    attend = lambda ch, res: ([AttentionBlock(ch, heads(ch))]  # noqa: E731
                              if res in attention_resolutions else [])
    ch, res = model_channels * channel_mult[0], image_size
    self.input_blocks = nn.ModuleList([Blocks(conv3x3(in_channels, ch))])
    skips = [ch]
    for level, mult in enumerate(channel_mult):
      for _ in range(num_res_blocks):
        block = ResBlock(ch, model_channels * mult, emb)
        ch = model_channels * mult
        self.input_blocks.append(Blocks(block, *attend(ch, res)))
        skips.append(ch)
      if level != len(channel_mult) - 1:
        self.input_blocks.append(Blocks(ResBlock(ch, ch, emb, down=True)))
        skips.append(ch)
        res //= 2
    self.middle_block = Blocks(ResBlock(ch, ch, emb), AttentionBlock(ch, heads(ch)),
                               ResBlock(ch, ch, emb))
    self.output_blocks = nn.ModuleList()
    for level, mult in reversed(list(enumerate(channel_mult))):
      for i in range(num_res_blocks + 1):
        layers = [ResBlock(ch + skips.pop(), model_channels * mult, emb)]
        ch = model_channels * mult
        layers += attend(ch, res)
        if level and i == num_res_blocks:
          layers.append(ResBlock(ch, ch, emb, up=True))
          res *= 2
        self.output_blocks.append(Blocks(*layers))
    self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(),
                             zeroed(conv3x3(ch, out_channels)))

  def forward(self, x, t, y=None):  # x: [B, C, H, W], t, y: [B] -> [B, out, H, W]
    emb = self.time_embed(timestep_embedding(t, self.model_channels))
    if self.label_emb is not None:
      emb = emb + self.label_emb(y)
    h, skips = x, []
    for block in self.input_blocks:
      h = block(h, emb)
      skips.append(h)
    h = self.middle_block(h, emb)
    for block in self.output_blocks:
      h = block(torch.cat([h, skips.pop()], dim=1), emb)
    return self.out(h)


# --------------------------------------------------------------- the loss --

class CosineSchedule:
  """The coefficients the hybrid loss needs, as float32 tensors [T]."""

  def __init__(self, schedule):
    """Takes a `diffusion_jax.schedules.Schedule` (so both sides use one schedule)."""
    get = lambda name: torch.from_numpy(np.array(getattr(schedule, name), np.float32))  # noqa: E731
    self.num_timesteps = schedule.num_timesteps
    for name in ("betas", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                 "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                 "posterior_log_variance_clipped", "posterior_mean_coef1",
                 "posterior_mean_coef2"):
      setattr(self, name, get(name))

  def at(self, name, t):
    return getattr(self, name)[t][:, None, None, None]


def normal_kl(mean1, log_var1, mean2, log_var2):
  return 0.5 * (-1.0 + log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                + (mean1 - mean2) ** 2 * torch.exp(-log_var2))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
  """log p of [-1, 1] data in 256 bins under N(mean, exp(log_scale)^2)."""
  centered, inv_std = x - mean, torch.exp(-log_scale)
  upper, lower = inv_std * (centered + 1 / 255), inv_std * (centered - 1 / 255)
  log_delta = torch.log(torch.clamp(torch.special.ndtr(upper) - torch.special.ndtr(lower),
                                    min=1e-12))
  return torch.where(x < -0.999, torch.special.log_ndtr(upper),
                     torch.where(x > 0.999, torch.special.log_ndtr(-lower), log_delta))


def posterior_mean(s: CosineSchedule, x0, x_t, t):
  return s.at("posterior_mean_coef1", t) * x0 + s.at("posterior_mean_coef2", t) * x_t


def hybrid_loss(s: CosineSchedule, model_output, x0, t, noise, vlb_weight=0.001):
  """Per-example eps MSE + vlb_weight * T * L_t (bits/dim), as `training_losses`."""
  x_t = s.at("sqrt_alphas_cumprod", t) * x0 + s.at("sqrt_one_minus_alphas_cumprod", t) * noise
  eps, var_out = model_output.chunk(2, dim=1)
  mse = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
  min_log = s.at("posterior_log_variance_clipped", t)
  max_log = torch.log(s.at("betas", t))
  frac = (var_out + 1) / 2
  log_var = frac * max_log + (1 - frac) * min_log
  pred_x0 = (s.at("sqrt_recip_alphas_cumprod", t) * x_t
             - s.at("sqrt_recipm1_alphas_cumprod", t) * eps.detach())
  mean = posterior_mean(s, pred_x0, x_t, t)
  kl = normal_kl(posterior_mean(s, x0, x_t, t), min_log, mean, log_var).mean(dim=(1, 2, 3))
  nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).mean(dim=(1, 2, 3))
  vb = torch.where(t == 0, nll, kl) / math.log(2.0) * (vlb_weight * s.num_timesteps)
  return mse + vb


def make_torch_step(model: UNet, schedule: CosineSchedule, lr=1e-4, weight_decay=0.01,
                    clip=1.0):
  """One training step on a [B, C, H, W] batch: sample t and noise, hybrid
  loss, backward, clip the global grad norm, AdamW. Returns step(x0) -> loss."""
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

  def step(x0):
    t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = (schedule.at("sqrt_alphas_cumprod", t) * x0
           + schedule.at("sqrt_one_minus_alphas_cumprod", t) * noise)
    loss = hybrid_loss(schedule, model(x_t, t), x0, t, noise).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.detach()
  return step
