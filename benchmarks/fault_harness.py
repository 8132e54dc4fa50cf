"""The harness of ``benchmarks/fault_injection.py``: ``mot`` commands in subprocesses, the result rows and
their markdown table, TensorBoard scalars, and the hand-made bad inputs (shards, a pickle payload)."""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = ["--config", str(CONFIGS / "model/tiny.yaml")]
SMALL = ["--data.seq_len", "128", "--data.batch_size", "2", "--data.loader.num_workers", "0",
         "--data.loader.train_batches_per_epoch", "4", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
         "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "1", "--trainer.max_steps", "1"]
DATA = ["--data.demo.dir", str(ROOT / "data/demo"), "--data.tokenizer_files.dir", str(ROOT / "data/tokenizers")]


@dataclass
class Row:
    case: str
    fault: str
    expected: str
    observed: str
    ok: bool
    seconds: float = 0.0


@dataclass
class Proc:
    rc: int
    out: str
    seconds: float

    def find(self, pattern: str, width: int = 110) -> str | None:
        """The last output line matching ``pattern`` (a traceback ends with its message), from the match on
        when the line is longer than ``width``, cut to ``width``, backticks made quotes (for markdown)."""
        for line in reversed(self.out.splitlines()):
            m = re.search(pattern, line)
            if m:
                line = line.strip()
                line = line[line.find(m.group(0)):] if len(line) > width else line
                line = line if len(line) <= width else line[:width - 3] + "..."
                return line.replace("`", "'")
        return None


@dataclass
class Ctx:
    work: Path
    other_fs: Path  # a directory on another filesystem than ``work`` where there is one (TMPDIR for case 4)
    base: dict[str, Path] = field(default_factory=dict)  # variant -> last.ckpt of a 1-step tiny run

    def mot(self, args: list[str], timeout: float = 300, env: dict | None = None) -> Proc:
        """``python -m mot_lightning.commands <args>`` in ``work``; never raises on a failing command."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
               **(env or {})}
        start = time.perf_counter()
        # output to a file, not a pipe: a grandchild left behind (a `pipe:` source's command) would hold a
        # pipe open and make the command look slower than it is
        with tempfile.TemporaryFile() as log:
            try:
                rc = subprocess.run([sys.executable, "-m", "mot_lightning.commands", *args], cwd=self.work, env=env,
                                    check=False, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = -9
            seconds = time.perf_counter() - start
            log.seek(0)
            out = log.read().decode(errors="replace") + (f"\nTIMEOUT after {timeout} s" if rc == -9 else "")
        return Proc(rc, out, seconds)

    def fit(self, save: str, *extra: str, variant: str = "mot", tiny: bool = True, command: str = "fit",
            timeout: float = 300, env: dict | None = None) -> Proc:
        args = [command, "--config", str(CONFIGS / f"speech/{variant}.yaml"), *(TINY if tiny else []), *SMALL,
                *DATA, "--trainer.logger.init_args.save_dir", str(self.work / save), *extra]
        return self.mot(args, timeout, env)

    def run_dir(self, save: str, variant: str = "mot") -> Path:
        runs = sorted((self.work / save / "speech" / variant).iterdir())
        return runs[0]

    def base_ckpt(self, variant: str) -> Path:
        """last.ckpt of a 1-step tiny run of configs/speech/<variant>.yaml (made once)."""
        if variant not in self.base:
            p = self.fit(f"base_{variant}", variant=variant)
            if p.rc != 0:
                raise RuntimeError(f"the {variant} base run failed:\n{p.out[-3000:]}")
            self.base[variant] = self.run_dir(f"base_{variant}", variant) / "checkpoints" / "last.ckpt"
        return self.base[variant]


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


def exit_line(p: Proc, pattern: str) -> str:
    quoted = p.find(pattern) or p.out.strip()[-160:].replace("`", "'")
    return f"exit {p.rc} after {p.seconds:.0f} s: `{quoted}`"


def text_docs(prefix: str, n: int, words: int = 8) -> list[dict]:
    """``n`` plain-text documents tagged ``<prefix>-<i>`` (about 60 byte tokens each)."""
    return [{"__key__": f"{prefix}{i:04d}", "txt": f"{prefix}-{i:04d} {'word ' * words}".encode()}
            for i in range(n)]


def write_tar(path: Path, samples: list[dict]) -> Path:
    """A WebDataset shard of ``samples`` (``__key__`` + member suffix -> bytes); ``[]`` makes an empty one."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return path


def huge_png(side: int) -> bytes:
    """A valid black greyscale PNG of side x side pixels, a few KB on disk (its rows compressed as a stream)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, parts = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(side):
        parts.append(z.compress(row))
    parts.append(z.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


class Payload:
    """Unpickling this opens (creates) ``marker`` for writing: what a hostile pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def pickle_payload(marker: Path) -> bytes:
    import pickle

    return pickle.dumps(Payload(marker))


def table(rows: list[Row]) -> str:
    lines = ["| # | fault | expected | observed | result | s |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r.case, r.fault, r.expected, r.observed.replace("|", "\\|"), "pass" if r.ok else "**FAIL**",
                 f"{r.seconds:.0f}"]
        lines.append("| " + " | ".join(c.replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def other_filesystem(work: Path) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != work.stat().st_dev:
        return Path(tempfile.mkdtemp(prefix="mot-fault-", dir=shm))
    return work / "other"  # no second filesystem here: still a second directory
