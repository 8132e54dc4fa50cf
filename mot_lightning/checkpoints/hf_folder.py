"""A local Hugging Face model folder (``config.json``, ``*.safetensors``, ``tokenizer.json``) read lazily.

No hub access: the folder is a path. Weights are read one tensor at a time with ``safetensors.safe_open``
(``HFFolder.tensor``), so a warm start holds the model plus about one tensor (and its reshaped copy), never a
second whole state dict. ``app_state`` is a read-only mapping of ``TokenLM`` names (a dense one-tower model)
to tensors, each read from the files when asked for; ``model/hf_llama.py`` says how names and rows map.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from torch import Tensor

from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.hf_llama import TensorMap, backbone_kwargs, tensor_maps, to_app
from mot_lightning.tokenizers.hf_text import LAYOUT_KEY

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"


def is_hf_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).is_file()


class HFFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not is_hf_folder(self.path):
            raise FileNotFoundError(f"{self.path} is not a Hugging Face model folder (no {CONFIG}): give the "
                                    "folder that holds config.json, *.safetensors and tokenizer.json")
        self.config = json.loads((self.path / CONFIG).read_text())
        self.cfg = TransformerConfig(**backbone_kwargs(self.config))
        self.vocab_size = int(self.config["vocab_size"])
        # the embedding rows' blocks: all text for an LLM; text + the app's boundary tokens for an app export
        self.layout = dict(self.config.get(LAYOUT_KEY) or {"text": self.vocab_size})
        self._files = self._weight_map()
        # tied: the head is the embedding (an untied folder without lm_head.weight is refused below as missing it)
        self.tied = bool(self.config.get("tie_word_embeddings", "lm_head.weight" not in self._files))
        self.maps = {m.dense_name: m for m in tensor_maps(self.cfg, tied=self.tied)}
        missing = sorted({n for m in self.maps.values() for n in m.hf} - set(self._files))
        if missing:
            raise ValueError(f"{self.path}: the safetensors files lack {missing[:4]} (+{max(len(missing) - 4, 0)} "
                             f"more) that config.json ({self.config.get('model_type')}) implies")

    def _weight_map(self) -> dict[str, Path]:
        """HF tensor name -> the file holding it (from the shard index, else every ``*.safetensors``)."""
        from safetensors import safe_open

        index = self.path / INDEX
        if index.is_file():
            return {k: self.path / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.path} holds no *.safetensors weights (PyTorch .bin files are not read: "
                                    "convert them with safetensors first)")
        out = {}
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                out.update({k: f for k in handle.keys()})
        return out

    def tensor(self, name: str) -> Tensor:
        """One HF tensor, read from its file (only that tensor's bytes are copied)."""
        from safetensors import safe_open

        with safe_open(str(self._files[name]), framework="pt") as handle:
            return handle.get_tensor(name)

    def unused(self) -> list[str]:
        """HF tensors no app tensor takes (e.g. rotary buffers some exports carry)."""
        used = {n for m in self.maps.values() for n in m.hf}
        return sorted(set(self._files) - used)

    def app_state(self) -> Mapping[str, Tensor]:
        return _LazyState(self)


class _LazyState(Mapping):
    """``TokenLM`` name -> tensor, read and converted on each access (nothing is kept)."""

    def __init__(self, folder: HFFolder) -> None:
        self.folder = folder

    def __getitem__(self, name: str) -> Tensor:
        m: TensorMap = self.folder.maps[name]
        return to_app(m, self.folder.tensor, self.folder.cfg.head_dim)

    def __iter__(self) -> Iterator[str]:
        return iter(self.folder.maps)

    def __len__(self) -> int:
        return len(self.folder.maps)
