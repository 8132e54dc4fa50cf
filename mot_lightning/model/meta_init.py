"""Paper sizes under FSDP2: build the model on the meta device, shard it, then fill each rank's shard.

Built eagerly, a 3-modality MoT of the 7B preset is 80 GB of fp32 weights on every rank before
``fully_shard`` keeps 1/N of it. On the meta device the build allocates nothing; after sharding,
``materialize`` allocates this rank's shards (``to_empty``) and writes into them exactly the values the
eager constructor ``TokenLM(cfg, vocab_size, latent_dim)`` would hold under the same seed.

How. ``constructor_parts`` builds the constructor's parts again, on the CPU, one at a time and in the
constructor's order: the token embedding's default draw (thrown away, as the constructor overwrites it),
every block, the final norm and the rotary buffer, the head's default draw (thrown away), the embedding and
head draws, the latent ends. The global random generator therefore hands out the same numbers as it does to
the eager constructor, and each part's tensors are copied into the model, a sharded (``DTensor``) parameter
keeping only this rank's rows (``write_full``, no communication).

What holds. The weights equal the eager build's bitwise, on one process and on any number of processes
(every rank draws the whole stream and keeps its rows), so ``tower_init: copy`` still gives equal towers and
runs match the eager path step for step. Peak host memory: this rank's shards plus the largest part (one
block, or the embedding / head matrix). The drawing time does not shrink with more ranks (each rank draws
every number, on the CPU generator the eager build uses under ``ModelParallelStrategy``).

``constructor_parts`` mirrors ``TokenLM.__init__`` and ``Transformer.__init__``;
``tests/model/test_meta_init.py`` holds them bitwise equal for every backbone variant.
"""
from __future__ import annotations

from collections.abc import Iterator
from itertools import chain

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from mot_lightning.model.block import BLOCKS
from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.lm import TimestepEmbedding, TokenLM
from mot_lightning.model.rope import RotaryEmbedding
from mot_lightning.model.towers import clean_name
from mot_lightning.model.untied import UntiedRMSNorm


def build_on_meta(cfg: TransformerConfig, vocab_size: int, latent_dim: int = 0) -> TokenLM:
    """``TokenLM`` with every parameter and buffer on the meta device: no memory, no random draws."""
    with torch.device("meta"):
        return TokenLM(cfg, vocab_size, latent_dim=latent_dim)


def constructor_parts(cfg: TransformerConfig, vocab_size: int,
                      latent_dim: int = 0) -> Iterator[tuple[str, nn.Module | Tensor]]:
    """``(name in TokenLM, module or tensor with its final values)``, drawn in ``TokenLM.__init__``'s order."""
    nn.Embedding(vocab_size, cfg.dim)  # the default N(0, 1) draw that the init_std draw below replaces
    for i in range(cfg.n_layers):
        yield f"backbone.layers.{i}", BLOCKS[cfg.norm_layout](cfg)
    yield "backbone.norm", UntiedRMSNorm(cfg.dim, cfg.towers_for("norm"), cfg.norm_eps, cfg.tower_ids_for("norm"))
    yield "backbone.rope", RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
    nn.Linear(cfg.dim, vocab_size, bias=False)  # the head's default draw, replaced below
    for name in ("embed", "head"):
        yield f"{name}.weight", nn.init.normal_(torch.empty(vocab_size, cfg.dim), std=cfg.init_std)
    if latent_dim > 0:
        yield "latent_in", nn.Linear(latent_dim, cfg.dim)
        yield "time_embed", TimestepEmbedding(cfg.dim)
        latent_out = nn.Linear(cfg.dim, latent_dim)
        nn.init.zeros_(latent_out.weight)
        nn.init.zeros_(latent_out.bias)
        yield "latent_out", latent_out


def named_tensors(module: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers by ``state_dict`` name (wrapper parts removed), non-persistent buffers too."""
    return {clean_name(n): t for n, t in chain(module.named_parameters(), module.named_buffers())}


def write_full(target: Tensor, value: Tensor) -> None:
    """Copy the full tensor ``value`` into ``target``: all of it, or this rank's shard of a ``DTensor`` (every
    rank holds ``value`` and keeps its own part: no communication)."""
    with torch.no_grad():
        if isinstance(target, DTensor):
            part = distribute_tensor(value.to(target.dtype), target.device_mesh, target.placements,
                                     src_data_rank=None)
            target.to_local().copy_(part.to_local())
        else:
            target.copy_(value)


def materialize(net: TokenLM, device: torch.device | str) -> None:
    """Allocate ``net`` (built on the meta device, sharded or not, wrapped or not) on ``device`` and give it the
    eager constructor's values under the current random state (module docstring)."""
    cfg = net.backbone.cfg
    net.to_empty(device=device)
    targets = named_tensors(net)
    with torch.no_grad(), torch.device("cpu"):
        for prefix, part in constructor_parts(cfg, net.embed.num_embeddings, net.latent_dim):
            values = {prefix: part} if isinstance(part, Tensor) else {
                f"{prefix}.{name}": t for name, t in named_tensors(part).items()}
            for name, value in values.items():
                if name not in targets:
                    raise RuntimeError(f"meta_init: {name} is not in the model: constructor_parts no longer "
                                       "mirrors TokenLM.__init__")
                write_full(targets.pop(name), value)
    if targets:
        raise RuntimeError(f"meta_init: {sorted(targets)[:5]} left uninitialised: constructor_parts no longer "
                           "mirrors TokenLM.__init__")


def meta_tensors(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers still on the meta device (none after ``materialize``)."""
    return [name for name, t in named_tensors(module).items() if t.is_meta]
