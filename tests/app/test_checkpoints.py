"""Checkpoints: weights-only loading refuses code, the model config is checked against the checkpoint's,
and a save killed mid-write leaves the previous file loadable (checkpoint dir and TMPDIR on different
trees, as with a mounted runs/)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mot_lightning.checkpoints import (
    AtomicCheckpointIO,
    UnsafeCheckpointError,
    atomic_torch_save,
    check_model_config,
    load_checkpoint,
    model_config_differences,
    plain_config,
)
from mot_lightning.checkpoints.loading import unsafe_globals
from mot_lightning.commands.main import main as mot
from mot_lightning.lit_module import MultiModalLM
from mot_lightning.model import TransformerConfig
from mot_lightning.objectives import NextToken
from tests.app.conftest import CONFIGS, TINY_MODEL, data_args, run_dir, run_fit

SPEECH_MOT = str(CONFIGS / "speech/mot.yaml")
ONE_STEP = ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--data.loader.train_batches_per_epoch",
            "1", "--trainer.val_check_interval", "1"]


def touch(path: str) -> None:
    Path(path).write_text("code from a checkpoint ran")


class SideEffect:
    """Unpickling this calls ``touch(marker)``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return touch, (self.marker,)


@pytest.fixture(scope="module")
def runs(speech_runs) -> dict[str, Path]:
    """last.ckpt of a tiny dense and a tiny MoT run of the speech setting (2 steps, with validation): the
    session's ``speech_runs`` (tests/conftest.py)."""
    return {name: run_dir(speech_runs / "speech" / name) / "checkpoints" / "last.ckpt" for name in ("dense", "mot")}


def _evil_checkpoint(path: Path, marker: Path, source: Path) -> None:
    checkpoint = torch.load(source, weights_only=True)
    checkpoint["callbacks"]["Evil"] = SideEffect(marker)
    torch.save(checkpoint, path)


# --- safe loading ------------------------------------------------------------------------------------------
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(runs, demo_env, tmp_path):
    evil, marker = tmp_path / "evil.ckpt", tmp_path / "marker.txt"
    _evil_checkpoint(evil, marker, runs["mot"])
    assert unsafe_globals(evil) == [f"{__name__}.touch"]
    with pytest.raises(UnsafeCheckpointError, match=r"objects the app does not load: .*touch"):
        load_checkpoint(evil)
    with pytest.raises(UnsafeCheckpointError, match="does not load"):  # `mot fit --ckpt_path`: before any build
        run_fit(["--config", SPEECH_MOT, *ONE_STEP, "--ckpt_path", str(evil)], demo_env, tmp_path / "fit")
    with pytest.raises(UnsafeCheckpointError, match="does not load"):
        mot(["generate", "--ckpt", str(evil), "--config", SPEECH_MOT, "--out", str(tmp_path / "samples"),
             "--task", "caption_to_image", *TINY_MODEL, *data_args(demo_env)])
    with pytest.raises(UnsafeCheckpointError):  # Lightning's restore path goes through the app's CheckpointIO
        AtomicCheckpointIO().load_checkpoint(evil)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the control: an unrestricted load does run the payload
    assert marker.read_text() == "code from a checkpoint ran"


def test_every_checkpoint_mot_fit_writes_loads_weights_only(runs):
    for ckpt in runs.values():
        assert unsafe_globals(ckpt) == []
        checkpoint = load_checkpoint(ckpt)
        assert checkpoint["global_step"] == 2 and checkpoint["hyper_parameters"]["vocab_size"] > 0


