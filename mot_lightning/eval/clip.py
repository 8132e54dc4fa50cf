"""CLIPScore from a local folder: how well generated pictures agree with their captions.

``ClipScorer(folder)`` reads a CLIP model and its processor in the Hugging Face layout (``config.json``,
weights, tokenizer and image-processor files: what ``CLIPModel.save_pretrained`` and
``CLIPProcessor.save_pretrained`` write) with ``local_files_only``: nothing is downloaded. It needs the
``transformers`` package.

The score is torchmetrics' ``CLIPScore``: ``100 * cos(image embedding, caption embedding)`` per pair, the
mean over pairs floored at 0. ``scores`` returns the per-pair values (unfloored), from which the mean and its
bootstrap error come (``errors.mean_and_se``); a test holds the mean to torchmetrics' value.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


class ClipScorer:
    def __init__(self, folder: str | Path, device: torch.device | str = "cpu") -> None:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"clip_model {folder}: no config.json there; give a local folder written by "
                                    "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained (nothing is "
                                    "downloaded)")
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as err:
            raise ImportError("CLIPScore needs the transformers package: pip install transformers") from err
        self.folder, self.device = folder, torch.device(device)
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)

    @staticmethod
    def to_uint8(images: Tensor) -> Tensor:
        """float[N, 3, R, R] in [0, 1] -> uint8 (what torchmetrics' CLIPScore is given)."""
        return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)

    @torch.no_grad()
    def scores(self, images: Tensor, captions: Sequence[str], batch_size: int = 64) -> Tensor:
        """float[N] of ``100 * cos`` for float[N, 3, R, R] pictures in [0, 1] and their N captions."""
        if len(images) != len(captions):
            raise ValueError(f"CLIPScore needs one caption per picture, got {len(images)} and {len(captions)}")
        out = []
        for start in range(0, len(images), batch_size):
            pics = self.to_uint8(images[start:start + batch_size])
            texts = list(captions[start:start + batch_size])
            pixel = self.processor(images=[p for p in pics], return_tensors="pt", padding=True)["pixel_values"]
            tokens = self.processor(text=texts, return_tensors="pt", padding=True)
            limit = self.model.config.text_config.max_position_embeddings
            ids, mask = tokens["input_ids"][:, :limit], tokens["attention_mask"][:, :limit]
            img = _embedding(self.model.get_image_features(pixel_values=pixel.to(self.device)))
            txt = _embedding(self.model.get_text_features(input_ids=ids.to(self.device),
                                                          attention_mask=mask.to(self.device)))
            out.append(100 * (img / img.norm(dim=-1, keepdim=True) * txt / txt.norm(dim=-1, keepdim=True)).sum(-1))
        return torch.cat(out).float().cpu()


def _embedding(out) -> Tensor:
    """transformers 4.x returns the projected embedding; 5.x may wrap it in an output object."""
    if isinstance(out, Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, Tensor):
            return value
    raise TypeError(f"unexpected CLIP features of type {type(out).__name__}")
