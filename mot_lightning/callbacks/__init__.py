"""Callbacks: throughput, MFU and FLOPs accounting, data skip counts, the non-finite-loss policy,
stop signals (preemption),
generated samples, generation metrics."""
from mot_lightning.callbacks.gen_metrics import GenerationMetrics
from mot_lightning.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError, Preemption
from mot_lightning.callbacks.samples import SampleLogger
from mot_lightning.callbacks.throughput import FlopsThroughput

__all__ = ["FlopsThroughput", "GenerationMetrics", "NonFiniteGuard", "NonFiniteLossError", "Preemption", "SampleLogger"]