def test_a_module_built_in_python_saves_plain_hyperparameters(tmp_path):
    """LightningCLI stores the module's arguments as YAML values; a module built directly holds objects,
    which on_save_checkpoint makes plain so its checkpoints load weights-only too."""
    module = MultiModalLM(TransformerConfig(dim=32, n_layers=1, n_heads=4, n_modalities=3), vocab_size=50,
                          objective=NextToken(z_loss=1e-5))
    checkpoint = {"hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    atomic_torch_save(checkpoint, tmp_path / "plain.ckpt")
    hparams = load_checkpoint(tmp_path / "plain.ckpt")["hyper_parameters"]
    assert hparams["backbone"]["dim"] == 32 and hparams["objective"] == {
        "class_path": "mot_lightning.objectives.next_token.NextToken"}
    assert hparams["optimizer"] == "mot_lightning.lit_module.default_optimizer"
    check_model_config(hparams, module.hparams)  # the same module: nothing differs
    with pytest.raises(UnsafeCheckpointError, match="not writing"):  # and the writer refuses an object
        atomic_torch_save({"hyper_parameters": dict(module.hparams)}, tmp_path / "objects.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.ckpt"]  # its temporary is gone too


# --- checkpoint / config consistency -----------------------------------------------------------------------
def test_model_config_differences_are_named():
    ckpt = {"backbone": {"sparsity": "dense", "dim": 32, "attn_backend": "sdpa"}, "vocab_size": 100,
            "objective": {"class_path": "a.NextToken", "init_args": {"z_loss": 1e-5}}, "optimizer": "x"}
    conf = {"backbone": {"sparsity": "mot", "dim": 32, "attn_backend": "flex"}, "vocab_size": 100.0,
            "objective": {"class_path": "a.NextToken", "init_args": {"z_loss": 0.0}}, "optimizer": "y"}
    assert model_config_differences(ckpt, conf) == [  # kernels and the optimizer are not the model
        "backbone.sparsity: checkpoint 'dense', config 'mot'",
        "objective.init_args.z_loss: checkpoint 1e-05, config 0.0"]
    other = {**conf, "objective": {"class_path": "a.Transfusion", "init_args": {"lam": 5.0}}}
    assert "objective.class_path: checkpoint 'a.NextToken', config 'a.Transfusion'" in \
        model_config_differences(ckpt, other)
    assert model_config_differences(ckpt, {"backbone": {"dim": 32}}) == []  # keys on one side only: not compared
    assert plain_config(TransformerConfig(dim=32, n_heads=4))["towers"] == [0]


def test_dense_checkpoint_with_mot_config_is_refused_unless_asked(runs, demo_env, tmp_path):
    """The YAML says MoT, the checkpoint is dense: refused before anything is built."""
    args = ["--config", SPEECH_MOT, *ONE_STEP, "--trainer.max_steps", "3", "--ckpt_path", str(runs["dense"])]
    for command in ("fit", "validate"):
        with pytest.raises(ValueError, match="backbone.sparsity: checkpoint 'dense', config 'mot'"):
            run_fit(args, demo_env, tmp_path / command, command=command)
        assert not (tmp_path / command).exists()  # refused before the run dir was made
    with pytest.raises(ValueError, match="backbone.sparsity: checkpoint 'dense', config 'mot'"):
        mot(["generate", "--ckpt", str(runs["dense"]), "--config", SPEECH_MOT, "--out", str(tmp_path / "s"),
             "--task", "caption_to_image", *TINY_MODEL, *data_args(demo_env)])
    run_fit([*args, "--model_from_ckpt", "true"], demo_env, tmp_path / "taken")  # asked for: trains on, dense
    last = load_checkpoint(run_dir(tmp_path / "taken" / "speech" / "mot") / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3 and last["hyper_parameters"]["backbone"]["sparsity"] == "dense"
    dense = load_checkpoint(runs["dense"])["state_dict"]
    assert last["state_dict"].keys() == dense.keys()


def test_resuming_with_the_same_config_passes(runs, demo_env, tmp_path):
    run_fit(["--config", SPEECH_MOT, *ONE_STEP, "--trainer.max_steps", "3", "--ckpt_path", str(runs["mot"])],
            demo_env, tmp_path)
    assert load_checkpoint(run_dir(tmp_path / "speech" / "mot") / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_a_missing_checkpoint_is_named_before_anything_is_built(tmp_path):
    missing = tmp_path / "missing.ckpt"
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=f"--ckpt {missing} is not a checkpoint file"):
        # the config does not exist either: the checkpoint is checked first, nothing is parsed or built
        mot(["generate", "--ckpt", str(missing), "--config", str(tmp_path / "no.yaml"), "--out", str(tmp_path)])
    assert time.perf_counter() - start < 5
    with pytest.raises(FileNotFoundError, match="--config .*no.yaml: no such file"):
        mot(["generate", "--ckpt", __file__, "--config", str(tmp_path / "no.yaml"), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="not a checkpoint file"):
        run_fit(["--config", SPEECH_MOT, "--ckpt_path", str(missing)], {"demo_dir": "x", "tokenizer_dir": "y"},
                tmp_path)


# --- atomic writes -----------------------------------------------------------------------------------------
SAVER = textwrap.dedent("""
    import sys, torch
    from mot_lightning.checkpoints import AtomicCheckpointIO
    io, path, step = AtomicCheckpointIO(), sys.argv[1], 0
    while True:  # a large checkpoint, saved again and again until killed
        io.save_checkpoint({"global_step": step, "state_dict": {"w": torch.full((12_000_000,), float(step))}}, path)
        print(step, flush=True)
        step += 1
""")


def _checkpoint_dir(tmp_path: Path) -> Path:
    """A checkpoint dir on another filesystem than TMPDIR where there is one (/dev/shm), else another tree."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        return shm / f"mot-ckpt-test-{os.getpid()}-{tmp_path.name}"
    return tmp_path / "mounted" / "runs"


def _writing(tmp: Path) -> bool:
    try:
        return tmp.stat().st_size > 0
    except FileNotFoundError:  # between two saves, or just renamed
        return False


def _kill_mid_save(script: Path, ckpt: Path, tmpdir: Path) -> tuple[int, int]:
    """Start the saver, SIGKILL it while a save's temporary is being written; (pid, last completed step)."""
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        completed = [int(proc.stdout.readline())]  # one complete save first
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _writing(ckpt.with_name(f"{ckpt.name}.tmp-{proc.pid}")):
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)  # while the temporary is being written (at the deadline: never seen)
        proc.wait(timeout=30)
        completed += [int(line) for line in proc.stdout.read().split()]
        return proc.pid, completed[-1]
    finally:
        proc.kill()
        proc.stdout.close()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_save_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    script, tmpdir = tmp_path / "saver.py", tmp_path / "tmpdir"
    script.write_text(SAVER)
    tmpdir.mkdir()
    ckpt_dir = _checkpoint_dir(tmp_path)
    ckpt = ckpt_dir / "last.ckpt"
    try:
        for _ in range(5):  # a kill landing between two saves proves nothing: try again
            pid, step = _kill_mid_save(script, ckpt, tmpdir)
            leaked = sorted(ckpt_dir.glob("last.ckpt.tmp-*"))
            if leaked:
                break
        assert [p.name for p in leaked] == [f"last.ckpt.tmp-{pid}"], "the kill never landed inside a save"
        checkpoint = load_checkpoint(ckpt)  # the previous checkpoint, complete
        assert checkpoint["global_step"] in (step, step + 1)  # killed after the rename, before the print: +1
        assert torch.equal(checkpoint["state_dict"]["w"], torch.full((12_000_000,), float(checkpoint["global_step"])))
        assert list(tmpdir.iterdir()) == []  # nothing staged in TMPDIR
        AtomicCheckpointIO().save_checkpoint({"global_step": -1}, ckpt)  # the next save removes the dead temporary
        assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt"]
        assert load_checkpoint(ckpt)["global_step"] == -1
    finally:
        if ckpt_dir.is_relative_to("/dev/shm"):
            for p in ckpt_dir.glob("*"):
                p.unlink()
            ckpt_dir.rmdir()


def test_mot_fit_writes_through_the_atomic_io(demo_env, tmp_path):
    from mot_lightning.building import build_cli

    cli = build_cli([SPEECH_MOT], [*TINY_MODEL, *data_args(demo_env)])
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    cli = build_cli([SPEECH_MOT], [*TINY_MODEL, *data_args(demo_env), "--trainer.plugins",
                                   "lightning.pytorch.plugins.TorchCheckpointIO"])
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"  # a chosen one is kept


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp2_full_state_checkpoint_is_written_atomically_and_resumes(fsdp2_runs):
    """FSDP2 without sharded saving: rank 0 writes one file through AtomicCheckpointIO; resume reads it. The
    first of the two launches starts from the sharded step-2 checkpoint of the shared FSDP2 run
    (``distributed_runs.Fsdp2Runs``), so a sharded checkpoint is also read into a run that saves full state."""
    written, read = fsdp2_runs.full_state
    assert "Restor" in written.output  # the sharded checkpoint, named by --ckpt_path
    what = fsdp2_runs.written
    assert (what["is_file"], what["global_step"]) == (True, 4)
    # last.ckpt and the step-cadence checkpoint of step 4 (data.loader.train_batches_per_epoch), no temporaries
    steps = [name for name in what["files"] if name != "last.ckpt"]
    assert "last.ckpt" in what["files"] and all(re.fullmatch(r"epoch=\d+-step=4\.ckpt", n) for n in steps), what

    assert read.last == written.last
    assert "Restor" in read.output and read.last.is_file() and load_checkpoint(read.last)["global_step"] == 6
    left = sorted(p.name for p in read.last.parent.iterdir())
    assert "last.ckpt" in left and all(".tmp" not in name for name in left), left  # no temporaries left
