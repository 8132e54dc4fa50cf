"""Generation metrics: what bounds them (scorer accuracy, FID/KID floors) and what they cost.

    python benchmarks/gen_metrics.py scorer --cache runs/scorers [--vqvae F] [--klvae F] [--fit-neural]
    python benchmarks/gen_metrics.py floor --cache runs/scorers [--config configs/speech/mot.yaml]
    python benchmarks/gen_metrics.py cost --config configs/speech/mot.yaml [--ckpt F] [--n 64 --n_heldout 32]
    python benchmarks/gen_metrics.py run-cost --config configs/speech/mot.yaml --out DIR   # two whole runs
    python benchmarks/gen_metrics.py conditioning --out DIR        # conditional vs caption-ignoring model

``scorer``: the faithfulness scorer (fitted once into ``--cache`` with its default config, as the callback
fits it) on ``--n`` held-out renders per split, clean, through generic degradations and through the demo
image tokenizers' round trips: k-means patches (fitted here on renders of the world, as ``mot fit`` fits
it on the demo corpus), and the VQ-VAE / KL-VAE when their files are given (``--vqvae`` / ``--klvae``) or
fitted here (``--fit-neural``: the configs' architectures and training length). (On the retired one-group
world a deterministic parser of the render ran beside it, the alternative the scorer was chosen over:
benchmarks/README.md.)

``floor``: FID and KID in the scorer's features between two disjoint sets of real renders, at several set
sizes, between two disjoint halves of the demo validation images (``--config``'s first validation set;
the quickstart's fixed corpus by default), and of one set against itself with growing noise.

``cost``: the wall time of one ``GenerationMetrics`` evaluation of the config's model (its weights from
``--ckpt``, else freshly initialised: captions then run to their length limit, the worst case) on this
machine's threads, split by task, and its share of a 600-step run with validation every 100 steps
(``--run-seconds``: that run's time without the callback).

``run-cost``: two whole 600-step ``mot fit`` runs of ``--config``, without and with the callback at its
defaults after every validation (6 evaluations), as subprocesses: their CPU seconds, wall seconds, last
validation loss (the callback must not change training) and the ``val/gen/*`` series.

``conditioning``: trains a tiny chameleon-setting model twice on the fixed demo corpus (captions kept, and
caption dropout 0.99: a model that ignores the caption) and scores both.

Each writes ``benchmarks/results/gen_metrics_<section>[_<world>].json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from mot_lightning.eval import metrics as M
from mot_lightning.eval.degrade import degrade
from mot_lightning.eval.faithfulness import ATTRIBUTES, accuracy
from mot_lightning.eval.scorer import fitted_scorer
from mot_lightning.eval.worlds import SPLITS, World, eval_items, get_world

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CONFIG = "configs/speech/mot.yaml"
COLUMNS = (*ATTRIBUTES, "all")


# --- scorer accuracy --------------------------------------------------------------------------------
def round_trips(world: World, args) -> dict[str, object]:
    """name -> tokenizer (encode_batch/decode_batch) for the image tokenizers to read through."""
    from mot_lightning.tokenizers import KMeansImageConfig, KMeansImageTokenizer, load_tokenizer

    rng = random.Random(f"benchmark tokenizers:{world.name}")
    fit_images = [world.render(world.scene(rng, held_out=False), 32) for _ in range(1000)]
    tokenizers: dict[str, object] = {}
    km = KMeansImageTokenizer(KMeansImageConfig(resolution=32, patch_size=4, codebook_size=512))
    km.fit(fit_images)
    tokenizers["k-means patches"] = km
    for name, path, config in (("VQ-VAE", args.vqvae, "vqvae_image"), ("KL-VAE", args.klvae, "klvae_latent")):
        if path:
            tokenizers[name] = load_tokenizer(path)
        elif args.fit_neural:
            tokenizers[name] = fit_neural(config, fit_images, args)
    return tokenizers


def fit_neural(config: str, images, args):
    import yaml

    from mot_lightning.tokenizers import LatentImageTokenizer, TrainConfig, VQImageTokenizer
    from mot_lightning.tokenizers.latent import KLVAEConfig
    from mot_lightning.tokenizers.vqvae import VQVAEConfig

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/tokenizers" / f"{config}.yaml").read_text())
    cls, cfg = (VQImageTokenizer, VQVAEConfig) if config.startswith("vq") else (LatentImageTokenizer, KLVAEConfig)
    tok = cls(cfg(**spec["tokenizer"]["init_args"]["config"]))
    train = {**spec["train"], "max_steps": args.neural_steps or spec["train"]["max_steps"], "progress_bar": False,
             "log_dir": str(Path(args.cache) / "tokenizer_logs")}
    tok.fit(images, TrainConfig(**train))
    return tok


def reconstruct(tok, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([tok.decode_batch(tok.encode_batch(b)) for b in images.split(64)]).clamp(0, 1)


def scorer_section(args) -> dict:
    world = get_world(args.world)
    t0 = time.perf_counter()
    scorer = fitted_scorer(world.name, 32, args.cache)
    fit_s = time.perf_counter() - t0
    conditions = {"clean": lambda x: x, "generic degradations": lambda x: degrade(x, torch.Generator().manual_seed(1))}
    for name, tok in round_trips(world, args).items():
        conditions[name] = lambda x, tok=tok: reconstruct(tok, x)
    readers = {"scorer (CNN)": scorer.predict}
    table = {}
    for split in SPLITS:
        items = eval_items(world, args.n, split, 32, seed=12345)  # not the callback's prompts (seed 0)
        images, truth = torch.stack([it.image for it in items]), [it.groups for it in items]
        for cond, apply in conditions.items():
            seen = apply(images)
            for reader, read in readers.items():
                table[f"{split} | {cond} | {reader}"] = accuracy(truth, read(seen))
    return {"world": world.name, "n_per_split": args.n, "scorer_fit_or_load_seconds": fit_s, "accuracy": table}


# --- FID / KID floors -------------------------------------------------------------------------------
def floor_section(args) -> dict:
    world = get_world(args.world)
    feat = M.ScorerFeatures(fitted_scorer(world.name, 32, args.cache))
    out: dict[str, dict] = {"world": world.name, "real_vs_real": {}, "noise": {}}
    for n in (16, 32, 64, 128, 256):
        a = torch.stack([it.image for it in eval_items(world, n, "seen", 32, seed=0)])
        b = torch.stack([it.image for it in eval_items(world, n, "seen", 32, seed=1_000_003)])
        out["real_vs_real"][n] = M.distribution(a, b, feat)
    out["validation_halves"] = validation_halves(args, feat)
    a = torch.stack([it.image for it in eval_items(world, 64, "seen", 32, seed=0)])
    g = torch.Generator().manual_seed(0)
    for sigma in (0.0, 0.05, 0.1, 0.2, 0.4):
        noisy = (a + sigma * torch.randn(a.shape, generator=g)).clamp(0, 1)
        out["noise"][sigma] = M.distribution(a, noisy, feat)
    return out


def data_overrides(args) -> list[str]:
    """CLI overrides of a data module built in this process: no loader workers, and ``--demo-dir`` /
    ``--tokenizer-dir`` when given (else the config's directories)."""
    return ["--data.loader.num_workers", "0"] + (["--data.demo.dir", args.demo_dir] if args.demo_dir else []) \
        + (["--data.tokenizer_files.dir", args.tokenizer_dir] if args.tokenizer_dir else [])


def validation_halves(args, feat) -> dict:
    """FID / KID between the first two disjoint halves of n images of the config's first validation set (the
    ``fid_floor_val`` bound of the callback), for every n the set holds twice."""
    from mot_lightning.building import build

    configs = [args.config]
    overrides = data_overrides(args)
    _, dm = build(configs, overrides)
    images = dm.image_text_pairs(512)[0]
    out = {"configs": configs, "validation_images": len(images), "by_n": {}}
    for n in (16, 32, 64, 128, 256):
        if 2 * n <= len(images):
            out["by_n"][n] = M.distribution(images[:n], images[n:2 * n], feat)
    return out


# --- cost -------------------------------------------------------------------------------------------
def cost_section(args) -> dict:
    from mot_lightning.building import build, load_weights
    from mot_lightning.eval.evaluate import ScorerSource, build_suite, evaluate
    from mot_lightning.sampling import GenerationTasks, SamplingSettings

    overrides = data_overrides(args)
    model, dm = build([args.config], overrides, Path(args.ckpt) if args.ckpt else None)
    if args.ckpt:
        load_weights(model, args.ckpt, "cpu")
    model.eval()
    modalities = {m for m in dm.modalities if m in model.modalities and dm.tokenizers.get(m) is not None}
    t0 = time.perf_counter()
    suite = build_suite(dm, modalities, "cpu", args.n, args.n_heldout, args.n_speech,
                        scorer=ScorerSource(dir=args.cache))
    setup_s = time.perf_counter() - t0
    tasks = GenerationTasks.of(model, dm, SamplingSettings())
    timings = {}
    for name in ("caption_to_image", "image_to_caption", "speech_to_text", "text_to_speech_units"):
        original = getattr(tasks, name)

        def timed(*a, _f=original, _n=name, **k):
            t = time.perf_counter()
            out = _f(*a, **k)
            timings[_n] = timings.get(_n, 0.0) + time.perf_counter() - t
            return out
        setattr(tasks, name, timed)
    t0, c0 = time.perf_counter(), time.process_time()
    result = evaluate(tasks, suite, modalities)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    step_cpu = train_step_cpu_seconds(model, dm)
    validations = 600 // 100
    return {"config": args.config, "ckpt": args.ckpt, "threads": torch.get_num_threads(), "n_prompts": args.n,
            "n_heldout": args.n_heldout, "n_speech": args.n_speech, "suite_setup_seconds": setup_s,
            "evaluation_seconds": total, "evaluation_cpu_seconds": cpu, "by_task_seconds": timings,
            "scoring_seconds": total - sum(timings.values()), "train_step_cpu_seconds": step_cpu,
            "share_of_600_step_run_cpu": validations * cpu / (600 * step_cpu),
            "run_seconds_without": args.run_seconds,
            "share_of_600_step_run_wall": validations * total / args.run_seconds, "metrics": result.values()}


RUN_ARMS = {  # the setting's own callback list, with and without GenerationMetrics at every validation
    "without": "trainer:\n  callbacks:\n    - class_path: mot_lightning.callbacks.SampleLogger\n"
               "      init_args: {every_n_steps: 200, n_samples: 4}\n",
    "with": "trainer:\n  callbacks:\n    - class_path: mot_lightning.callbacks.SampleLogger\n"
            "      init_args: {every_n_steps: 200, n_samples: 4}\n"
            "    - class_path: mot_lightning.callbacks.GenerationMetrics\n      init_args: {every_n_val: 1}\n",
}


def run_cost_section(args) -> dict:
    """Two whole ``mot fit`` runs of the config (600 steps, validation every 100), without and with the
    callback at its defaults after every validation: CPU seconds of each process (children included), wall
    seconds, and the ``val/gen/*`` series the second one wrote."""
    import resource
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"config": args.config, "threads": args.threads, "arms": {}}
    for arm, overlay in RUN_ARMS.items():
        (out_dir / f"{arm}.yaml").write_text(overlay)
        save = out_dir / f"runs_{arm}"
        cmd = [sys.executable, "-m", "mot_lightning.commands", "fit", "--config", args.config, "--config",
               str(out_dir / f"{arm}.yaml"), "--trainer.logger.init_args.save_dir", str(save),
               "--trainer.enable_progress_bar", "false"]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        events = EventAccumulator(str(sorted(save.glob("**/events.out.tfevents*"))[0].parent))
        events.Reload()
        scalars = events.Tags()["scalars"]
        result["arms"][arm] = {
            "cpu_seconds": cpu, "wall_seconds": time.perf_counter() - t0,
            "val_loss": events.Scalars("val/loss")[-1].value,
            "gen": {t[len("val/gen/"):]: [(e.step, e.value) for e in events.Scalars(t)]
                    for t in scalars if t.startswith("val/gen/")}}
    arms = result["arms"]
    result["added_cpu_share"] = arms["with"]["cpu_seconds"] / arms["without"]["cpu_seconds"] - 1
    return result


