"""Generation metrics on data that is not a demo world: FID / KID in class_path features, CLIPScore from a local
folder (against torchmetrics), the plug-in label scorer on real labelled pictures (scikit-learn's digits),
every metric's sampling error against a direct computation, and `mot eval` on a non-demo dataset."""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.functional.text import word_error_rate
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from mot_lightning.eval import errors as E
from mot_lightning.eval import metrics as M
from mot_lightning.eval.clip import ClipScorer
from mot_lightning.eval.data_metrics import DataMetrics
from mot_lightning.eval.features import ModuleFeatures, ModuleSpec
from mot_lightning.eval.labels import ClassifierConfig, LabelRule, LabelScorer, LabelSpec, fit_classifier
from tests.app.conftest import CONFIGS, TINY_MODEL, run_dir
from tests.eval.tiny_clip import save_tiny_clip

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _digits_module():
    spec = importlib.util.spec_from_file_location("labelled_digits", ROOT / "benchmarks" / "labelled_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digits(size: int = 32):
    """scikit-learn's scans as float[N, 3, R, R] pictures, their labels and a caption each."""
    from sklearn.datasets import load_digits

    from mot_lightning.eval.worlds import to_tensor

    digits, draw = load_digits(), _digits_module()
    images = torch.stack([to_tensor(draw.digit_image(s, size)) for s in digits.images])
    rng = random.Random(0)
    captions = [rng.choice(draw.TEMPLATES).format(WORDS[t]) for t in digits.target]
    return images, [WORDS[t] for t in digits.target], captions


def _resnet_spec(tmp_path: Path) -> ModuleSpec:
    """torchvision's ResNet-18 with random weights saved to a local file: a class_path feature extractor."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet18(num_classes=10).state_dict().items()},
              str(weights))
    return ModuleSpec("torchvision.models.resnet18", str(weights), {"num_classes": 10}, layer="avgpool",
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(tmp_path):
    images = _digits()[0][:96]
    feature = ModuleFeatures(_resnet_spec(tmp_path), 32)
    assert feature.num_features == 512
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g)
    fids = [M.distribution(images, (images + s * noise).clamp(0, 1), feature)["fid"] for s in (0.0, 0.1, 0.3)]
    scale = float(feature(images).var(0).sum())  # FID's own units: the features' total variance
    assert abs(fids[0]) < 1e-6 * scale, (fids, scale)
    assert fids[0] < fids[1] < fids[2] and fids[1] > 1e-3 * scale, fids


def test_fid_and_kid_from_features_equal_torchmetrics():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(80, 12, generator=g, dtype=torch.float64)
    fake = 0.8 * torch.randn(80, 12, generator=g, dtype=torch.float64) + 0.3

    class Given(nn.Module):
        num_features = 12

        def forward(self, x):
            return x

    fid = FrechetInceptionDistance(Given(), sync_on_compute=False)
    kid = KernelInceptionDistance(Given(), subsets=1, subset_size=80, sync_on_compute=False)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    expected_fid, expected_kid = float(fid.compute()), float(kid.compute()[0])
    # float64 throughout; both sides sum O(d^2) terms of unit size
    assert E.fid_from_features(real, fake) == pytest.approx(expected_fid, rel=1e-9, abs=1e-9)
    assert E.kid_from_features(real, fake) == pytest.approx(expected_kid, rel=1e-9, abs=1e-9)


class _TensorFeatures(nn.Module):
    """transformers 5 returns CLIP features as an output object; torchmetrics 1.9 expects the tensor. This is the
    "CLIP compatible model" its model_name_or_path callable may return."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs):
        out = self.model.get_image_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, *args, **kwargs):
        out = self.model.get_text_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_clip_score_equals_torchmetrics_for_a_tiny_clip_folder(tmp_path):
    pytest.importorskip("transformers")
    from torchmetrics.multimodal.clip_score import CLIPScore

    scorer = ClipScorer(save_tiny_clip(tmp_path / "clip"))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 32, 32, generator=g)
    captions = [f"a handwritten digit {w}." for w in WORDS] * 2 + ["two red circles", "x", "one", "nine."]
    scores = scorer.scores(images, captions, batch_size=10)  # batches of 10: padding differs from one batch
    assert scores.shape == (24,)
    # torchmetrics floors the mean at 0: compare on pairs whose mean is clearly positive, and on all pairs
    positive = (scores > 0).nonzero().flatten()
    for idx in (positive, torch.arange(24)):
        metric = CLIPScore(model_name_or_path=lambda: (_TensorFeatures(scorer.model), scorer.processor))
        metric.update(ClipScorer.to_uint8(images[idx]), [captions[i] for i in idx])
        expected = float(metric.compute())
        ours = max(float(scores[idx].mean()), 0.0)
        assert ours == pytest.approx(expected, abs=1e-4 * 100), (ours, expected)  # float32 cosines x 100
    assert float(scores[positive].mean()) > 0


