"""SampleLogger in a real short `mot fit`: TensorBoard holds the image, audio and text samples."""
from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.app.conftest import CONFIGS, run_dir, run_fit

SAMPLES = ["--trainer.callbacks+=mot_lightning.callbacks.SampleLogger",
           "--trainer.callbacks.every_n_steps", "2", "--trainer.callbacks.n_samples", "2",
           "--trainer.callbacks.max_caption_tokens", "8", "--trainer.callbacks.max_speech_units", "6"]


def test_sample_logger_writes_images_audio_and_text(demo_env, tmp_path):
    run_fit(["--config", str(CONFIGS / "speech/mot.yaml"), *SAMPLES, "--trainer.max_steps", "2",
             "--trainer.limit_val_batches", "0", "--data.loader.train_batches_per_epoch", "2"], demo_env, tmp_path)
    version = max(run_dir(tmp_path / "speech" / "mot").glob("version_*"))
    acc = EventAccumulator(str(version), size_guidance={"images": 0, "audio": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"samples/caption_to_image", "samples/image_reconstructions"} <= set(tags["images"]), tags
    assert "samples/text_to_speech" in tags["audio"], tags
    text = {f"samples/{t}/text_summary"  # add_text's tag suffix
            for t in ("caption_to_image_prompts", "image_to_caption", "text_to_speech_prompts", "speech_to_text")}
    assert text <= set(tags["tensors"]), tags

    grid = acc.Images("samples/caption_to_image")[0]
    assert grid.step == 2 and grid.width > 32 and grid.height >= 32  # two 32x32 images side by side
    recon = acc.Images("samples/image_reconstructions")[0]
    assert recon.height > 64  # originals above reconstructions
    audio = acc.Audio("samples/text_to_speech")[0]
    assert audio.sample_rate == 16000 and audio.length_frames > 0
    prompts = acc.Tensors("samples/caption_to_image_prompts/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "two small red circles on the left" in prompts
    captions = acc.Tensors("samples/image_to_caption/text_summary")[0].tensor_proto.string_val[0].decode()
    assert captions.count("reference") == 2, captions
    transcripts = acc.Tensors("samples/speech_to_text/text_summary")[0].tensor_proto.string_val[0].decode()
    assert transcripts.count("reference") == 2, transcripts
