"""Loader throughput: packed tokens/s from the demo corpus with the real tokenizers.

    python benchmarks/dataloader.py [--workers 2] [--batches 200] [--seq-len 256] [--batch-size 8]

Generates the demo corpus into a temporary folder (or uses --demo-dir), fits
the k-means image (32x32, 4x4 patches -> 64 tokens, 256 codes) and speech unit
(25 Hz, 256 codes) tokenizers on its training shards, then times the training
loader of ``MultiModalDataModule`` (decode + tokenize + pack in the worker
processes) after one warm-up batch. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from mot_lightning.data.counters import StreamCounters
from mot_lightning.data.datamodule import MultiModalDataModule
from mot_lightning.data.demo import DemoConfig
from mot_lightning.data.documents import BadSample, parse_sample
from mot_lightning.data.options import DemoCorpus, LoaderConfig
from mot_lightning.modality import Modality
from mot_lightning.shards.reader import shard_samples
from mot_lightning.shards.urls import expand
from mot_lightning.tokenizers.image_kmeans import KMeansImageConfig, KMeansImageTokenizer
from mot_lightning.tokenizers.speech import SpeechUnitConfig, SpeechUnitTokenizer
from mot_lightning.tokenizers.text import ByteTokenizer


def fit_tokenizers(demo_dir: str, image_size: int) -> tuple[KMeansImageTokenizer, SpeechUnitTokenizer, float]:
    start = time.perf_counter()
    images, waves = [], []
    urls = expand(os.path.join(demo_dir, "train", "*.tar"), "the demo corpus")
    for sample in shard_samples(urls, StreamCounters()):
        try:
            doc = parse_sample(sample, frozenset(Modality), image_size)
        except BadSample:
            continue
        for seg in doc.segments:
            (
                images if seg.modality == Modality.IMAGE else waves if seg.modality == Modality.SPEECH else []
            ).append(seg.value)
    image = KMeansImageTokenizer(
        KMeansImageConfig(resolution=image_size, patch_size=4, codebook_size=256, iters=10)
    )
    image.fit(images)
    speech = SpeechUnitTokenizer(SpeechUnitConfig(codebook_size=256, iters=10))
    speech.fit(waves)
    return image, speech, time.perf_counter() - start


def measure(dm: MultiModalDataModule, batches: int) -> dict:
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    t0 = time.perf_counter()
    next(loader)  # worker start-up + first batch
    startup = time.perf_counter() - t0
    positions = real = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(loader)
        positions += batch.tokens.numel()
        real += int((batch.tokens != dm.vocab.pad_id).sum())
    seconds = time.perf_counter() - t0
    return {
        "startup_s": round(startup, 2),
        "batches": batches,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(positions / seconds),
        "real_tokens_per_s": round(real / seconds),
        "batches_per_s": round(batches / seconds, 1),
        "padding_fraction": round(1 - real / positions, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--demo-dir", default=None, help="existing demo corpus (default: generate into a temp dir)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        demo_dir = args.demo_dir or os.path.join(tmp, "demo")
        DemoConfig(out=demo_dir).prepare()  # kept when it holds this corpus, else (re)written
        image, speech, fit_s = fit_tokenizers(demo_dir, args.image_size)
        dm = MultiModalDataModule(
            ByteTokenizer(),
            image,
            speech,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            loader=LoaderConfig(num_workers=args.workers, train_batches_per_epoch=args.batches + 1,
                                image_size=args.image_size),
            demo=DemoCorpus(demo_dir),
        )
        result = measure(dm, args.batches)
    result.update(
        workers=args.workers,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        cpus=os.cpu_count(),
        docs_packed=dm.stream_stats()["train"]["docs"],
        tokenizer_fit_s=round(fit_s, 1),
        skipped=dm.skip_counts(),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