def first_word(caption: str) -> str | None:
    """A rule by class_path (tests.eval.test_data_metrics.first_word)."""
    words = caption.split()
    return words[0] if words else None


def test_label_rules_read_captions_by_words_regex_or_class_path():
    words = LabelRule(LabelSpec(labels=WORDS))
    assert words("A handwritten digit Seven.") == "seven"
    assert words("seven and eight") is None and words("a cat") is None  # several labels / none: unreadable
    assert words("sevenfold") is None  # whole words only
    regex = LabelRule(LabelSpec(labels=WORDS, regex=r"digit (\w+)"))
    assert regex("a handwritten digit three.") == "three" and regex("digit cat") is None
    custom = LabelRule(LabelSpec(rule="tests.eval.test_data_metrics.first_word"))
    assert custom("Dog on grass") == "dog"
    with pytest.raises(ValueError, match="a regex or a rule"):
        LabelSpec()
    with pytest.raises(ValueError, match="unknown keys"):
        DataMetrics.from_dict({"labels": {"labels": ["a"], "regexp": "x"}})
    parsed = DataMetrics.from_dict({"clip_model": "/m", "labels": {"labels": ["a", "b"], "fit": {"steps": 5}},
                                    "features": {"network": "torchvision.models.resnet18", "layer": "avgpool"}})
    assert parsed.labels.labels == ("a", "b") and parsed.labels.fit.steps == 5
    assert parsed.features.layer == "avgpool" and parsed.clip_model == "/m"


@pytest.mark.slow
def test_plug_in_scorer_is_near_perfect_on_real_pairs_and_at_chance_on_shuffled_ones():
    images, labels, captions = _digits()
    train, val = slice(0, 1500), slice(1500, None)
    net = fit_classifier(images[train], labels[train], WORDS, ClassifierConfig(steps=150, augment=False))
    scorer = LabelScorer(LabelRule(LabelSpec(labels=WORDS)), net)
    shown = scorer.predict(images[val])
    named = [scorer.rule(c) for c in captions[val]]
    assert all(n is not None for n in named)
    accuracy = np.mean([s == n for s, n in zip(shown, named)])
    shuffled = named[:]
    random.Random(0).shuffle(shuffled)
    chance = np.mean([s == n for s, n in zip(shown, shuffled)])
    n = len(named)
    assert accuracy > 0.9, accuracy
    # ten balanced labels: chance is 0.1, with a binomial error of 0.017 on 297 pictures
    assert abs(chance - 0.1) < 4 * E.binomial_se(0.1, n), chance


def test_mot_eval_reads_metrics_from_a_file_or_the_clip_flag(tmp_path):
    from mot_lightning.commands.eval import read_data_metrics

    assert read_data_metrics(None, None) is None  # then the training config's GenerationMetrics decides
    (tmp_path / "m.yaml").write_text("metrics:\n  labels: {labels: [a, b]}\n")
    config = read_data_metrics(str(tmp_path / "m.yaml"), "/clip")
    assert config.labels.labels == ("a", "b") and config.clip_model == "/clip"
    with pytest.raises(SystemExit, match="no such file"):
        read_data_metrics(str(tmp_path / "missing.yaml"), None)
    (tmp_path / "bad.yaml").write_text("labels: {labels: [a], regexp: x}\n")
    with pytest.raises(SystemExit, match="unknown keys"):
        read_data_metrics(str(tmp_path / "bad.yaml"), None)


def test_binomial_and_mean_errors_match_repeated_draws():
    rng = np.random.default_rng(0)
    p, n = 0.3, 200
    shares = rng.binomial(n, p, size=4000) / n  # 4000 independent evaluations of n judgements
    assert E.binomial_se(p, n) == pytest.approx(shares.std(ddof=1), rel=0.05)
    x = rng.normal(5.0, 2.0, size=400)
    value, se = E.mean_and_se(x.tolist(), seed=1, n_boot=1000)
    assert value == pytest.approx(x.mean())
    assert se == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=0.1)  # bootstrap of a mean: sd / sqrt(n)


def test_fid_and_kid_errors_match_the_spread_of_independent_sets():
    """The bootstrap error from one pair of sets against the spread of FID / KID over fresh pairs of sets drawn
    from the same two distributions (the quantity it estimates)."""
    d, n = 6, 150
    g = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.5, 1.5, d, dtype=torch.float64)

    def draw():
        real = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
        fake = torch.randn(n, d, generator=g, dtype=torch.float64) * scale * 1.3 + 0.4
        return real, fake

    sets = [draw() for _ in range(150)]
    fid_sd = np.std([E.fid_from_features(r, f) for r, f in sets], ddof=1)
    kid_sd = np.std([E.kid_from_features(r, f) for r, f in sets], ddof=1)
    boot = [E.distribution_errors(r, f, seed=i, n_boot=100) for i, (r, f) in enumerate(sets[:8])]
    fid_se, kid_se = np.mean([b["fid"] for b in boot]), np.mean([b["kid"] for b in boot])
    # the bootstrap's own error at 100 draws is ~7%, the averaging over 8 sets and the spread over 150 add a few %
    assert 0.75 < fid_se / fid_sd < 1.33, (fid_se, fid_sd)
    assert 0.75 < kid_se / kid_sd < 1.33, (kid_se, kid_sd)


