"""Run identity: which directory a ``mot fit`` run writes to, and what makes two runs the same experiment.

A run lives in ``<save_dir>/<name>/<run_id>/``:

- ``name``: ``trainer.logger.init_args.name`` if the YAML/CLI sets it, else derived from the first
  ``--config`` (``configs/speech/mot.yaml`` -> ``speech/mot``, ``./my_exp.yaml`` -> ``my_exp``).
- ``run_id``: ``--run_id`` if given, else ``s<seed>-<hash>`` where ``hash`` is 8 hex digits of the
  SHA-256 of the resolved experiment config (``experiment_config``: the whole config minus
  ``IGNORED_KEYS``, minus the seeds). Seeds of one experiment therefore share the hash suffix
  (``s0-1a2b3c4d``, ``s1-1a2b3c4d``); any other difference gives another directory.
- ``run.json`` in the run dir records the identity and every launch (``launches``: subcommand,
  version dir, whether it resumed from the run's own checkpoint).

The training length ``trainer.max_steps`` is ignored on purpose: the schedule's length (which
follows it unless set explicitly) is part of the config, so runs that differ in length *and*
schedule differ in hash, while a run extended with the same schedule stays one run.

Only the standard library: ``mot compare`` reads run.json through this module.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
DEFAULT_NAME = "mot"  # the logger name in lit_cli.TRAINER_DEFAULTS: "not set by the user"

# The one list of config keys that do not change what is trained (dotted paths; a key removes its
# whole subtree). They only change what is logged, measured or saved, or where things go.
IGNORED_KEYS: dict[str, str] = {
    "config": "the config file names (recorded in run.json, not hashed)",
    "run_id": "the explicit run name itself",
    "ckpt_path": "where a launch resumes from (recorded as a launch)",
    "model_from_ckpt": "whether the model config came from --ckpt_path (the config it gives is hashed)",
    "accept_other_tokenizers": "whether a checkpoint's tokenizer check is overridden (the tokenizers are hashed)",
    "verbose": "validate/test printing",
    "trainer.logger": "where and how logs are written",
    "trainer.default_root_dir": "where files go",
    "trainer.enable_progress_bar": "terminal output",
    "trainer.enable_model_summary": "terminal output",
    "trainer.log_every_n_steps": "logging interval",
    "trainer.enable_checkpointing": "checkpoint saving",
    "trainer.val_check_interval": "validation interval",
    "trainer.check_val_every_n_epoch": "validation interval",
    "trainer.limit_val_batches": "validation size",
    "trainer.num_sanity_val_steps": "validation before training",
    "trainer.limit_test_batches": "test size",
    "trainer.limit_predict_batches": "predict size",
    "trainer.profiler": "profiling",
    "trainer.max_steps": "training length: the schedule's length is hashed instead (module doc)",
    "trainer.max_epochs": "training length (as trainer.max_steps)",
    "trainer.max_time": "training length (as trainer.max_steps)",
    "checkpoint": "ModelCheckpoint settings",
    "throughput": "FLOPs/throughput logging interval and the MFU peak",
    "preemption": "what stop signals do (save last.ckpt, exit code, SLURM requeue)",
    "nonfinite": "what a non-finite loss does (skipped steps are logged: train/skipped_nonfinite_steps)",
    "lr_monitor": "learning-rate logging",
    "data.pin_memory": "host-to-device copies",
    "data.loader.pin_memory": "host-to-device copies",
    "data.val_batch_size": "validation batching",
    "data.loader.val_batch_size": "validation batching",
    "data.loader.timeout": "how long to wait for a stalled data worker before failing",
    "data.loader.skip_warning": "when a high skip rate is warned about",
    "model.sharded_init": "how FSDP2 builds the weights: the same weights either way (model/meta_init.py)",
}
# Callbacks in ``trainer.callbacks`` that only observe training (samples, progress, logging).
OBSERVER_CALLBACKS = frozenset({
    "SampleLogger", "LearningRateMonitor", "ModelCheckpoint", "TQDMProgressBar", "RichProgressBar",
    "ModelSummary", "RichModelSummary", "DeviceStatsMonitor", "FlopsThroughput",
    "EMA",  # averages the weights for sampling; training and the checkpoint's weights are unchanged
})
# Seeds: ``seed_everything`` is the run's seed; the data order's seed follows it in sweeps. Neither is
# hashed; the run id names both when they differ (``s1d0-...``: model seed 1, data seed 0).
SEED_KEY, DATA_SEED_KEY = "seed_everything", "data.seed"


def get_path(config: dict, dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _drop_path(config: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def _plain(value: Any) -> Any:
    """JSON-able copy: dicts with str keys, lists, scalars; anything else (paths, enums) as str."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def experiment_config(config: dict) -> dict:
    """The resolved config minus ``IGNORED_KEYS``, the seeds and observer callbacks (a new dict)."""
    exp = _plain(config)
    for key in (*IGNORED_KEYS, SEED_KEY, DATA_SEED_KEY):
        _drop_path(exp, key)
    callbacks = get_path(exp, "trainer.callbacks")
    if isinstance(callbacks, list):
        exp["trainer"]["callbacks"] = [c for c in callbacks if not _is_observer(c)]
    return exp


