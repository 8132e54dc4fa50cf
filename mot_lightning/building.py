"""Building a model and its data module from a training YAML, for the tools that use a trained model
(``mot generate``, ``mot eval``, ``mot export``, the benchmarks): the same LightningCLI parse as ``mot fit``
(``lit_cli.MotCLI``), not run, so a checkpoint's weights load into exactly the model it was trained as."""
from __future__ import annotations

import warnings
from pathlib import Path

from mot_lightning.checkpoints.weights import WeightsSource


def build_cli(configs: list[str], overrides: list[str], checkpoint: Path | None = None):
    """The ``MotCLI`` of the training YAML, not run: model built (``configure_model``), data module after
    ``setup`` (fitted tokenizers loaded, validation shards found); weights not loaded yet. ``checkpoint``: the
    checkpoint file whose weights will be loaded; its own fitted tokenizer files are used wherever they exist
    and ``data.tokenizer_files.files`` names no other (``lit_cli.checkpoint_tokenizers``)."""
    from mot_lightning.data.datamodule import MultiModalDataModule  # heavy imports only when used
    from mot_lightning.lit_cli import TRAINER_DEFAULTS, MotCLI, checkpoint_tokenizers
    from mot_lightning.lit_module import MultiModalLM

    args = [a for c in configs for a in ("--config", c)] + ["--trainer.logger", "false", *overrides]
    with warnings.catch_warnings():  # `args` deliberately differs from sys.argv (which holds `mot generate ...`)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = MotCLI(MultiModalLM, MultiModalDataModule, run=False, args=args, trainer_defaults=TRAINER_DEFAULTS,
                     save_config_callback=None, auto_configure_optimizers=False)
    checkpoint_tokenizers(checkpoint, None, cli.datamodule)  # as `--ckpt_path FILE` does for `mot fit`
    cli.datamodule.setup("validate")  # loads the fitted tokenizers and finds the validation shards
    cli.model.configure_model()
    return cli


def build(configs: list[str], overrides: list[str], checkpoint: Path | None = None):
    """(MultiModalLM, data module after ``setup``) from the training YAML; weights not loaded yet
    (``checkpoint``: as for ``build_cli``)."""
    cli = build_cli(configs, overrides, checkpoint)
    return cli.model, cli.datamodule


def load_weights(model, ckpt: str, device: str, ema: bool = False) -> None:
    """Checkpoint weights into ``model``, moved to ``device``, eval mode (loaded weights-only; a checkpoint
    of another model config is refused, naming the differences); ``ema``: its EMA averages."""
    WeightsSource(Path(ckpt), [], [], ema).load_into(model, device)
