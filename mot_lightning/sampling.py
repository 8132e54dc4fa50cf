"""Sampling from a ``TokenLM``: the decoding loop and the app's generation tasks.

``generate`` is the one token-by-token loop: with ``use_cache`` it feeds the prompt
once and then one token per step through a ``KVCache``; without, it recomputes
the whole sequence every step (the obviously-correct twin the tests compare
against). Each new token's modality follows from its id (``JointVocab.modality_of``).

``GenerationTasks`` runs the app's tasks for one network, the data's
``DocumentEncoder`` and one ``SamplingSettings`` (SampleLogger, ``mot generate``
and evaluation all use it). A prompt is the start of a document as the data layer
lays it out (``DocumentEncoder.encode_prompt``), batched by the data layer
(``collate_prompts``); every step is restricted to the id range the task needs:

- ``caption_to_image``: ``BOS caption BOI`` -> one image;
- ``image_to_caption``: ``BOS BOI image EOI`` -> text until ``EOS``;
- ``text_to_speech``:   ``BOS text BOS_SPEECH`` -> speech units until ``EOS_SPEECH``;
- ``speech_to_text``:   ``BOS BOS_SPEECH units EOS_SPEECH`` -> text until ``EOS`` (transcription).

The image representation is dispatched here, once. Discrete image codes are
sampled token by token (``tokens_per_image`` of them). Continuous latents
(Transfusion setting) are sampled by guided diffusion over the whole image span
(bidirectional inside the image), with classifier-free guidance against the
unconditional prompt ``BOS BOI`` (what caption dropout trains), and decoded by the
VAE; captioning reads the clean latents (diffusion time 0) and recomputes the
sequence each step (the bidirectional image span rules out the causal KV cache).

Prompts decode ``settings.batch_size`` at a time as one left-padded batch: the KV
cache masks every row's padding keys and restarts its positions after them, so a row
continues as it would alone (``generate(..., pad=)``; the tests hold the batched
logits to the one-row ones). Each task starts its own generator from
``settings.seed``: a seed (with the batch size) fixes its samples.

Sampling with a cache assumes token-local routing: an expert-choice MoE that
routes over the whole batch (``moe_eval_mode="batch"``) sees one token at a
time when decoding, so cached and recomputed samples differ for it.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor

from mot_lightning.data.batch import IGNORE_INDEX, MultiModalBatch
from mot_lightning.data.documents import Document, Segment
from mot_lightning.data.encode import DocumentEncoder
from mot_lightning.data.packing import Doc, collate_prompts
from mot_lightning.data.vocab import JointVocab
from mot_lightning.modality import Modality
from mot_lightning.model.kv_cache import KVCache
from mot_lightning.model.lm import TokenLM
from mot_lightning.objectives.base import Objective
from mot_lightning.objectives.diffusion import cfg_eps
from mot_lightning.objectives.transfusion import SAMPLERS, Transfusion

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
             stop_ids: Sequence[int] = (), pad: Tensor | None = None) -> Tensor:
    """prompt long[B, T0] (one document per row) -> long[B, T0 + n], n <= max_new_tokens.

    ``pad`` long[B]: rows whose prompts are shorter than ``T0`` are left-padded, ``pad[b]`` columns of
    row ``b`` are padding (their ids are never read by a real token, and the row's RoPE positions start
    after them), so each row continues as it would alone. Stops early once every row has produced one of
    ``stop_ids`` (rows that stopped keep sampling until then: cut them with ``until_stop``). Call with the
    model in eval mode.
    """
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be long[B, T0] with T0 >= 1, got shape {tuple(prompt.shape)}")
    if pad is not None and (pad.shape != prompt.shape[:1] or bool((pad >= prompt.shape[1]).any())):
        raise ValueError(f"pad must be long[{prompt.shape[0]}] below the prompt width {prompt.shape[1]} (every "
                         f"row keeps at least one prompt token), got {pad}")
    tokens = prompt
    cache = KVCache.empty(len(net.backbone.layers), pad) if use_cache else None
    new = prompt  # what the next forward has to process
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=prompt.device)
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for step in range(max_new_tokens):
        if cache is not None:
            logits = net(new, modality_of(new), cache=cache)[:, -1]  # (B, V)
        else:
            logits = net(tokens, modality_of(tokens), **_padded_ids(tokens.shape, pad))[:, -1]
        mask = allowed(step, tokens) if allowed is not None else None
        nxt = sample_next(logits, temperature, top_k, mask, generator)  # (B,)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        new = nxt[:, None]
        if stops.numel():
            done |= torch.isin(nxt, stops)
            if bool(done.all()):
                break
    return tokens


def _padded_ids(shape: torch.Size, pad: Tensor | None) -> dict[str, Tensor]:
    """The recomputing path's view of left padding: the padding is its own document (id 0, the row's tokens
    id 1) and positions restart after it."""
    if pad is None:
        return {}
    index = torch.arange(shape[1], device=pad.device)[None]  # (1, T)
    return {"doc_ids": (index >= pad[:, None]).long(), "positions": (index - pad[:, None]).clamp(min=0)}


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


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class SamplingSettings:
    """How every task samples: the one group of sampling settings. ``SampleLogger`` and ``GenerationMetrics``
    take it as their ``sampling:`` argument (a YAML mapping of these fields), ``mot generate`` and ``mot eval``
    as ``--sampling FILE`` (the same mapping in a YAML file) and one ``--<field>`` flag per field
    (``add_sampling_arguments``); the defaults below are the only ones."""

    temperature: float = _help("0 = greedy", 1.0)
    top_k: int | None = _help("sample among the k most likely allowed ids; None = all", None)
    guidance: float = _help("classifier-free guidance scale of diffusion images (1 = none)", 3.0)
    sampler: str = _help("diffusion images: ddim (--steps), ddpm (every step) or flow", "ddim")
    steps: int = _help("diffusion sampler steps (ddim, flow)", 50)
    seed: int = _help("every task starts its own generator from this seed", 0)
    max_text_tokens: int = _help("longest generated caption / transcription", 64)
    max_speech_units: int = _help("longest generated speech", 100)
    batch_size: int = _help("prompts decoded together (one left-padded batch; sampled ids depend on it)", 64)

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"sampling: temperature must be a finite number >= 0 (0 = greedy), got "
                             f"{self.temperature}")
        if not math.isfinite(self.guidance):
            raise ValueError(f"sampling: guidance must be a finite number (1 = none), got {self.guidance}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"sampling: top_k must be >= 1 or None, got {self.top_k}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampling: sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        for name in ("steps", "max_text_tokens", "max_speech_units", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"sampling: {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> SamplingSettings:
        """The settings of a YAML mapping of these fields (a ``sampling:`` group), then ``overrides``."""
        import yaml

        group = yaml.safe_load(Path(path).read_text()) or {}
        unknown = sorted(set(group) - {f.name for f in fields(cls)})
        if not isinstance(group, dict) or unknown:
            raise ValueError(f"--sampling {path}: expected a mapping of {[f.name for f in fields(cls)]}, "
                             f"got unknown keys {unknown}")
        return cls(**{**group, **overrides})


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sampling FILE`` and one ``--<field>`` flag per ``SamplingSettings`` field (same names, same
    defaults: an unset flag leaves the file's or the default value)."""
    group = parser.add_argument_group("sampling (SamplingSettings)")
    group.add_argument("--sampling", help="a YAML file holding a sampling group (the callbacks' `sampling:`)")
    for f in fields(SamplingSettings):
        kind = float if f.type in ("float", float) else str if f.type in ("str", str) else int
        group.add_argument(f"--{f.name}", type=kind, default=argparse.SUPPRESS,
                           help=f"{f.metadata['help']} (default {f.default})")


