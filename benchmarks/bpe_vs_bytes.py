"""BPE vs bytes: what BPE text tokens do to sequence length, packing and the loss per byte.

    mot sweep --config configs/sweeps/text_bytes_vs_bpe.yaml        # 2 short speech MoT runs, seed 0
    python benchmarks/bpe_vs_bytes.py runs/text_bytes_vs_bpe/bytes runs/text_bytes_vs_bpe/bpe \
        --out benchmarks/results/bpe_vs_bytes_speech.json

A loss per token does not compare across text tokenizers (a BPE token carries ~4 bytes), so each run's
final ``val/loss_text`` (nats per text target, pooled over the validation sets) is converted to nats and
bits per UTF-8 byte of text:

    nats/byte = val/loss_text * (text targets) / (text bytes)

counted on the very batches validation scored: the run's data module is rebuilt from its saved
``config.yaml`` and its validation sets are read once. Text targets include the structure tokens that
are text-modality (BOS/EOS, BOI/EOI, ...: the same number under both tokenizers); text bytes are the
UTF-8 bytes of the text runs, decoded by the run's own text tokenizer. Image and speech losses use the
same tokenizers in both runs and compare per token as they are.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import torch
import yaml

from mot_lightning.compare.groups import find_run_dirs
from mot_lightning.compare.runs import load_run
from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.modality import Modality


def batch_counts(batch: MultiModalBatch, vocab, text_tok) -> Counter:
    """Targets per modality, text bytes, text runs, documents and padding of one packed batch."""
    out = Counter()
    for m in Modality:
        out[f"targets_{m.label}"] += int(batch.loss_mask(m).sum())
    out["rows"] += batch.batch_size
    out["positions"] += batch.tokens.numel()
    out["padding"] += int((batch.tokens == vocab.pad_id).sum())
    for row in range(batch.batch_size):
        tokens, docs = batch.tokens[row], batch.doc_ids[row]
        real = tokens != vocab.pad_id
        out["documents"] += int(docs[real].unique().numel())
        is_text = (tokens < vocab.text_size).tolist()  # the text tokenizer's own ids (specials lie above)
        start = None
        for t in range(len(is_text) + 1):  # maximal runs of text ids inside one document = text segments
            inside = t < len(is_text) and is_text[t] and (start is None or docs[t] == docs[start])
            if inside and start is None:
                start = t
            elif not inside and start is not None:
                text = text_tok.decode(tokens[start:t])
                out["text_segments"] += 1
                out["text_tokens"] += t - start
                out["text_bytes"] += len(text.encode("utf-8"))
                start = t if t < len(is_text) and is_text[t] else None
    return out


def validation_counts(run_dir: Path) -> tuple[dict, dict]:
    """(counts over every validation set, the run's config) from the run's first ``config.yaml``."""
    config = yaml.safe_load(next(run_dir.glob("version_*/config.yaml")).read_text())
    data = config["data"]
    data["loader"]["num_workers"] = 0  # the same packed rows, read in this process
    from mot_lightning.data.datamodule import MultiModalDataModule  # Lightning: imported when used

    dm = MultiModalDataModule.from_data_section(data)
    dm.prepare_data()  # fitted tokenizer files exist after the run: only loads them
    dm.setup("validate")
    text_tok = dm.tokenizers[Modality.TEXT]
    total = Counter()
    loaders = dm.val_dataloader()
    for loader in loaders if isinstance(loaders, list) else [loaders]:
        for batch in loader:
            total += batch_counts(batch, dm.vocab, text_tok)
    return dict(total), config


def summarize(run_dir: Path) -> dict:
    run = load_run(run_dir)
    counts, config = validation_counts(run_dir)
    final = {tag: float(s.values[-1]) for tag, s in run.scalars.items()
             if tag in ("val/loss", *(f"val/loss_{m.label}" for m in Modality))}
    text_nats = final["val/loss_text"] * counts["targets_text"]
    tok = config["data"]["text_tokenizer"]
    return {
        "run": str(run_dir), "text_tokenizer": tok["class_path"].rsplit(".", 1)[-1],
        "text_vocab": (tok.get("init_args") or {}).get("config", {}).get("vocab_size", 256),
        "step": int(run.scalars["val/loss"].last_step), "final": final, "counts": counts,
        "nats_per_text_byte": text_nats / counts["text_bytes"],
        "bits_per_text_byte": text_nats / counts["text_bytes"] / math.log(2),
        "bytes_per_text_token": counts["text_bytes"] / counts["text_tokens"],
        "text_tokens_per_segment": counts["text_tokens"] / counts["text_segments"],
        "tokens_per_document": (counts["positions"] - counts["padding"]) / counts["documents"],
        "documents_per_row": counts["documents"] / counts["rows"],
        "padding_fraction": counts["padding"] / counts["positions"],
    }


def table(rows: list[dict]) -> str:
    lines = [("| run | text tokenizer | bytes / text token | text tokens / text segment | tokens / document "
             "| documents / row (padding) | val loss_text (nats/token) | text nats / byte (bits / byte) "
             "| val loss_image | val loss_speech | validation documents |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, c = r["final"], r["counts"]
        lines.append(
            f"| {r['run']} (step {r['step']}) | {r['text_tokenizer']} ({r['text_vocab']}) "
            f"| {r['bytes_per_text_token']:.2f} | {r['text_tokens_per_segment']:.1f} "
            f"| {r['tokens_per_document']:.1f} "
            f"| {r['documents_per_row']:.2f} ({r['padding_fraction']:.1%}) | {f['val/loss_text']:.3f} "
            f"| {r['nats_per_text_byte']:.3f} ({r['bits_per_text_byte']:.3f}) "
            f"| {f.get('val/loss_image', float('nan')):.3f} | {f.get('val/loss_speech', float('nan')):.3f} "
            f"| {c['documents']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run dirs, or dirs holding one run each (a sweep group)")
    parser.add_argument("--out", default=None, help="write the JSON here, the markdown table beside it (.md)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for spec in args.runs:
        found = find_run_dirs(Path(spec))
        if len(found) != 1:
            raise SystemExit(f"{spec}: expected one run, found {len(found)}: {[str(d) for d in found]}")
        rows.append(summarize(found[0]))
    md = table(rows)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python", *sys.argv])
        out.write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
        out.with_suffix(".md").write_text(f"<!-- written by `{command}` -->\n" + md)


if __name__ == "__main__":
    main()
