"""``mot generate``: write samples of a trained checkpoint to files.

    mot generate --ckpt runs/speech/mot/checkpoints/last.ckpt --config configs/speech/mot.yaml --out samples/
        [--task caption_to_image|image_to_caption|text_to_speech|speech_to_text ...]
        [--prompt "a red circle" ...]
        [--n 4] [--temperature 1.0] [--top_k K] [--seed 0] [--device cpu] [--data.tokenizer_files.dir DIR]
        [--guidance 3.0] [--sampler ddim|ddpm|flow] [--steps 50]     (Transfusion: continuous images)
        [--ema]            (the EMA averages the run's EMA callback saved, instead of the live weights)
    mot generate --export DIR --out samples/ [...]    (a folder written by `mot export`: carries its config)

The data module and model are built from the same YAML as training (any further
``--key value`` goes to that config, e.g. ``--data.tokenizer_files.dir``); the fitted
tokenizer files must exist (they are loaded, never refitted: a refitted
tokenizer would not match the checkpoint). Writes, per task:

- ``caption_to_image_NN.png`` (+ ``caption_to_image.txt``: the prompts);
- ``image_to_caption_NN.png`` (the validation image) + ``image_to_caption.txt``;
- ``text_to_speech_NN.wav`` (16 kHz mono, soundfile) + ``text_to_speech.txt``;
- ``speech_to_text_NN.wav`` (the validation clip) + ``speech_to_text.txt`` (transcription, reference).

Without ``--task``, every task the model's modalities allow. The tasks are
``sampling.GenerationTasks`` (the same as SampleLogger's): with a continuous image
tokenizer (Transfusion setting) ``caption_to_image`` is guided diffusion
(``--guidance``, ``--sampler``, ``--steps``) and ``image_to_caption`` reads the
clean latents. ``--ema`` samples from the exponential moving average of the weights
(``callbacks/ema.py``) that a run with the ``EMA`` callback saved in its checkpoints (a consolidated FSDP2
checkpoint keeps it), or from an export written with ``mot export --ema``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from mot_lightning import sampling
from mot_lightning.building import build
from mot_lightning.checkpoints import load_checkpoint
from mot_lightning.checkpoints.weights import add_weights_arguments, weights_source
from mot_lightning.data.documents import SAMPLE_RATE
from mot_lightning.data.pretokenized import STAMP_KEY, check_tokenizers
from mot_lightning.modality import Modality


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mot generate", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                epilog="any other --key value is passed to the training config (LightningCLI)")
    add_weights_arguments(p)
    p.add_argument("--out", required=True, help="directory for the PNG/WAV/TXT files")
    p.add_argument("--task", action="append", choices=list(sampling.TASKS),
                   help="repeatable; default: all the model can do")
    p.add_argument("--prompt", action="append", help="caption / text prompt (repeatable); default: demo captions")
    p.add_argument("--n", type=int, default=4, help="validation images / speech clips for image_to_caption / "
                   "speech_to_text")
    sampling.add_sampling_arguments(p)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--accept-other-tokenizers", action="store_true", help="sample although the tokenizer files "
                   "differ from those the checkpoint was trained with (refused by default, naming them)")
    p.add_argument("--ema", action="store_true", help="sample from the EMA averages of the weights (the run "
                   "had an EMA callback) instead of the live weights")
    return p


def _save_png(image: torch.Tensor, path: Path) -> None:
    """float[3, H, W] in [0, 1] -> PNG."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)


def _save_wav(wave: torch.Tensor, path: Path, rate: int) -> None:
    """float[samples] -> 16-bit mono WAV (soundfile)."""
    sf.write(path, np.asarray(wave.float().clamp(-1, 1).cpu()), rate)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{i:02d}: {line}\n" for i, line in enumerate(lines)))


def _with_references(generated: list[str], references: list[str]) -> list[str]:
    return [f"{g!r} (reference: {r!r})" for g, r in zip(generated, references)]


def run(args: argparse.Namespace, overrides: list[str]) -> list[Path]:
    settings = sampling.sampling_from_args(args)  # checked first, with the weights source
    source = weights_source(args.ckpt, args.export, args.config, overrides, ema=args.ema)
    model, dm = build(source.configs, source.overrides, source.checkpoint)
    have = sampling.generable_modalities(model, dm)
    tasks = args.task or sampling.generable_tasks(have)
    missing = [t for t in tasks if t not in sampling.generable_tasks(have)]
    if missing:
        raise SystemExit(f"mot generate: this model cannot do {missing}: it has {sorted(m.label for m in have)}")
    if not source.exported:  # a checkpoint trained with other tokenizers is refused (an export carries its own)
        stamp = (load_checkpoint(source.path, mmap=True).get(type(dm).__qualname__) or {}).get(STAMP_KEY)
        check_tokenizers(stamp, dm.tokenizer_stamp(), args.accept_other_tokenizers, f"--ckpt {source.path}")
    source.load_into(model, args.device)  # weights-only; a checkpoint of another model config is refused
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = sampling.GenerationTasks.of(model, dm, settings)  # every task starts from the seed: reruns agree
    prompts = args.prompt or list(sampling.DEMO_CAPTIONS)
    written: list[Path] = []
    if "caption_to_image" in tasks:
        for i, image in enumerate(gen.caption_to_image(prompts)):
            written.append(out / f"caption_to_image_{i:02d}.png")
            _save_png(image, written[-1])
        _write_lines(out / "caption_to_image.txt", prompts)
    if "image_to_caption" in tasks:
        images, references = dm.image_text_pairs(args.n)
        if not len(images):
            raise SystemExit("mot generate: image_to_caption needs validation images: set data.val_sets")
        captions = gen.image_to_caption(images)
        for i, image in enumerate(images):
            written.append(out / f"image_to_caption_{i:02d}.png")
            _save_png(image, written[-1])
        _write_lines(out / "image_to_caption.txt", _with_references(captions, references))
    if "text_to_speech" in tasks:
        rate = getattr(dm.tokenizers[Modality.SPEECH], "sample_rate", SAMPLE_RATE)
        for i, wave in enumerate(gen.text_to_speech(prompts)):
            written.append(out / f"text_to_speech_{i:02d}.wav")
            _save_wav(wave, written[-1], rate)
        _write_lines(out / "text_to_speech.txt", prompts)
    if "speech_to_text" in tasks:
        clips, references = dm.speech_text_pairs(args.n)
        if not clips:
            raise SystemExit("mot generate: speech_to_text needs validation speech: set data.val_sets")
        texts = gen.speech_to_text(clips)
        for i, clip in enumerate(clips):
            written.append(out / f"speech_to_text_{i:02d}.wav")
            _save_wav(clip, written[-1], SAMPLE_RATE)  # the rate the data layer decodes audio to
        _write_lines(out / "speech_to_text.txt", _with_references(texts, references))
    return written


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Numbers that would fail late or sample nonsense are refused before anything is loaded, naming the flag."""
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    try:
        sampling.sampling_from_args(args)
    except ValueError as err:  # "sampling: <field> must be ..." -> "--<field> must be ..."
        parser.error(str(err).replace("sampling: ", "--", 1))


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args, overrides = parser.parse_known_args(argv)
    check_args(parser, args)
    written = run(args, overrides)
    print(f"wrote {len(written)} samples to {args.out}")
