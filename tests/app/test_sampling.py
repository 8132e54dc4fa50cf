"""KV-cache decoding vs full recompute, seeded sampling, and the constrained sampling tasks."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from mot_lightning import sampling
from mot_lightning.data.vocab import JointVocab
from mot_lightning.modality import Modality
from mot_lightning.model import TransformerConfig
from mot_lightning.model.kv_cache import KVCache
from mot_lightning.model.lm import TokenLM
from mot_lightning.tokenizers.image_kmeans import KMeansImageConfig, KMeansImageTokenizer
from mot_lightning.tokenizers.speech import SpeechUnitConfig, SpeechUnitTokenizer
from mot_lightning.tokenizers.text import ByteTokenizer
from tests import numerics

VOCAB = JointVocab(text_size=24, image_size=16, speech_size=12)
BACKBONES = {
    "mot": {"sparsity": "mot"},
    "dense": {"sparsity": "dense"},
    "mot-gqa-post": {"sparsity": "mot", "n_kv_heads": 2, "norm_layout": "post_sublayer"},
}


def tiny_lm(vocab_size: int = VOCAB.size, **kw) -> TokenLM:
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, init_std=0.2, **kw)
    return TokenLM(cfg, vocab_size).eval()


def mixed_tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """long[B, T] ids drawn from all three modalities' ranges, in runs like interleaved documents."""
    g = torch.Generator().manual_seed(seed)
    ranges = [VOCAB.range(m) for m in Modality]
    rows = []
    for _ in range(batch):
        row = []
        while len(row) < length:
            lo, hi = ranges[int(torch.randint(0, 3, (1,), generator=g))]
            row += torch.randint(lo, hi, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
        rows.append(row[:length])
    return torch.tensor(rows)


def cycle_modalities(step: int, tokens: torch.Tensor) -> torch.Tensor:
    """Step ``s`` may only produce ids of modality ``s % 3``: generated tokens span every tower."""
    return sampling.id_mask(VOCAB, [VOCAB.range(Modality(step % 3))])


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_cached_logits_equal_full_forward_at_every_position(backbone):
    net = tiny_lm(**BACKBONES[backbone])
    tokens = mixed_tokens(2, 14)
    with torch.no_grad():
        full = net(tokens, VOCAB.modality_of(tokens))  # (B, T, V)
        cache, pieces = KVCache.empty(2), []
        for lo, hi in [(0, 5), (5, 8), *((t, t + 1) for t in range(8, 14))]:  # a prompt, a chunk, then 1 by 1
            chunk = tokens[:, lo:hi]
            pieces.append(net(chunk, VOCAB.modality_of(chunk), cache=cache))
    assert cache.length == 14 and cache.layers[0].k.shape == (2, net.backbone.cfg.n_kv_heads, 14, 8)
    reduction = numerics.transformer_reduction(n_layers=2, dim=32, ffn_hidden=128, seq_len=14) + 32  # + head
    numerics.assert_close(torch.cat(pieces, dim=1), full, reduction=reduction)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_greedy_kv_cache_generation_equals_full_recompute(backbone):
    net = tiny_lm(**BACKBONES[backbone])
    prompt = mixed_tokens(3, 9, seed=1)
    assert set(VOCAB.modality_of(prompt).unique().tolist()) == {0, 1, 2}
    kw = {"max_new_tokens": 12, "temperature": 0.0, "allowed": cycle_modalities}
    cached = sampling.generate(net, prompt, VOCAB.modality_of, use_cache=True, **kw)
    recomputed = sampling.generate(net, prompt, VOCAB.modality_of, use_cache=False, **kw)
    assert cached.shape == (3, 21)
    assert torch.equal(cached[:, :9], prompt)
    assert torch.equal(cached, recomputed)
    assert set(VOCAB.modality_of(cached[:, 9:]).unique().tolist()) == {0, 1, 2}


def test_unconstrained_greedy_generation_agrees_too():
    net = tiny_lm()
    prompt = mixed_tokens(2, 6, seed=2)
    a = sampling.generate(net, prompt, VOCAB.modality_of, 10, temperature=0.0)
    b = sampling.generate(net, prompt, VOCAB.modality_of, 10, temperature=0.0, use_cache=False)
    assert torch.equal(a, b)


def test_seeded_sampling_is_deterministic():
    net = tiny_lm()
    prompt = mixed_tokens(2, 5, seed=3)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return sampling.generate(net, prompt, VOCAB.modality_of, 16, temperature=1.0, top_k=8, generator=g)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_top_k_and_allowed_restrict_the_choice():
    g = torch.Generator().manual_seed(0)
    logits = torch.arange(10.0).repeat(500, 1)  # (500, 10)
    picks = sampling.sample_next(logits, temperature=5.0, top_k=3, generator=g)
    assert set(picks.tolist()) == {7, 8, 9}
    allowed = torch.zeros(10, dtype=torch.bool)
    allowed[[1, 2]] = True
    assert set(sampling.sample_next(logits, 5.0, allowed=allowed, generator=g).tolist()) == {1, 2}
    assert sampling.sample_next(logits[:1], 0.0, allowed=allowed).item() == 2


def test_cache_refuses_document_ids():
    net = tiny_lm()
    tokens = mixed_tokens(1, 4)
    with pytest.raises(ValueError, match="KV cache"):
        net(tokens, VOCAB.modality_of(tokens), doc_ids=torch.zeros_like(tokens), cache=KVCache.empty(2))


def _tokenizers():
    text = ByteTokenizer()
    image = KMeansImageTokenizer(KMeansImageConfig(resolution=8, patch_size=4, codebook_size=16))
    image.codebook = torch.rand(16, 3 * 4 * 4)
    speech = SpeechUnitTokenizer(SpeechUnitConfig(codebook_size=12, n_mels=16, griffin_lim_iters=2))
    speech.codebook, speech.mean, speech.std = torch.randn(12, 16), torch.full((16,), -4.0), torch.ones(16)
    return text, image, speech, JointVocab.from_tokenizers(text, image, speech)


def test_caption_to_image_yields_exactly_one_image_of_image_codes(monkeypatch):
    text, image, _, vocab = _tokenizers()
    net = tiny_lm(vocab.size)
    seen, real_generate = [], sampling.generate

    def recording_generate(*args, **kwargs):
        seen.append(real_generate(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(sampling, "generate", recording_generate)  # to see the raw ids behind each image
    g = torch.Generator().manual_seed(0)
    images = sampling.caption_to_image(net, vocab, text, image, ["a red circle", "two blue squares"], generator=g)
    assert images.shape == (2, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    for caption, out in zip(["a red circle", "two blue squares"], seen):
        prompt_len = 2 + len(caption)  # BOS caption BOI
        assert out[0, prompt_len - 1] == vocab.boi_id
        codes = out[0, prompt_len:]
        assert codes.numel() == image.num_tokens(None) == 4
        lo, hi = vocab.range(Modality.IMAGE)
        assert bool(((codes >= lo) & (codes < hi)).all())


def test_image_to_caption_and_text_to_speech_decode():
    text, _, speech, vocab = _tokenizers()
    net = tiny_lm(vocab.size)
    g = torch.Generator().manual_seed(0)
    captions = sampling.image_to_caption(net, vocab, text, torch.randint(0, 16, (3, 4)), max_tokens=6, generator=g)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    waves = sampling.text_to_speech(net, vocab, text, speech, ["hello"], max_units=3, generator=g)
    per_unit = speech.config.samples_per_unit
    assert len(waves) == 1 and waves[0].dim() == 1 and per_unit <= waves[0].numel() <= 3 * per_unit


@pytest.mark.gpu
def test_cached_decoding_on_cuda_matches_the_flex_attention_forward():
    """On CUDA the full forward uses FlexAttention; decoding with a cache uses SDPA with an explicit mask."""
    net = tiny_lm(attn_backend="auto").cuda()
    tokens = mixed_tokens(2, 40).cuda()
    with torch.no_grad():
        full = net(tokens, VOCAB.modality_of(tokens))
        cache = KVCache.empty(2)
        pieces = [net(tokens[:, :30], VOCAB.modality_of(tokens[:, :30]), cache=cache)]
        pieces += [net(tokens[:, t:t + 1], VOCAB.modality_of(tokens[:, t:t + 1]), cache=cache) for t in range(30, 40)]
    assert_close(torch.cat(pieces, dim=1), full, atol=2e-3, rtol=2e-3)