def train_step_cpu_seconds(model, dm, steps: int = 10) -> float:
    """Process CPU seconds of one training step (forward, backward, AdamW) of ``model`` on the data's batches,
    the median of ``steps`` after one warm-up: the same clock as the evaluation's, robust to other load."""
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    net, opt = model.net.train(), torch.optim.AdamW(model.net.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        batch = next(batches)
        c0 = time.process_time()
        loss = model.objective.loss(net, batch, stage="train", seed=i).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.process_time() - c0)
    net.eval()
    return float(np.median(times[1:]))


# --- conditional vs caption-ignoring -----------------------------------------------------------------
def conditioning_section(args) -> dict:
    """Two chameleon-setting runs on the fixed demo corpus, caption dropout 0 and 0.99, scored alike."""
    from mot_lightning.building import build, load_weights
    from mot_lightning.commands.fit import cli_main
    from mot_lightning.eval.evaluate import ScorerSource, build_suite, evaluate
    from mot_lightning.sampling import GenerationTasks, SamplingSettings

    out = Path(args.out)
    data = ["--data.demo.dir", args.demo_dir or str(out / "demo"),
            "--data.tokenizer_files.dir", args.tokenizer_dir or str(out / "tokenizers"),
            "--data.loader.num_workers", "0"]
    size = ["--model.backbone.dim", str(args.dim), "--model.backbone.n_layers", str(args.layers)]
    result = {"steps": args.steps, "dim": args.dim, "layers": args.layers, "n_prompts": args.n, "runs": {}}
    for name, dropout in (("conditional", "0.0"), ("ignores the caption", "0.99")):
        save = out / f"runs_{dropout}_{args.steps}"
        t0 = time.perf_counter()
        if not list(save.glob("*/*/*/checkpoints/last.ckpt")):  # a rerun scores the runs it has
            cli_main(["fit", "--config", args.config, *size, *data, "--data.loader.caption_dropout", dropout,
                      "--trainer.max_steps", str(args.steps), "--trainer.limit_val_batches", "0",
                      "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
                      "--trainer.logger.init_args.save_dir", str(save)])
        train_s = time.perf_counter() - t0
        (ckpt,) = save.glob("*/*/*/checkpoints/last.ckpt")
        model, dm = build([args.config], [*size, *data], ckpt)
        load_weights(model, str(ckpt), "cpu")
        modalities = {m for m in dm.modalities if m in model.modalities and dm.tokenizers.get(m) is not None}
        suite = build_suite(dm, modalities, "cpu", args.n, args.n_heldout, 0, scorer=ScorerSource(dir=args.cache))
        scores = evaluate(GenerationTasks.of(model, dm, SamplingSettings(temperature=args.temperature)), suite,
                          modalities).values()
        result["runs"][name] = {"caption_dropout": float(dropout), "train_seconds": train_s, "metrics": scores}
    return result


