"""Callbacks: throughput and FLOPs accounting, data skip counts."""
from mot_lightning.callbacks.throughput import FlopsThroughput

__all__ = ["FlopsThroughput"]
