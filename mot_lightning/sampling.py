"""Autoregressive sampling from a ``TokenLM``, and the app's three constrained tasks.

``generate`` is the one sampling loop: with ``use_cache`` it feeds the prompt
once and then one token per step through a ``KVCache``; without, it recomputes
the whole sequence every step (the obviously-correct twin the tests compare
against). Each new token's modality follows from its id (``JointVocab.modality_of``).

The tasks build prompts exactly as ``data/encode.py`` lays documents out
(``BOS text BOI image-codes EOI ...``, ``BOS_SPEECH units EOS_SPEECH``) and
restrict every step to the id range the task needs:

- ``caption_to_image``: ``BOS caption BOI`` -> exactly ``tokens_per_image`` image codes;
- ``image_to_caption``: ``BOS BOI codes EOI`` -> text ids until ``EOS``;
- ``text_to_speech``:   ``BOS text BOS_SPEECH`` -> speech units until ``EOS_SPEECH``.

Continuous images (Transfusion setting) are not sampled token by token:
``caption_to_latent_image`` iterates the denoiser over the whole image span
(``BOS caption BOI`` + latent patches, bidirectional inside the image) with
classifier-free guidance against the unconditional prompt ``BOS BOI`` (what
caption dropout trains), then decodes the latents with the VAE.
``latent_image_to_caption`` reads a clean image (diffusion time 0) and samples
its caption, recomputing the sequence each step (the bidirectional image span
rules out the causal KV cache).

Validation images for the image->caption prompts come from the data module
(``MultiModalDataModule.image_text_pairs``).

Sampling with a cache assumes token-local routing: an expert-choice MoE that
routes over the whole batch (``moe_eval_mode="batch"``) sees one token at a
time when decoding, so cached and recomputed samples differ for it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mot_lightning.data.vocab import JointVocab
from mot_lightning.modality import Modality
from mot_lightning.model.kv_cache import KVCache
from mot_lightning.model.lm import TokenLM
from mot_lightning.objectives.diffusion import cfg_eps
from mot_lightning.objectives.transfusion import Transfusion
from mot_lightning.tokenizers.base import ContinuousTokenizer, DiscreteTokenizer

DEMO_CAPTIONS = (  # prompts in the style of the demo corpus (data/demo.py)
    "two small red circles on the left",
    "a large blue square in the middle",
    "three green triangles on the right",
    "one yellow circle at the top",
)

# (step, tokens so far long[B, T]) -> bool[vocab] or bool[B, vocab] of the ids allowed next
Allowed = Callable[[int, Tensor], Tensor]


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                allowed: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """logits float[B, V] -> long[B]: greedy when ``temperature == 0``, else softmax sampling."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(net: TokenLM, prompt: Tensor, modality_of: Callable[[Tensor], Tensor], max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, allowed: Allowed | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             stop_ids: Sequence[int] = ()) -> Tensor:
    """prompt long[B, T0] -> long[B, T0 + n], n <= max_new_tokens.

    Stops early once every row has produced one of ``stop_ids`` (rows that stopped keep
    sampling until then: cut them with ``until_stop``). Call with the model in eval mode.
    """
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be long[B, T0] with T0 >= 1, got shape {tuple(prompt.shape)}")
    tokens = prompt
    cache = KVCache.empty(len(net.backbone.layers)) if use_cache else None
    new = prompt  # what the next forward has to process
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=prompt.device)
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for step in range(max_new_tokens):
        if cache is not None:
            logits = net(new, modality_of(new), cache=cache)[:, -1]  # (B, V)
        else:
            logits = net(tokens, modality_of(tokens))[:, -1]
        mask = allowed(step, tokens) if allowed is not None else None
        nxt = sample_next(logits, temperature, top_k, mask, generator)  # (B,)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        new = nxt[:, None]
        if stops.numel():
            done |= torch.isin(nxt, stops)
            if bool(done.all()):
                break
    return tokens


def until_stop(ids: Tensor, stop_ids: Sequence[int]) -> Tensor:
    """long[n] -> the ids before the first stop id (all of them without one)."""
    hits = torch.isin(ids, torch.tensor(list(stop_ids), dtype=torch.long, device=ids.device)).nonzero()
    return ids[: int(hits[0])] if len(hits) else ids


def id_mask(vocab: JointVocab, ranges: Sequence[tuple[int, int]], ids: Sequence[int] = (),
            device: torch.device | str = "cpu") -> Tensor:
    """bool[vocab.size]: True on the half-open ``ranges`` and the single ``ids``."""
    mask = torch.zeros(vocab.size, dtype=torch.bool, device=device)
    for lo, hi in ranges:
        mask[lo:hi] = True
    mask[list(ids)] = True
    return mask