def markdown(section: str, out: dict) -> str:
    if section == "scorer":
        lines = ["| split | input | reader | " + " | ".join(COLUMNS) + " |", "|---" * (3 + len(COLUMNS)) + "|"]
        for key, acc in out["accuracy"].items():
            lines.append("| " + " | ".join(key.split(" | ")) + " | " + " | ".join(f"{acc[c]:.3f}" for c in COLUMNS)
                         + " |")
        return "\n".join(lines)
    if section == "floor":
        lines = ["| set | FID | KID |", "|---|---|---|"]
        lines += [f"| real vs real, n={n} | {v['fid']:.4g} | {v['kid']:.4g} |" for n, v in out["real_vs_real"].items()]
        halves = out["validation_halves"]
        lines += [f"| validation halves ({halves['validation_images']} images), n={n} | {v['fid']:.4g} | "
                  f"{v['kid']:.4g} |" for n, v in halves["by_n"].items()]
        lines += [f"| n=64 vs itself + noise sigma {s} | {v['fid']:.4g} | {v['kid']:.4g} |"
                  for s, v in out["noise"].items()]
        return "\n".join(lines)
    return json.dumps(out, indent=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("section", choices=["scorer", "floor", "cost", "run-cost", "conditioning"])
    p.add_argument("--world", default="procedural", choices=["procedural"], help="the demo world (there is one)")
    p.add_argument("--cache", default="runs/scorers", help="where fitted scorers are kept (fitted when missing)")
    p.add_argument("--n", type=int, default=500, help="scorer: renders per split; cost: caption->image prompts")
    p.add_argument("--vqvae"), p.add_argument("--klvae")
    p.add_argument("--fit-neural", action="store_true")
    p.add_argument("--neural-steps", type=int, default=None)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="floor: the world's demo config by default")
    p.add_argument("--ckpt")
    p.add_argument("--demo-dir"), p.add_argument("--tokenizer-dir")
    p.add_argument("--n_heldout", type=int, default=32)
    p.add_argument("--n_speech", type=int, default=32)
    p.add_argument("--run-seconds", type=float, default=240.0, help="a 600-step run without the callback")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/gen_metrics_conditioning", help="conditioning, run-cost: where the runs go")
    p.add_argument("--steps", type=int, default=600, help="conditioning: training steps of each run")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sections = {"scorer": scorer_section, "floor": floor_section, "cost": cost_section, "run-cost": run_cost_section,
                "conditioning": conditioning_section}
    out = sections[args.section](args)
    suffix = f"_{args.world}" if args.section in ("scorer", "floor") else f"_{Path(args.config).parent.name}"
    path = RESULTS / f"gen_metrics_{args.section.replace('-', '_')}{suffix}.json"
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(markdown(args.section, out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
