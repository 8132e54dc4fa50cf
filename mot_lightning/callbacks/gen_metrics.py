"""``GenerationMetrics``: score what the model generates after every N-th validation, as ``val/gen/<metric>``.

    trainer:
      callbacks:
        - class_path: mot_lightning.callbacks.GenerationMetrics
          init_args: {every_n_val: 1, n_prompts: 64, n_heldout: 32}

After a validation run (not the sanity check) the model samples with fixed prompts and a fixed seed, the
samples are scored (``eval/evaluate.py`` names every metric) and global rank 0 writes each metric as a
TensorBoard scalar at the current optimizer step, with the number of samples, the floor or ceiling that
bounds it and what it measures in the tag's description (TensorBoard shows it beside the chart).
``mot compare`` reads these tags like the losses, with their direction (higher is better for accuracies
and BLEU, lower for FID, KID, WER and CER).

Generation runs through ``callbacks/generation.py`` (``generate_in_run``): on global rank 0, or on every
rank for a sharded model (FSDP1, FSDP2), with the EMA weights when the run has an ``EMA`` callback
(``ema: false`` for the live weights), outside the throughput clock.

Prompts come from the demo world when the data module reads the demo corpus (either ``data.demo.mode``;
fixed prompt scenes of both splits),
speech from its first validation set; the faithfulness scorer is fitted once per world and image size and
kept beside the fitted tokenizers (``data.tokenizer_files.dir``, or ``scorer_dir``; for a sharded model
global rank 0 fits it first and the other ranks then load it, so the directory must be shared). With data
other than the demo corpus, images are scored as the ``metrics`` group configures (FID / KID in given
features, CLIPScore from a local folder, the label scorer: ``eval/data_metrics.py``); without it only the
speech metrics run (the notes say so, once). Each metric's sampling error goes to ``val/gen_se/<metric>``.
Validations are counted from the start of the process (a resumed run counts anew).

Cost: sampling dominates; prompts decode ``batch_size`` at a time as left-padded batches. One evaluation at
the defaults of the freshly initialised 128 x 4 speech demo model (captions and speech run to their length
limits) takes about 6 CPU seconds, about 19 training steps (benchmarks/README.md, "Generation metrics").
The first evaluation also fits the scorer when its file is missing (3,000 steps, about 3.5 minutes on one
thread of a loaded machine, benchmarks/README.md; once per image size and scorer config).
"""
from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata

from mot_lightning.callbacks.generation import generate_in_run, is_sharded
from mot_lightning.eval.data_metrics import DataMetrics
from mot_lightning.eval.evaluate import EvalResult, EvalSuite, ScorerSource, build_suite, evaluate
from mot_lightning.eval.scorer import ScorerConfig
from mot_lightning.modality import Modality
from mot_lightning.sampling import GenerationTasks, SamplingSettings, generable_modalities

log = logging.getLogger("mot_lightning.eval")
PREFIX = "val/gen/"
SE_PREFIX = "val/gen_se/"  # each metric's sampling error


