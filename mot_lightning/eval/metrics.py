"""The numbers: distribution distances (FID, KID), caption and speech metrics, through torchmetrics.

- ``distribution``: FID and KID between two image sets in a given embedding. The embedding is the
  faithfulness scorer's penultimate layer (``ScorerFeatures``; works offline), or Inception-v3 when its
  weights are on this machine (``inception_features``: never downloaded; needs the torch-fidelity
  package, which torchmetrics builds it with). KID's random subsets are drawn
  under a seeded generator, so the same sets give the same number.
- ``bleu``: corpus BLEU-4 (torchmetrics ``BLEUScore``) against several reference captions per image.
- ``error_rates``: word and character error rate (torchmetrics) of transcriptions.
- ``unit_metrics``: generated speech units against reference units: ``unit_acc = 1 - (unit edit
  distance summed over clips) / (reference units summed)`` (the word error rate over unit "words": it goes
  below 0 when the generated speech is much longer than the reference) and ``duration_ratio =
  generated units / reference units`` (summed over clips; 1 is the reference's length).

Every torchmetrics object here computes on what this process holds (``sync_on_compute=False``): the training
callback evaluates on global rank 0 alone (or on every rank alike for a sharded model, rank 0 first), so a
sync across ranks would wait for ranks that never call it.

Texts are compared after ``normalize_text`` (lower case, punctuation dropped, spaces collapsed): the demo
captions end in a period that says nothing about the content.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.text import char_error_rate, word_error_rate
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.text import BLEUScore

from mot_lightning.eval import errors as E

INCEPTION_ENV = "MOT_INCEPTION_WEIGHTS"  # a local file of torch-fidelity's FID Inception-v3 weights


class ScorerFeatures(nn.Module):
    """A scorer's penultimate layer as a frozen feature extractor (float images in [0, 1]), each vector scaled
    to norm ``sqrt(num_features)``: the layer's raw scale is arbitrary (tens to hundreds), which would make
    FID's units and KID's cubic kernel ``(x.y / d + 1)^3`` depend on how the scorer happened to train; scaled,
    ``x.y / d`` is the cosine of two pictures' features and FID is in units of that sphere."""

    def __init__(self, scorer: nn.Module) -> None:
        super().__init__()
        self.scorer = scorer
        self.num_features = scorer.num_features

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        self.scorer.eval()
        device = next(self.scorer.parameters()).device
        features = self.scorer.features(images.to(device, torch.float32)).cpu()  # (N, d)
        return F.normalize(features, dim=-1) * self.num_features ** 0.5


class InceptionFeatures(nn.Module):
    """torchmetrics' FID Inception-v3 (torch-fidelity's port) from a local weights file: float images in
    [0, 1] -> float[N, 2048] pool features (resized to 299 px inside)."""

    num_features = 2048

    def __init__(self, weights: str) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=weights)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.net((images.clamp(0, 1) * 255).round().to(torch.uint8)).float()


def inception_features(weights: str | None = None) -> tuple[InceptionFeatures | None, str]:
    """(the feature module, its weights file) when Inception-v3 FID weights are on this machine, else
    (None, why not).

    ``weights``: a local file of torch-fidelity's ``pt_inception-2015-12-05`` weights; None reads
    ``$MOT_INCEPTION_WEIGHTS``. Nothing is downloaded: without the file (or without the ``torch-fidelity``
    package that reads it) Inception metrics are absent and the reason is reported."""
    path = weights or os.environ.get(INCEPTION_ENV)
    if not path:
        return None, (f"Inception FID/KID not measured: no local weights (set {INCEPTION_ENV} or "
                      "--inception_weights to a pt_inception-2015-12-05 file; nothing is downloaded)")
    if not os.path.isfile(path):
        return None, f"Inception FID/KID not measured: {path} is not a file"
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics builds Inception-v3 with it)
    except ImportError:
        return None, "Inception FID/KID not measured: the torch-fidelity package is not installed"
    return InceptionFeatures(path), path


