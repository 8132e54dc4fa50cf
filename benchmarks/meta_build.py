"""Build a preset as FSDP2 does on the meta-device path, in one process: build on meta, ``fully_shard`` every
block and the root over a 1-rank mesh, materialise on the device (``model/meta_init.py``); no step. Prints and
writes (``--out``) the wall time of each phase, the device's peak memory, the process's peak resident memory
and `mot plan`'s start-up prediction.

    python benchmarks/meta_build.py --preset chameleon-7b --modalities 3 --device cuda --out build_7b.json
    python benchmarks/meta_build.py --preset cpu-small --device cpu          # the same on CPU, in seconds

``--dtype auto``: fp32 weights where they fit the device with 10% to spare, else bf16 (what ``bf16-true``
would train in): the 7B MoT is 80 GB in fp32, more than an 80 GB GPU holds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_lightning.model.config import TransformerConfig  # noqa: E402
from mot_lightning.model.memory import RunShape, memory_plan, total_parameters  # noqa: E402
from mot_lightning.model.meta_init import build_on_meta, materialize, meta_tensors  # noqa: E402

GB = 1e9


def peak_rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) * 1024
    return float("nan")


def pick_dtype(name: str, n_params: int, device: torch.device) -> torch.dtype:
    if name != "auto":
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
    if device.type == "cuda":
        free = torch.cuda.get_device_properties(device).total_memory
        return torch.float32 if 4 * n_params * 1.1 < free else torch.bfloat16
    return torch.float32


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="chameleon-7b")
    p.add_argument("--modalities", type=int, default=3)
    p.add_argument("--vocab-size", type=int, default=65536)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    device = torch.device(a.device, 0) if a.device == "cuda" else torch.device(a.device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = TransformerConfig.from_preset(a.preset, n_modalities=a.modalities, sparsity="mot")
    n_params, _ = total_parameters(cfg, a.vocab_size)
    dtype = pick_dtype(a.dtype, n_params, device)
    torch.set_default_dtype(dtype)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    net = build_on_meta(cfg, a.vocab_size)
    t1 = time.perf_counter()
    mesh = init_device_mesh(device.type, (1,))
    for block in net.backbone.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)
    t2 = time.perf_counter()
    materialize(net, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t3 = time.perf_counter()
    plan = memory_plan(cfg, RunShape(vocab_size=a.vocab_size, seq_len=1, strategy="fsdp",
                                     param_bytes=torch.finfo(dtype).bits // 8))
    result = {
        "preset": a.preset, "modalities": a.modalities, "vocab_size": a.vocab_size, "parameters": n_params,
        "dtype": str(dtype), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "build_meta_s": t1 - t0, "shard_s": t2 - t1, "materialize_s": t3 - t2, "total_s": t3 - t0,
        "left_on_meta": len(meta_tensors(net)),
        "device_peak_gb": torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None,
        "host_peak_rss_gb": peak_rss() / GB, "plan_startup_gb": plan.startup / GB,
        "weights_gb": n_params * torch.finfo(dtype).bits / 8 / GB,
        "std_first_block_w13": float(net.backbone.layers[0].ffn.w13.weights[0].to_local().detach().float().std()),
    }
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
