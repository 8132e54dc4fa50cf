"""How precise a validation loss over N documents is: alone, and as the difference of two runs on one set.

    python benchmarks/val_precision.py --config A.yaml --ckpt A.ckpt --config-b B.yaml --ckpt-b B.ckpt \
        [--sizes 96,256,512,1024,2048] [overrides of both configs, e.g. --data.demo.val_docs 2048]

Both checkpoints are evaluated on the same validation batches (each ``--config`` may be a comma-separated
list of config files, as ``mot fit`` would stack them). Per set, modality and N (the first N documents
of the set), prints the loss of run A with its standard error over documents (the delta-method SE of
a ratio, as ``eval_losses.py`` logs it) and the difference A - B with the standard error of the paired
difference: the same documents in both runs make most per-document variation cancel, which is what a
comparison of two arms on a fixed set sees. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mot_lightning.building import build, load_weights


def per_document(configs: list[str], ckpt: str, overrides: list[str]) -> dict[str, tuple[torch.Tensor, ...]]:
    """``{set: (doc_sums float64[N, M], doc_weights float64[N, M])}`` of one checkpoint (documents with a
    target, in loader order) and ``"__labels__"``: the modality labels of the M columns."""
    model, dm = build(configs, overrides, Path(ckpt))
    load_weights(model, ckpt, "cpu")
    out: dict[str, tuple[torch.Tensor, ...]] = {}
    with torch.no_grad():
        for index, (name, loader) in enumerate(zip(dm.val_set_names, dm.val_dataloader(), strict=True)):
            sums, weights = [], []
            for batch_idx, batch in enumerate(loader):
                # the seed validation_step passes (fixed diffusion noise per batch)
                step = model.objective.loss(model.net, batch, stage="val", seed=index * 100_003 + batch_idx)
                sums.append(step.doc_sums.double())
                weights.append(step.doc_weights.double())
            doc_sums, doc_weights = torch.cat(sums), torch.cat(weights)
            real = doc_weights.sum(1) > 0  # documents with a target (not padding rows), as eval_losses counts
            out[name] = (doc_sums[real], doc_weights[real])
    out["__labels__"] = tuple(m.label for m in model.modalities)
    return out


def ratio_and_residuals(sums: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R = sum y / sum x per modality (float[M]) and each document's linearised residual (float[N, M])."""
    total = weights.sum(0)  # (M,)
    ratio = sums.sum(0) / total
    return ratio, (sums - ratio * weights) / total


def standard_error(residuals: torch.Tensor) -> torch.Tensor:
    n = residuals.shape[0]
    return (n / (n - 1) * residuals.pow(2).sum(0)).sqrt()  # (M,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--config-b", required=True)
    parser.add_argument("--ckpt-b", required=True)
    parser.add_argument("--sizes", default="96,256,512,1024,2048")
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(2)
    a = per_document(args.config.split(","), args.ckpt, overrides)
    b = per_document(args.config_b.split(","), args.ckpt_b, overrides)
    labels = a.pop("__labels__")
    b.pop("__labels__")
    table = []
    for name, (sums_a, weights) in a.items():
        sums_b, weights_b = b[name]
        assert torch.equal(weights, weights_b), "the two runs must see the same documents"
        for n in (int(s) for s in args.sizes.split(",")):
            if n > len(weights):
                continue
            ratio_a, res_a = ratio_and_residuals(sums_a[:n], weights[:n])
            ratio_b, res_b = ratio_and_residuals(sums_b[:n], weights[:n])
            se_a, se_diff = standard_error(res_a), standard_error(res_a - res_b)
            for m, label in enumerate(labels):
                if weights[:n, m].sum() > 0:
                    table.append({"set": name, "docs": n, "modality": label,
                                  "loss_a": round(float(ratio_a[m]), 4), "se_a": round(float(se_a[m]), 4),
                                  "diff": round(float(ratio_a[m] - ratio_b[m]), 4),
                                  "se_diff": round(float(se_diff[m]), 4)})
    for row in table:
        print(row)
    print(json.dumps(table))


if __name__ == "__main__":
    main()