class _Given(nn.Module):
    """Identity "feature extractor": FID and KID are fed features computed once for both."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def features_of(images: Tensor, feature: nn.Module, batch_size: int = 64) -> Tensor:
    """float[N, 3, R, R] in [0, 1] -> float64[N, d] in the embedding of ``feature``."""
    return torch.cat([feature(b.float()).double() for b in images.split(batch_size)])


def distribution(real: Tensor, fake: Tensor, feature: nn.Module, seed: int = 0,
                 batch_size: int = 64) -> dict[str, float]:
    """FID and KID between float[N, 3, R, R] image sets in [0, 1] (``distribution_with_errors`` without the
    errors)."""
    return distribution_with_errors(real, fake, feature, seed, batch_size, n_boot=0)[0]


def distribution_with_errors(real: Tensor, fake: Tensor, feature: nn.Module, seed: int = 0, batch_size: int = 64,
                             n_boot: int = E.N_BOOTSTRAP) -> tuple[dict[str, float], dict[str, float]]:
    """``({"fid", "kid"}, their bootstrap errors)`` between float[N, 3, R, R] image sets in [0, 1], in the
    embedding of ``feature`` (a module with ``num_features``: ``ScorerFeatures``, ``InceptionFeatures`` or a
    ``features.ModuleFeatures``); N >= 2 each. FID is torchmetrics' (``FrechetInceptionDistance`` fed the
    features); KID is the unbiased MMD^2 over all samples (``errors.kid_from_features``: torchmetrics' KID
    with one subset of every sample). ``n_boot = 0``: errors are not computed (empty dict)."""
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"FID/KID need at least 2 images per set, got {len(real)} and {len(fake)}")
    f_real, f_fake = features_of(real, feature, batch_size), features_of(fake, feature, batch_size)
    fid = FrechetInceptionDistance(_Given(f_real.shape[1]), sync_on_compute=False)
    fid.update(f_real, real=True)
    fid.update(f_fake, real=False)
    values = {"fid": float(fid.compute()), "kid": E.kid_from_features(f_real, f_fake)}
    return values, (E.distribution_errors(f_real, f_fake, seed, n_boot) if n_boot else {})


def normalize_text(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def bleu(generated: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in [0, 1] of generated captions against their reference captions."""
    return bleu_with_error(generated, references, n_boot=0)[0]


def bleu_with_error(generated: Sequence[str], references: Sequence[Sequence[str]], seed: int = 0,
                    n_boot: int = E.N_BOOTSTRAP) -> tuple[float, float]:
    """Corpus BLEU-4 and its bootstrap error over captions (``n_boot = 0``: error 0, not computed).

    Corpus BLEU depends on the captions only through sums of per-caption counts (``bleu_counts``), so each
    resample sums the counts of its captions instead of recounting n-grams: the same numbers as scoring every
    resample with ``BLEUScore``, about 400 times faster for three-group captions."""
    preds = [normalize_text(t) for t in generated]
    refs = [[normalize_text(r) for r in rs] for rs in references]
    value = float(BLEUScore(n_gram=4, sync_on_compute=False)(preds, refs))
    if not n_boot:
        return value, 0.0
    counts = np.stack([bleu_counts(p.split(), [r.split() for r in rs]) for p, rs in zip(preds, refs, strict=True)])
    return value, E.bootstrap_se(lambda idx: bleu_of_counts(counts[idx].sum(0)), len(preds), seed, n_boot)


def bleu_counts(words: Sequence[str], references: Sequence[Sequence[str]], n_gram: int = 4) -> np.ndarray:
    """float[2 n_gram + 2] of one caption: its n-grams matched in a reference (each clipped at the most any
    one reference holds), its n-gram counts (orders 1..n_gram each), its length and the length of the
    reference closest to it (the first of equals). Corpus BLEU is ``bleu_of_counts`` of their sum."""
    def grams(w: Sequence[str]) -> Counter:
        return Counter(tuple(w[j:j + i]) for i in range(1, n_gram + 1) for j in range(len(w) - i + 1))

    own, most = grams(words), Counter()
    for ref in references:
        most |= grams(ref)
    out = np.zeros(2 * n_gram + 2)
    for gram, count in (own & most).items():
        out[len(gram) - 1] += count
    for gram, count in own.items():
        out[n_gram + len(gram) - 1] += count
    lengths = [len(ref) for ref in references]
    out[2 * n_gram] = len(words)
    out[2 * n_gram + 1] = min(lengths, key=lambda length: abs(length - len(words)))
    return out


