"""Memory per rank of a training run, from the config alone (``mot plan``; nothing is allocated).

Terms (bytes per rank; ``P`` = every parameter: backbone, embedding, head, latent ends; ``S`` = the number of
ranks sharding them: the world size under FSDP, 1 under DDP or one device):

- parameters ``P * p / S`` with ``p`` the parameter dtype's bytes (4 for ``32-true`` and the ``*-mixed``
  precisions, whose weights stay fp32; 2 for ``bf16-true``); gradients the same;
- optimizer state ``P * 4 * states / S`` (AdamW: 2 fp32 moments; SGD with momentum: 1; plain SGD: 0);
- activations kept for the backward, per row of ``seq_len`` tokens, in the compute dtype's ``c`` bytes:
  per layer ``4 * ffn_hidden + 12 * dim + 3 * n_heads`` values a token (``10 * dim`` without tower routing),
  plus ``(1 + z) * vocab + 2 * dim + head_dim`` for the embedding, final norm, rotary angles and logits
  (``z`` = 1 with a z-loss). These coefficients were counted on this implementation with autograd's
  saved-tensor hooks on CPU in float32 (SDPA keeps no ``T x T`` scores), where every RMSNorm keeps only its
  input and ``1/rms`` (``untied.py``'s hand-written norm). Elsewhere (``RunShape.norms="rms_norm"``, the
  default: CUDA, autocast) norms run ``F.rms_norm`` and an untied one also keeps its normalised input for the
  per-tower scale: ``dim`` more a token for each untied attention/FFN norm and the final norm, and
  ``(n_heads + n_kv_heads) * head_dim`` for untied q/k norms. With activation checkpointing a layer keeps its
  input only (``dim``) and one layer's activations exist at a time, during its recomputation;
- transient: the logits' gradient and softmax in fp32 during the loss backward (``2 * vocab`` a token);
  under FSDP the gathered full weights of two blocks (the current and the prefetched one) and one block's
  unsharded gradients, plus the root module's (embedding, head, final norm: gathered from forward to
  backward) weights and gradients; under DDP its gradient buckets (one more copy of the gradients).

The training peak is parameters + optimizer state + the larger of gradients and activations + transient:
gradients are freed after every optimizer step (``zero_grad`` sets them to None), so during the backward the
activations are released layer by layer as the gradients fill in; the two peak at opposite ends of it.

Start-up (before the first step, no gradients or optimizer state yet): the whole model on every rank for an
eager build (then its shards; on the host: Lightning's FSDP2 builds on the CPU, then moves the shards), or this
rank's shards plus the largest part drawn at a time (one block, or the embedding / head matrix, drawn on the
host) on FSDP2's meta-device path (``meta_init.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mot_lightning.model.accounting import backbone_stats
from mot_lightning.model.config import TransformerConfig

Strategy = Literal["single", "ddp", "fsdp"]


@dataclass(frozen=True)
class RunShape:
    """What the memory of a run depends on besides the backbone."""

    vocab_size: int
    seq_len: int
    batch_size: int = 1  # rows per rank
    world_size: int = 1
    strategy: Strategy = "single"
    param_bytes: int = 4  # the weights' dtype
    compute_bytes: int = 4  # the activations' dtype (2 under bf16 / fp16 autocast)
    activation_checkpointing: bool = False
    optimizer_states: int = 2  # fp32 states per parameter (AdamW: 2)
    z_loss: bool = False
    latent_dim: int = 0
    sharded_init: bool = True  # FSDP2's meta-device build
    # which RMSNorm the run's norms use (module docstring): "rms_norm" (F.rms_norm: CUDA, autocast) or
    # "hand" (CPU float32: untied.py's hand-written norm, which keeps less for an untied norm)
    norms: Literal["rms_norm", "hand"] = "rms_norm"


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank; ``total`` is the training peak (module docstring), ``startup`` the peak before the first
    step."""

    parameters: float
    gradients: float
    optimizer: float
    activations: float
    transient: float
    startup: float

    @property
    def total(self) -> float:
        return self.parameters + self.optimizer + max(self.gradients, self.activations) + self.transient


def total_parameters(cfg: TransformerConfig, vocab_size: int, latent_dim: int = 0) -> tuple[int, int]:
    """(every parameter of the language model, those outside the backbone: embedding, head, latent ends)."""
    outside = 2 * vocab_size * cfg.dim
    if latent_dim > 0:  # latent_in, timestep MLP (256 -> dim -> dim), latent_out, with biases
        d = cfg.dim
        outside += (latent_dim + 1) * d + (256 + 1) * d + (d + 1) * d + (d + 1) * latent_dim
    return backbone_stats(cfg, 1).total_params + outside, outside


def activation_values_per_token(cfg: TransformerConfig, shape: RunShape) -> float:
    """Values kept for the backward per token (module docstring)."""
    routed = 12 if cfg.is_routed else 10
    layer = 4 * cfg.ffn_hidden + routed * cfg.dim + 3 * cfg.n_heads
    ends = (1 + int(shape.z_loss)) * shape.vocab_size + 2 * cfg.dim + cfg.head_dim
    if shape.norms == "rms_norm":  # an untied F.rms_norm keeps its normalised input for the per-tower scale
        untied_norms = cfg.towers_for("norm") > 1
        layer += 2 * cfg.dim * untied_norms
        ends += cfg.dim * untied_norms
        if cfg.qk_norm and cfg.towers_for("attn") > 1:
            layer += (cfg.n_heads + cfg.n_kv_heads) * cfg.head_dim
    if shape.activation_checkpointing:
        return cfg.n_layers * cfg.dim + layer + ends
    return cfg.n_layers * layer + ends


def memory_plan(cfg: TransformerConfig, shape: RunShape) -> MemoryPlan:
    total, outside = total_parameters(cfg, shape.vocab_size, shape.latent_dim)
    sharded = shape.strategy == "fsdp"
    shards = shape.world_size if sharded else 1
    p = shape.param_bytes
    block = (total - outside) / cfg.n_layers  # one block's parameters (the final norm's few spread in)
    tokens = shape.batch_size * shape.seq_len
    activations = tokens * shape.compute_bytes * activation_values_per_token(cfg, shape)
    transient = tokens * 4 * 2 * shape.vocab_size
    if sharded and shards > 1:
        transient += (3 * block + 2 * outside) * p
    elif shape.strategy == "ddp" and shape.world_size > 1:
        transient += total * p
    if sharded and shape.sharded_init:
        startup = total * p / shards + max(block, shape.vocab_size * cfg.dim) * p
    else:
        startup = total * p + (block * p / shards if sharded else 0)
    return MemoryPlan(parameters=total * p / shards, gradients=total * p / shards,
                      optimizer=total * 4 * shape.optimizer_states / shards, activations=activations,
                      transient=transient, startup=startup)
