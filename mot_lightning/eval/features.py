"""Networks named in a config, with weights from a local file: FID / KID features and image classifiers.

``ModuleSpec`` names a network by its class path (``network``, built with ``args``; the path may also name a
function that returns a module, such as ``torchvision.models.resnet18``; the keys are not LightningCLI's
``class_path`` / ``init_args``, which its parser would take for a subclass of the spec itself) and a local
weights file (``.safetensors``, or a ``torch.save`` state dict read weights-only; a ``state_dict`` entry
of a checkpoint is taken). Nothing is downloaded. Images go in as float[N, 3, R, R] in [0, 1]; the spec
says how the network wants them (``input_size``: resized with bilinear filtering; ``mean`` / ``std``:
normalised per channel).

``ModuleFeatures`` is such a network as a frozen feature extractor for ``metrics.distribution``: the output
of the submodule named ``layer`` (``avgpool`` of a torchvision ResNet, say), or of the whole network,
flattened to float[N, d].

    features:
      network: torchvision.models.resnet18
      args: {num_classes: 10}
      weights: /data/resnet18_digits.pt
      layer: avgpool
      input_size: 64
      mean: [0.485, 0.456, 0.406]
      std: [0.229, 0.224, 0.225]
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ModuleSpec:
    """A network by class path (``network``, built with ``args``) with weights from a local file (module doc)."""

    network: str
    weights: str | None = None  # None: the network's own initialisation (tests; a fixed random embedding)
    args: dict = field(default_factory=dict)
    layer: str | None = None  # features: this submodule's output (None: the network's output)
    input_size: int | None = None  # resize to this side first (None: as the data's images are)
    mean: tuple[float, ...] | None = None  # per-channel normalisation after the resize (None: none)
    std: tuple[float, ...] | None = None
    name: str = "features"  # metric suffix: fid_<name>, kid_<name>


def import_object(class_path: str):
    """``package.module.Name`` -> the object, with an error that says what to fix."""
    module_name, _, attr = class_path.rpartition(".")
    if not module_name:
        raise ValueError(f"class_path {class_path!r} must be a dotted path such as torchvision.models.resnet18")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"class_path {class_path!r}: cannot import {module_name} ({err}); install the package "
                         "that provides it or fix the path") from err
    if not hasattr(module, attr):
        raise ValueError(f"class_path {class_path!r}: {module_name} has no attribute {attr!r}")
    return getattr(module, attr)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a local weights file: ``.safetensors`` or a (weights-only) ``torch.save`` state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist: give a local .safetensors or .pt file "
                                "(nothing is downloaded)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable weights file ({type(err).__name__}: {err}); save the "
                         "network's state_dict with torch.save or safetensors") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor)")
    return state


def build_module(spec: ModuleSpec) -> nn.Module:
    """The network of ``spec`` with its weights loaded (strictly), in eval mode, gradients off."""
    net = import_object(spec.network)(**dict(spec.args))
    if not isinstance(net, nn.Module):
        raise ValueError(f"network {spec.network!r} built a {type(net).__name__}, not a torch.nn.Module")
    if spec.weights is not None:
        missing, unexpected = net.load_state_dict(read_state_dict(spec.weights), strict=False)
        if missing or unexpected:
            raise ValueError(f"{spec.weights} does not fit {spec.network}({spec.args}): missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; check args")
    return net.eval().requires_grad_(False)


def prepare(images: Tensor, spec: ModuleSpec) -> Tensor:
    """float[N, 3, R, R] in [0, 1] -> what the network of ``spec`` reads (resized, normalised)."""
    x = images.float()
    if spec.input_size is not None and x.shape[-1] != spec.input_size:
        x = F.interpolate(x, size=(spec.input_size, spec.input_size), mode="bilinear", align_corners=False,
                          antialias=True)
    if spec.mean is not None:
        x = x - torch.tensor(spec.mean, dtype=x.dtype).view(1, -1, 1, 1)
    if spec.std is not None:
        x = x / torch.tensor(spec.std, dtype=x.dtype).view(1, -1, 1, 1)
    return x


class ModuleFeatures(nn.Module):
    """A ``ModuleSpec`` network as a frozen feature extractor: float[N, 3, R, R] in [0, 1] -> float[N, d]."""

    def __init__(self, spec: ModuleSpec, image_size: int) -> None:
        super().__init__()
        self.spec = spec
        self.net = build_module(spec)
        self._target = self.net if spec.layer is None else self._submodule(spec.layer)
        self.num_features = int(self(torch.full((2, 3, image_size, image_size), 0.5)).shape[1])

    def _submodule(self, layer: str) -> nn.Module:
        try:
            return self.net.get_submodule(layer)
        except AttributeError as err:
            names = [n for n, _ in self.net.named_modules() if n][:12]
            raise ValueError(f"{self.spec.network} has no submodule {layer!r}; some it has: {names}") from err

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        captured: list[Tensor] = []
        hook = self._target.register_forward_hook(lambda m, i, out: captured.append(out))
        try:
            self.net(prepare(images, self.spec))
        finally:
            hook.remove()
        out = captured[0]
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.flatten(1).float()
