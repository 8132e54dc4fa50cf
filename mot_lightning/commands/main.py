"""The ``mot`` command.

``mot fit|validate|test`` run experiments through LightningCLI (``fit.py``); every
other command is dispatched to the module of this folder named after it, imported
lazily so ``mot --help`` stays fast.
"""
from __future__ import annotations

import importlib
import os
import sys

from mot_lightning.logs import configure_logging

# command -> (module with a ``main(argv: list[str]) -> None``, one-line help)
TOOLS: dict[str, tuple[str, str]] = {
    "info": ("mot_lightning.commands.info", "print parameters and FLOPs per token of a backbone config"),
    "plan": ("mot_lightning.commands.plan", "parameters, FLOPs and memory per rank of a config; does it fit a GPU"),
    "data": ("mot_lightning.commands.data", "demo corpus and shard converters (`mot data --help`)"),
    "tokenizer": ("mot_lightning.commands.tokenizer", "fit / inspect tokenizers (`mot tokenizer --help`)"),
    "generate": ("mot_lightning.commands.generate", "write samples (images, speech, captions) of a checkpoint"),
    "eval": ("mot_lightning.commands.eval", "score a checkpoint's generations: faithfulness, FID/KID, BLEU, WER/CER"),
    "checkpoint": ("mot_lightning.commands.checkpoint", "checkpoint tools: consolidate a sharded (FSDP2) checkpoint"),
    "export": ("mot_lightning.commands.export", "a checkpoint as one folder: safetensors + config + tokenizers"),
    "hf": ("mot_lightning.commands.hf", "Hugging Face Llama/Qwen folders: `mot hf backbone DIR` prints the YAML "
           "that imports one"),
    "compare": ("mot_lightning.commands.compare", "step-matching comparison of runs: table + PNG plots"),
    "sweep": ("mot_lightning.commands.sweep", "run (or print) a grid of `mot fit` runs: variants x seeds x any key"),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test")


def _usage() -> str:
    lines = ["usage: mot <command> [args...]", "", "experiments (LightningCLI; `mot fit --help`):",
             "  fit|validate|test --config configs/<setting>/<variant>.yaml", "", "tools:"]
    for name, (_, help_) in TOOLS.items():
        lines.append(f"  {name:<10} {help_}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mot`` console script (returns None, as LightningCLI expects)."""
    # OpenMP threads that spin while waiting make every step 10-50x slower as soon as another
    # process (a data worker, a second DDP rank) wants the same cores; sleeping threads cost ~nothing.
    # Must be set before torch loads its OpenMP runtime; an explicit user setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:  # progress lines of tokenizer fits, demo generation and the tools (MOT_LOG_LEVEL to change)
        configure_logging()
    except ValueError as err:
        raise SystemExit(f"mot: {err}") from None
    argv_from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command, rest = argv[0], argv[1:]
    if command in TOOLS:
        module_name = TOOLS[command][0]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                raise SystemExit(f"mot {command}: not available in this version ({err})") from None
            raise
        module.main(rest)
        return
    if command == "predict":
        raise SystemExit("mot predict: generation is `mot generate --ckpt ... --config ... --out DIR` "
                         "(images, captions, speech as files); `mot test` scores a checkpoint on the val sets")
    if command in LIGHTNING_COMMANDS:
        fit = importlib.import_module("mot_lightning.commands.fit")
        fit.cli_main(None if argv_from_sys else [command, *rest])
        return
    raise SystemExit(f"mot: unknown command {command!r}\n\n{_usage()}")


if __name__ == "__main__":
    main()
