"""Checkpoint and config consistency: the model a checkpoint was trained as must be the one configured.

LightningCLI, given ``--ckpt_path``, would replace the model section of the config by the checkpoint's
hyperparameters, so ``mot fit --config configs/speech/mot.yaml --ckpt_path <dense run>`` silently
trained a dense model. The app instead compares the two and refuses a difference, naming it; the
user may ask for the checkpoint's config explicitly (``--model_from_ckpt true``). One comparison
serves every loader: the CLI before anything is built (``lit_cli.MotCLI._parse_ckpt_path``, also for
sharded checkpoints) and ``MultiModalLM.on_load_checkpoint`` (``mot generate``, ``mot export``,
``--ckpt_path last``, and the values linked from the data: vocabulary size, latent width).

Compared: ``MODEL_KEYS`` of the module's hyperparameters, key by key; a key missing on either side
is not compared (written by another version, or a link target not computed yet), and
``KERNEL_KEYS`` choose kernels that compute the same function from the same weights.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mot_lightning.checkpoints.loading import checkpoint_hparams

MODEL_KEYS = ("backbone", "objective", "vocab_size", "latent_dim")
KERNEL_KEYS = frozenset({"backbone.attn_backend", "backbone.grouped_gemm"})
TAKE_FLAG = "--model_from_ckpt true"


def plain_config(value: Any) -> Any:
    """Hyperparameters as YAML-like values (what weights-only loading accepts): mappings, lists,
    strings, numbers, None. A dataclass becomes its constructor fields; a class or function its
    import path; any other object ``{"class_path": <import path>}`` (its arguments are not known here;
    LightningCLI stores the full ``class_path``/``init_args`` form itself)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(plain_config(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_config(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{value.__module__}.{value.__qualname__}"
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a 0-d tensor / numpy scalar
        return value.item()
    return {"class_path": f"{type(value).__module__}.{type(value).__qualname__}"}


def model_config_differences(checkpoint: Mapping | None, config: Mapping | None) -> list[str]:
    """``"<key>: checkpoint <a>, config <b>"`` for each model setting that differs (``MODEL_KEYS``)."""
    if not checkpoint or not config:
        return []
    ckpt, conf = plain_config(checkpoint), plain_config(config)
    out: list[str] = []
    for key in MODEL_KEYS:
        if key in ckpt and key in conf:
            _diff(ckpt[key], conf[key], key, out)
    return out


def _diff(a: Any, b: Any, key: str, out: list[str]) -> None:
    if key in KERNEL_KEYS:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        if a.get("class_path", b.get("class_path")) != b.get("class_path", a.get("class_path")):
            out.append(f"{key}.class_path: checkpoint {a['class_path']!r}, config {b['class_path']!r}")
            return
        for k in [k for k in a if k in b]:
            _diff(a[k], b[k], f"{key}.{k}", out)
    elif a != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)):
        out.append(f"{key}: checkpoint {a!r}, config {b!r}")


def check_model_config(checkpoint: Mapping | None, config: Mapping | None, source: str = "the checkpoint",
                       take_hint: bool = True) -> None:
    """Raise ``ValueError`` naming every model setting in which ``checkpoint`` (its hyperparameters)
    differs from ``config`` (the module's, or the parsed ``model`` section)."""
    differences = model_config_differences(checkpoint, config)
    if not differences:
        return
    shown = "\n  ".join(f"model.{d}" for d in differences[:12])
    more = f"\n  (+{len(differences) - 12} more)" if len(differences) > 12 else ""
    take = (f", or add {TAKE_FLAG} to `mot fit|validate|test` to build the model from the checkpoint's "
            "config instead" if take_hint else "")
    data = ("\nThe vocabulary differs: the data's tokenizers are not the ones it was trained with."
            if any(d.startswith(("vocab_size", "latent_dim")) for d in differences) else "")
    raise ValueError(f"{source} was trained with another model config than the one passed:\n  {shown}{more}"
                     f"{data}\nPass the config it was trained with{take}.")


def model_section(hparams: Mapping) -> dict:
    """A checkpoint's hyperparameters as the ``model`` section of a config (LightningCLI's bookkeeping
    key ``_instantiator`` dropped)."""
    return {k: v for k, v in plain_config(hparams).items() if not k.startswith("_")}


LIGHTNING_ALIASES = ("last", "best", "hpc")  # --ckpt_path values Lightning resolves itself


def ckpt_model_config(cli) -> None:
    """``MotCLI._parse_ckpt_path``: with ``--ckpt_path <file or sharded dir>``, compare the checkpoint's model
    config with the parsed one before anything is built (a missing or unsafe file is named here too), or
    with ``--model_from_ckpt true`` put the checkpoint's model config in place of the parsed one.

    ``last`` needs no check here: it is this run's own checkpoint, and its run dir is named by the config's
    hash (``run_identity.py``); ``MultiModalLM.on_load_checkpoint`` compares every load anyway.
    """
    sub = cli.config.get("subcommand")
    config = cli.config.get(sub) if sub else None
    ckpt = config.get("ckpt_path") if config is not None else None
    if ckpt is None or str(ckpt) in LIGHTNING_ALIASES or "://" in str(ckpt) or str(ckpt).startswith("registry"):
        return
    hparams = checkpoint_hparams(ckpt)
    if not hparams:
        return
    if config.get("model_from_ckpt"):
        cli.config = cli.parser.parse_object({sub: {"model": model_section(hparams)}}, cli.config)
        return
    parsed = yaml.safe_load(cli._parser(sub).dump(config, skip_none=False))  # link targets left out
    check_model_config(hparams, parsed.get("model"), source=f"--ckpt_path {ckpt}")


# --- where a launch's checkpoints go and come from (decided from its config before anything is built) ---
# - **Cadence**: with none of ``checkpoint.every_n_train_steps`` / ``every_n_epochs`` / ``train_time_interval``
#   set, checkpoints are written every ``data.loader.train_batches_per_epoch`` optimizer steps, with or
#   without validation (Lightning's default follows validation only). ``last.ckpt`` is refreshed at each save
#   and at the end of training (``callbacks/preemption.py``).
# - **Nothing from elsewhere**: ``trainer.default_root_dir`` defaults to the run dir, where Lightning looks
#   for SLURM ``hpc_ckpt_<n>.ckpt`` files it would otherwise adopt from the working directory without
#   ``--ckpt_path`` (another experiment's). None are written (``Preemption`` replaces that handler).
# - **A requeued SLURM job resumes its own run**: ``SLURM_RESTART_COUNT`` > 0, no ``--ckpt_path`` and a
#   ``last.ckpt`` in this run's checkpoint dir -> ``--ckpt_path last`` (``run.json`` records it).

CADENCE_KEYS = ("every_n_train_steps", "every_n_epochs", "train_time_interval")


def checkpoint_cadence(config) -> None:
    """Default ``checkpoint.every_n_train_steps`` to ``data.loader.train_batches_per_epoch``."""
    checkpoint = config.get("checkpoint")
    if checkpoint is None or any(checkpoint.get(key) is not None for key in CADENCE_KEYS):
        return
    loader = (config.get("data") or {}).get("loader")
    steps = getattr(loader, "train_batches_per_epoch", None) if loader is not None else None
    if isinstance(steps, int) and steps > 0:
        checkpoint["every_n_train_steps"] = steps


def own_checkpoints_only(config, run_dir: Path, ckpt_dir: Path, stage: str) -> None:
    """Point ``trainer.default_root_dir`` at the run dir; resume a requeued SLURM job from its own ``last.ckpt``."""
    trainer = config.get("trainer")
    if trainer is not None and trainer.get("default_root_dir") is None:
        trainer["default_root_dir"] = str(run_dir)
    if stage == "fit" and config.get("ckpt_path") is None and requeued() and any(ckpt_dir.glob("last*.ckpt")):
        config["ckpt_path"] = "last"


def requeued() -> bool:
    """This is a SLURM job started again (requeued) after an earlier start."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def restored_path(ckpt_path, ckpt_dir: Path) -> str | None:
    """The checkpoint file a launch restores: ``ckpt_path`` itself, or for ``last`` the newest ``last*.ckpt``
    of this run (None: nothing restored)."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) != "last":
        return str(ckpt_path)
    lasts = sorted(ckpt_dir.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return str(lasts[-1]) if lasts else None
