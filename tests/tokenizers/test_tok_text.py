from __future__ import annotations

import pytest
import torch

from mot_lightning.tokenizers import BPEConfig, BPETokenizer, ByteTokenizer, FitData, TokenizerFileError

TRICKY = ["", "a", "héllo wörld", "emoji 🌍🚀 and CJK 漢字", "  leading and trailing  ", "tabs\tand\nnew\r\nlines",
          "\x00\x01 control", "<|eos|> looks special", "ﬁ ligature (NFKC would change it)"]


def test_bytes_round_trip_is_exact_and_counts_bytes():
    tok = ByteTokenizer()
    for s in TRICKY:
        ids = tok.encode(s)
        assert ids.dtype == torch.long and ids.ndim == 1
        assert tok.decode(ids) == s
        assert tok.num_tokens(s) == ids.numel() == len(s.encode("utf-8"))
    assert tok.vocab_size == 256 and tok.special_tokens == {}


def test_bytes_special_tokens_and_bad_inputs():
    tok = ByteTokenizer(special_tokens=["<|eos|>"])
    assert tok.vocab_size == 257 and tok.special_tokens == {"<|eos|>": 256}
    assert tok.decode(torch.tensor([104, 105, 256, 33])) == "hi<|eos|>!"
    assert tok.decode(torch.tensor([0xE2, 0x82])) == "\ufffd"  # truncated UTF-8 from sampling: replaced, no crash
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(torch.tensor([257]))
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")


def test_bytes_save_load(tmp_path):
    ByteTokenizer(["<a>", "<b>"]).save(tmp_path / "b.pt")
    assert ByteTokenizer.load(str(tmp_path / "b.pt")).special_tokens == {"<a>": 256, "<b>": 257}


@pytest.fixture(scope="module")
def bpe(demo_dirs):
    tok = BPETokenizer(BPEConfig(vocab_size=400, special_tokens=["<|eos|>"]))
    metrics = tok.fit(FitData(str(demo_dirs["text"]), held_out=0.2))
    return tok, metrics


def test_bpe_fits_on_corpus_and_round_trips_exactly(bpe, demo_dirs):
    tok, metrics = bpe
    assert metrics["roundtrip_exact"] == 1.0 and metrics["held_out_texts"] >= 1
    # it learned merges: far fewer tokens than bytes (3.39 measured on 32 documents of the demo world's nine
    # colours and six shapes in six frames with synonyms; bytes alone: 1)
    assert metrics["bytes_per_token"] > 3.0
    assert 256 < tok.vocab_size <= 400
    for s in TRICKY:
        assert tok.decode(tok.encode(s)) == s
    text = (demo_dirs["text"] / "doc00000.txt").read_text()
    assert tok.num_tokens(text) < len(text.encode()) / 3.0  # 3.46 bytes per token measured
    assert [t.tolist() for t in tok.encode_batch(TRICKY)] == [tok.encode(s).tolist() for s in TRICKY]
    assert tok.encode("").numel() == 0


def test_bpe_special_token_id_and_save_load_identical(bpe, tmp_path):
    tok, _ = bpe
    eos = tok.special_tokens["<|eos|>"]
    assert tok.decode(torch.tensor([eos])) == "<|eos|>"
    tok.save(str(tmp_path / "bpe.pt"))
    loaded = BPETokenizer.load(str(tmp_path / "bpe.pt"))
    for s in TRICKY:
        assert torch.equal(loaded.encode(s), tok.encode(s))
    with pytest.raises(TokenizerFileError, match="BPETokenizer"):
        ByteTokenizer.load(str(tmp_path / "bpe.pt"))


def test_unfitted_bpe_says_what_to_do():
    with pytest.raises(RuntimeError, match="fit"):
        BPETokenizer().encode("x")


def test_bpe_vocab_size_is_the_configured_one_before_and_after_fitting(bpe):
    tok, _ = bpe
    assert BPETokenizer(BPEConfig(vocab_size=400)).vocab_size == 400 == tok.vocab_size
    small = BPETokenizer(BPEConfig(vocab_size=1000))
    small.fit(["tiny corpus, tiny corpus"] * 3)  # learns far fewer than 1000 tokens
    assert small.vocab_size == 1000 and max(small.encode("tiny corpus").tolist()) < 300
    assert small.decode(torch.tensor([999])) == ""  # unfilled ids (only reachable by sampling) decode to nothing
