"""``mot fit|validate|test``: LightningCLI over ``MultiModalLM`` and ``MultiModalDataModule``.

Vocabulary size, modality count, validation-set names and the latent-image
width (Transfusion) flow from the data
module to the model by ``link_arguments`` (never repeated in YAML). The same
YAML runs on one CPU, one GPU or many GPUs by changing only ``trainer.*``.
Always present (configurable under their own keys): ``checkpoint``
(``ModelCheckpoint``, ``save_last=True`` so ``--ckpt_path last`` works),
``throughput`` (tokens/s and cumulative FLOPs) and ``lr_monitor``.
"""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from mot_lightning.callbacks import FlopsThroughput
from mot_lightning.data.datamodule import MultiModalDataModule
from mot_lightning.lit_module import MultiModalLM

TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
               "init_args": {"save_dir": "runs", "name": "mot", "default_hp_metric": False}},
    "log_every_n_steps": 10,
}


class MotCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.n_modalities", "model.backbone.n_modalities", apply_on="instantiate")
        parser.link_arguments("data.val_set_names", "model.val_set_names", apply_on="instantiate")
        parser.link_arguments("data.latent_dim", "model.latent_dim", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(FlopsThroughput, "throughput")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})

    def before_instantiate_classes(self) -> None:
        """Name the TensorBoard run after the first config file (configs/chameleon/mot.yaml ->
        runs/chameleon/mot/version_N) unless the YAML names it, and keep checkpoints per run name
        (runs/chameleon/mot/checkpoints), not per version, so ``--ckpt_path last`` finds them."""
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        logger = config.get("trainer", {}).get("logger")
        init = getattr(logger, "init_args", None) if logger is not None else None
        if init is None:
            return
        paths = config.get("config") or []
        if paths and getattr(init, "name", None) == "mot":
            first = Path(str(paths[0]))
            init.name = f"{first.parent.name}/{first.stem}" if first.parent.name != "configs" else first.stem
        checkpoint = config.get("checkpoint")
        if checkpoint is not None and checkpoint.get("dirpath") is None and getattr(init, "save_dir", None):
            checkpoint["dirpath"] = str(Path(init.save_dir) / str(init.name) / "checkpoints")

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        log_dir = trainer.logger.log_dir if trainer.logger else None
        save_dir = getattr(trainer.logger, "save_dir", None) or (Path(log_dir).parent if log_dir else None)
        ckpt = trainer.checkpoint_callback
        lines = ["", "Done."]
        if log_dir:
            lines += [f"  TensorBoard logs: {log_dir}",
                      f"  view them with:   tensorboard --logdir {save_dir}"]
        if ckpt is not None and ckpt.dirpath:
            lines += [f"  checkpoints:      {ckpt.dirpath} (resume with --ckpt_path last)"]
        print("\n".join(lines))


def cli_main(args: list[str] | None = None) -> None:
    """Run the CLI (``args=None`` reads ``sys.argv``; tests pass a list)."""
    MotCLI(
        MultiModalLM,
        MultiModalDataModule,
        args=args,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the optimizer is built in configure_optimizers (FSDP2-safe)
    )