class GenerationMetrics(pl.Callback):
    def __init__(self, every_n_val: int = 1, n_prompts: int = 64, n_heldout: int = 32, n_speech: int = 32,
                 sampling: SamplingSettings = SamplingSettings(), world: str = "auto",
                 scorer_dir: str | None = None, scorer_file: str | None = None, scorer: ScorerConfig | None = None,
                 inception_weights: str | None = None, metrics: DataMetrics | None = None,
                 ema: bool = True) -> None:
        """
        Args:
            every_n_val: score after every N-th validation run.
            n_prompts: caption->image prompts of the training distribution (also the FID / KID set size and
                the image->caption images); n_heldout: prompts whose scenes show a held-out colour/shape
                pair (0 = none); n_speech: validation clips for speech->text and text->speech.
            sampling: how every task samples (``SamplingSettings``, the group ``SampleLogger``, ``mot
                generate`` and ``mot eval`` share); its ``seed`` also draws the prompts.
            world: ``auto`` (the demo world when the data module reads the demo corpus, else none) or
                ``procedural`` (the demo world).
            scorer_dir: where the fit-once scorer file lives; None = ``data.tokenizer_files.dir``.
            scorer_file: a scorer file to load as it is (instead of the fit-once file).
            scorer: how the fit-once scorer is fitted (``ScorerConfig``; None = its defaults).
            inception_weights: a local Inception-v3 FID weights file (else ``$MOT_INCEPTION_WEIGHTS``).
            metrics: how images are scored on data other than the demo world (``eval.data_metrics.DataMetrics``:
                FID / KID features by class_path and local weights, a local CLIP folder, a label rule and
                classifier); None: only Inception FID / KID when its weights are local.
            ema: score the EMA weights when the run has an ``EMA`` callback (else the live weights).
        """
        if every_n_val < 1 or n_prompts < 2 or n_heldout < 0 or n_speech < 0:
            raise ValueError(f"GenerationMetrics needs every_n_val >= 1, n_prompts >= 2 (FID needs two images) "
                             f"and n_heldout, n_speech >= 0; got {every_n_val}, {n_prompts}, {n_heldout}, "
                             f"{n_speech}")
        self.every_n_val, self.n_prompts, self.n_heldout, self.n_speech = every_n_val, n_prompts, n_heldout, n_speech
        self.settings = sampling
        self.world, self.inception_weights, self.ema = world, inception_weights, ema
        self.data_metrics = metrics
        self.scorer = ScorerSource(scorer_file, scorer_dir, scorer or ScorerConfig())
        self._validations = 0
        self._suite: EvalSuite | None = None
        self._noted = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_val or pl_module.net is None:
            return
        dm = trainer.datamodule
        modalities = generable_modalities(pl_module, dm)
        if not modalities & {Modality.IMAGE, Modality.SPEECH}:
            return
        self._prepare(trainer, pl_module, dm, modalities)
        tasks = GenerationTasks.of(pl_module, dm, self.settings)
        result = generate_in_run(trainer, pl_module, lambda: evaluate(tasks, self._suite, modalities), self.ema)
        if result is None:  # not global rank 0
            return
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if writer is not None:
            write_metrics(writer, result, trainer.global_step)
        if not self._noted:
            self._noted = True
            for note in result.notes:
                log.info("GenerationMetrics: %s", note)

    def _prepare(self, trainer: pl.Trainer, pl_module, dm, modalities: set[Modality]) -> None:
        """Build the suite (once) where the evaluation runs: on global rank 0, or on every rank for a sharded
        model, rank 0 first (it fits the scorer file the others then load)."""
        if self._suite is not None:
            return
        sharded = is_sharded(trainer, pl_module)
        if trainer.is_global_zero:
            self._suite = self._build_suite(dm, modalities, pl_module.device)
        if sharded:
            trainer.strategy.barrier("GenerationMetrics: the scorer file")
            if not trainer.is_global_zero:
                self._suite = self._build_suite(dm, modalities, pl_module.device)

    def _build_suite(self, dm, modalities: set[Modality], device: torch.device) -> EvalSuite:
        return build_suite(dm, modalities, device, self.n_prompts, self.n_heldout, self.n_speech, self.world,
                           self.scorer, self.inception_weights, self.settings.seed, self.data_metrics)


def write_metrics(writer, result: EvalResult, step: int) -> None:
    """Each metric as a scalar ``val/gen/<name>`` with its description (``SummaryMetadata``), and its sampling
    error as ``val/gen_se/<name>`` (``mot compare`` reads both)."""
    for name, metric in result.metrics.items():
        values = [(PREFIX + name, metric.value, f"{metric.n} samples. {metric.description}")]
        if metric.se is not None:
            values.append((SE_PREFIX + name, metric.se, f"{metric.n} samples. Sampling standard error of "
                           f"{PREFIX + name} (binomial for accuracies, else bootstrap over the samples)"))
        for tag, value, description in values:
            meta = SummaryMetadata(summary_description=description,
                                   plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=value, metadata=meta)])
            writer.file_writer.add_summary(summary, step)
    writer.flush()
