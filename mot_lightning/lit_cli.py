"""The app's LightningCLI (``MotCLI``) over ``MultiModalLM`` and ``MultiModalDataModule``: what ``mot
fit|validate|test`` run (``commands/fit.py``) and what the tools build trained models with (``building.py``).

Vocabulary size and layout, modality count, validation-set names and the latent-image
width (Transfusion) flow from the data
module to the model by ``link_arguments`` (never repeated in YAML). The same
YAML runs on one CPU, one GPU or many GPUs by changing only ``trainer.*``.
Every run writes into its own ``<save_dir>/<name>/<run_id>/`` (``run_identity.py``), and the
scheduler's ``max_steps`` follows ``trainer.max_steps`` unless set explicitly.
Always present (configurable under their own keys): ``checkpoint``
(``ModelCheckpoint``, ``save_last=True`` so ``--ckpt_path last`` works),
``throughput`` (tokens/s, MFU and cumulative FLOPs), ``nonfinite`` (what a non-finite loss does),
``preemption`` (stop signals -> ``last.ckpt`` and exit ``128 + signal``) and ``lr_monitor``. Checkpoint
cadence and where checkpoints come from: ``checkpoints/model_config.py``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

from mot_lightning.callbacks import FlopsThroughput, NonFiniteGuard, Preemption
from mot_lightning.checkpoints import use_atomic_io
from mot_lightning.checkpoints.model_config import (
    LIGHTNING_ALIASES,
    checkpoint_cadence,
    ckpt_model_config,
    own_checkpoints_only,
    restored_path,
)
from mot_lightning.data.options import moved_data_keys
from mot_lightning.run_identity import (
    DEFAULT_NAME,
    RUN_FILE,
    RunIdentity,
    check_same_experiment,
    flatten,
    identify,
    name_from_config,
    record_launch,
    sibling_runs,
)
from mot_lightning.training.vocab_rows import vocab_layout

TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
               "init_args": {"save_dir": "runs", "name": DEFAULT_NAME, "default_hp_metric": False}},
    "log_every_n_steps": 10,
}


class MotCLI(LightningCLI):
    run: RunPlace | None = None  # where this launch writes (None: no TensorBoard logger)

    def __init__(self, *args, **kwargs) -> None:
        argv = sys.argv[1:] if kwargs.get("args") is None else kwargs["args"]
        every = LightningCLI.subcommands()
        # the subcommand this launch runs (``mot fit|validate|test`` put it first), so only its parser is built:
        # LightningCLI builds one per Trainer method otherwise (~0.2 s of start-up each); else all of them
        first = argv[0] if isinstance(argv, list) and argv else None
        self._subcommands = {first: every[first]} if first in every else every
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        return self._subcommands

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.n_modalities", "model.backbone.n_modalities", apply_on="instantiate")
        parser.link_arguments("data.val_set_names", "model.val_set_names", apply_on="instantiate")
        parser.link_arguments("data.latent_dim", "model.latent_dim", apply_on="instantiate")
        parser.link_arguments("data.vocab", "model.vocab_layout", compute_fn=vocab_layout, apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(FlopsThroughput, "throughput")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_argument("--run_id", type=str | None, default=None,
                            help="name the run dir <save_dir>/<name>/<run_id> yourself instead of s<seed>-<hash> "
                                 "(refused if that dir holds another experiment)")
        parser.add_argument("--accept_other_tokenizers", type=bool, default=False,
                            help="restore a checkpoint with tokenizers other than those it was trained with "
                                 "(refused by default, naming the files)")
        parser.add_argument("--model_from_ckpt", type=bool, default=False,
                            help="with --ckpt_path <file>: build the model from the checkpoint's model config "
                                 "instead of refusing one that differs from this config")

    def parse_arguments(self, parser, args) -> None:
        """Name old flat ``data.*`` keys (CLI or ``--config`` YAML) with their new place before parsing."""
        argv = sys.argv[1:] if args is None else args
        moved = moved_data_keys(argv) if isinstance(argv, list) else None  # dict/Namespace args: not argv
        if moved:
            parser.error(moved)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path <file or sharded dir>``: refuse a checkpoint of another model config before anything
        is built, or (``--model_from_ckpt true``) take its model config, as Lightning otherwise would silently
        (``checkpoints/model_config.py``)."""
        ckpt_model_config(self)

    def after_instantiate_classes(self) -> None:
        use_atomic_io(self.trainer)  # checkpoint files written beside the target, fsynced, renamed
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if self.datamodule is not None and config.get("accept_other_tokenizers"):
            self.datamodule.accept_other_tokenizers = True
        checkpoint_tokenizers(config.get("ckpt_path"), self.model if self.subcommand == "fit" else None,
                              self.datamodule)

    def before_instantiate_classes(self) -> None:
        """Fill the schedule's length from ``trainer.max_steps`` and place the run in its own dir
        (``run_identity.py``): logs of ``fit`` in ``<run dir>/version_N``, of ``validate``/``test`` in
        ``<run dir>/<subcommand>/version_N``, checkpoints in ``<run dir>/checkpoints``."""
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        stage = self.subcommand or "fit"
        fill_schedule_length(config, required=stage == "fit")
        logger = config.get("trainer", {}).get("logger")
        init = getattr(logger, "init_args", None) if logger is not None else None
        if init is None or not getattr(init, "save_dir", None):
            return
        paths = config.get("config") or []
        name = str(init.name) if getattr(init, "name", None) not in (None, DEFAULT_NAME) else \
            name_from_config(paths[0] if paths else None)
        resolved = yaml.safe_load(self._parser(self.subcommand).dump(config, skip_none=False))  # = config.yaml
        identity = identify(resolved, name, config.get("run_id"), [str(p) for p in paths])
        run_dir = Path(init.save_dir) / name / identity.run_id
        check_same_experiment(run_dir, identity)
        init.name = f"{name}/{identity.run_id}" + ("" if stage == "fit" else f"/{stage}")
        checkpoint = config.get("checkpoint")
        if checkpoint is not None and checkpoint.get("dirpath") is None:
            checkpoint["dirpath"] = str(run_dir / "checkpoints")
        ckpt_dir = Path(checkpoint.get("dirpath")) if checkpoint is not None else run_dir / "checkpoints"
        checkpoint_cadence(config)
        own_checkpoints_only(config, run_dir, ckpt_dir, stage)
        self.run = RunPlace(identity, run_dir, resumed=_resumes(config.get("ckpt_path"), ckpt_dir, run_dir,
                                                                identity, stage))

    def before_fit(self) -> None:
        self._record_launch("fit")

    def before_validate(self) -> None:
        self._record_launch("validate")

    def before_test(self) -> None:
        self._record_launch("test")

    def _record_launch(self, stage: str) -> None:
        """Rank 0 appends this launch (its version dir, resumed or not) to ``<run dir>/run.json``."""
        log_dir = getattr(self.trainer.logger, "log_dir", None)
        if self.run is None or self.trainer.fast_dev_run or rank_zero_only.rank != 0 or not isinstance(log_dir, str):
            return
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        ckpt = config.get("ckpt_path")
        record_launch(self.run.run_dir, self.run.identity, {
            "subcommand": stage, "version": Path(log_dir).relative_to(self.run.run_dir).as_posix(),
            "ckpt_path": None if ckpt is None else str(ckpt), "resumed": self.run.resumed,
            "restored": restored_path(ckpt, Path(self.trainer.checkpoint_callback.dirpath)
                                      if self.trainer.checkpoint_callback else self.run.run_dir / "checkpoints")})

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        if self.run is not None and not trainer.fast_dev_run:
            log_final_hparams(trainer, self.run.identity)
        log_dir = trainer.logger.log_dir if trainer.logger else None
        save_dir = getattr(trainer.logger, "save_dir", None) or (Path(log_dir).parent if log_dir else None)
        ckpt = trainer.checkpoint_callback
        lines = ["", "Done."]
        if self.run is not None:
            lines += [f"  run:              {self.run.run_dir} ({RUN_FILE}: config hash, seed, launches)"]
        if log_dir:
            lines += [f"  TensorBoard logs: {log_dir}",
                      f"  view them with:   tensorboard --logdir {save_dir}"]
        if ckpt is not None and ckpt.dirpath:
            lines += [f"  checkpoints:      {ckpt.dirpath} (resume with --ckpt_path last)"]
        print("\n".join(lines))


