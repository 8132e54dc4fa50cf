"""Callbacks: throughput and FLOPs accounting, data skip counts, generated samples."""
from mot_lightning.callbacks.samples import SampleLogger
from mot_lightning.callbacks.throughput import FlopsThroughput

__all__ = ["FlopsThroughput", "SampleLogger"]
