"""Tokenizer files: weights-only loading, clear errors for missing / corrupt / foreign / wrong-kind files."""
from __future__ import annotations

import collections
import pickle

import pytest
import torch

from mot_lightning.tokenizers import ByteTokenizer, KMeansImageTokenizer, TokenizerFileError, load_tokenizer
from mot_lightning.tokenizers.files import VERSION, read_tokenizer_file


def test_missing_file(tmp_path):
    with pytest.raises(TokenizerFileError, match="no tokenizer file.*mot tokenizer fit"):
        load_tokenizer(tmp_path / "nope.pt")


def test_random_bytes_and_truncated_file(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(TokenizerFileError, match="not a readable tokenizer file"):
        load_tokenizer(tmp_path / "junk.pt")
    ByteTokenizer(["<x>"]).save(tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(TokenizerFileError, match="corrupt, truncated"):
        load_tokenizer(tmp_path / "cut.pt")


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused_not_executed(tmp_path, capsys):
    torch.save({"format": "mot_lightning.tokenizer", "obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(TokenizerFileError, match="weights-only"):
        load_tokenizer(tmp_path / "evil.pt")
    assert "unpickled!" not in capsys.readouterr().out
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(TokenizerFileError):
        load_tokenizer(tmp_path / "plain.pkl")


def test_foreign_torch_file_wrong_kind_and_future_version(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "ckpt.pt")
    with pytest.raises(TokenizerFileError, match="not a mot_lightning tokenizer file"):
        load_tokenizer(tmp_path / "ckpt.pt")
    ByteTokenizer().save(tmp_path / "bytes.pt")
    with pytest.raises(TokenizerFileError, match="holds a ByteTokenizer, not a KMeansImageTokenizer"):
        KMeansImageTokenizer.load(str(tmp_path / "bytes.pt"))
    payload = read_tokenizer_file(tmp_path / "bytes.pt")
    torch.save(payload | {"version": VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(TokenizerFileError, match="upgrade"):
        load_tokenizer(tmp_path / "future.pt")


def test_missing_tensors_and_bad_config(tmp_path, kmeans_image):
    tok, _ = kmeans_image
    tok.save(tmp_path / "km.pt")
    payload = read_tokenizer_file(tmp_path / "km.pt")
    torch.save(payload | {"state": {}}, tmp_path / "no_state.pt")
    with pytest.raises(TokenizerFileError, match="lacks tensors"):
        load_tokenizer(tmp_path / "no_state.pt")
    torch.save(payload | {"config": payload["config"] | {"bogus": 1}}, tmp_path / "bad_cfg.pt")
    with pytest.raises(TokenizerFileError, match="KMeansImageConfig"):
        load_tokenizer(tmp_path / "bad_cfg.pt")


def test_load_tokenizer_dispatches_by_kind(tmp_path, kmeans_image):
    tok, _ = kmeans_image
    tok.save(tmp_path / "km.pt")
    loaded = load_tokenizer(tmp_path / "km.pt")
    assert isinstance(loaded, KMeansImageTokenizer)
    assert torch.equal(loaded.codebook, tok.codebook)


def test_fitted_tokenizers_pickle_for_dataloader_workers(kmeans_image, speech_units):
    import pickle as pk

    for tok, raw in ((kmeans_image[0], torch.rand(3, 32, 32)), (speech_units[0], torch.rand(3000) - 0.5)):
        clone = pk.loads(pk.dumps(tok))
        assert torch.equal(clone.encode(raw), tok.encode(raw))
