"""One bad document never stops a run: whatever one document raises while it is read, decoded or encoded
skips it under a named reason (counted), the loader and `mot data inspect` report the same problems, and
only interrupts, timeouts and "the whole source is unusable" errors leave."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from mot_lightning.commands import data as data_cli
from mot_lightning.data.documents import BadSample, SourceUnusable, contained
from mot_lightning.data.sources import SourceConfig

from .helpers import make_datamodule, write_tar

# valid JSON whose text holds a lone surrogate: json.loads accepts it, no UTF-8 encoder does
SURROGATE = {"__key__": "surrogate", "json": b'{"segments": [{"modality": "text", "text": "bad \\ud800 text"}]}'}


def good_docs(n: int) -> list[dict]:
    return [{"__key__": f"good{i:03d}", "txt": f"good-{i:03d} a few words".encode()} for i in range(n)]


def test_a_lone_surrogate_document_is_skipped_and_counted_and_inspect_names_it(tmp_path, capsys):
    shard = write_tar(str(tmp_path / "train.tar"), [*good_docs(5), SURROGATE, *good_docs(5)])
    dm = make_datamodule(tmp_path, [SourceConfig("s", shard)], val_sets=[], num_workers=1, seq_len=64,
                         batch_size=2, train_batches_per_epoch=4, skip_warning=None)
    dm.setup("fit")
    batches = list(dm.train_dataloader())  # raised UnicodeEncodeError in the worker before
    assert len(batches) == 4
    assert dm.skip_counts("train")["bad_encoding"] >= 1

    data_cli.main(["inspect", shard, "--quiet"])
    out = capsys.readouterr().out
    assert "10 readable documents" in out and "problems: bad_encoding=1" in out
    assert "surrogate.json segment 0" in out  # the document is named


def test_contained_turns_any_document_error_into_a_counted_skip_and_lets_the_fatal_ones_through():
    with pytest.raises(BadSample) as caught:
        contained("doc7", lambda: "\ud800".encode("utf-8"))
    assert caught.value.reason == "bad_document" and "doc7: UnicodeEncodeError" in caught.value.detail
    with pytest.raises(BadSample, match="bad_image"):  # a named skip keeps its reason
        contained("doc7", lambda: (_ for _ in ()).throw(BadSample("bad_image", "x")))
    for fatal in (TimeoutError("slow"), InterruptedError("stop"), SourceUnusable("other tokenizers"),
                  KeyboardInterrupt()):
        with pytest.raises(type(fatal)):
            contained("doc7", lambda fatal=fatal: (_ for _ in ()).throw(fatal))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_16_bit_alpha_and_palette_pngs_decode_the_same_in_training_and_tokenizer_fitting():
    from mot_lightning.data.documents import load_image
    from mot_lightning.tokenizers.media import read_image

    ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)  # 16-bit greyscale ramp
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, np.arange(16, dtype=np.uint8)[None, :] * 17  # red fading in over white
    palette = Image.new("RGB", (16, 16), (0, 0, 255)).convert("P")
    palette.info["transparency"] = 0
    for name, img in (("gray16", Image.fromarray(ramp)), ("rgba", Image.fromarray(rgba, "RGBA")),
                      ("palette", palette)):
        raw = png(img)
        training, fitting = load_image(raw, 16, name), read_image(raw)  # (3, 16, 16): no resize either way
        assert torch.equal(training, fitting), name  # one conversion (tokenizers.media.to_rgb)
    gray = load_image(png(Image.fromarray(ramp)), 16)
    assert abs(float(gray.mean()) - 0.5) < 0.01  # was all white: convert("RGB") clips 16-bit values at 255
    red = load_image(png(Image.fromarray(rgba, "RGBA")), 16)
    assert torch.allclose(red[:, 0, 0], torch.ones(3))  # transparent -> white (it was black)


def test_non_finite_audio_is_bad_audio():
    from mot_lightning.data.documents import load_audio

    wave = np.zeros(1600, np.float32)
    wave[10] = np.nan
    buf = io.BytesIO()
    soundfile.write(buf, wave, 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(BadSample, match="non-finite") as caught:
        load_audio(buf.getvalue(), name="nan.wav")
    assert caught.value.reason == "bad_audio"


def test_per_document_cost_is_bounded_before_decoding(tmp_path):
    from mot_lightning.data.counters import NullCounters
    from mot_lightning.data.documents import DecodeLimits, parse_sample
    from mot_lightning.modality import Modality
    from mot_lightning.shards.reader import shard_samples

    from .helpers import interleaved, png_bytes

    limits = DecodeLimits(max_member_bytes=100_000, max_doc_members=3, max_doc_pixels=2 * 32 * 32)
    image = png_bytes(0, 32)
    samples = [interleaved("many", [("text", "x"), *[("image", image)] * 4]),  # 4 files named > 3
               interleaved("pixels", [("text", "x"), *[("image", image)] * 3]),  # 3 x 1024 px > 2048
               {"__key__": "huge", "txt": b"word " * 40_000},  # 200 KB > 100 KB: never read
               interleaved("fine", [("text", "x"), *[("image", image)] * 2])]
    shard = write_tar(str(tmp_path / "costly.tar"), samples)
    reasons = []
    for sample in shard_samples([shard], NullCounters(), limits.max_member_bytes):
        try:
            parse_sample(sample, frozenset(Modality), 32, limits)
            reasons.append("ok")
        except BadSample as bad:
            reasons.append(bad.reason)
    assert reasons == ["too_many_members", "doc_too_large", "member_too_large", "ok"]


def test_a_truncated_checkpoint_names_the_intact_ones_beside_it(tmp_path):
    from mot_lightning.checkpoints import load_checkpoint

    torch.save({"global_step": 4, "w": torch.ones(3)}, tmp_path / "epoch=0-step=4.ckpt")
    whole = (tmp_path / "epoch=0-step=4.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(whole[: len(whole) // 2])  # a torn copy
    with pytest.raises(ValueError, match=r"not a complete torch checkpoint.*\n.*epoch=0-step=4\.ckpt; resume from one "
                                         r"with --ckpt_path .*epoch=0-step=4\.ckpt"):
        load_checkpoint(tmp_path / "last.ckpt")
