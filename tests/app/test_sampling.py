"""KV-cache decoding vs full recompute, seeded sampling, and the generation tasks (discrete and latent images,
speech both ways) on prompts the data layer builds."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

from mot_lightning import sampling
from mot_lightning.data.documents import Document, Segment
from mot_lightning.data.encode import DocumentEncoder
from mot_lightning.data.packing import collate_prompts
from mot_lightning.data.vocab import JointVocab
from mot_lightning.modality import Modality
from mot_lightning.model import TransformerConfig
from mot_lightning.model.kv_cache import KVCache
from mot_lightning.model.lm import TokenLM
from mot_lightning.objectives.transfusion import Transfusion
from mot_lightning.tokenizers import KLVAEConfig, LatentImageTokenizer
from mot_lightning.tokenizers.image_kmeans import KMeansImageConfig, KMeansImageTokenizer
from mot_lightning.tokenizers.latent import KLVAE
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


def _left_padded(rows: list[torch.Tensor], pad_id_seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths -> (long[B, longest] left-padded with random ids, pad long[B])."""
    width = max(len(r) for r in rows)
    g = torch.Generator().manual_seed(pad_id_seed)
    filler = torch.randint(0, VOCAB.size, (len(rows), width), generator=g)  # any ids: they must never be read
    batch = torch.stack([torch.cat([filler[i, : width - len(r)], r]) for i, r in enumerate(rows)])
    return batch, torch.tensor([width - len(r) for r in rows])


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_left_padded_cached_logits_equal_each_row_alone(backbone):
    """Prompts of 3, 7 and 5 tokens left-padded to 7 with random ids, then 6 tokens one at a time through the
    cache: every row's logits are the ones that row gets alone, unpadded and recomputed in full."""
    net = tiny_lm(**BACKBONES[backbone])
    lengths, follow = (3, 7, 5), mixed_tokens(1, 6, seed=4)[0]
    prompts = [mixed_tokens(1, n, seed=10 + n)[0] for n in lengths]
    batch, pad = _left_padded(prompts)
    with torch.no_grad():
        cache = KVCache.empty(2, pad)
        pieces = [net(batch, VOCAB.modality_of(batch), cache=cache)[:, -1:]]  # (B, 1, V): after each prompt
        for tok in follow[:-1]:
            col = tok.repeat(len(lengths), 1)  # (B, 1): the same continuation on every row
            pieces.append(net(col, VOCAB.modality_of(col), cache=cache))
        batched = torch.cat(pieces, dim=1)  # (B, 6, V)
        for i, p in enumerate(prompts):
            alone = torch.cat([p, follow[:-1]])[None]  # (1, n + 5)
            full = net(alone, VOCAB.modality_of(alone))[0, len(p) - 1:]  # (6, V)
            reduction = numerics.transformer_reduction(n_layers=2, dim=32, ffn_hidden=128, seq_len=12) + 32
            numerics.assert_close(batched[i], full, reduction=reduction)


def test_left_padded_generation_is_each_row_generated_alone_with_and_without_the_cache():
    net = tiny_lm(sparsity="mot")
    prompts = [mixed_tokens(1, n, seed=20 + n)[0] for n in (2, 9, 4, 6)]
    batch, pad = _left_padded(prompts, pad_id_seed=6)
    kw = {"max_new_tokens": 10, "temperature": 0.0, "allowed": cycle_modalities}
    cached = sampling.generate(net, batch, VOCAB.modality_of, pad=pad, **kw)
    recomputed = sampling.generate(net, batch, VOCAB.modality_of, pad=pad, use_cache=False, **kw)
    assert torch.equal(cached, recomputed)
    for i, p in enumerate(prompts):
        alone = sampling.generate(net, p[None], VOCAB.modality_of, **kw)
        assert torch.equal(cached[i, batch.shape[1]:], alone[0, len(p):]), i
    with pytest.raises(ValueError, match="pad must be"):
        sampling.generate(net, batch, VOCAB.modality_of, 2, pad=torch.tensor([0, 9, 0, 0]))


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


