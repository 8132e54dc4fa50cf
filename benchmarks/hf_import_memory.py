"""Peak memory of importing a Hugging Face Llama folder (``model.init_from: DIR``) against the model's size.

    python benchmarks/hf_import_memory.py --out benchmarks/results/hf_import_memory   # writes .json and .md

``transformers`` builds a ~336M-parameter Llama (hidden 1024, 24 layers, 16 heads / 4 KV heads, FFN 2816,
vocabulary 32,000, untied head) with random weights and saves it as sharded float32 safetensors into a
temporary folder. Each measurement then runs in a fresh process and reports its peak resident memory
(``ru_maxrss``):

- ``model``: import torch and build the app's ``TokenLM`` for that config (its own random init);
- ``import``: the same, then ``warm_start`` from the folder (tensors read one at a time);
- ``load_file``: the same model, then the naive way: every safetensors file read whole (``load_file``), the
  state dict converted, ``load_state_dict`` (what reading one tensor at a time avoids).

The import's overhead is ``import - model``: the claim is "about one tensor" (the largest, the embedding, is
131 MB in float32), not a second copy of the model.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = dict(vocab_size=32_000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
              num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=False, rope_theta=10_000.0)


def build(folder: Path) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    model.save_pretrained(folder, max_shard_size="500MB")
    return sum(p.numel() for p in model.parameters())


def measure(mode: str, folder: str) -> dict:
    """Runs in its own process: build the model, load it as ``mode`` says, report the peak RSS."""
    import torch

    from mot_lightning.checkpoints.hf_folder import HFFolder
    from mot_lightning.model.lm import TokenLM
    from mot_lightning.training.warm_start import WarmStart, warm_start

    hf = HFFolder(folder)
    net = TokenLM(hf.cfg, hf.vocab_size)
    n_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    start = time.perf_counter()
    if mode == "import":
        warm_start(net, WarmStart(folder), hf.layout)
    elif mode == "load_file":
        from safetensors.torch import load_file

        raw = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            raw.update(load_file(f))
        from mot_lightning.model.hf_llama import to_app

        net.load_state_dict({name: to_app(m, raw.__getitem__, hf.cfg.head_dim) for name, m in hf.maps.items()})
    seconds = time.perf_counter() - start
    probe = torch.randint(0, hf.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        checksum = float(net(probe, torch.zeros_like(probe)).float().abs().mean())
    # equal in `import` and `load_file` (the same weights), another value for `model` (its own init)
    return {"mode": mode, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "model_mb": n_bytes / 2**20, "load_seconds": seconds, "logit_checksum": checksum}


def run_child(mode: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--folder", str(folder)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(rows: list[dict], n_params: int, largest_mb: float) -> str:
    base = next(r for r in rows if r["mode"] == "model")["peak_rss_mb"]
    lines = [f"Llama, {n_params / 1e6:.0f}M parameters, float32: {rows[0]['model_mb']:.0f} MB of weights; largest "
             f"tensor {largest_mb:.0f} MB (the embedding).", "",
             "| process | peak RSS (MB) | above `model` (MB) | load time (s) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - base:.0f} | "
                     f"{r['load_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/hf_import_memory")
    p.add_argument("--child", choices=("model", "import", "load_file"))
    p.add_argument("--folder")
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.folder)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama"
        n_params = build(folder)
        rows = [run_child(mode, folder) for mode in ("model", "import", "load_file")]
    largest_mb = CONFIG["vocab_size"] * CONFIG["hidden_size"] * 4 / 2**20
    result = {"config": CONFIG, "n_params": n_params, "largest_tensor_mb": largest_mb, "rows": rows,
              "maxrss_of": "each measurement's own process (resource.getrusage RUSAGE_SELF)"}
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text(report(rows, n_params, largest_mb))
    print(report(rows, n_params, largest_mb))


if __name__ == "__main__":
    main()
