"""Log what the model generates to TensorBoard every N optimizer steps (written by global rank 0).

Tags (each only when the model has the modalities it needs):

- ``samples/caption_to_image``          grid of images generated from fixed captions,
  ``samples/caption_to_image_prompts``  the captions (text);
- ``samples/image_to_caption``          captions generated for validation images (text, with the reference);
- ``samples/text_to_speech``            speech generated from the captions (audio, one clip, 16 kHz);
- ``samples/speech_to_text``            transcriptions of validation speech (text, with the reference);
- ``samples/image_reconstructions``     validation images (top row) and their image-tokenizer
  reconstructions (bottom row): the ceiling for generated image quality.

The tasks are ``sampling.GenerationTasks`` (the same as ``mot generate``): with a
continuous image tokenizer (Transfusion setting) ``caption_to_image`` is guided
diffusion over the image span (``sampling.guidance``, ``sampling.sampler``,
``sampling.steps``) decoded by the VAE.

Validation images and speech come from the first validation set
(``image_text_pairs`` / ``speech_text_pairs`` of the data module), read once.
Sampling uses its own seeded generator, so it never moves the training RNG, and
the same seed at every logging step makes samples comparable over time.

Every strategy: generation runs through ``callbacks/generation.py`` (every rank
for a sharded model, FSDP1 and FSDP2; global rank 0 alone otherwise), with the
EMA weights when the run has an ``EMA`` callback (``ema: false`` for the live
weights), and outside the throughput clock.
"""
from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from mot_lightning.callbacks.generation import generate_in_run
from mot_lightning.modality import Modality
from mot_lightning.sampling import DEMO_CAPTIONS, GenerationTasks, SamplingSettings, generable_modalities

SILENCE_S = 0.25  # between concatenated speech samples


class SampleLogger(pl.Callback):
    def __init__(self, every_n_steps: int = 500, n_samples: int = 4, captions: list[str] | None = None,
                 sampling: SamplingSettings = SamplingSettings(), ema: bool = True) -> None:
        """
        Args:
            every_n_steps: log after every N-th optimizer step.
            n_samples: images / captions / speech clips per task.
            captions: prompts for caption->image and text->speech; default: demo-style captions.
            sampling: how every task samples (``SamplingSettings``: temperature, top_k, diffusion sampler,
                steps and guidance, length limits, seed, batch size); the same group ``mot generate`` and
                ``mot eval`` read with ``--sampling``. The seed is the same at every logging step.
            ema: sample with the EMA weights when the run has an ``EMA`` callback (else the live weights).
        """
        if every_n_steps < 1 or n_samples < 1:
            raise ValueError(f"every_n_steps and n_samples must be >= 1, got {every_n_steps}, {n_samples}")
        self.every_n_steps, self.n_samples, self.ema = every_n_steps, n_samples, ema
        self.captions = list(captions or DEMO_CAPTIONS)
        self.settings = sampling
        self._last_step = -1
        self._val_images: tuple[torch.Tensor, list[str]] | None = None
        self._val_speech: tuple[list[torch.Tensor], list[str]] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._last_step:  # once per optimizer step
            return
        self._last_step = step
        self.log_samples(trainer, pl_module)  # every rank: a sharded model generates on all of them

    def log_samples(self, trainer: pl.Trainer, pl_module) -> None:
        """Generate (``generation.generate_in_run``) and write the samples (global rank 0); call on every
        rank."""
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if writer is None or pl_module.net is None:
            return
        dm = trainer.datamodule
        have = generable_modalities(pl_module, dm)
        media = [m for m in (Modality.IMAGE, Modality.SPEECH) if m in have]
        if not media:
            return
        records = generate_in_run(trainer, pl_module, lambda: self.samples(pl_module, dm, media), self.ema)
        if records is not None:
            _write(writer, records, trainer.global_step)

    def samples(self, pl_module, dm, media: list[Modality]) -> list[tuple]:
        """What ``log_samples`` writes, as ``(kind, tag, value)`` records (kind: image, text, audio; an audio
        value is ``(clip, sample_rate)``). Needs the network in eval mode; the same work on every call."""
        tasks = GenerationTasks.of(pl_module, dm, self.settings)
        records: list[tuple] = []
        if Modality.IMAGE in media:
            records += self._images(dm, tasks)
        if Modality.SPEECH in media:
            records += self._speech(dm, tasks)
        return records

    def _images(self, dm, tasks: GenerationTasks) -> list[tuple]:
        captions = self.captions[: self.n_samples]
        images = tasks.caption_to_image(captions)
        records = [("image", "samples/caption_to_image", make_grid(images, nrow=len(images))),
                   ("text", "samples/caption_to_image_prompts", _numbered(captions))]
        if self._val_images is None:
            self._val_images = dm.image_text_pairs(self.n_samples)
        originals, references = self._val_images
        if not len(originals):
            return records
        image_tok = dm.tokenizers[Modality.IMAGE]
        recon = image_tok.decode(image_tok.encode(originals))  # (N, 3, R, R)
        grid = make_grid(torch.cat([originals, recon]), nrow=len(originals))
        captions = tasks.image_to_caption(originals)
        described = _numbered(_with_references(captions, references))
        return records + [("image", "samples/image_reconstructions", grid),
                          ("text", "samples/image_to_caption", described)]

    def _speech(self, dm, tasks: GenerationTasks) -> list[tuple]:
        speech_tok = dm.tokenizers[Modality.SPEECH]
        texts = self.captions[: self.n_samples]
        waves = tasks.text_to_speech(texts)
        rate = getattr(speech_tok, "sample_rate", 16000)
        gap = torch.zeros(int(SILENCE_S * rate))
        clip = torch.cat([piece for w in waves for piece in (w.float().clamp(-1, 1), gap)])
        records = [("audio", "samples/text_to_speech", (clip[None], rate)),
                   ("text", "samples/text_to_speech_prompts", _numbered(texts))]
        if self._val_speech is None:
            self._val_speech = dm.speech_text_pairs(self.n_samples)
        clips, references = self._val_speech
        if clips:
            texts = tasks.speech_to_text(clips)
            records.append(("text", "samples/speech_to_text", _numbered(_with_references(texts, references))))
        return records


def _write(writer, records: list[tuple], step: int) -> None:
    for kind, tag, value in records:
        if kind == "image":
            writer.add_image(tag, value, step)
        elif kind == "audio":
            clip, rate = value
            writer.add_audio(tag, clip, step, sample_rate=rate)
        else:
            writer.add_text(tag, value, step)


def _with_references(generated: list[str], references: list[str]) -> list[str]:
    return [f"{gen!r} (reference: {ref!r})" for gen, ref in zip(generated, references)]


def _numbered(lines: Sequence[str]) -> str:
    """Markdown list (TensorBoard renders text summaries as Markdown)."""
    return "\n".join(f"{i + 1}. {line}" for i, line in enumerate(lines))
