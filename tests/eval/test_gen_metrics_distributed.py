"""GenerationMetrics in a 2-process FSDP2 run (CPU, gloo): every rank generates, rank 0 logs, and the logged
metrics are what `mot eval --ema` measures in one process on the consolidated checkpoint. The run is the shared
one of ``tests/app/distributed_runs.py`` (also checked by tests/app: test_training, test_export,
test_samples_distributed, test_checkpoints)."""
from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp2_run_logs_what_one_process_measures_on_its_checkpoint(fsdp2_runs):
    acc = EventAccumulator(str(fsdp2_runs.first.version), size_guidance={"scalars": 0})  # the 2-step launch
    acc.Reload()
    logged = {t.removeprefix("val/gen/"): acc.Scalars(t)[-1] for t in acc.Tags()["scalars"] if t.startswith("val/gen/")}
    assert {p.step for p in logged.values()} == {2} and "faithfulness_all" in logged and "wer" in logged

    measured = json.loads((fsdp2_runs.one_process["evaluated"] / "metrics.json").read_text())  # keeps the EMA
    assert measured["weights"] == "ema"
    assert set(measured["metrics"]) == set(logged)
    for name, metric in measured["metrics"].items():  # TensorBoard keeps float32
        assert logged[name].value == pytest.approx(metric["value"], rel=1e-5, abs=1e-6), name
