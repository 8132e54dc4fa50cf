"""Eval prompts and their truth, the caption parser on the demo world, judging, degradations, text metrics."""
from __future__ import annotations

import random

import pytest
import torch
from torchmetrics.text import BLEUScore

from mot_lightning.eval import errors as E
from mot_lightning.eval import metrics as M
from mot_lightning.eval.degrade import degrade
from mot_lightning.eval.faithfulness import accuracy, judge
from mot_lightning.eval.worlds import SPLITS, WORLD, eval_items, get_world
from mot_lightning.world.procedural import BACKGROUNDS, Group


def test_eval_prompts_are_deterministic_and_parse_back_to_their_scenes():
    world = get_world("procedural")
    assert world is WORLD
    for split in SPLITS:
        items = eval_items(world, 40, split, 32, seed=3)
        again = eval_items(world, 40, split, 32, seed=3)
        assert [it.caption for it in items] == [it.caption for it in again]
        assert all(torch.equal(a.image, b.image) for a, b in zip(items, again))
        for it in items:
            assert it.image.shape == (3, 32, 32) and 0 <= it.image.min() and it.image.max() <= 1
            for ref in it.references:  # every reference caption names exactly the scene's groups
                assert sorted(world.parse(ref, strict=True), key=str) == sorted(it.groups, key=str)
            pairs = {(g.colour, g.shape) for g in it.groups}
            assert bool(pairs & world.held_out) == (split == "heldout")
    assert {len(it.groups) for it in eval_items(world, 40, "seen", 32, seed=3)} == {1, 2, 3}
    other = eval_items(world, 40, "seen", 32, seed=4)
    assert [it.caption for it in other] != [it.caption for it in eval_items(world, 40, "seen", 32, seed=3)]


def test_a_group_is_judged_in_its_own_region():
    red = Group("circle", "red", "small", 2, "left")
    assert judge([red], [red]).all_correct
    moved = judge([red], [Group("circle", "red", "small", 2, "right")])
    assert moved.groups[0] == dict.fromkeys(("colour", "shape", "size", "count", "position"), False)
    assert moved.extra == 1 and not moved.all_correct
    wrong = judge([red], [Group("square", "red", "large", 2, "left")]).groups[0]
    assert wrong == {"colour": True, "shape": False, "size": False, "count": True, "position": True}
    extra = judge([red], [red, Group("ring", "blue", "small", 1, "top")])
    assert all(extra.groups[0].values()) and extra.extra == 1 and not extra.all_correct


def test_accuracy_of_the_truth_is_one_and_of_shuffled_scenes_near_chance():
    items = eval_items(WORLD, 300, "seen", 32, seed=0)
    truth = [it.groups for it in items]
    assert accuracy(truth, truth) == dict.fromkeys(("colour", "shape", "size", "count", "position", "all"), 1.0)
    shuffled = truth[1:] + truth[:1]
    acc = accuracy(truth, shuffled)
    assert acc["all"] < 0.02 and acc["colour"] < 0.15 and acc["position"] < 0.65  # regions are shared often


def test_degradations_are_seeded_and_keep_shape_and_range():
    images = torch.stack([it.image for it in eval_items(WORLD, 16, "seen", 32)])
    a = degrade(images, torch.Generator().manual_seed(1))
    b = degrade(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == images.shape and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, images)


def test_text_and_unit_metrics():
    refs = ["two small red circles on the left."]
    assert M.error_rates(["Two small red circles on the left"], refs) == {"wer": 0.0, "cer": 0.0}
    assert M.error_rates(["two small red squares on the left."], refs)["wer"] == pytest.approx(1 / 7)
    assert M.bleu(["a picture of one big blue square at the top."],
                  [["one large blue square at the top.", "a picture of one big blue square at the top."]]) == 1.0
    assert M.bleu(["red"], [["one large blue square at the top."]]) == 0.0


def test_bleus_bootstrap_error_sums_caption_counts_to_the_same_numbers_as_rescoring_each_resample():
    items = eval_items(WORLD, 30, "seen", 32, seed=5)
    rng = random.Random(0)
    generated = [rng.choice(items).caption if rng.random() < 0.5 else it.references[1] for it in items]
    generated[3] = "red."  # shorter than every reference: the brevity penalty
    references = [it.references[1:] for it in items]
    value, se = M.bleu_with_error(generated, references, seed=2, n_boot=20)
    preds = [M.normalize_text(t) for t in generated]
    refs = [[M.normalize_text(r) for r in rs] for rs in references]
    metric = BLEUScore(n_gram=4)
    rescored = E.bootstrap_se(lambda idx: float(metric([preds[i] for i in idx], [refs[i] for i in idx])), 30, 2, 20)
    assert 0 < value < 1 and se == pytest.approx(rescored, rel=1e-5, abs=1e-9)
    counts = sum(M.bleu_counts(p.split(), [r.split() for r in rs]) for p, rs in zip(preds, refs))
    assert M.bleu_of_counts(counts) == pytest.approx(value, rel=1e-5)
    units = M.unit_metrics([torch.tensor([1, 2, 3, 4])], [torch.tensor([1, 2, 3])])
    assert units == {"unit_acc": pytest.approx(2 / 3), "duration_ratio": pytest.approx(4 / 3)}
    assert M.unit_metrics([torch.tensor([7, 8])], [torch.tensor([7, 8])]) == {"unit_acc": 1.0, "duration_ratio": 1.0}


def test_scorer_training_examples_hold_zero_to_three_groups_in_distinct_regions_of_both_splits():
    world, rng = WORLD, random.Random(0)
    counts = {0: 0, 1: 0, 2: 0, 3: 0}
    held = 0
    for _ in range(400):
        image, groups = world.training_example(rng, 32)
        counts[len(groups)] += 1
        held += bool({(g.colour, g.shape) for g in groups} & world.held_out)
        assert len({g.region for g in groups}) == len(groups) and image.size == (32, 32)
        if not groups:  # an empty picture is one of the backgrounds, nothing drawn on it
            assert any(image.tobytes() == world.empty(32, bg).tobytes() for bg in BACKGROUNDS)
    assert min(counts.values()) > 10 and 40 < held < 160, (counts, held)