def _tasks(**settings) -> tuple[sampling.GenerationTasks, DocumentEncoder]:
    """Generation tasks of a tiny random model over text, discrete images and speech units."""
    text, image, speech, vocab = _tokenizers()
    encoder = DocumentEncoder(text, image, speech)
    settings = sampling.SamplingSettings(**settings)
    return sampling.GenerationTasks(tiny_lm(vocab.size), encoder, settings), encoder


def test_caption_to_image_yields_exactly_one_image_of_image_codes(monkeypatch):
    tasks, encoder = _tasks()
    vocab, image = encoder.vocab, encoder.tokenizers[Modality.IMAGE]
    seen, real_generate = [], sampling.generate

    def recording_generate(*args, **kwargs):
        seen.append(real_generate(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(sampling, "generate", recording_generate)  # to see the raw ids behind each image
    captions = ["a red circle", "two blue squares"]
    images = tasks.caption_to_image(captions)
    assert images.shape == (2, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    (out,) = seen  # one left-padded batch: every prompt ends in the same column
    width = len(captions[1]) + 2
    for row, caption in zip(out, captions):
        assert row[width - len(caption) - 2: width].tolist() == [vocab.bos_id, *caption.encode(), vocab.boi_id]
        codes = row[width:]
        assert codes.numel() == image.num_tokens(None) == 4
        lo, hi = vocab.range(Modality.IMAGE)
        assert bool(((codes >= lo) & (codes < hi)).all())
    assert torch.equal(images, tasks.caption_to_image(["a red circle", "two blue squares"]))  # seed fixes them


def test_image_to_caption_and_text_to_speech_decode():
    tasks, encoder = _tasks(max_text_tokens=6, max_speech_units=3)
    captions = tasks.image_to_caption(torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert tasks.image_to_caption(torch.zeros(0, 3, 8, 8)) == []
    with pytest.raises(ValueError, match="images must be"):
        tasks.image_to_caption(torch.rand(3, 8, 8))
    waves = tasks.text_to_speech(["hello"])
    per_unit = encoder.tokenizers[Modality.SPEECH].config.samples_per_unit
    assert len(waves) == 1 and waves[0].dim() == 1 and per_unit <= waves[0].numel() <= 3 * per_unit


def test_batched_captions_equal_captions_one_image_at_a_time():
    tasks, _ = _tasks(temperature=0.0, max_text_tokens=8)  # greedy: the generator's order does not matter
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert tasks.image_to_caption(images) == [tasks.image_to_caption(images[i:i + 1])[0] for i in range(3)]


def test_prompts_of_different_lengths_decode_in_batches_as_they_do_one_at_a_time():
    texts = ["hi", "a much longer text", "mid length", "x"]
    greedy = {"temperature": 0.0, "max_text_tokens": 6, "max_speech_units": 7}
    batched, encoder = _tasks(**greedy)
    units = batched.text_to_speech_units(texts)
    for size in (1, 3):  # one at a time; a full batch and a batch of one
        other = sampling.GenerationTasks(batched.net, encoder, replace(batched.settings, batch_size=size))
        assert all(torch.equal(a, b) for a, b in zip(units, other.text_to_speech_units(texts)))
        assert torch.equal(batched.caption_to_image(texts), other.caption_to_image(texts))
    with pytest.raises(ValueError, match="batch_size"):
        sampling.SamplingSettings(batch_size=0)


def test_speech_to_text_is_the_cached_twin_of_a_recomputed_transcription():
    """Greedy transcription through the task (data-layer prompt, KV cache) equals a full recompute of
    ``BOS BOS_SPEECH units EOS_SPEECH`` written out by hand, decoded until ``EOS``."""
    tasks, encoder = _tasks(temperature=0.0, max_text_tokens=10)
    vocab, speech = encoder.vocab, encoder.tokenizers[Modality.SPEECH]
    waves = [torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1 for n in (1600, 2400)]
    text_or_eos, expected = sampling.id_mask(vocab, [(0, vocab.text_size)], [vocab.eos_id]), []
    for wave in waves:
        units = vocab.to_joint(speech.encode(wave), Modality.SPEECH).tolist()
        prompt = torch.tensor([[vocab.bos_id, vocab.bos_speech_id, *units, vocab.eos_speech_id]])
        out = sampling.generate(tasks.net, prompt, vocab.modality_of, 10, temperature=0.0, use_cache=False,
                                allowed=lambda step, toks: text_or_eos, stop_ids=[vocab.eos_id])
        ids = sampling.until_stop(out[0, prompt.shape[1]:], [vocab.eos_id])
        expected.append(encoder.tokenizers[Modality.TEXT].decode(ids))
    assert tasks.speech_to_text(waves) == expected
    sampled = _tasks(max_text_tokens=10)[0]
    assert sampled.speech_to_text(waves) == sampled.speech_to_text(waves)  # the seed fixes them


def _latent_tasks(**settings) -> sampling.GenerationTasks:
    """Tiny random Transfusion model over text and KL-VAE latents (random VAE weights)."""
    tok = LatentImageTokenizer(KLVAEConfig(resolution=16, downsample=4, channels=8, res_blocks=0,
                                           latent_channels=2, patch_size=2))
    tok.model = KLVAE(tok.config).eval()
    encoder = DocumentEncoder(ByteTokenizer(), tok)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, init_std=0.2)
    net = TokenLM(cfg, encoder.vocab.size, latent_dim=encoder.latent_dim).eval()
    torch.nn.init.normal_(net.latent_out.weight, std=0.2)  # zero at init: predictions would not show anything
    return sampling.GenerationTasks(net, encoder, sampling.SamplingSettings(**settings), Transfusion())


def test_left_padding_leaves_a_latent_prompts_prediction_unchanged():
    """The guided sampler runs prompts of different lengths in one left-padded batch: the padding is its own
    document with positions from 0, so each row predicts what it predicts alone (up to rounding)."""
    tasks = _latent_tasks()
    enc, net = tasks.encoder, tasks.net
    prompts = [enc.encode_prompt(Document("p", [Segment(Modality.TEXT, "hi")]), then=Modality.IMAGE),
               enc.encode_prompt(Document("p", [Segment(Modality.TEXT, "a much longer caption")]),
                                 then=Modality.IMAGE)]
    n = enc.tokenizers[Modality.IMAGE].num_tokens(None)
    x_t = torch.randn(1, n, enc.latent_dim, generator=torch.Generator().manual_seed(0))

    def predict(batch):
        latents = batch.latents.clone()
        latents[:, -n:] = x_t
        times = torch.full(batch.tokens.shape, 500.0)
        with torch.no_grad():
            _, pred = net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids,
                          span_ids=batch.span_ids, latents=latents, timesteps=times)
        return pred[:, -n:]  # (B, n, D)

    padded, alone = collate_prompts(prompts, enc.vocab), collate_prompts(prompts[:1], enc.vocab)
    assert (padded.tokens[0] == enc.vocab.pad_id).sum() == len(prompts[1]) - len(prompts[0])
    reduction = numerics.transformer_reduction(n_layers=2, dim=32, ffn_hidden=128, seq_len=padded.seq_len)
    numerics.assert_close(predict(padded)[0], predict(alone)[0], reduction=reduction)
    # the twin can fail: padding in the prompt's document shifts the prediction far beyond rounding
    leaky = replace(padded, doc_ids=torch.zeros_like(padded.doc_ids))
    assert numerics.changed(predict(leaky)[0], predict(alone)[0], reduction=reduction)


def test_latent_images_and_captions_from_the_one_task_object():
    tasks = _latent_tasks(steps=2, max_text_tokens=5)
    images = tasks.caption_to_image(["a red circle", "two blue squares and more"])
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, tasks.caption_to_image(["a red circle", "two blue squares and more"]))
    unguided = replace(tasks.settings, guidance=1.0)
    other = sampling.GenerationTasks(tasks.net, tasks.encoder, unguided, tasks.diffusion)
    assert not torch.allclose(images, other.caption_to_image(["a red circle", "two blue squares and more"]))
    captions = tasks.image_to_caption(images)
    assert len(captions) == 2 and captions == tasks.image_to_caption(images)
    with pytest.raises(ValueError, match="Transfusion"):
        sampling.GenerationTasks(tasks.net, tasks.encoder, tasks.settings, objective=None)


def test_sampling_settings_name_a_wrong_value():
    with pytest.raises(ValueError, match="sampler must be one of"):
        sampling.SamplingSettings(sampler="euler")
    with pytest.raises(ValueError, match="temperature"):
        sampling.SamplingSettings(temperature=-1.0)


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
