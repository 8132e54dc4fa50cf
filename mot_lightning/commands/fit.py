"""``mot fit|validate|test``: run an experiment from LightningCLI YAML (``lit_cli.MotCLI``)."""
from __future__ import annotations

from mot_lightning.data.datamodule import MultiModalDataModule
from mot_lightning.lit_cli import TRAINER_DEFAULTS, MotCLI
from mot_lightning.lit_module import MultiModalLM


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
