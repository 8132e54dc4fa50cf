"""`mot generate` end to end on a checkpoint of a tiny real run: PNG, WAV and TXT files appear, and a seed
fixes them."""
from __future__ import annotations

import pytest
import soundfile as sf
from PIL import Image

from mot_lightning.commands.main import main as mot
from tests.app.conftest import CONFIGS, TINY_MODEL, data_args, run_dir

SPEECH = str(CONFIGS / "speech/mot.yaml")


@pytest.fixture(scope="module")
def checkpoint(speech_runs):
    """last.ckpt of a 2-step MoT run of the speech setting: the session's ``speech_runs`` (tests/conftest.py)."""
    ckpt = run_dir(speech_runs / "speech" / "mot") / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    return ckpt


def _generate(checkpoint, demo_env, out, *extra: str) -> None:
    mot(["generate", "--ckpt", str(checkpoint), "--config", SPEECH, "--out", str(out),
         "--prompt", "two small red circles on the left", "--prompt", "one blue square",
         "--n", "2", "--max_text_tokens", "8", "--max_speech_units", "4", "--top_k", "20",
         *extra, *TINY_MODEL, *data_args(demo_env)])


def test_generate_writes_images_speech_and_captions(checkpoint, demo_env, tmp_path):
    out = tmp_path / "samples"
    _generate(checkpoint, demo_env, out)
    for i in range(2):
        with Image.open(out / f"caption_to_image_{i:02d}.png") as img:
            assert img.size == (32, 32) and img.mode == "RGB"
        with Image.open(out / f"image_to_caption_{i:02d}.png") as img:
            assert img.size == (32, 32)
        info = sf.info(str(out / f"text_to_speech_{i:02d}.wav"))
        assert info.samplerate == 16000 and info.channels == 1 and info.frames > 0
        info = sf.info(str(out / f"speech_to_text_{i:02d}.wav"))  # the validation clip transcribed
        assert info.samplerate == 16000 and info.frames > 0
    assert "two small red circles" in (out / "caption_to_image.txt").read_text()
    assert (out / "image_to_caption.txt").read_text().count("reference") == 2
    assert len((out / "text_to_speech.txt").read_text().splitlines()) == 2
    assert (out / "speech_to_text.txt").read_text().count("reference") == 2
    # a rerun with the same seed writes the same files; another seed other samples
    again, other = tmp_path / "again", tmp_path / "other"
    _generate(checkpoint, demo_env, again)
    _generate(checkpoint, demo_env, other, "--seed", "1", "--task", "caption_to_image")
    for name in ("caption_to_image_00.png", "text_to_speech_01.wav", "image_to_caption.txt",
                 "speech_to_text.txt"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    assert (out / "caption_to_image_00.png").read_bytes() != (other / "caption_to_image_00.png").read_bytes()


def test_generate_refuses_a_task_the_model_cannot_do(checkpoint, demo_env, tmp_path):
    with pytest.raises(SystemExit, match="cannot do"):
        mot(["generate", "--ckpt", str(checkpoint), "--config", SPEECH, "--out", str(tmp_path),
             "--task", "text_to_speech", "--data.modalities", "[text, image]", *TINY_MODEL, *data_args(demo_env)])


def test_generate_names_a_missing_checkpoint(demo_env, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint file"):
        mot(["generate", "--ckpt", str(tmp_path / "nope.ckpt"), "--config", SPEECH, "--out", str(tmp_path),
             *TINY_MODEL, *data_args(demo_env)])
