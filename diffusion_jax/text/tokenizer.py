"""The two BPE tokenizers of GLIDE, built on Hugging Face `tokenizers`.

- `gpt2()`: the GPT-2 byte-level BPE of GLIDE's text model. `pad_and_mask`
  pads to a fixed context with the end-of-text token 50256 and a mask that is
  False on the padding (GLIDE's `padded_tokens_and_mask`).
- `clip()`: the CLIP BPE of the noised CLIP: lowercased, whitespace
  collapsed, `<|startoftext|>` (49406) and `<|endoftext|>` (49407) around the
  prompt, padded with 0; `pad_and_lens` gives the unpadded lengths.

Both vocabularies ship in `text/bpe/` (MIT, OpenAI: see its LICENSE).
Prompts longer than the context are cut, with a warning (CLIP keeps its end
token). CLIP's own tokenizer also runs `ftfy` on the text; we only undo HTML
escapes, so mojibake is tokenized as written.
"""
from __future__ import annotations

import functools
import gzip
import html
import json
import pathlib
import warnings
from typing import Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

BPE_DIR = pathlib.Path(__file__).with_name("bpe")
GPT2_END = 50256  # <|endoftext|>, GLIDE's padding token
GPT2_VOCAB = 50257
CLIP_START, CLIP_END = 49406, 49407
_CLIP_MERGES = 49152 - 256 - 2  # the merges CLIP's vocabulary uses
_CLIP_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
                 r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")


def _lines(name: str) -> list[str]:
  with gzip.open(BPE_DIR / name, "rt", encoding="utf-8") as f:
    return f.read().split("\n")


def _byte_characters() -> list[str]:
  """GPT-2's printable stand-ins for the 256 bytes, in its order (CLIP's ids)."""
  printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
  others = [b for b in range(256) if b not in printable]  # mapped to 256, 257, ...
  return [chr(c) for c in printable] + [chr(256 + n) for n in range(len(others))]


@functools.cache
def gpt2() -> Tokenizer:
  """GLIDE's GPT-2 BPE (no special tokens: "<|endoftext|>" in a prompt is text)."""
  with gzip.open(BPE_DIR / "encoder.json.gz", "rt", encoding="utf-8") as f:
    vocab = json.load(f)
  merges = [tuple(line.split()) for line in _lines("vocab.bpe.gz")[1:] if line.strip()]
  tokenizer = Tokenizer(models.BPE(vocab, merges))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  return tokenizer


@functools.cache
def clip() -> Tokenizer:
  """The CLIP BPE (ids without the start and end tokens; `clip_ids` adds them)."""
  merges = [tuple(line.split()) for line in _lines("bpe_simple_vocab_16e6.txt.gz")
            [1:_CLIP_MERGES + 1]]
  chars = _byte_characters()
  words = (chars + [c + "</w>" for c in chars] + [a + b for a, b in merges]
           + ["<|startoftext|>", "<|endoftext|>"])
  tokenizer = Tokenizer(models.BPE({w: i for i, w in enumerate(words)}, merges,
                                   end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
  tokenizer.normalizer = normalizers.Sequence([
      normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([  # keep the matches, drop the gaps
      pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  return tokenizer


def check_prompts(prompts, batch_size: int | None = None, name: str = "prompts") -> list[str]:
  """The prompts as a list of str, or a one-line ValueError."""
  if isinstance(prompts, str):
    prompts = [prompts]
  prompts = list(prompts)
  for i, prompt in enumerate(prompts):
    if not isinstance(prompt, str):
      raise ValueError(f"{name}[{i}] is {type(prompt).__name__} {prompt!r}: each prompt "
                       "must be a str")
  if batch_size is not None and len(prompts) != batch_size:
    raise ValueError(f"{len(prompts)} {name} for a batch of {batch_size}: give one per sample")
  return prompts


def _cut(ids: list[int], room: int, prompt: str) -> list[int]:
  if len(ids) > room:
    warnings.warn(f"the prompt {prompt[:40]!r}... has {len(ids)} tokens; kept the first "
                  f"{room} (the text context)", stacklevel=3)
  return ids[:room]


def pad_and_mask(prompts: Sequence[str], text_ctx: int) -> tuple[np.ndarray, np.ndarray]:
  """GLIDE's text-model inputs: tokens int32 [B, text_ctx] padded with 50256,
  mask bool [B, text_ctx], False on the padding. "" gives all padding (CFG's
  empty prompt)."""
  tokens = np.full((len(prompts), text_ctx), GPT2_END, np.int32)
  mask = np.zeros((len(prompts), text_ctx), bool)
  for i, prompt in enumerate(prompts):
    ids = _cut(gpt2().encode(prompt).ids, text_ctx, prompt) if prompt else []
    tokens[i, :len(ids)] = ids
    mask[i, :len(ids)] = True
  return tokens, mask


def pad_and_lens(prompts: Sequence[str], text_ctx: int) -> tuple[np.ndarray, np.ndarray]:
  """The noised CLIP's text inputs: tokens int32 [B, text_ctx] (start, prompt,
  end, then 0s) and lens int32 [B], the unpadded lengths."""
  tokens = np.zeros((len(prompts), text_ctx), np.int32)
  lens = np.zeros((len(prompts),), np.int32)
  for i, prompt in enumerate(prompts):
    text = html.unescape(html.unescape(prompt)).strip()
    ids = _cut(clip().encode(text).ids, text_ctx - 2, prompt)
    ids = [CLIP_START, *ids, CLIP_END]
    tokens[i, :len(ids)] = ids
    lens[i] = len(ids)
  return tokens, lens
