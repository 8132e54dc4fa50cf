"""Callbacks: throughput, MFU and FLOPs accounting, data skip counts, the non-finite-loss policy,
generated samples, generation metrics, stop signals (preemption), and the diagnostics (per-tower health,
attention maps, loss by noise level: docs/diagnostics.md)."""
from mot_lightning.callbacks.attention_maps import AttentionMaps
from mot_lightning.callbacks.gen_metrics import GenerationMetrics
from mot_lightning.callbacks.noise_levels import LossByNoiseLevel
from mot_lightning.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError, Preemption
from mot_lightning.callbacks.samples import SampleLogger
from mot_lightning.callbacks.throughput import FlopsThroughput
from mot_lightning.callbacks.tower_health import TowerHealth

__all__ = ["AttentionMaps", "FlopsThroughput", "GenerationMetrics", "LossByNoiseLevel", "NonFiniteGuard",
           "NonFiniteLossError", "Preemption", "SampleLogger", "TowerHealth"]
