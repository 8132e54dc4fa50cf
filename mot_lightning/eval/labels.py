"""The plug-in scorer for labelled data: a rule reads a label from a caption, a classifier from a picture.

Data whose captions name a class ("a photo of a tabby cat", "digit seven") gets the demo world's two
faithfulness measures: caption -> image (the classifier reads the generated picture; is it the caption's
label?) and image -> caption (the rule reads the generated caption; is it the picture's label?).

``LabelSpec`` says how, in a config:

- the rule, one of: ``rule`` (a ``class_path`` of a callable ``caption -> label | None``, or of a class
  built with ``rule_args`` whose instances are such callables); ``regex`` (the first capture group, or the
  whole match, lower-cased; with ``labels`` it must be one of them); ``labels`` alone (the one label whose
  words appear in the caption, matched as whole words, case-insensitive; none or several: unreadable);
- the classifier: ``classifier`` (a ``features.ModuleSpec``: ``network``, ``args``, ``weights``, ...; the
  network returns float[N, len(labels)] logits in ``labels`` order, weights from a local file), or,
  without one, a small CNN the app fits on the training images and the labels the rule reads from their
  captions (``LabelClassifier``; fitted once, kept in ``<dir>/label-classifier-<side>px-<hash>.pt`` like
  the fitted tokenizers, its hash covering the config, the labels and which data it learnt from). The
  fitted classifier's penultimate layer is also an embedding for FID / KID.

    labels:
      labels: [zero, one, two, three, four, five, six, seven, eight, nine]
      regex: "digit (\\w+)"          # optional: without it, the label words are looked for
      classifier: null               # null: fitted on the training images
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mot_lightning.data.locks import once
from mot_lightning.eval.degrade import degrade
from mot_lightning.eval.features import ModuleSpec, build_module, import_object, prepare

log = logging.getLogger("mot_lightning.eval")
FORMAT = "mot_lightning.label_classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    """The fitted classifier's network and fit (every field is part of its file name's hash)."""

    channels: tuple[int, int, int] = (16, 32, 64)
    features: int = 128  # penultimate width: the FID / KID embedding
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    augment: bool = True  # also learn from degraded pictures (eval/degrade.py), as generated ones can be
    max_images: int = 20_000  # training images read from the data (the first ones, in shard order)
    seed: int = 0


@dataclass(frozen=True)
class LabelSpec:
    """How captions and pictures are read as labels (module doc)."""

    labels: tuple[str, ...] | None = None
    regex: str | None = None
    rule: str | None = None
    rule_args: dict = field(default_factory=dict)
    classifier: ModuleSpec | None = None
    fit: ClassifierConfig = field(default_factory=ClassifierConfig)

    def __post_init__(self) -> None:
        if self.labels is None and self.regex is None and self.rule is None:
            raise ValueError("labels: give the label list (labels), a regex or a rule (class_path) to read a "
                             "caption's label")
        if self.classifier is not None and self.labels is None:
            raise ValueError("labels.classifier needs labels: the list its logits are in")


class LabelRule:
    """``caption -> label | None`` by the spec's rule, regex or label words (module doc)."""

    def __init__(self, spec: LabelSpec) -> None:
        self.labels = None if spec.labels is None else tuple(str(x).lower() for x in spec.labels)
        self.custom: Callable[[str], str | None] | None = None
        if spec.rule is not None:
            obj = import_object(spec.rule)
            self.custom = obj(**spec.rule_args) if isinstance(obj, type) else obj
            if spec.rule_args and not isinstance(obj, type):
                raise ValueError(f"labels.rule {spec.rule} is a function: rule_args are for a class")
        self.regex = None if spec.regex is None else re.compile(spec.regex, re.IGNORECASE)
        self.words = None if self.labels is None else [
            re.compile(rf"(?<!\w){re.escape(label)}(?!\w)", re.IGNORECASE) for label in self.labels]

    def __call__(self, caption: str) -> str | None:
        label = self._read(caption)
        if label is None:
            return None
        label = str(label).strip().lower()
        return label if self.labels is None or label in self.labels else None

    def _read(self, caption: str) -> str | None:
        if self.custom is not None:
            return self.custom(caption)
        if self.regex is not None:
            m = self.regex.search(caption)
            return None if m is None else (m.group(1) if m.groups() else m.group(0))
        found = [label for label, pattern in zip(self.labels, self.words) if pattern.search(caption)]
        return found[0] if len(found) == 1 else None


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class LabelClassifier(nn.Module):
    """The fitted classifier: float[N, 3, R, R] in [0, 1] -> float[N, classes] logits."""

    def __init__(self, classes: Sequence[str], image_size: int, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.classes, self.image_size, self.config = tuple(classes), image_size, config
        c1, c2, c3 = config.channels
        self.trunk = nn.Sequential(
            _conv(3, c1), _conv(c1, c2, kernel=4, stride=2), _conv(c2, c3, kernel=4, stride=2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c3 * 16, config.features), nn.ReLU())
        self.head = nn.Linear(config.features, len(self.classes))

    @property
    def num_features(self) -> int:
        return self.config.features

    def features(self, images: Tensor) -> Tensor:
        return self.trunk(images.float() - 0.5)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


class SpecClassifier(nn.Module):
    """A ``ModuleSpec`` classifier (weights from a file): float[N, 3, R, R] in [0, 1] -> logits."""

    def __init__(self, spec: ModuleSpec, classes: Sequence[str]) -> None:
        super().__init__()
        self.spec, self.classes = spec, tuple(classes)
        self.net = build_module(spec)

    def forward(self, images: Tensor) -> Tensor:
        logits = self.net(prepare(images, self.spec))
        if logits.dim() != 2 or logits.shape[1] != len(self.classes):
            raise ValueError(f"labels.classifier {self.spec.network} returned shape {tuple(logits.shape)}; "
                             f"it must return float[N, {len(self.classes)}] logits in the order of labels")
        return logits


class LabelScorer:
    """A rule and a classifier together: what a caption names, what a picture shows."""

    def __init__(self, rule: LabelRule, classifier: nn.Module) -> None:
        self.rule, self.classifier = rule, classifier.eval()
        self.classes: tuple[str, ...] = tuple(classifier.classes)

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 256) -> list[str]:
        """float[N, 3, R, R] in [0, 1] -> the label each picture shows."""
        device = next(self.classifier.parameters()).device
        out: list[str] = []
        for chunk in images.split(batch_size):
            out += [self.classes[i] for i in self.classifier(chunk.to(device, torch.float32)).argmax(-1).tolist()]
        return out

    def feature_module(self) -> nn.Module | None:
        """The fitted classifier's penultimate layer as a FID / KID embedding (None for a spec classifier)."""
        return _Penultimate(self.classifier) if isinstance(self.classifier, LabelClassifier) else None