def sampling_from_args(args: argparse.Namespace) -> SamplingSettings:
    """The settings ``add_sampling_arguments``' flags name: defaults < ``--sampling`` file < flags."""
    flags = {f.name: getattr(args, f.name) for f in fields(SamplingSettings) if hasattr(args, f.name)}
    if args.sampling:
        return SamplingSettings.from_file(args.sampling, **flags)
    return SamplingSettings(**flags)


# the app's generation tasks and the modalities each needs
TASKS = {"caption_to_image": {Modality.IMAGE}, "image_to_caption": {Modality.IMAGE},
         "text_to_speech": {Modality.SPEECH}, "speech_to_text": {Modality.SPEECH}}


def generable_modalities(model, dm) -> set[Modality]:
    """What a model can generate with a data module: modalities in the model, trained on (the data's kept
    modalities) and decodable (a tokenizer is configured). The one answer every tool uses."""
    return {m for m in dm.modalities if m in model.modalities and dm.tokenizers.get(m) is not None}


def generable_tasks(modalities: set[Modality]) -> list[str]:
    """The tasks of ``TASKS`` that ``modalities`` allow, in ``TASKS`` order."""
    return [task for task, need in TASKS.items() if need <= modalities]


def _doc(*segments: tuple[Modality, str | Tensor]) -> Document:
    return Document("prompt", [Segment(m, value) for m, value in segments])