def bleu_of_counts(totals: np.ndarray) -> float:
    """Corpus BLEU (uniform weights, no smoothing, as ``BLEUScore``) from summed ``bleu_counts``."""
    n_gram = (len(totals) - 2) // 2
    matched, total = totals[:n_gram], totals[n_gram:2 * n_gram]
    length, reference = totals[2 * n_gram], totals[2 * n_gram + 1]
    if matched.min() == 0:
        return 0.0
    brevity = 1.0 if length > reference else float(np.exp(1 - reference / length))
    return brevity * float(np.exp(np.log(matched / total).mean()))


def _ratio_of_sums(num: np.ndarray, den: np.ndarray, seed: int, n_boot: int) -> tuple[float, float]:
    """``sum(num) / sum(den)`` and its bootstrap error over the items."""
    value = float(num.sum() / den.sum())
    if not n_boot:
        return value, 0.0
    return value, E.bootstrap_se(lambda idx: float(num[idx].sum() / max(den[idx].sum(), 1)), len(num), seed,
                                 n_boot)


def error_rates(generated: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Word and character error rate of transcriptions against the reference texts (corpus level)."""
    return error_rates_with_errors(generated, references, n_boot=0)[0]


def error_rates_with_errors(generated: Sequence[str], references: Sequence[str], seed: int = 0,
                            n_boot: int = E.N_BOOTSTRAP) -> tuple[dict[str, float], dict[str, float]]:
    """``({"wer", "cer"}, their bootstrap errors over clips)``: corpus rates, edits summed over clips over the
    summed reference lengths (torchmetrics' ``word_error_rate`` / ``char_error_rate``)."""
    preds = [normalize_text(t) for t in generated]
    target = [normalize_text(t) for t in references]
    values, ses = {}, {}
    for name, rate, length in (("wer", word_error_rate, lambda t: len(t.split())), ("cer", char_error_rate, len)):
        lengths = np.array([length(t) for t in target], dtype=np.float64)
        edits = np.array([float(rate([p], [t])) * n for p, t, n in zip(preds, target, lengths)])
        values[name], ses[name] = _ratio_of_sums(edits, lengths, seed, n_boot)
        values[name] = float(rate(preds, target))  # the corpus value exactly as torchmetrics computes it
    return values, ses


def unit_metrics(generated: Sequence[Tensor], references: Sequence[Tensor]) -> dict[str, float]:
    """``unit_acc`` and ``duration_ratio`` of long[n] unit sequences (module doc)."""
    return unit_metrics_with_errors(generated, references, n_boot=0)[0]


def unit_metrics_with_errors(generated: Sequence[Tensor], references: Sequence[Tensor], seed: int = 0,
                             n_boot: int = E.N_BOOTSTRAP) -> tuple[dict[str, float], dict[str, float]]:
    """``unit_acc`` and ``duration_ratio`` (module doc) with their bootstrap errors over clips."""
    if len(generated) != len(references) or not references:
        raise ValueError(f"need one reference per generated clip, got {len(generated)} and {len(references)}")
    words = [" ".join(map(str, u.tolist())) for u in generated]
    refs = [" ".join(map(str, u.tolist())) for u in references]
    ref_len = np.array([len(u) for u in references], dtype=np.float64)
    gen_len = np.array([len(u) for u in generated], dtype=np.float64)
    edits = np.array([float(word_error_rate([w], [r])) * n for w, r, n in zip(words, refs, ref_len)])
    wer, wer_se = _ratio_of_sums(edits, ref_len, seed, n_boot)
    ratio, ratio_se = _ratio_of_sums(gen_len, ref_len, seed, n_boot)
    return {"unit_acc": 1.0 - wer, "duration_ratio": ratio}, {"unit_acc": wer_se, "duration_ratio": ratio_se}
