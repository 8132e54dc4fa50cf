"""Labelled data this project did not generate: scikit-learn's handwritten digits as captioned pictures and
interleaved documents, converted with the app's own converters (``mot data convert``).

    python benchmarks/labelled_digits.py --out data/digits      # folders, then shards (a few seconds)
    mot sweep --config configs/sweeps/digits_dense_vs_mot.yaml --jobs 2
    mot compare runs/digits_dense_vs_mot/chameleon_mot --baseline runs/digits_dense_vs_mot/chameleon_dense \\
        --out benchmarks/results/compare/digits_chameleon          # likewise transfusion_*

The 1,797 8 x 8 scans (``sklearn.datasets.load_digits``, shipped inside the package: no download) are
drawn dark on light at 32 px (bicubic) and captioned from four templates that name the digit as a word
("a handwritten digit seven."). The last 297 scans are the validation pairs (none of them in training);
the first 1,500 make the training pairs and 1,500 interleaved two-digit documents ("a handwritten three:
<image> and then a handwritten eight: <image>"). The label rule of the plug-in scorer is the ten number
words (configs/examples/digits.yaml); its classifier is fitted on the training pairs.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten digit {}.", "the number {}, written by hand.", "a scan of a handwritten {}.",
             "{}, a handwritten numeral.")
N_VAL = 297


def digit_image(scan: np.ndarray, size: int = 32) -> Image.Image:
    """An 8 x 8 scan with values 0..16 (ink) -> an RGB picture, dark ink on a light ground, ``size`` px."""
    grey = (255 - np.asarray(scan, dtype=np.float64) * 255 / 16).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BICUBIC).convert("RGB")


def write_folders(root: Path, size: int = 32, seed: int = 0, n_train: int | None = None) -> dict[str, int]:
    """``root/{train,val}/pairs``: ``<name>.png`` + ``<name>.txt`` captions; ``root/train/interleaved.jsonl``
    with its pictures in ``root/train/interleaved/``. Returns how many of each were written."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = random.Random(seed)
    scans, labels = digits.images, digits.target
    split = {"train": range(0, len(scans) - N_VAL), "val": range(len(scans) - N_VAL, len(scans))}
    if n_train is not None:
        split["train"] = range(0, n_train)
    counts = {}
    for name, indices in split.items():
        folder = root / name / "pairs"
        folder.mkdir(parents=True, exist_ok=True)
        for i in indices:
            digit_image(scans[i], size).save(folder / f"digit_{i:04d}.png")
            caption = rng.choice(TEMPLATES).format(WORDS[labels[i]])
            (folder / f"digit_{i:04d}.txt").write_text(caption + "\n", encoding="utf-8")
        counts[f"{name}_pairs"] = len(indices)
    pictures = root / "train" / "interleaved"
    pictures.mkdir(parents=True, exist_ok=True)
    train = list(split["train"])
    docs = []
    for d in range(len(train)):
        a, b = rng.choice(train), rng.choice(train)
        for i in (a, b):
            if not (pictures / f"digit_{i:04d}.png").exists():
                digit_image(scans[i], size).save(pictures / f"digit_{i:04d}.png")
        docs.append({"id": f"pair_{d:04d}", "segments": [
            {"modality": "text", "text": f"a handwritten {WORDS[labels[a]]}:"},
            {"modality": "image", "path": f"interleaved/digit_{a:04d}.png"},
            {"modality": "text", "text": f"and then a handwritten {WORDS[labels[b]]}:"},
            {"modality": "image", "path": f"interleaved/digit_{b:04d}.png"}]})
    (root / "train" / "interleaved.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    counts["train_interleaved"] = len(docs)
    return counts


def prepare(out: Path, size: int = 32, seed: int = 0, n_train: int | None = None) -> None:
    """Folders under ``out/raw``, shards under ``out/shards/{train/pairs,train/interleaved,val/pairs}``."""
    from mot_lightning.commands.main import main as mot

    counts = write_folders(out / "raw", size, seed, n_train)
    print("wrote", ", ".join(f"{v} {k}" for k, v in counts.items()))
    for split in ("train", "val"):
        mot(["data", "convert", "images", "--src", str(out / "raw" / split / "pairs"),
             "--out", str(out / "shards" / split / "pairs"), "--quiet"])
    mot(["data", "convert", "interleaved", "--src", str(out / "raw" / "train" / "interleaved.jsonl"),
         "--out", str(out / "shards" / "train" / "interleaved"), "--quiet"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/digits", help="folder for raw/ and shards/")
    parser.add_argument("--size", type=int, default=32, help="picture side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="captions and interleaved pairs")
    args = parser.parse_args()
    prepare(Path(args.out), args.size, args.seed)


if __name__ == "__main__":
    main()
