"""Real training runs: TensorBoard contract tags, exact resume, DDP and FSDP2 on CPU, config errors."""
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mot_lightning.modality import Modality
from tests.app.conftest import CONFIGS, run_dir, run_fit

SPEECH = ["--config", str(CONFIGS / "speech/mot.yaml")]
SHORT = ["--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1", "--throughput.log_every_n_steps", "1"]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def only_version(root: Path) -> Path:
    versions = sorted(root.glob("version_*"))
    assert versions, f"no run under {root}"
    return versions[-1]


@pytest.mark.slow
def test_tensorboard_holds_every_contract_tag(demo_env, tmp_path):
    run_fit([*SPEECH, *SHORT, "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
             "--data.seq_len", "256", "--data.loader.val_batch_size", "8"], demo_env, tmp_path)
    tags = scalars(only_version(run_dir(tmp_path / "speech" / "mot")))
    assert any(t.startswith("lr-AdamW") for t in tags), sorted(tags)
    expected = {"train/loss", "val/loss", "train/tokens_per_s", "train/total_flops"}
    for m in ("text", "image", "speech"):
        expected |= {f"train/loss_{m}", f"val/loss_{m}", f"val/val_seen/loss_{m}", f"val/val_heldout/loss_{m}"}
    assert expected <= set(tags), sorted(expected - set(tags))
    assert [s for s, _ in tags["train/loss"]] == [0, 1, 2, 3]  # the optimizer step axis
    flops = [v for _, v in tags["train/total_flops"]]
    assert flops == sorted(flops) and flops[0] > 0
    assert any(t.startswith("data/train/skipped_") for t in tags)


@pytest.mark.slow
@pytest.mark.parametrize("epoch_len", [3, 2], ids=["stop-at-epoch-end", "stop-mid-epoch"])
def test_resume_from_last_reaches_the_same_losses(epoch_len, demo_env, tmp_path):
    """Stop at step N, resume with --ckpt_path last: steps N..2N-1 match an unbroken run (|diff| <= 1e-5)."""
    n = 3
    common = [*SPEECH, *SHORT, "--data.loader.train_batches_per_epoch", str(epoch_len),
              "--trainer.limit_val_batches", "0"]
    common += ["--model.scheduler.init_args.max_steps", str(2 * n)]  # one schedule: the split run is stopped early
    run_fit([*common, "--trainer.max_steps", str(2 * n)], demo_env, tmp_path / "full")
    run_fit([*common, "--trainer.max_steps", str(n)], demo_env, tmp_path / "split")
    run_fit([*common, "--trainer.max_steps", str(2 * n), "--ckpt_path", "last"], demo_env, tmp_path / "split")
    full = dict(scalars(only_version(run_dir(tmp_path / "full" / "speech" / "mot")))["train/loss"])
    resumed = dict(scalars(only_version(run_dir(tmp_path / "split" / "speech" / "mot")))["train/loss"])
    assert sorted(resumed) == list(range(n, 2 * n))  # the resumed run starts at step N
    for step in range(n, 2 * n):
        assert resumed[step] == pytest.approx(full[step], abs=1e-5), step


def _global_step(ckpt: Path) -> int:
    if ckpt.is_dir():  # FSDP2 sharded checkpoint: metadata lives beside the shards
        meta = torch.load(ckpt / "meta.pt", weights_only=False)
        return meta["global_step"]
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_process_training_saves_and_resumes(strategy, ddp_runs, fsdp2_runs):
    """2 steps, then --ckpt_path last to step 4: the shared runs of ``distributed_runs`` (DDP: 2 data workers
    per rank; FSDP2: activation checkpointing, a sharded checkpoint), also checked by test_resume_ddp,
    test_samples_distributed, test_export and test_gen_metrics_distributed."""
    runs = {"ddp": ddp_runs, "fsdp2": fsdp2_runs}[strategy]  # both named: conftest groups by fixture
    first = runs.split if strategy == "ddp" else runs.first
    assert runs.step2.exists()  # last.ckpt as the 2-step launch left it
    assert runs.step2.is_dir() == (strategy == "fsdp2")
    assert _global_step(runs.step2) == 2
    resumed = runs.resumed
    assert resumed.last == first.last
    assert "Restoring states from the checkpoint" in resumed.output or "Restored all states" in resumed.output
    assert _global_step(resumed.last) == 4