def _text_ids(vocab: JointVocab, text_tok: DiscreteTokenizer, text: str) -> list[int]:
    return vocab.to_joint(text_tok.encode(text).reshape(-1), Modality.TEXT).tolist()


def _device(net: TokenLM) -> torch.device:
    return net.head.weight.device


def caption_to_image(net: TokenLM, vocab: JointVocab, text_tok: DiscreteTokenizer, image_tok: DiscreteTokenizer,
                     captions: Sequence[str], *, temperature: float = 1.0, top_k: int | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    """-> float[N, 3, H, W] in [0, 1]: ``BOS caption BOI`` then exactly ``tokens_per_image`` image codes."""
    n_codes = image_tok.num_tokens(None)  # fixed per image for discrete image tokenizers
    device = _device(net)
    allowed = id_mask(vocab, [vocab.range(Modality.IMAGE)], device=device)
    images = []
    for caption in captions:  # one row each: captions differ in length and rows are not padded
        prompt = torch.tensor([[vocab.bos_id, *_text_ids(vocab, text_tok, caption), vocab.boi_id]], device=device)
        out = generate(net, prompt, vocab.modality_of, n_codes, temperature, top_k,
                       allowed=lambda step, toks: allowed, generator=generator)
        codes = vocab.to_local(out[0, prompt.shape[1]:], Modality.IMAGE).cpu()
        images.append(image_tok.decode(codes))
    return torch.stack(images)


@torch.no_grad()
def caption_to_latent_image(net: TokenLM, vocab: JointVocab, text_tok: DiscreteTokenizer,
                            image_tok: ContinuousTokenizer, captions: Sequence[str], diffusion: Transfusion, *,
                            sampler: str = "ddim", steps: int = 50, guidance: float = 3.0,
                            generator: torch.Generator | None = None) -> Tensor:
    """-> float[N, 3, H, W] in [0, 1]: one image per caption by guided diffusion over the image span.

    Every denoiser call runs conditional rows ``BOS caption BOI x_t`` and unconditional rows
    ``BOS BOI x_t`` in one batch (left-padded; the padding is its own document) and mixes the
    two predictions as ``uncond + guidance * (cond - uncond)`` (``guidance`` 1 = no guidance).
    ``sampler``: "ddim" (``steps`` steps, deterministic given the start noise), "ddpm" (every
    step of the schedule) or, for flow matching, Euler steps. The start noise comes from
    ``generator``, so a seed fixes the images. Call with the model in eval mode.
    """
    n_patches, device = image_tok.num_tokens(None), _device(net)
    prompts = [[vocab.bos_id, *_text_ids(vocab, text_tok, c), vocab.boi_id] for c in captions]
    prompts += [[vocab.bos_id, vocab.boi_id]] * (len(captions) if guidance != 1.0 else 0)
    rows = _latent_rows(vocab, prompts, n_patches, device)
    modality = vocab.modality_of(rows["tokens"])
    n = len(captions)
    # latent input rows: zero outside the image span (never read there), x_t written into the span each step
    latents = torch.zeros(*rows["tokens"].shape, image_tok.latent_dim, device=device)

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:  # x_t (N, n_patches, D), t (N,)
        latents[:, -n_patches:] = x_t.repeat(len(prompts) // n, 1, 1)  # the same x_t for the unconditional rows
        times = diffusion.time_input(t.repeat(len(prompts) // n))[:, None].expand(rows["tokens"].shape)
        _, pred = net(rows["tokens"], modality, positions=rows["positions"], doc_ids=rows["doc_ids"],
                      span_ids=rows["span_ids"], latents=latents, timesteps=times)
        pred = pred[:, -n_patches:].float()
        return pred if len(prompts) == n else cfg_eps(pred[:n], pred[n:], guidance)

    latents = diffusion.sample(eps_fn, (n, n_patches, image_tok.latent_dim), sampler=sampler, steps=steps,
                               generator=generator, device=device)
    return image_tok.decode(latents.cpu())  # a batch of latents -> float[N, 3, H, W]


def _latent_rows(vocab: JointVocab, prompts: list[list[int]], n_patches: int,
                 device: torch.device) -> dict[str, Tensor]:
    """Prompts + ``n_patches`` latent placeholders, left-padded to one length (padding = document 0)."""
    length = max(len(p) for p in prompts) + n_patches
    tokens, doc_ids, positions, span_ids = [], [], [], []
    for p in prompts:
        pad, used = length - len(p) - n_patches, len(p) + n_patches
        tokens.append([vocab.pad_id] * pad + p + [vocab.latent_id] * n_patches)
        doc_ids.append([0] * pad + [1] * used)
        positions.append(list(range(pad)) + list(range(used)))
        span_ids.append([-1] * (length - n_patches) + [0] * n_patches)
    return {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in
            (("tokens", tokens), ("doc_ids", doc_ids), ("positions", positions), ("span_ids", span_ids))}


@torch.no_grad()
def latent_image_to_caption(net: TokenLM, vocab: JointVocab, text_tok: DiscreteTokenizer, latents: Tensor,
                            diffusion: Transfusion, *, max_tokens: int = 64, temperature: float = 1.0,
                            top_k: int | None = None, generator: torch.Generator | None = None) -> list[str]:
    """latents float[N, n, D] (clean, from the latent tokenizer) -> N captions:
    ``BOS BOI latents EOI`` with the image at diffusion time 0, then text until ``EOS``."""
    if latents.dim() != 3:
        raise ValueError(f"latents must be float[N, n_patches, latent_dim], got shape {tuple(latents.shape)}")
    device = _device(net)
    N, n, D = latents.shape
    prefix = [vocab.bos_id, vocab.boi_id, *[vocab.latent_id] * n, vocab.eoi_id]
    tokens = torch.tensor([prefix] * N, device=device)
    allowed = id_mask(vocab, [(0, vocab.text_size)], [vocab.eos_id], device=device)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    # built once for the longest sequence, sliced to the current length each step
    longest = len(prefix) + max_tokens
    span_ids = torch.full((N, longest), -1, dtype=torch.long, device=device)
    span_ids[:, 2:2 + n] = 0
    x = torch.zeros(N, longest, D, device=device)
    x[:, 2:2 + n] = latents.to(device)
    times = diffusion.time_input(torch.zeros(N, longest, device=device))  # the image is clean: time 0
    for _ in range(max_tokens):
        T = tokens.shape[1]
        logits, _ = net(tokens, vocab.modality_of(tokens), span_ids=span_ids[:, :T], latents=x[:, :T],
                        timesteps=times[:, :T])
        nxt = sample_next(logits[:, -1], temperature, top_k, allowed, generator)  # (N,)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == vocab.eos_id
        if bool(done.all()):
            break
    return [text_tok.decode(until_stop(row[len(prefix):], [vocab.eos_id]).cpu()) for row in tokens]


def image_to_caption(net: TokenLM, vocab: JointVocab, text_tok: DiscreteTokenizer, image_codes: Tensor, *,
                     max_tokens: int = 64, temperature: float = 1.0, top_k: int | None = None,
                     generator: torch.Generator | None = None) -> list[str]:
    """image_codes long[N, n] (image tokenizer's own ids) -> N captions: ``BOS BOI codes EOI`` then text until EOS."""
    if image_codes.dim() != 2:
        raise ValueError(f"image_codes must be long[N, tokens_per_image], got shape {tuple(image_codes.shape)}")
    device = _device(net)
    codes = vocab.to_joint(image_codes.to(device), Modality.IMAGE)  # (N, n)
    n = codes.shape[0]
    bos_boi = torch.tensor([vocab.bos_id, vocab.boi_id], device=device).expand(n, 2)
    prompt = torch.cat([bos_boi, codes, torch.full((n, 1), vocab.eoi_id, device=device)], dim=1)
    allowed = id_mask(vocab, [(0, vocab.text_size)], [vocab.eos_id], device=device)
    out = generate(net, prompt, vocab.modality_of, max_tokens, temperature, top_k,
                   allowed=lambda step, toks: allowed, generator=generator, stop_ids=[vocab.eos_id])
    return [text_tok.decode(until_stop(row[prompt.shape[1]:], [vocab.eos_id]).cpu()) for row in out]


def text_to_speech(net: TokenLM, vocab: JointVocab, text_tok: DiscreteTokenizer, speech_tok: DiscreteTokenizer,
                   texts: Sequence[str], *, max_units: int = 100, temperature: float = 1.0,
                   top_k: int | None = None, generator: torch.Generator | None = None) -> list[Tensor]:
    """-> one float[samples] waveform per text (the speech tokenizer's rate): ``BOS text BOS_SPEECH`` then
    speech units until ``EOS_SPEECH`` (at least one unit, at most ``max_units``)."""
    device = _device(net)
    units = id_mask(vocab, [vocab.range(Modality.SPEECH)], device=device)
    units_or_end = id_mask(vocab, [vocab.range(Modality.SPEECH)], [vocab.eos_speech_id], device=device)
    waves = []
    for text in texts:
        prompt = torch.tensor([[vocab.bos_id, *_text_ids(vocab, text_tok, text), vocab.bos_speech_id]],
                              device=device)
        out = generate(net, prompt, vocab.modality_of, max_units, temperature, top_k,
                       allowed=lambda step, toks: units if step == 0 else units_or_end,
                       generator=generator, stop_ids=[vocab.eos_speech_id])
        ids = until_stop(out[0, prompt.shape[1]:], [vocab.eos_speech_id])
        waves.append(speech_tok.decode(vocab.to_local(ids, Modality.SPEECH).cpu()))
    return waves
