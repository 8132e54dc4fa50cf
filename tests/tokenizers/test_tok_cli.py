"""`mot tokenizer ...`: every shipped YAML parses, and fitting from a YAML writes a loadable tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mot_lightning.commands.tokenizer import build_parser, main
from mot_lightning.tokenizers import FittableTokenizer, load_tokenizer

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "tokenizers").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_configs_parse_and_instantiate(config):
    parser = build_parser()
    cfg = parser.parse_args(["fit", "--config", str(config)])
    init = parser.instantiate_classes(cfg).fit
    assert isinstance(init.tokenizer, FittableTokenizer) and not init.tokenizer.is_fitted
    assert init.output.endswith(".pt") and init.data.path


def test_fit_kmeans_from_yaml_then_info_and_roundtrip(demo_dirs, tmp_path, capsys):
    out = tmp_path / "km.pt"
    main(["fit", "--config", "configs/tokenizers/kmeans_image.yaml", "--data.path", str(demo_dirs["images"]),
          "--output", str(out), "--tokenizer.init_args.config.codebook_size", "64"])
    tok = load_tokenizer(out)
    assert tok.vocab_size == 64
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["psnr"] > 25 and metrics["held_out_images"] > 0  # 27.6 dB measured on the demo renders
    capsys.readouterr()
    main(["info", str(out)])
    assert json.loads(capsys.readouterr().out)["tokens_per_image"] == 64
    main(["roundtrip", str(out), str(min(demo_dirs["images"].glob("*.png"))), "--out", str(tmp_path / "r.png")])
    assert json.loads(capsys.readouterr().out)["tokens"] == 64 and (tmp_path / "r.png").is_file()


def test_fit_bpe_and_speech_from_yaml(demo_dirs, tmp_path):
    main(["fit", "--config", "configs/tokenizers/bpe_text.yaml", "--data.path", str(demo_dirs["text"]),
          "--output", str(tmp_path / "bpe.pt"), "--tokenizer.init_args.config.vocab_size", "300"])
    bpe = load_tokenizer(tmp_path / "bpe.pt")
    assert bpe.decode(bpe.encode("Hi there")) == "Hi there"
    main(["fit", "--config", "configs/tokenizers/speech_units.yaml", "--data.path", str(demo_dirs["audio"]),
          "--output", str(tmp_path / "sp.pt"), "--tokenizer.init_args.config.codebook_size", "32"])
    assert load_tokenizer(tmp_path / "sp.pt").vocab_size == 32


@pytest.mark.slow
def test_fit_vqvae_from_yaml_few_steps(demo_dirs, tmp_path):
    out = tmp_path / "vq.pt"
    main(["fit", "--config", "configs/tokenizers/vqvae_image.yaml", "--data.path", str(demo_dirs["images"]),
          "--output", str(out), "--train.max_steps", "4", "--train.batch_size", "8", "--train.val_every_n_steps", "4",
          "--train.log_dir", str(tmp_path / "tb"), "--train.progress_bar", "false"])
    tok = load_tokenizer(out)
    assert tok.encode(torch.rand(3, 40, 50)).shape == (64,)
    assert "codebook_usage" in json.loads(out.with_suffix(".metrics.json").read_text())
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))


def test_missing_data_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="demo-data"):
        main(["fit", "--config", "configs/tokenizers/kmeans_image.yaml", "--data.path", str(tmp_path / "none"),
              "--output", str(tmp_path / "x.pt")])