@dataclass
class RunPlace:
    identity: RunIdentity
    run_dir: Path
    resumed: bool


def fill_schedule_length(config, required: bool) -> None:
    """One source of truth for the training length: a scheduler with a ``max_steps`` argument left
    at ``None`` gets ``trainer.max_steps`` (set it explicitly to decouple the two)."""
    scheduler = config.get("model", {}).get("scheduler")
    init = getattr(scheduler, "init_args", None)
    if init is None or "max_steps" not in init or init.max_steps is not None:
        return
    max_steps = config.get("trainer", {}).get("max_steps")
    if max_steps is None or max_steps < 0:
        if required:
            raise ValueError("model.scheduler.init_args.max_steps follows trainer.max_steps, which is not set: "
                             "set trainer.max_steps (optimizer steps) or the scheduler's max_steps explicitly")
        return
    init.max_steps = max_steps


def _resumes(ckpt_path, ckpt_dir: Path, run_dir: Path, identity: RunIdentity, stage: str) -> bool:
    """Whether this launch continues the run from its own checkpoint. ``last`` with no checkpoint of this
    run: ``fit`` starts afresh (so job scripts may always pass it) with a note naming runs that differ;
    ``validate``/``test`` stop, since they would score untrained weights."""
    if ckpt_path is None:
        return False
    if str(ckpt_path) != "last":
        return Path(str(ckpt_path)).resolve().is_relative_to(run_dir.resolve())
    if any(ckpt_dir.glob("last*.ckpt")):
        return True
    others = sibling_runs(run_dir.parent, identity)
    message = (f"--ckpt_path last: this experiment ({identity.run_id}) has no last checkpoint in {ckpt_dir}."
               + ("" if not others else " Runs under the same name differ in config:\n  " + "\n  ".join(others)))
    if stage != "fit":
        raise ValueError(message + f"\n`mot {stage}` needs a trained checkpoint: pass the same config as the fit "
                         "(or --ckpt_path <file>).")
    rank_zero_warn(message + "\nStarting this run from scratch.")
    return False


