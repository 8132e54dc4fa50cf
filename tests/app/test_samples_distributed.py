"""SampleLogger under 2-process DDP and FSDP2 (CPU, gloo): the run finishes (a rank left waiting would hang
it past the subprocess timeout), TensorBoard holds the samples, and they are the samples one process draws
from the weights the run saved: `mot generate` with the same prompts, seed and limits on its step-2
checkpoint (FSDP2: consolidated). The runs keep an EMA (listed after SampleLogger, so the sampler folds in the
step itself) and sample from it; `mot generate --ema` reads the averages back from the checkpoint. The runs
are the shared ones of ``distributed_runs`` (also checked by test_resume_ddp, test_training, test_export and
test_gen_metrics_distributed).

FSDP1 (Lightning's strategy refuses CPU): the generation helper with a raw FSDP1 root over 2 gloo processes
samples what the unsharded module samples."""
from __future__ import annotations

import copy
import gc
import io
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.distributed as dist
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.utils import make_grid

from mot_lightning.callbacks.generation import generate_in_run, is_sharded
from mot_lightning.callbacks.samples import SILENCE_S
from mot_lightning.sampling import generate
from tests.app.controls_run import tiny_module
from tests.app.distributed_runs import N
from tests.objectives.batches import token_batch
from tests.processes import free_port, spawn

TEXT_TAGS = ("image_to_caption", "speech_to_text")


def logged_samples(version: Path, step: int) -> dict:
    """The samples TensorBoard holds at ``step``: the caption->image grid (uint8 [H, W, 3]), the speech clip
    (float [samples]) and the generated texts by task."""
    acc = EventAccumulator(str(version), size_guidance={"images": 0, "audio": 0, "tensors": 0})
    acc.Reload()
    [grid] = [e for e in acc.Images("samples/caption_to_image") if e.step == step]
    [audio] = [e for e in acc.Audio("samples/text_to_speech") if e.step == step]
    texts = {}
    for task in TEXT_TAGS:
        [event] = [e for e in acc.Tensors(f"samples/{task}/text_summary") if e.step == step]
        texts[task] = _lines(event.tensor_proto.string_val[0].decode())
    clip, rate = sf.read(io.BytesIO(audio.encoded_audio_string), dtype="float32")
    return {"grid": np.asarray(Image.open(io.BytesIO(grid.encoded_image_string)).convert("RGB")),
            "clip": clip, "rate": rate, "texts": texts}


def generated_samples(out: Path) -> dict:
    """What `mot generate` wrote, laid out as SampleLogger logs it (grid, one clip with silences between)."""
    images = [torch.from_numpy(np.array(Image.open(out / f"caption_to_image_{i:02d}.png"))).permute(2, 0, 1)
              for i in range(N)]
    waves = [sf.read(out / f"text_to_speech_{i:02d}.wav", dtype="float32") for i in range(N)]
    rate = waves[0][1]
    gap = np.zeros(int(SILENCE_S * rate), dtype=np.float32)
    clip = np.concatenate([piece for wave, _ in waves for piece in (wave, gap)])
    texts = {task: _lines((out / f"{task}.txt").read_text()) for task in TEXT_TAGS}
    return {"grid": make_grid(torch.stack(images), nrow=N).permute(1, 2, 0).numpy(), "clip": clip, "rate": rate,
            "texts": texts}


def _lines(text: str) -> list[str]:
    """Numbered lines ("1. x" in TensorBoard, "00: x" in files; entries are reprs: one line each) -> x."""
    return [re.sub(r"^\d+[.:] ", "", line) for line in text.splitlines() if line]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_process_samples_are_the_one_process_samples_of_the_saved_weights(strategy, ddp_runs, fsdp2_runs):
    runs = {"ddp": ddp_runs, "fsdp2": fsdp2_runs}[strategy]  # both named: conftest groups by fixture
    first = runs.split if strategy == "ddp" else runs.first  # the 2-step launch: samples after step 2
    logged = logged_samples(first.version, step=2)
    expected = generated_samples(runs.one_process["generated"])  # FSDP2: of the consolidated checkpoint

    assert logged["texts"] == expected["texts"]  # captions and transcriptions, id for id
    assert [len(lines) for lines in logged["texts"].values()] == [N, N]
    # images and audio: the same samples, quantised by each writer's own rounding (truncation vs round: 1 level)
    assert logged["grid"].shape == expected["grid"].shape
    assert np.abs(logged["grid"].astype(int) - expected["grid"].astype(int)).max() <= 1
    assert logged["rate"] == expected["rate"] and logged["clip"].shape == expected["clip"].shape
    np.testing.assert_allclose(logged["clip"], expected["clip"], rtol=0, atol=2 / 32767)


def sample(net) -> torch.Tensor:
    """20 ids after 2 prompts of 6 token_batch ids, temperature 1, KV cache, a fixed seed."""
    prompt = token_batch(B=2, T=16, seed=3).tokens[:, :6]
    return generate(net, prompt, _modality_of, 20, generator=torch.Generator().manual_seed(0))


def _modality_of(ids: torch.Tensor) -> torch.Tensor:
    return (ids >= 20).long() + (ids >= 30).long()  # token_batch's ranges


def _fsdp1_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    _fsdp1_generate(rank, out)
    dist.barrier()
    gc.collect()  # the FSDP module (it holds the process group) is gone before the group is destroyed
    dist.destroy_process_group()


def _fsdp1_generate(rank: int, out: str) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from mot_lightning.model.block import Block

    torch.manual_seed(0)
    module = tiny_module()
    module.configure_model()
    with torch.no_grad():
        expected = sample(copy.deepcopy(module.net).eval())  # the unsharded twin, in this process
    # as Lightning's FSDPStrategy wraps it: the LightningModule in the root, every block in its own unit
    root = FullyShardedDataParallel(module, device_id=torch.device("cpu"), use_orig_params=True,
                                    auto_wrap_policy=ModuleWrapPolicy({Block}),
                                    sharding_strategy=ShardingStrategy.FULL_SHARD)
    trainer = SimpleNamespace(strategy=SimpleNamespace(model=root), is_global_zero=rank == 0, callbacks=[],
                              training=True, global_step=0)  # the parts of a Trainer the helper reads
    got = generate_in_run(trainer, module, lambda: sample(module.net))
    if rank == 0:
        torch.save({"sharded": is_sharded(trainer, module), "expected": expected, "got": got,
                    "training": module.net.training}, out)
    else:
        assert got is None


@pytest.mark.multiprocess
def test_fsdp1_ranks_generate_together_what_one_process_generates(tmp_path):
    port = free_port()
    spawn(_fsdp1_rank, args=(port, str(tmp_path / "fsdp1.pt")), nprocs=2)
    result = torch.load(tmp_path / "fsdp1.pt")
    assert result["sharded"] and result["training"]  # train mode restored after sampling in eval mode
    assert result["got"].shape == (2, 26)
    assert torch.equal(result["got"], result["expected"])