def test_unknown_key_is_named(demo_env, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_fit([*SPEECH, "--model.backbone.dimm", "32"], demo_env, tmp_path)
    assert "dimm" in capsys.readouterr().err


def test_wrong_type_is_named(demo_env, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_fit([*SPEECH, "--model.backbone.norm_layout", "sideways"], demo_env, tmp_path)
    assert "norm_layout" in capsys.readouterr().err


def test_modality_without_tokenizer_is_named(demo_env, tmp_path):
    with pytest.raises(ValueError, match="need a tokenizer for: speech"):
        run_fit(["--config", str(CONFIGS / "chameleon/mot.yaml"), "--data.modalities", "[text,image,speech]"],
                demo_env, tmp_path)


@pytest.mark.slow
def test_checkpoint_with_another_vocabulary_is_refused(demo_env, tmp_path):
    run_fit(["--config", str(CONFIGS / "chameleon/mot.yaml"), "--trainer.max_steps", "1",
             "--trainer.limit_val_batches", "0"], demo_env, tmp_path)
    ckpt = run_dir(tmp_path / "chameleon" / "mot") / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="vocabulary differs"):
        run_fit([*SPEECH, "--trainer.max_steps", "2", "--ckpt_path", str(ckpt)], demo_env, tmp_path / "b")


@pytest.mark.slow
def test_moe_routing_statistics_are_logged(demo_env, tmp_path):
    run_fit(["--config", str(CONFIGS / "ablations/moe4x_token_choice.yaml"), *SHORT, "--trainer.max_steps", "2",
             "--trainer.limit_val_batches", "0"], demo_env, tmp_path)
    tags = scalars(only_version(run_dir(tmp_path / "ablations" / "moe4x_token_choice")))
    for tag in ("train/moe_max_expert_load", "train/moe_dropped_fraction", "train/moe_aux_loss"):
        assert tag in tags, sorted(tags)
    assert all(0.25 - 1e-6 <= v <= 1.0 for _, v in tags["train/moe_max_expert_load"])


def test_explicit_tokenizer_files_are_loaded_not_refitted(demo_env, tmp_path):
    import shutil

    from mot_lightning.data.datamodule import MultiModalDataModule
    from mot_lightning.data.options import DemoCorpus, LoaderConfig, TokenizerFiles
    from mot_lightning.tokenizers.image_kmeans import KMeansImageConfig, KMeansImageTokenizer
    from mot_lightning.tokenizers.text import ByteTokenizer

    fitted = next(Path(demo_env["tokenizer_dir"]).glob("image-KMeansImageTokenizer-*.pt"))
    shutil.copy(fitted, tmp_path / "my_image_tokenizer.pt")
    image = KMeansImageTokenizer(KMeansImageConfig(resolution=32, patch_size=4, codebook_size=512))

    def make(files):
        return MultiModalDataModule(ByteTokenizer(), image, demo=DemoCorpus(demo_env["demo_dir"]),
                                    loader=LoaderConfig(num_workers=0),
                                    tokenizer_files=TokenizerFiles(str(tmp_path / "empty"), files=files))

    dm = make({"image": str(tmp_path / "my_image_tokenizer.pt")})
    dm.prepare_data()  # nothing to fit: the explicit file exists
    assert not (tmp_path / "empty").exists()
    dm.setup("validate")
    assert dm.tokenizers[Modality.IMAGE].is_fitted and not image.is_fitted
    with pytest.raises(FileNotFoundError, match="tokenizer_files.files names"):
        make({"image": str(tmp_path / "missing.pt")}).prepare_data()
    with pytest.raises(ValueError, match="unknown modality 'video'; expected one of: text, image, speech"):
        make({"video": "x.pt"})
