"""Tiny random Hugging Face Llama / Qwen2 / Qwen3 folders, built offline with ``transformers`` (no hub)."""
from __future__ import annotations

from pathlib import Path

import torch

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Mixture-of-Transformers unties every weight.",
         "Qwen and Llama share RMSNorm, SwiGLU and RoPE.", "1234 + 5678 = 6912", "héllo wörld ☃ — 日本語"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 320  # config.json's vocab_size: more rows than the tokenizer's tokens, as Qwen pads its vocabulary
PROBES = ["The fox", "<|im_start|>user\nhello<|im_end|>", "héllo <|endoftext|> wörld", "", "  spaced  out\n\n"]


def _tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 4, trainer=trainer)
    return tok


def hf_config(family: str, **overrides):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=0)
    if family == "llama":
        return LlamaConfig(**{**common, "rope_theta": 50_000.0, **overrides})
    if family == "qwen2":
        return Qwen2Config(**{**common, "rope_theta": 1_000_000.0, **overrides})
    return Qwen3Config(**{**common, "head_dim": 32, "tie_word_embeddings": True, **overrides})


def make_folder(path: Path, family: str, seed: int = 0, save_kwargs: dict | None = None, **overrides) -> Path:
    """Save a random ``family`` model (weights at a trained model's scale: std 0.2) and its tokenizer."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = hf_config(family, **overrides)
    config.initializer_range = 0.2
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # biases and norm weights start at 0 / 1: make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path, **(save_kwargs or {}))
    tok = PreTrainedTokenizerFast(tokenizer_object=_tokenizer_object(), eos_token="<|endoftext|>",
                                  additional_special_tokens=SPECIALS[1:])
    tok.save_pretrained(path)
    return path


def load_hf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