def log_final_hparams(trainer, identity: RunIdentity) -> None:
    """HParams tab: the experiment config (flattened) with the final validation/training losses as
    ``final/<tag>`` metrics, logged at the last step."""
    logger = trainer.logger
    if not isinstance(logger, TensorBoardLogger):
        return
    metrics = {f"final/{k}": float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith(("val/", "train/loss")) and getattr(v, "numel", lambda: 1)() == 1}
    if not metrics:
        return
    params = {"run/id": identity.run_id, "run/hash": identity.hash, "run/seed": identity.seed,
              **flatten(identity.experiment)}
    module_hparams = dict(logger.hparams)  # hparams.yaml keeps the module's own arguments only
    logger.log_hyperparams(params, metrics, step=trainer.global_step)
    logger.hparams = module_hparams
    logger.finalize("success")  # fit had closed the writer; flush the one log_hyperparams reopened


def checkpoint_tokenizers(ckpt_path, model, datamodule) -> None:
    """A run from a trained model reads its data with the tokenizers that model was trained with: those
    recorded in ``--ckpt_path`` (a checkpoint file), then in ``model.init_from`` (a ``mot fit`` checkpoint;
    ``model``: None when not fitting), where their files exist here and hold the configured class and config
    (``MultiModalDataModule.use_tokenizers_of``). Otherwise data of its own would get its own fit, whose codes
    the model never saw. ``data.tokenizer_files.files`` still names others per modality."""
    if datamodule is None or not hasattr(datamodule, "use_tokenizers_of"):
        return
    from mot_lightning.checkpoints.loading import load_checkpoint

    sources = []
    if ckpt_path is not None and str(ckpt_path) not in LIGHTNING_ALIASES and Path(str(ckpt_path)).is_file():
        sources.append(("--ckpt_path", str(ckpt_path)))  # `last` and friends: this run's own (same data)
    init = getattr(getattr(model, "controls", None), "init_from", None)
    if init is not None and Path(init.checkpoint).is_file():  # a folder (Hugging Face, sharded): no stamp
        sources.append(("model.init_from", init.checkpoint))
    for name, path in sources:
        taken = datamodule.use_tokenizers_of(load_checkpoint(path, mmap=True))
        if taken:
            shown = ", ".join(sorted(f"{m.label}: {f}" for m, f in taken.items()))
            rank_zero_info(f"{name} {path}: the fitted tokenizers it was trained with are used ({shown})")