def test_text_errors_equal_a_plain_bootstrap_loop():
    """The ratio-of-sums bootstrap of WER (and BLEU's) against recomputing torchmetrics on each resample."""
    rng = random.Random(0)
    refs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))) for _ in range(40)]
    hyps = [" ".join(w if rng.random() < 0.7 else rng.choice(WORDS) for w in r.split()) for r in refs]
    values, ses = M.error_rates_with_errors(hyps, refs, seed=3, n_boot=60)
    assert values["wer"] == pytest.approx(float(word_error_rate(hyps, refs)))
    plain = [float(word_error_rate([hyps[i] for i in idx], [refs[i] for i in idx]))
             for idx in E._draws(len(refs), 3, 60)]
    assert ses["wer"] == pytest.approx(np.std(plain, ddof=1), rel=1e-6)
    bleu, bleu_se = M.bleu_with_error(hyps, [[r] for r in refs], seed=3, n_boot=30)
    plain = [M.bleu([hyps[i] for i in idx], [[refs[i]] for i in idx]) for idx in E._draws(len(refs), 3, 30)]
    assert bleu == pytest.approx(M.bleu(hyps, [[r] for r in refs]))
    assert bleu_se == pytest.approx(np.std(plain, ddof=1), rel=1e-6)


@pytest.mark.slow
def test_mot_eval_on_labelled_data_writes_every_metric(speech_runs, demo_env, tmp_path, monkeypatch):
    """A checkpoint evaluated on other data (scikit-learn digits as shards, its own tokenizers kept), scored as the
    config's GenerationMetrics callback says: FID / KID in the fitted classifier's and a class_path network's
    features, CLIPScore, the label accuracies, BLEU, each with its sampling error, its floor or ceiling in the
    bounds."""
    from mot_lightning.commands.main import main as mot

    pytest.importorskip("transformers")
    _digits_module().prepare(tmp_path / "digits", n_train=120)
    clip = save_tiny_clip(tmp_path / "clip")
    spec = _resnet_spec(tmp_path)
    metrics = {"features": {"network": spec.network, "weights": spec.weights, "args": {"num_classes": 10},
                            "layer": "avgpool", "name": "resnet"},
               "labels": {"labels": list(WORDS), "fit": {"steps": 20, "batch_size": 32}}, "clip_model": str(clip)}
    overlay = {"trainer": {"callbacks": [{"class_path": "mot_lightning.callbacks.GenerationMetrics",
                                          "init_args": {"metrics": metrics}}]}}
    (tmp_path / "overlay.yaml").write_text(json.dumps(overlay))
    shards = tmp_path / "digits" / "shards"
    out = tmp_path / "eval"
    ckpt = run_dir(speech_runs / "speech" / "mot") / "checkpoints" / "last.ckpt"
    mot(["eval", "--ckpt", str(ckpt), "--config", str(CONFIGS / "speech/mot.yaml"), "--config",
         str(tmp_path / "overlay.yaml"), *TINY_MODEL, "--out", str(out), "--n", "6", "--n_speech", "0",
         "--max_text_tokens", "8", "--data.tokenizer_files.dir", demo_env["tokenizer_dir"],
         "--data.sources", json.dumps([{"name": "pairs", "urls": str(shards / "train/pairs/*.tar"),
                                        "modalities": ["text", "image"]}]),
         "--data.val_sets", json.dumps([{"name": "val", "urls": str(shards / "val/pairs/*.tar")}])])
    report = json.loads((out / "metrics.json").read_text())
    expected = {"fid", "kid", "fid_resnet", "kid_resnet", "clip_score", "bleu", "faithfulness_label",
                "caption_label"}
    assert expected <= set(report["metrics"]), sorted(report["metrics"])
    for name in expected:
        metric = report["metrics"][name]
        assert metric["n"] == 6 and metric["se"] is not None and metric["se"] >= 0, (name, metric)
    assert report["world"] is None
    for bound in ("fid_floor", "fid_resnet_floor", "clip_score_real", "faithfulness_label_ceiling", "label_chance"):
        assert bound in report["bounds"], sorted(report["bounds"])
    assert (out / "samples.png").is_file()
    assert list((Path(demo_env["tokenizer_dir"])).glob("label-classifier-32px-*.pt"))