class _Penultimate(nn.Module):
    def __init__(self, classifier: LabelClassifier) -> None:
        super().__init__()
        self.classifier, self.num_features = classifier, classifier.num_features

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Each vector scaled to norm ``sqrt(num_features)`` (as the demo scorer's: FID in units that do not
        depend on how the fit happened to scale the layer)."""
        device = next(self.classifier.parameters()).device
        features = self.classifier.features(images.to(device)).cpu()
        return F.normalize(features, dim=-1) * self.num_features ** 0.5


# --- fitting ----------------------------------------------------------------------------------------------
def fit_classifier(images: Tensor, labels: Sequence[str], classes: Sequence[str],
                   config: ClassifierConfig = ClassifierConfig()) -> LabelClassifier:
    """Fit on float[N, 3, R, R] pictures and their labels; deterministic given the seed and thread count."""
    t0 = time.perf_counter()
    index = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([index[x] for x in labels])
    pool = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    with torch.random.fork_rng(), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(config.seed)
        net = LabelClassifier(classes, images.shape[-1], config)
        g = torch.Generator().manual_seed(config.seed)
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps, pct_start=0.1)
        net.train()
        for step in range(config.steps):
            idx = torch.randint(len(pool), (config.batch_size,), generator=g)
            batch = pool[idx].float() / 255
            if config.augment:
                batch = degrade(batch, g)
            loss = F.cross_entropy(net(batch), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 200 == 0 or step == config.steps - 1:
                log.info("label classifier: step %d/%d loss %.4f", step + 1, config.steps, loss.item())
    log.info("label classifier fitted on %d pictures in %.0f s", len(pool), time.perf_counter() - t0)
    return net.eval()


def classifier_path(directory: str | os.PathLike, image_size: int, classes: Sequence[str], config: ClassifierConfig,
                    data_key: str) -> Path:
    digest = hashlib.sha1(repr((config, tuple(classes), data_key)).encode()).hexdigest()[:10]
    return Path(directory) / f"label-classifier-{image_size}px-{digest}.pt"


def save_classifier(net: LabelClassifier, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "classes": list(net.classes), "image_size": net.image_size,
               "config": asdict(net.config), "state": net.state_dict()}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_classifier(path: str | os.PathLike) -> LabelClassifier:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable label classifier ({type(err).__name__}); delete it and it is "
                         "fitted again") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a mot_lightning label classifier file; delete it and it is fitted again")
    config = payload["config"]
    config = ClassifierConfig(**{**config, "channels": tuple(config["channels"])})
    net = LabelClassifier(payload["classes"], int(payload["image_size"]), config)
    net.load_state_dict(payload["state"])
    return net.eval()


def label_scorer(spec: LabelSpec, pairs: Callable[[int], tuple[Tensor, list[str]]], image_size: int,
                 directory: str | os.PathLike, data_key: str) -> LabelScorer:
    """The scorer of ``spec``: its classifier loaded from its spec, or the fitted one (fitted and saved in
    ``directory`` first when missing) from ``pairs(n) -> (float[N, 3, R, R], captions)`` of training data.
    ``data_key`` names that data in the file's hash (its shard URLs)."""
    rule = LabelRule(spec)
    if spec.classifier is not None:
        return LabelScorer(rule, SpecClassifier(spec.classifier, rule.labels))
    classes = rule.labels
    path = None if classes is None else classifier_path(directory, image_size, classes, spec.fit, data_key)
    if path is not None and path.exists():
        return LabelScorer(rule, load_classifier(path))
    images, captions = pairs(spec.fit.max_images)
    read = [rule(c) for c in captions]
    keep = [i for i, x in enumerate(read) if x is not None]
    if classes is None:
        classes = tuple(sorted({read[i] for i in keep}))
        path = classifier_path(directory, image_size, classes, spec.fit, data_key)
    if len(keep) < 2 or len(set(read[i] for i in keep)) < 2:
        raise ValueError(f"the label classifier needs labelled training pictures of at least 2 labels: the rule "
                         f"read a label from {len(keep)} of {len(captions)} training captions; check labels / "
                         "regex / rule against your captions")
    with once(path, "the label classifier"):
        if not path.exists():
            log.info("fitting the label classifier on %d training pictures -> %s", len(keep), path)
            net = fit_classifier(images[keep], [read[i] for i in keep], classes, spec.fit)
            save_classifier(net, path)
    return LabelScorer(rule, load_classifier(path))