def _is_observer(callback: Any) -> bool:
    class_path = callback.get("class_path", "") if isinstance(callback, dict) else str(callback)
    return class_path.rsplit(".", 1)[-1] in OBSERVER_CALLBACKS


def config_hash(experiment: dict) -> str:
    """8 hex digits of the SHA-256 of the experiment config (key order does not matter)."""
    blob = json.dumps(experiment, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def name_from_config(first_config: str | os.PathLike | None, cwd: Path | None = None) -> str:
    """A run name from the first config file: its path below a ``configs`` dir (configs/speech/mot.yaml ->
    speech/mot), else below the current directory (my_exp.yaml -> my_exp, exps/a.yaml -> exps/a), else
    its folder and stem (/data/x/my_exp.yaml -> x/my_exp). Never absolute, never with ``..``."""
    if first_config is None:
        return DEFAULT_NAME
    path = Path(os.path.abspath(Path(str(first_config)).expanduser()))
    parts = path.with_suffix("").parts
    if "configs" in parts[:-1]:
        below = parts[len(parts) - 1 - parts[::-1].index("configs") + 1:]  # after the last "configs"
    else:
        here = Path(os.path.abspath(cwd or Path.cwd()))
        try:
            below = path.with_suffix("").relative_to(here).parts
        except ValueError:
            below = parts[-2:] if len(parts) > 2 else parts[-1:]
    clean = [p for p in below if p not in ("", ".", "..", os.sep)]
    return "/".join(clean) or DEFAULT_NAME


@dataclass
class RunIdentity:
    """What run.json holds (``launches`` grows with every launch of the run)."""

    name: str
    run_id: str
    hash: str
    seed: int | None
    data_seed: int | None
    configs: list[str]
    experiment: dict
    launches: list[dict] = field(default_factory=list)

    @property
    def seeds_label(self) -> str:
        return seed_label(self.seed, self.data_seed)


def seed_label(seed: Any, data_seed: Any) -> str:
    base = f"s{seed}" if isinstance(seed, int) and not isinstance(seed, bool) else "unseeded"
    if isinstance(data_seed, int) and data_seed != seed:
        return f"{base}d{data_seed}"
    return base


def identify(config: dict, name: str, run_id: str | None = None, configs: list[str] | None = None) -> RunIdentity:
    """The identity of a resolved config: the plain nested dict of the YAML that the run saves as
    ``config.yaml`` (so ``mot compare`` can check every version against run.json)."""
    experiment = experiment_config(config)
    digest = config_hash(experiment)
    seed, data_seed = get_path(config, SEED_KEY), get_path(config, DATA_SEED_KEY)
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    data_seed = data_seed if isinstance(data_seed, int) else None
    configs = [str(c) for c in (configs or [])]
    return RunIdentity(name, run_id or f"{seed_label(seed, data_seed)}-{digest}", digest, seed, data_seed,
                       configs, experiment)


def read_identity(run_dir: Path) -> RunIdentity | None:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return RunIdentity(**{k: data[k] for k in RunIdentity.__dataclass_fields__ if k in data})
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: unreadable run record ({err}); move the file away if it is not a run's") from err


def check_same_experiment(run_dir: Path, identity: RunIdentity) -> None:
    """Refuse to write a run into a dir that holds another experiment (possible with ``--run_id``)."""
    existing = read_identity(run_dir)
    if existing is not None and existing.hash != identity.hash:
        diff = "; ".join(differences(existing.experiment, identity.experiment)[:6])
        raise ValueError(f"{run_dir} holds another experiment (hash {existing.hash}, this config {identity.hash}; "
                         f"differs in: {diff}). Pick another --run_id, or drop --run_id to get a dir per experiment.")


def record_launch(run_dir: Path, identity: RunIdentity, launch: dict) -> Path:
    """Append one launch to ``<run_dir>/run.json`` (written whole, atomically); return the file."""
    existing = read_identity(run_dir)
    launches = existing.launches if existing is not None else []
    launch = {"time": _dt.datetime.now().isoformat(timespec="seconds"), **launch}
    record = asdict(identity) | {"launches": [*launches, launch]}
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    tmp.replace(run_dir / RUN_FILE)
    return run_dir / RUN_FILE


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists keep their index (``trainer.callbacks.0.class_path``)."""
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return {prefix: config}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    if not out and prefix:
        out[prefix] = config  # an empty dict/list is a value too
    return out


def differences(a: dict, b: dict) -> list[str]:
    """``key: a_value -> b_value`` for every leaf that differs (sorted by key)."""
    fa, fb = flatten(a), flatten(b)
    return [f"{k}: {fa.get(k, '<unset>')} -> {fb.get(k, '<unset>')}"
            for k in sorted(set(fa) | set(fb)) if fa.get(k, "<unset>") != fb.get(k, "<unset>")]


def sibling_runs(group_dir: Path, identity: RunIdentity) -> list[str]:
    """One line per other experiment stored under the same name, with how it differs from ``identity``."""
    lines = []
    for path in sorted(Path(group_dir).glob(f"*/{RUN_FILE}")):
        other = read_identity(path.parent)
        if other is not None and other.hash != identity.hash:
            diff = "; ".join(differences(other.experiment, identity.experiment)[:4])
            lines.append(f"{path.parent.name}: {diff}")
    return lines
