"""What the diagnostics callbacks cost at the demo size, as a share of a training step and of a validation.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics_cost.py --config configs/speech/mot.yaml,configs/procedural.yaml \
        --out benchmarks/results/diagnostics_cost_speech.json [overrides, e.g. --data.demo.dir DIR]

Builds the model and data of the config (``mot_lightning.building.build``), takes real validation batches
(training batches have the same shape: B x T of the config), and times, median of ``--reps``. It reads the
demo corpus and the fitted tokenizer files that a ``mot fit`` of the same configs writes (a run of one step
is enough); without them it stops, naming the missing file.

- a training step: objective forward + backward + clipping + AdamW step (``TowerHealth`` off);
- ``TowerHealth`` at a logging step: the per-group gradient norms at clipping, the weight snapshot, the weight
  and update norms after the step, the token count (its only work at other steps) and the router stats;
- a validation batch (no-grad objective forward), and the whole validation (every batch of every set);
- ``AttentionMaps`` once per validation: the probed forward of ``rows`` rows and the heatmap figures
  (rendered as TensorBoard's ``add_figure`` does);
- ``LossByNoiseLevel`` per validation batch (a histogram update; the speech config has no diffusion, so the
  update runs on a batch-shaped error map).

Prints and writes one JSON object with the times and the shares: TowerHealth per step at
``--every-n-steps``, AttentionMaps per validation, both as a share of a run validating every
``--val-every`` steps.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mot_lightning.building import build
from mot_lightning.callbacks.attention_maps import record_attention
from mot_lightning.callbacks.heatmaps import share_heatmap
from mot_lightning.training import clip_gradients
from mot_lightning.training.noise_bins import NoiseBinLosses
from mot_lightning.training.tower_stats import TowerGroups


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step(model, optimizer, batch, params) -> None:
    out = model.objective.loss(model.net, batch, stage="train", seed=0)
    (out.total + model.net.backbone.aux_loss()).backward()
    clip_gradients(model.net, params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def tower_health_work(model, groups: TowerGroups, optimizer, batch, params) -> float:
    """Seconds of TowerHealth's work around one optimizer step (the step itself not counted)."""
    out = model.objective.loss(model.net, batch, stage="train", seed=0)
    out.total.backward()
    start = time.perf_counter()
    groups.square_sums(lambda p: p.grad)
    before = {id(p): p.detach().clone() for ps in groups.params for p in ps}
    middle = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    resume = time.perf_counter()
    groups.square_sums(lambda p: before[id(p)])
    groups.square_sums(lambda p: p.detach() - before[id(p)])
    torch.bincount(batch.modality.reshape(-1), minlength=3)
    [s.entropy for s in model.net.backbone.moe_stats().values()]
    return (middle - start) + (time.perf_counter() - resume)


def heatmaps(rec, labels) -> None:
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard._utils import figure_to_image

    for i in sorted(rec.shares):
        figure_to_image(share_heatmap(rec.shares[i].numpy(), labels, f"layer {i}"), close=True)
    plt.close("all")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True, help="comma-separated config files, as mot fit stacks them")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--every-n-steps", type=int, default=10)
    p.add_argument("--val-every", type=int, default=100)
    args, overrides = p.parse_known_args()
    model, dm = build(args.config.split(","), overrides)
    batches = [b for loader in dm.val_dataloader() for b in loader]
    batch = batches[0]
    params = [q for q in model.net.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    step = timed(lambda: train_step(model, optimizer, batch, params), args.reps)
    groups = TowerGroups.of(model.net, model.cfg)
    health = statistics.median(tower_health_work(model, groups, optimizer, batch, params) for _ in range(args.reps))
    model.eval()
    with torch.no_grad():
        val_batch = timed(lambda: model.objective.loss(model.net, batch, stage="val", seed=0), args.reps)
    fixed = batch._apply(lambda t: t[: args.rows])
    valid = fixed.tokens != dm.vocab.pad_id
    probe = timed(lambda: record_attention(model, fixed, valid), args.reps)
    labels = [m.label for m in model.modalities]
    draw = timed(lambda: heatmaps(record_attention(model, fixed, valid), labels), max(args.reps // 3, 1)) - probe
    bins = NoiseBinLosses(5)
    err, level = torch.rand(batch.tokens.shape), torch.rand(batch.tokens.shape)
    noise = timed(lambda: bins.update(err, level, batch.tokens >= 0), args.reps)
    validation = val_batch * len(batches)
    period = args.val_every * step + validation  # one validation period of the run, without diagnostics
    result = {
        "config": args.config, "overrides": overrides, "batch": list(batch.tokens.shape),
        "n_layers": model.cfg.n_layers,
        "threads": torch.get_num_threads(), "train_step_s": step, "tower_health_logging_step_s": health,
        "tower_health_share_of_step_at_every_n": health / args.every_n_steps / step,
        "every_n_steps": args.every_n_steps, "val_batch_s": val_batch, "val_batches": len(batches),
        "validation_s": validation, "attention_maps_probe_s": probe, "attention_maps_heatmaps_s": draw,
        "attention_maps_share_of_validation": (probe + draw) / validation, "rows": args.rows,
        "noise_bins_update_per_val_batch_s": noise, "noise_bins_share_of_val_batch": noise / val_batch,
        "val_every": args.val_every,
        "share_of_run": (health * args.val_every / args.every_n_steps + probe + draw + noise * len(batches)) / period,
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
