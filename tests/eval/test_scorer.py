"""The faithfulness scorer reads real renders right, shuffled pairs near chance; FID/KID in its features."""
from __future__ import annotations

import pytest
import torch

from mot_lightning.eval import metrics as M
from mot_lightning.eval.faithfulness import accuracy
from mot_lightning.eval.scorer import ScorerConfig, fitted_scorer, load_scorer, save_scorer, scorer_path
from mot_lightning.eval.worlds import SPLITS, WORLD, eval_items, get_world, to_tensor
from mot_lightning.world.procedural import BACKGROUNDS


def _items(split: str, n: int = 120, seed: int = 7):
    items = eval_items(WORLD, n, split, 32, seed=seed)
    return torch.stack([it.image for it in items]), [WORLD.parse(it.caption, strict=True) for it in items]


@pytest.mark.parametrize("split", SPLITS)
def test_real_renders_score_well_for_their_captions_and_near_chance_shuffled(scorer_file, split):
    scorer = load_scorer(scorer_file)
    images, named = _items(split)
    shown = scorer.predict(images)
    own = accuracy(named, shown)
    # the tests' short fit (tests/conftest.py) reads shapes 4-8 px wide worst; the default fit reads 0.91 of them
    assert own["position"] >= 0.95 and min(own[a] for a in ("colour", "size", "count")) >= 0.7, own
    assert own["shape"] >= 0.3 and own["all"] >= 0.1, own
    shuffled = accuracy(named[1:] + named[:1], shown)  # each picture against another picture's caption
    # chance: 1-3 groups in 5 regions (a named group's region is occupied in the other picture about half the
    # time), then 9 colours, 6 shapes, 2 sizes, 3 counts
    assert shuffled["all"] < 0.02 and shuffled["position"] < 0.65 and shuffled["colour"] < 0.15, shuffled
    for a in ("colour", "shape", "size", "count", "position"):
        assert own[a] - shuffled[a] >= 0.25, (a, own, shuffled)


def test_an_empty_picture_shows_no_group(scorer_file):
    scorer = load_scorer(scorer_file)
    empty = torch.stack([to_tensor(WORLD.empty(32, background)) for background in BACKGROUNDS])
    assert scorer.predict(empty) == [()] * len(BACKGROUNDS)


def test_scorer_files_round_trip_and_are_keyed_by_world_size_and_config(scorer_file, tmp_path):
    scorer = load_scorer(scorer_file)
    images, _ = _items("seen", 16)
    save_scorer(scorer, tmp_path / "copy.pt")
    copy = load_scorer(tmp_path / "copy.pt")
    assert torch.equal(copy.features(images), scorer.features(images))
    assert copy.predict(images) == scorer.predict(images)
    a = scorer_path(tmp_path, WORLD.name, 32)
    assert a.name.startswith("scorer-procedural-32px-") and a != scorer_path(tmp_path, "fixed", 32)
    assert a != scorer_path(tmp_path, WORLD.name, 64)
    assert a != scorer_path(tmp_path, WORLD.name, 32, ScorerConfig(steps=1))
    with pytest.raises(ValueError, match="32, 32"):
        scorer.predict(torch.zeros(1, 3, 64, 64))


def test_fitted_scorer_fits_once_then_loads(tmp_path):
    tiny = ScorerConfig(channels=(4, 4, 4), features=8, pool=16, steps=2, batch_size=4)
    first = fitted_scorer(WORLD.name, 32, tmp_path, tiny)
    path = scorer_path(tmp_path, WORLD.name, 32, tiny)
    stamp = path.stat().st_mtime_ns
    second = fitted_scorer(WORLD.name, 32, tmp_path, tiny)
    assert path.stat().st_mtime_ns == stamp  # loaded, not fitted again
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(first.features(x), second.features(x))
    # a scorer file of the retired one-group world is refused by name (its heads have other class counts)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "world": "fixed"}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="retired fixed world"):
        load_scorer(tmp_path / "old.pt")
    with pytest.raises(ValueError, match="unknown demo world"):
        get_world("another")


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(scorer_file):
    feature = M.ScorerFeatures(load_scorer(scorer_file))
    images, _ = _items("seen", 64, seed=3)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g)
    values = [M.distribution(images, (images + s * noise).clamp(0, 1), feature) for s in (0.0, 0.1, 0.3)]
    fids, kids = [v["fid"] for v in values], [v["kid"] for v in values]
    assert abs(fids[0]) < 1e-3 * fids[1]  # up to the matrix square root's rounding
    assert fids[0] < fids[1] < fids[2]
    # KID estimates MMD^2 from random subsets drawn for each side: against itself it is noise around 0 (about
    # +-0.1 at 64 images, benchmarks/README.md), so only a large change stands out
    assert kids[2] > max(kids[0], kids[1]) and abs(kids[0]) < kids[2] / 2
    shuffled = images[torch.randperm(64, generator=g)]
    assert M.distribution(images, shuffled, feature)["fid"] == pytest.approx(fids[0], abs=1e-3)


def test_inception_is_never_downloaded(monkeypatch, tmp_path):
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    dims, why = M.inception_features(None)
    assert dims is None and "no local weights" in why and "nothing is downloaded" in why
    dims, why = M.inception_features(str(tmp_path / "missing.pth"))
    assert dims is None and "is not a file" in why


@pytest.mark.slow
def test_inception_features_from_a_local_weights_file(tmp_path):
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    # random weights in the file format torch-fidelity reads: this checks the wiring, not FID's numbers
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    load = fe.FeatureExtractorInceptionV3.load_state_dict
    try:
        fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        fe.FeatureExtractorInceptionV3.load_state_dict = load
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    feature, path = M.inception_features(str(weights))
    assert path == str(weights) and feature.num_features == 2048
    images, _ = _items("seen", 4)
    assert feature(images).shape == (4, 2048)
    assert set(M.distribution(images, images.flip(0), feature)) == {"fid", "kid"}
