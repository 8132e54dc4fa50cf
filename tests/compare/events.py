"""Write TensorBoard event files with chosen wall times, through tensorboard's RecordWriter
(its EventFileWriter would stamp the file's first event with the real clock)."""
from __future__ import annotations

from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter


def write_version(logdir: Path, scalars: dict[str, list[tuple[int, float]]], start: float = 1000.0,
                  sec_per_step: float = 1.0, first_step_time: float = 0.0) -> Path:
    """One event file: a first event at ``start``, then each point at
    ``start + first_step_time + (step - first logged step) * sec_per_step``. Returns the file."""
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / f"events.out.tfevents.{int(start)}.test.0"
    first = min(s for pts in scalars.values() for s, _ in pts)
    with path.open("wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=start, file_version="brain.Event:2").SerializeToString())
        for step, tag, value in sorted((s, tag, v) for tag, pts in scalars.items() for s, v in pts):
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
            wall = start + first_step_time + (step - first) * sec_per_step
            writer.write(Event(wall_time=wall, step=step, summary=summary).SerializeToString())
    return path


def linear(steps, start: float, slope: float) -> list[tuple[int, float]]:
    """Points ``(s, start - slope * s)``."""
    return [(s, start - slope * s) for s in steps]