class GenerationTasks:
    """The app's generation tasks for one network and the data's encoder (tokenizers, vocabulary).

    ``objective``: the model's objective; a ``Transfusion`` is needed with continuous (latent) images.
    Call with the network in eval mode; every task runs without gradients.
    """

    def __init__(self, net: TokenLM, encoder: DocumentEncoder,
                 settings: SamplingSettings = SamplingSettings(), objective: Objective | None = None) -> None:
        self.net, self.encoder, self.settings = net, encoder, settings
        self.vocab: JointVocab = encoder.vocab
        self.tokenizers = encoder.tokenizers
        if self.vocab.image_latent and not isinstance(objective, Transfusion):
            raise ValueError("continuous (latent) images are sampled by diffusion: the model's objective "
                             f"must be mot_lightning.objectives.Transfusion, got {type(objective).__name__}")
        self.diffusion = objective if self.vocab.image_latent else None

    @classmethod
    def of(cls, model, dm, settings: SamplingSettings = SamplingSettings()) -> GenerationTasks:
        """From a ``MultiModalLM`` (its ``net`` and ``objective``) and a data module after ``setup``."""
        return cls(model.net, dm.encoder, settings, getattr(model, "objective", None))

    @property
    def device(self) -> torch.device:
        return self.net.head.weight.device

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.settings.seed)

    def _text_or_eos(self) -> Tensor:
        """bool[vocab]: what a caption / transcription may continue with."""
        return id_mask(self.vocab, [(0, self.vocab.text_size)], [self.vocab.eos_id], device=self.device)

    # --- the tasks ---------------------------------------------------------------------
    @torch.no_grad()
    def caption_to_image(self, captions: Sequence[str]) -> Tensor:
        """-> float[N, 3, H, W] in [0, 1]: one image per caption."""
        if not captions:
            raise ValueError("caption_to_image needs at least one caption")
        if self.vocab.image_latent:
            return self._diffuse_images(captions)
        image_tok, g = self.tokenizers[Modality.IMAGE], self._generator()
        codes = id_mask(self.vocab, [self.vocab.range(Modality.IMAGE)], device=self.device)
        prompts = [self.encoder.encode_prompt(_doc((Modality.TEXT, c)), then=Modality.IMAGE) for c in captions]
        rows = self._continue(prompts, image_tok.num_tokens(None), lambda step, toks: codes, g)
        return torch.stack([image_tok.decode(self.vocab.to_local(ids, Modality.IMAGE).cpu()) for ids in rows])

    @torch.no_grad()
    def image_to_caption(self, images: Tensor | Sequence[Tensor]) -> list[str]:
        """images float[N, 3, R, R] in [0, 1] -> N captions (text after ``BOS BOI image EOI``, to ``EOS``)."""
        if isinstance(images, Tensor) and images.dim() != 4:
            raise ValueError(f"images must be float[N, 3, R, R], got shape {tuple(images.shape)}")
        prompts = [self.encoder.encode_prompt(_doc((Modality.IMAGE, image))) for image in images]
        if not prompts:
            return []
        if self.vocab.image_latent:
            return self._caption_latents(prompts)
        text = self._text_or_eos()
        rows = self._continue(prompts, self.settings.max_text_tokens, lambda step, toks: text,
                              self._generator(), stop_ids=[self.vocab.eos_id])
        return [self._text(ids) for ids in rows]

    @torch.no_grad()
    def text_to_speech(self, texts: Sequence[str]) -> list[Tensor]:
        """-> one float[samples] waveform per text (the speech tokenizer's rate): units until ``EOS_SPEECH``
        (at least one, at most ``max_speech_units``)."""
        speech_tok = self.tokenizers[Modality.SPEECH]
        return [speech_tok.decode(units) for units in self.text_to_speech_units(texts)]

    @torch.no_grad()
    def text_to_speech_units(self, texts: Sequence[str]) -> list[Tensor]:
        """-> one long[n] sequence of the speech tokenizer's unit ids per text (CPU), what
        ``text_to_speech`` decodes (evaluation compares them with reference units)."""
        v, g = self.vocab, self._generator()
        units = id_mask(v, [v.range(Modality.SPEECH)], device=self.device)
        units_or_end = id_mask(v, [v.range(Modality.SPEECH)], [v.eos_speech_id], device=self.device)
        prompts = [self.encoder.encode_prompt(_doc((Modality.TEXT, t)), then=Modality.SPEECH) for t in texts]
        rows = self._continue(prompts, self.settings.max_speech_units,
                              lambda step, toks: units if step == 0 else units_or_end, g, stop_ids=[v.eos_speech_id])
        return [v.to_local(until_stop(ids, [v.eos_speech_id]), Modality.SPEECH).cpu() for ids in rows]

    @torch.no_grad()
    def speech_to_text(self, waves: Sequence[Tensor]) -> list[str]:
        """waves float[samples] (16 kHz mono, lengths may differ) -> N transcriptions (text after
        ``BOS BOS_SPEECH units EOS_SPEECH``, until ``EOS``)."""
        g, text = self._generator(), self._text_or_eos()
        prompts = [self.encoder.encode_prompt(_doc((Modality.SPEECH, wave))) for wave in waves]
        rows = self._continue(prompts, self.settings.max_text_tokens, lambda step, toks: text, g,
                              stop_ids=[self.vocab.eos_id])
        return [self._text(ids) for ids in rows]

    # --- token by token (KV cache) -------------------------------------------------------
    def _continue(self, prompts: list[Doc], max_new: int, allowed: Allowed, generator: torch.Generator,
                  stop_ids: Sequence[int] = ()) -> list[Tensor]:
        """Prompts (any lengths) -> each one's new ids long[n], decoded ``settings.batch_size`` at a time as
        left-padded batches (``collate_prompts``: the padding is document 0, the prompt document 1)."""
        s, out = self.settings, []
        for i in range(0, len(prompts), s.batch_size):
            batch = collate_prompts(prompts[i:i + s.batch_size], self.vocab)
            pad = (batch.doc_ids != batch.doc_ids[:, -1:]).sum(dim=1)  # (B,) padding columns of each row
            prompt = batch.tokens.to(self.device)
            rows = generate(self.net, prompt, self.vocab.modality_of, max_new, s.temperature, s.top_k,
                            allowed=allowed, generator=generator, stop_ids=stop_ids, pad=pad.to(self.device))
            out += list(rows[:, prompt.shape[1]:])
        return out

    def _text(self, ids: Tensor) -> str:
        return self.tokenizers[Modality.TEXT].decode(until_stop(ids, [self.vocab.eos_id]).cpu())

    # --- continuous images (diffusion) ---------------------------------------------------
    def _diffuse_images(self, captions: Sequence[str]) -> Tensor:
        """Guided diffusion over the image span of ``BOS caption BOI [latents]``.

        Every denoiser call runs the conditional rows and the unconditional rows ``BOS BOI [latents]`` in
        one left-padded batch and mixes the two predictions as ``uncond + guidance * (cond - uncond)``.
        The start noise comes from the task's generator, so a seed fixes the images.
        """
        s, image_tok, n = self.settings, self.tokenizers[Modality.IMAGE], len(captions)
        docs = [_doc((Modality.TEXT, c)) for c in captions]
        docs += [_doc()] * (n if s.guidance != 1.0 else 0)  # BOS BOI: what caption dropout trains
        prompts = [self.encoder.encode_prompt(d, then=Modality.IMAGE) for d in docs]
        batch = collate_prompts(prompts, self.vocab).to(self.device)
        n_patches, copies = image_tok.num_tokens(None), len(docs) // n
        latents = batch.latents.clone()  # every row ends with the image span: x_t goes into its last columns

        def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:  # x_t (N, n_patches, D), t (N,)
            latents[:, -n_patches:] = x_t.repeat(copies, 1, 1)  # the same x_t for the unconditional rows
            times = self.diffusion.time_input(t.repeat(copies))[:, None].expand(batch.tokens.shape)
            _, pred = self.net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids,
                               span_ids=batch.span_ids, latents=latents, timesteps=times)
            pred = pred[:, -n_patches:].float()
            return pred if copies == 1 else cfg_eps(pred[:n], pred[n:], s.guidance)

        x0 = self.diffusion.sample(eps_fn, (n, n_patches, image_tok.latent_dim), sampler=s.sampler,
                                   steps=s.steps, generator=self._generator(), device=self.device)
        return image_tok.decode(x0.cpu())  # a batch of latents -> float[N, 3, H, W]

    def _caption_latents(self, prompts: list[Doc]) -> list[str]:
        """``BOS BOI latents EOI`` with the image clean (time 0), then text until ``EOS``, recomputing the
        whole sequence each step."""
        s, eos, g, text = self.settings, self.vocab.eos_id, self._generator(), self._text_or_eos()
        batch = collate_prompts(prompts, self.vocab).to(self.device)
        start = batch.seq_len
        done = torch.zeros(batch.batch_size, dtype=torch.bool, device=self.device)
        for _ in range(s.max_text_tokens):
            times = self.diffusion.time_input(torch.zeros(batch.tokens.shape, device=self.device))
            logits, _ = self.net(batch.tokens, batch.modality, positions=batch.positions,
                                 doc_ids=batch.doc_ids, span_ids=batch.span_ids, latents=batch.latents,
                                 timesteps=times)
            nxt = sample_next(logits[:, -1], s.temperature, s.top_k, text, g)  # (N,)
            batch = _append(batch, nxt, self.vocab)
            done |= nxt == eos
            if bool(done.all()):
                break
        return [self._text(row[start:]) for row in batch.tokens]


def _append(batch: MultiModalBatch, nxt: Tensor, vocab: JointVocab) -> MultiModalBatch:
    """``batch`` with the token ``nxt`` long[B] appended to every row, continuing the row's last document."""
    col = nxt[:, None]  # (B, 1)
    tokens = torch.cat([batch.tokens, col], dim=1)  # (B, T + 1)
    latents = span_ids = None
    if batch.latents is not None:
        latents = torch.cat([batch.latents, batch.latents.new_zeros(len(col), 1, batch.latents.shape[-1])], 1)
        span_ids = torch.cat([batch.span_ids, torch.full_like(col, -1)], dim=1)
    return MultiModalBatch(
        tokens=tokens,
        modality=vocab.modality_of(tokens),
        doc_ids=torch.cat([batch.doc_ids, batch.doc_ids[:, -1:]], dim=1),
        positions=torch.cat([batch.positions, batch.positions[:, -1:] + 1], dim=1),
        targets=torch.cat([batch.targets[:, :-1], col, torch.full_like(col, IGNORE_INDEX)], dim=1),
        latents=latents,
        span_ids=span_ids,
    )
