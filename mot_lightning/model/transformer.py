"""The backbone: ``Transformer(cfg)(x, modality) -> float[B, T, dim]``.

No embeddings and no output head inside (they stay shared across modalities
and live in the LightningModule). Everything that depends only on the batch's
ids (tower routing, attention mask, RoPE angles) is built once in
``context`` and handed to every block; the residual stream stays in
tower-sorted order between the input gather and the output gather.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from mot_lightning.model.attention import BatchContext
from mot_lightning.model.block import BLOCKS
from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.kv_cache import KVCache
from mot_lightning.model.masks import AttentionMask
from mot_lightning.model.moe import MoEFeedForward, MoEStats
from mot_lightning.model.rope import RotaryEmbedding
from mot_lightning.model.untied import Routing, UntiedRMSNorm, compile_friendly_counts


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg  # model/meta_init.py (constructor_parts) replays this order: change both together
        self.layers = nn.ModuleList(BLOCKS[cfg.norm_layout](cfg) for _ in range(cfg.n_layers))
        self.norm = UntiedRMSNorm(cfg.dim, cfg.towers_for("norm"), cfg.norm_eps, cfg.tower_ids_for("norm"))
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        # found once here (a plain dict, not registered again) instead of a module walk every step
        self._moe = {name: m for name, m in self.named_modules() if isinstance(m, MoEFeedForward)}

    def attention_backend(self, device: torch.device) -> str:
        if self.cfg.attn_backend == "auto":
            return "flex" if device.type == "cuda" else "sdpa"
        return self.cfg.attn_backend

    def gemm_kernel(self, device: torch.device, dtype: torch.dtype) -> str:
        """The untied linears' kernel for inputs of ``dtype`` on ``device`` (autocast's dtype wins):
        ``cfg.grouped_gemm`` with ``"auto"`` resolved to grouped_mm on CUDA sm90+ in bf16, else the loop."""
        if self.cfg.grouped_gemm != "auto":
            return self.cfg.grouped_gemm
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        hopper = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)
        return "grouped_mm" if hopper and dtype == torch.bfloat16 else "loop"

    def compile_blocks(self, **compile_kwargs) -> None:
        """``torch.compile`` every block (what ``model.compile: true`` does), with the per-batch tower sizes
        compiled as symbolic sizes so batches with other modality counts reuse the same graph."""
        compile_friendly_counts()
        for block in self.layers:
            block.compile(**compile_kwargs)

    def context(self, modality: Tensor, *, positions: Tensor | None = None, doc_ids: Tensor | None = None,
                span_ids: Tensor | None = None, causal: bool = True, cache: KVCache | None = None,
                dtype: torch.dtype = torch.float32) -> BatchContext:
        """Routing, mask and rotary angles for a ``(B, T)`` batch of ids; computed once per forward.

        With ``cache`` (decoding) the ids are the new tokens': they sit at absolute indices
        ``L..L+T-1`` after the ``L = cache.length`` cached ones and attend causally to all keys but the
        cache's left padding (their default positions restart after it: ``KVCache.positions``).
        ``dtype`` is the activations' dtype (it picks the untied linears' kernel, see ``gemm_kernel``).
        """
        B, T = modality.shape
        device = modality.device
        for name, ids in (("positions", positions), ("doc_ids", doc_ids), ("span_ids", span_ids)):
            if ids is not None and ids.shape != (B, T):
                raise ValueError(f"{name} must have shape {(B, T)} like modality, got {tuple(ids.shape)}")
        gemm = self.gemm_kernel(device, dtype)
        routing = Routing.build(modality, list(self.cfg.towers), self.cfg.n_towers, gemm)
        if cache is None:
            mask = AttentionMask.build(B, T, device, backend=self.attention_backend(device), causal_=causal,
                                       doc_ids=doc_ids, span_ids=span_ids)
        else:
            self._check_cache(cache, B, doc_ids, span_ids, causal)
            mask = cache.mask(T, device)
            if positions is None:
                positions = cache.positions(T, device).expand(B, T)
        if positions is None:
            positions = torch.arange(T, device=device).expand(B, T)
        cos, sin = self.rope(positions)
        return BatchContext(batch=B, seq_len=T, routing=routing, mask=mask, cos=cos, sin=sin)

    def _check_cache(self, cache: KVCache, batch: int, doc_ids, span_ids, causal: bool) -> None:
        if doc_ids is not None or span_ids is not None or not causal:
            raise ValueError("a KV cache supports plain causal attention only: drop doc_ids/span_ids/"
                             "causal=False and decode one document per row")
        if len(cache.layers) != len(self.layers):
            raise ValueError(f"cache has {len(cache.layers)} layers, the backbone {len(self.layers)}: "
                             "make it with KVCache.empty(cfg.n_layers)")
        if cache.batch is not None and cache.batch != batch:
            raise ValueError(f"cache holds batch size {cache.batch}, got {batch} new rows")
        if cache.pad is not None and cache.pad.shape != (batch,):
            raise ValueError(f"cache pads {tuple(cache.pad.shape)} rows, got {batch} rows: KVCache.empty(n, pad) "
                             "takes one padding count per row")

    def forward(self, x: Tensor, modality: Tensor, *, positions: Tensor | None = None,
                doc_ids: Tensor | None = None, span_ids: Tensor | None = None, causal: bool = True,
                cache: KVCache | None = None) -> Tensor:
        """x: float[B, T, dim], modality: long[B, T] -> float[B, T, dim].

        ``positions`` (RoPE; default ``arange(T)``), ``doc_ids`` (packed documents
        never attend to each other), ``span_ids`` (bidirectional spans inside the
        causal mask) and ``causal`` are optional ``(B, T)`` ids / a flag.
        With ``cache`` (decoding), ``x`` holds only the new tokens: they attend to the cached
        keys/values plus their own, each layer appends its new keys/values, and
        ``cache.length`` advances by ``T``.
        """
        if x.dim() != 3 or x.shape[-1] != self.cfg.dim:
            raise ValueError(f"x must be float[B, T, {self.cfg.dim}], got shape {tuple(x.shape)}")
        if modality.shape != x.shape[:2]:
            raise ValueError(f"modality must have shape {tuple(x.shape[:2])}, got {tuple(modality.shape)}")
        ctx = self.context(modality, positions=positions, doc_ids=doc_ids, span_ids=span_ids, causal=causal,
                           cache=cache, dtype=x.dtype)
        B, T, D = x.shape
        h = ctx.routing.to_sorted(x.reshape(B * T, D))  # (N, D) tower-sorted
        if cache is None:
            for layer in self.layers:
                h = layer(h, ctx)
        else:
            for layer, kv in zip(self.layers, cache.layers):
                h = layer(h, replace(ctx, kv=kv))
            cache.length, cache.batch = cache.length + T, B
        h = self.norm(h, ctx.routing)
        return ctx.routing.to_sequence(h).view(B, T, D)

    def aux_loss(self) -> Tensor:
        """``aux_loss_coef`` x the load-balancing losses of the last forward, summed over MoE layers.

        Add it to the training loss after ``forward`` (same step). A scalar 0 when the backbone
        has no MoE or only expert-choice routers (balanced by construction).
        """
        losses = [m.last_aux_loss for m in self._moe.values() if m.last_aux_loss is not None]
        if not losses:
            return self.norm.weights[0].new_zeros(())
        return self.cfg.aux_loss_coef * torch.stack(losses).sum()

    def moe_stats(self) -> dict[str, MoEStats]:
        """Routing statistics of the last forward per MoE module, keyed by module name (empty without MoE)."""
        return {name: m.last_stats for name, m in self._moe.items() if m.last_stats is not None}

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
