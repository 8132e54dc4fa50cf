"""Generation metrics on any data: FID / KID in configured features, CLIPScore, the plug-in label scorer.

The demo world has its scene scorer and caption parser; other data has what its owner configures
(``DataMetrics``, the ``metrics`` group of ``GenerationMetrics`` and of ``mot eval --metrics FILE``):

    metrics:
      features:                      # FID / KID in these features: fid_<name>, kid_<name>
        network: torchvision.models.resnet18
        weights: /models/resnet18.pt
        layer: avgpool
      clip_model: /models/clip-vit-b32   # CLIPScore (a local Hugging Face folder)
      labels:                        # caption -> label rule + classifier (eval/labels.py)
        labels: [cat, dog, bird]

What runs, on the first validation set's image-caption pairs (``DataSuite``): the first ``n`` pairs are the
prompts; the next ``n`` (or, with fewer than ``2n`` pairs, the two halves of what there is) are the FID
reference, so the real-vs-real floor is two disjoint halves of the user's validation images.

- ``fid``, ``kid`` (in the fitted label classifier's features), ``fid_<name>`` / ``kid_<name>`` (``features``),
  ``fid_inception`` / ``kid_inception`` (local Inception-v3 weights): the pictures generated from the
  prompts' captions against the reference; the floor is the prompts' real pictures against it
  (``<metric>_floor`` in the bounds);
- ``clip_score``: CLIPScore of the generated pictures with their captions; bound ``clip_score_real``;
- ``faithfulness_label``: caption -> image, the classifier reads the caption's label in the generated
  picture (prompts whose caption the rule reads); bounds: ``faithfulness_label_ceiling`` (the classifier on
  the prompts' real pictures) and ``label_chance`` (the commonest label's share);
- ``caption_label``: image -> caption on the prompts' real pictures, the rule reads the real caption's
  label in the generated caption; ``bleu``: those captions against the real caption.

Every metric carries its sampling error (``errors.py``).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mot_lightning.eval import errors as E
from mot_lightning.eval import metrics as M
from mot_lightning.eval.clip import ClipScorer
from mot_lightning.eval.features import ModuleFeatures, ModuleSpec
from mot_lightning.eval.labels import ClassifierConfig, LabelScorer, LabelSpec, label_scorer
from mot_lightning.eval.results import EvalResult, Sample

log = logging.getLogger("mot_lightning.eval")


@dataclass(frozen=True)
class DataMetrics:
    """What scores generations on data other than the demo world (module doc); all optional."""

    features: ModuleSpec | None = None
    clip_model: str | None = None
    labels: LabelSpec | None = None

    @property
    def empty(self) -> bool:
        return self.features is None and self.clip_model is None and self.labels is None

    @classmethod
    def from_dict(cls, data: dict, where: str = "metrics") -> DataMetrics:
        """From the mapping a YAML file holds (the keys above); unknown keys are refused by name."""
        features = _build(ModuleSpec, data.get("features"), f"{where}.features")
        labels = data.get("labels")
        if labels is not None:
            labels = dict(_mapping(labels, f"{where}.labels"))
            labels["classifier"] = _build(ModuleSpec, labels.get("classifier"), f"{where}.labels.classifier")
            labels["fit"] = _build(ClassifierConfig, labels.get("fit"), f"{where}.labels.fit") or ClassifierConfig()
            labels = _build(LabelSpec, labels, f"{where}.labels")
        clip = data.get("clip_model")
        return _build(cls, {**data, "features": features, "labels": labels,
                            "clip_model": None if clip is None else str(clip)}, where)


def _mapping(data, where: str) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}: {data!r}")
    return data


def _build(cls, data, where: str):
    """``cls(**data)`` with lists made tuples and unknown keys named (None stays None)."""
    if data is None or isinstance(data, cls):
        return data
    data = _mapping(data, where)
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class DataSuite:
    """Prompts, reference and scorers for ``data_tasks`` (built once by ``build_data_suite``)."""

    captions: list[str]
    real: Tensor  # float[n, 3, R, R]: the prompts' own pictures
    reference: Tensor  # float[n, 3, R, R]: other validation pictures (FID reference)
    embeddings: dict[str, nn.Module] = field(default_factory=dict)  # metric suffix ("", "_inception", ..) -> net
    clip: ClipScorer | None = None
    labels: LabelScorer | None = None
    bounds: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    def caption_labels(self) -> list[str | None]:
        return [self.labels.rule(c) for c in self.captions]


def build_data_suite(dm, config: DataMetrics, n: int, inception: nn.Module | None, notes: list[str],
                     device: torch.device | str = "cpu", seed: int = 0) -> DataSuite | None:
    """The suite for a data module after ``setup`` (None, with a note, when there is nothing to score with or
    too few validation pictures)."""
    images, captions = dm.image_text_pairs(2 * n)
    if len(images) < 4:
        notes.append(f"{len(images)} image-caption pairs in the first validation set, fewer than 4: image "
                     "generation metrics not measured")
        return None
    half = min(n, len(images) // 2)
    if half < n:
        notes.append(f"{len(images)} validation pictures, fewer than 2 x {n}: {half} prompts and {half} reference "
                     "pictures")
    suite = DataSuite(captions[:half], images[:half], images[half:2 * half], seed=seed)
    if config.labels is not None:
        suite.labels = label_scorer(config.labels, dm.train_image_text_pairs, dm.image_size,
                                    dm.tokenizer_files.dir, _data_key(dm))
        fitted = suite.labels.feature_module()
        if fitted is not None:
            suite.embeddings[""] = fitted
    if config.features is not None:
        suite.embeddings[f"_{config.features.name}"] = ModuleFeatures(config.features, dm.image_size)
    if inception is not None:
        suite.embeddings["_inception"] = inception
    if config.clip_model is not None:
        suite.clip = ClipScorer(config.clip_model, device)
    if not suite.embeddings:
        notes.append("FID / KID not measured: no features configured (metrics.features, metrics.labels with a "
                     "fitted classifier, or local Inception weights)")
    _bounds(suite)
    return suite


def _data_key(dm) -> str:
    return repr(sorted(str(c.urls) for c in dm.plan.train_configs()))


def _bounds(suite: DataSuite) -> None:
    for suffix, net in suite.embeddings.items():
        floor = M.distribution(suite.real, suite.reference, net, suite.seed)
        suite.bounds |= {f"{k}{suffix}_floor": v for k, v in floor.items()}
    if suite.clip is not None:
        suite.bounds["clip_score_real"] = max(float(suite.clip.scores(suite.real, suite.captions).mean()), 0.0)
    if suite.labels is not None:
        named = suite.caption_labels()
        keep = [i for i, x in enumerate(named) if x is not None]
        if keep:
            shown = suite.labels.predict(suite.real[keep])
            suite.bounds["faithfulness_label_ceiling"] = sum(s == named[i] for s, i in zip(shown, keep)) / len(keep)
            suite.bounds["label_chance"] = Counter(named[i] for i in keep).most_common(1)[0][1] / len(keep)


def data_tasks(tasks, suite: DataSuite, result: EvalResult) -> None:
    """Caption -> image and image -> caption on the suite's prompts (``tasks``: ``sampling.GenerationTasks``);
    metrics into ``result``."""
    n = len(suite.captions)
    fake = tasks.caption_to_image(suite.captions).cpu().float().clamp(0, 1)
    for suffix, net in suite.embeddings.items():
        values, ses = M.distribution_with_errors(suite.reference, fake, net, suite.seed)
        what = {"": "the fitted label classifier's", "_inception": "Inception-v3"}.get(suffix, f"the {suffix[1:]}")
        for name, value in values.items():
            tag, floor = f"{name}{suffix}", suite.bounds[f"{name}{suffix}_floor"]
            result.add("", {tag: value}, n,
                       f"{name.upper()} of the pictures generated from {n} validation captions vs "
                       f"{len(suite.reference)} other validation pictures, in {what} features. Floor (the captions' "
                       f"real pictures vs the same): {floor:.4g}", se={tag: ses[name]})
    if suite.clip is not None:
        value, se = E.mean_and_se(suite.clip.scores(fake, suite.captions).tolist(), suite.seed)
        result.add("", {"clip_score": max(value, 0.0)}, n,
                   "CLIPScore (100 x cosine of CLIP embeddings, mean floored at 0) of the generated pictures with "
                   f"their captions. Real pictures with their captions: {suite.bounds['clip_score_real']:.4g}",
                   se={"clip_score": se})
    captions = tasks.image_to_caption(suite.real)
    bleu, bleu_se = M.bleu_with_error(captions, [[c] for c in suite.captions], suite.seed)
    result.add("", {"bleu": bleu}, n, "image->caption on validation pictures: corpus BLEU-4 against the picture's "
               "own caption (lower case, no punctuation)", se={"bleu": bleu_se})
    for i in range(min(n, 64)):
        result.samples.append(_sample(fake[i], suite.captions[i]))
    if suite.labels is None:
        return
    named = suite.caption_labels()
    keep = [i for i, x in enumerate(named) if x is not None]
    if not keep:
        result.notes.append("the label rule reads no label from the validation captions: faithfulness_label and "
                            "caption_label not measured")
        return
    shown = suite.labels.predict(fake[keep])
    p = sum(s == named[i] for s, i in zip(shown, keep)) / len(keep)
    result.add("", {"faithfulness_label": p}, len(keep),
               f"caption->image: share of pictures generated from {len(keep)} labelled validation captions that the "
               f"classifier reads as the caption's label. Ceiling (real pictures): "
               f"{suite.bounds['faithfulness_label_ceiling']:.3f}; chance (commonest label): "
               f"{suite.bounds['label_chance']:.3f}", se={"faithfulness_label": E.binomial_se(p, len(keep))})
    for j, i in enumerate(keep[:64]):
        if i < len(result.samples):
            result.samples[i].misses = [] if shown[j] == named[i] else [f"read as {shown[j]}"]
    read = [suite.labels.rule(captions[i]) for i in keep]
    p = sum(r == named[i] for r, i in zip(read, keep)) / len(keep)
    result.add("", {"caption_label": p}, len(keep),
               f"image->caption on {len(keep)} labelled validation pictures: share of generated captions from which "
               "the label rule reads the picture's label (its real caption's)",
               se={"caption_label": E.binomial_se(p, len(keep))})


def _sample(image: Tensor, caption: str) -> Sample:
    return Sample(image, caption, [], "seen")
