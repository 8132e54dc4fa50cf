"""The faithfulness scorer: a small CNN that reads a demo-world picture back into groups.

It plays the part CLIP plays in the paper's caption -> image evaluation, but answers attribute by
attribute: for each of the five regions it predicts colour | none, shape | none, size | none and
count | none (20 classification heads over one shared trunk). A region holds a group when the four
heads' mean probability of ``none`` is below 1/2; the group's attributes are then each head's most
likely non-``none`` class. ``features`` (the penultimate layer) are the embedding FID and KID use.

One scorer per image side (and world: ``worlds.py`` names the one demo world, and its name is part of the
file, so a scorer of a retired world is never read as this one's). It is fitted on renders of the world
(``World.training_example``: both splits, 0-3 groups) passed through generic degradations (``degrade.py``), never
on a tokenizer's output, and kept in a fit-once file ``<dir>/scorer-<world>-<side>px-<hash>.pt`` whose
hash covers the config, like the data module's tokenizer files (``fitted_scorer``). Its accuracy on
held-out renders, clean and after the demo tokenizers' round trips, is in benchmarks/README.md.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mot_lightning.data.locks import once
from mot_lightning.eval.degrade import degrade
from mot_lightning.eval.worlds import World, get_world, to_tensor
from mot_lightning.world.procedural import Group

log = logging.getLogger("mot_lightning.eval")
FORMAT = "mot_lightning.scorer"
HEADS = ("colour", "shape", "size", "count")  # per region; class 0 of each is "none"


@dataclass(frozen=True)
class ScorerConfig:
    """Network and fit of the scorer (every field is part of the file name's hash)."""

    channels: tuple[int, int, int] = (16, 32, 64)  # conv widths at full, 1/2 and 1/4 of the side
    features: int = 128  # penultimate width: the FID / KID embedding
    pool: int = 12_000  # distinct training renders (each seen under fresh degradations)
    steps: int | None = None  # None: the world's default (``World.scorer_steps``)
    batch_size: int = 128
    lr: float = 2e-3
    augment: bool = True  # train on degraded renders too (degrade.py); False: clean renders only
    seed: int = 0


class SceneScorer(nn.Module):
    """float[B, 3, R, R] in [0, 1] -> per-region logits; see the module doc."""

    def __init__(self, world: World, image_size: int, config: ScorerConfig = ScorerConfig()) -> None:
        super().__init__()
        self.world, self.image_size, self.config = world, image_size, config
        self.classes = (len(world.colours) + 1, len(world.shapes) + 1, len(world.sizes) + 1, len(world.counts) + 1)
        c1, c2, c3 = config.channels
        self.trunk = nn.Sequential(
            _conv(3, c1),  # (B, c1, R, R): full resolution, for shapes a few pixels wide
            _conv(c1, c2, kernel=4, stride=2), _conv(c2, c2), nn.MaxPool2d(2),  # (B, c2, R/4, R/4)
            _conv(c2, c3), nn.AdaptiveAvgPool2d(8),  # (B, c3, 8, 8): the layout survives the flatten
            nn.Flatten(), nn.Linear(c3 * 64, config.features), nn.ReLU(),
        )
        self.heads = nn.Linear(config.features, len(world.regions) * sum(self.classes))

    @property
    def num_features(self) -> int:  # torchmetrics FID / KID read this
        return self.config.features

    def features(self, images: Tensor) -> Tensor:
        """float[B, 3, R, R] -> float[B, features]."""
        return self.trunk(images - 0.5)

    def forward(self, images: Tensor) -> list[Tensor]:
        """-> one float[B, 5, classes] logit tensor per head (``HEADS`` order; regions in ``World.regions`` order)."""
        logits = self.heads(self.features(images)).view(len(images), len(self.world.regions), -1)  # (B, 5, K)
        return list(logits.split(self.classes, dim=-1))

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 256) -> list[tuple[Group, ...]]:
        """float[N, 3, R, R] -> the groups each picture shows (at most one per region, in region order)."""
        self._check_size(images)
        was = self.training
        self.eval()
        out: list[tuple[Group, ...]] = []
        device = next(self.parameters()).device
        for chunk in images.split(batch_size):
            out += self._decode([x.float() for x in self(chunk.to(device, torch.float32))])
        self.train(was)
        return out

    def _decode(self, logits: list[Tensor]) -> list[tuple[Group, ...]]:
        probs = [x.softmax(-1) for x in logits]
        none = torch.stack([p[..., 0] for p in probs]).mean(0)  # (B, 5)
        best = torch.stack([p[..., 1:].argmax(-1) for p in probs], dim=-1)  # (B, 5, 4): index - 1
        w = self.world
        scenes = []
        for b in range(len(none)):
            groups = []
            for r, region in enumerate(w.regions):
                if none[b, r] < 0.5:
                    colour, shape, size, count = best[b, r].tolist()
                    groups.append(Group(w.shapes[shape], w.colours[colour], w.sizes[size], w.counts[count], region))
            scenes.append(tuple(groups))
        return scenes

    def targets(self, scenes: list[tuple[Group, ...]]) -> Tensor:
        """Groups -> long[B, 5, 4] class ids (0 = none), the heads' training targets."""
        w = self.world
        out = torch.zeros(len(scenes), len(w.regions), len(HEADS), dtype=torch.long)
        for b, groups in enumerate(scenes):
            for g in groups:
                out[b, w.regions.index(g.region)] = torch.tensor([
                    w.colours.index(g.colour) + 1, w.shapes.index(g.shape) + 1, w.sizes.index(g.size) + 1,
                    w.counts.index(g.count) + 1])
        return out

    def loss(self, images: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy over the 20 heads; targets long[B, 5, 4]."""
        return sum(F.cross_entropy(x.flatten(0, 1), targets[..., h].flatten())
                   for h, x in enumerate(self(images))) / len(HEADS)

    def _check_size(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] != self.image_size:
            raise ValueError(f"the {self.world.name}-world scorer reads float[N, 3, {self.image_size}, "
                             f"{self.image_size}] images, got shape {tuple(images.shape)}: fit a scorer for "
                             "this image size (fitted_scorer does) or resize the images")


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


# --- fitting ----------------------------------------------------------------------------------------
def training_pool(world: World, size: int, n: int, seed: int) -> tuple[Tensor, list[tuple[Group, ...]]]:
    """``n`` training renders uint8[n, 3, R, R] and their groups (deterministic in ``seed``)."""
    rng = random.Random(f"mot_lightning scorer:{world.name}:{size}:{seed}")
    images, scenes = [], []
    for _ in range(n):
        image, groups = world.training_example(rng, size)
        images.append((to_tensor(image) * 255).round().to(torch.uint8))
        scenes.append(groups)
    return torch.stack(images), scenes


def fit_scorer(world: World, image_size: int, config: ScorerConfig = ScorerConfig(),
               device: torch.device | str = "cpu") -> SceneScorer:
    """Fit a scorer on the world's renders (module doc) on ``device``; deterministic given ``config.seed``,
    the device and the thread count. Returned on the CPU, in eval mode."""
    t0 = time.perf_counter()
    steps = config.steps or world.scorer_steps
    # may be called inside Lightning's validation (inference mode, no grad): fitting needs autograd
    with torch.random.fork_rng(), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(config.seed)
        scorer = SceneScorer(world, image_size, config).to(device)
        pool, scenes = training_pool(world, image_size, config.pool, config.seed)
        targets = scorer.targets(scenes)
        g = torch.Generator().manual_seed(config.seed)  # batches and degradations: drawn on the CPU
        opt = torch.optim.AdamW(scorer.parameters(), lr=config.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps, pct_start=0.1)
        scorer.train()
        for step in range(steps):
            idx = torch.randint(len(pool), (config.batch_size,), generator=g)
            images = pool[idx].float() / 255
            images = degrade(images, g) if config.augment else images
            loss = scorer.loss(images.to(device), targets[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 500 == 0 or step == steps - 1:
                log.info("scorer (%s world, %d px): step %d/%d loss %.4f", world.name, image_size, step + 1,
                         steps, loss.item())
    log.info("scorer fitted in %.0f s", time.perf_counter() - t0)
    return scorer.cpu().eval()


# --- files ------------------------------------------------------------------------------------------
def scorer_path(directory: str | os.PathLike, world: str, image_size: int,
                config: ScorerConfig = ScorerConfig()) -> Path:
    digest = hashlib.sha1(repr(config).encode()).hexdigest()[:10]
    return Path(directory) / f"scorer-{world}-{image_size}px-{digest}.pt"


def save_scorer(scorer: SceneScorer, path: str | os.PathLike) -> None:
    """Plain values and tensors only (read back weights-only); written to a temp file, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "world": scorer.world.name, "image_size": scorer.image_size,
               "config": asdict(scorer.config), "state": scorer.state_dict()}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_scorer(path: str | os.PathLike) -> SceneScorer:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable scorer file ({type(err).__name__}); delete it and it is "
                         "fitted again") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a mot_lightning scorer file; delete it and it is fitted again")
    config = payload["config"]
    config = ScorerConfig(**{**config, "channels": tuple(config["channels"])})
    scorer = SceneScorer(get_world(payload["world"]), int(payload["image_size"]), config)
    scorer.load_state_dict(payload["state"])
    return scorer.eval()


def fitted_scorer(world: str, image_size: int, directory: str | os.PathLike,
                  config: ScorerConfig = ScorerConfig(), device: torch.device | str = "cpu") -> SceneScorer:
    """The scorer of ``world`` at ``image_size`` from its file in ``directory``, fitted (on ``device``) and
    saved first when the file is missing (a changed config gets a new file). Returned on the CPU."""
    path = scorer_path(directory, world, image_size, config)
    with once(path, "the faithfulness scorer"):  # concurrent runs sharing the directory fit it once
        if not path.exists():
            log.info("fitting the %s-world faithfulness scorer (%d px) -> %s", world, image_size, path)
            save_scorer(fit_scorer(get_world(world), image_size, config, device), path)
    return load_scorer(path)
