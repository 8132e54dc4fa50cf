"""SampleLogger in a real short `mot fit`: TensorBoard holds the image, audio and text samples."""
from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.app.conftest import run_dir


def test_sample_logger_writes_images_audio_and_text(speech_runs):
    """The MoT run of the session's ``speech_runs`` (tests/conftest.py: ``SAMPLES``, 2 steps) sampled after
    step 2."""
    version = max(run_dir(speech_runs / "speech" / "mot").glob("version_*"))
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
