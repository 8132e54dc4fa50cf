"""A trained conditional model draws what its captions say more often than a model trained on the same pictures
with the captions dropped, as the faithfulness metrics read it (through the real data, training loss,
sampling and ``evaluate``).

Both are the demo chameleon MoT at 64 x 2, trained 300 AdamW steps on the same 40 demo batches (16 rows of
128 tokens; ``data.loader.caption_dropout`` 0 and 0.99). Measured on 3 seeds (``seed_everything`` 0, 1, 2)
on 64 seen-split prompts with the default scorer: the mean faithfulness over the five attributes is 0.19-0.24
for the conditional model and 0.03-0.06 for the other; position, the attribute learned first, 0.39-0.53
against 0.05-0.13. ``benchmarks/gen_metrics.py conditioning`` runs the demo-size version (benchmarks/README.md,
"Generation metrics").
"""
from __future__ import annotations

import itertools

import torch

from mot_lightning.building import build
from mot_lightning.eval.evaluate import ScorerSource, build_suite, evaluate
from mot_lightning.eval.faithfulness import ATTRIBUTES
from mot_lightning.modality import Modality
from mot_lightning.sampling import GenerationTasks, SamplingSettings
from tests.app.conftest import CONFIGS, data_args

STEPS, BATCHES, N = 300, 40, 64


def _train(env: dict[str, str], caption_dropout: float):
    """The chameleon MoT at 64 x 2 after ``STEPS`` steps over ``BATCHES`` fixed batches -> (model, data)."""
    model, dm = build([str(CONFIGS / "chameleon/mot.yaml")], [
        "--model.backbone.dim", "64", "--model.backbone.n_layers", "2", *data_args(env),
        "--data.loader.num_workers", "0", "--data.seq_len", "128", "--data.batch_size", "16",
        "--data.loader.caption_dropout", str(caption_dropout), "--seed_everything", "0"])
    dm.setup("fit")
    batches = list(itertools.islice(iter(dm.train_dataloader()), BATCHES))
    net = model.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(STEPS):
        loss = model.objective.loss(net, batches[step % BATCHES], stage="train", seed=step).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-BATCHES:]) < 0.6 * sum(losses[:BATCHES]), (losses[:3], losses[-3:])  # it trained
    return model.eval(), dm


def test_a_trained_conditional_model_is_more_faithful_than_one_trained_without_captions(demo_env, scorer_file):
    scores = {}
    for name, dropout in (("conditional", 0.0), ("no captions", 0.99)):
        model, dm = _train(demo_env, dropout)
        modalities = {Modality.TEXT, Modality.IMAGE}
        suite = build_suite(dm, modalities, "cpu", N, 0, 0, scorer=ScorerSource(file=str(scorer_file)))
        scores[name] = evaluate(GenerationTasks.of(model, dm, SamplingSettings()), suite, modalities).values()
    cond, plain = scores["conditional"], scores["no captions"]

    def mean(s: dict[str, float]) -> float:
        return sum(s[f"faithfulness_{a}"] for a in ATTRIBUTES) / len(ATTRIBUTES)

    assert mean(cond) - mean(plain) >= 0.07, (cond, plain)
    assert cond["faithfulness_position"] - plain["faithfulness_position"] >= 0.15, (cond, plain)
