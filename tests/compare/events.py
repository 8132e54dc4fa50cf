"""Write TensorBoard event files with chosen wall times, through tensorboard's RecordWriter
(its EventFileWriter would stamp the file's first event with the real clock)."""
from __future__ import annotations

from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.summary.writer.record_writer import RecordWriter


def write_version(logdir: Path, scalars: dict[str, list[tuple[int, float]]], start: float = 1000.0,
                  sec_per_step: float = 1.0, first_step_time: float = 0.0,
                  descriptions: dict[str, str] | None = None) -> Path:
    """One event file: a first event at ``start``, then each point at
    ``start + first_step_time + (step - first logged step) * sec_per_step``; a tag in ``descriptions`` carries
    that summary description (as ``GenerationMetrics`` writes ``"<n> samples. ..."``). Returns the file."""
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / f"events.out.tfevents.{int(start)}.test.0"
    first = min(s for pts in scalars.values() for s, _ in pts)
    with path.open("wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=start, file_version="brain.Event:2").SerializeToString())
        for step, tag, value in sorted((s, tag, v) for tag, pts in scalars.items() for s, v in pts):
            meta = None if tag not in (descriptions or {}) else SummaryMetadata(
                summary_description=descriptions[tag], plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=value, metadata=meta)])
            wall = start + first_step_time + (step - first) * sec_per_step
            writer.write(Event(wall_time=wall, step=step, summary=summary).SerializeToString())
    return path


def linear(steps, start: float, slope: float) -> list[tuple[int, float]]:
    """Points ``(s, start - slope * s)``."""
    return [(s, start - slope * s) for s in steps]


def write_run(group_dir: Path, seed: int, scalars: dict[str, list[tuple[int, float]]],
              experiment: dict | None = None, **kwargs) -> Path:
    """A run as `mot fit` lays it out: ``group_dir/s<seed>-<hash>/`` with run.json (the identity of
    ``experiment`` with ``seed``) and a version_0 holding the scalars and its config.yaml. Returns the run dir."""
    import yaml

    from mot_lightning.run_identity import identify, record_launch

    config = {"seed_everything": seed, "model": {"dim": 32}, **(experiment or {})}
    identity = identify(config, group_dir.name, configs=["exp.yaml"])
    run_dir = group_dir / identity.run_id
    write_version(run_dir / "version_0", scalars, **kwargs)
    (run_dir / "version_0" / "config.yaml").write_text(yaml.safe_dump(config))
    record_launch(run_dir, identity, {"subcommand": "fit", "version": "version_0", "resumed": False})
    return run_dir
