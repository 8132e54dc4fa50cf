"""Long jobs say what they are doing: tokenizer fits and demo generation inside `mot fit` (logging), and
`mot data convert` / `inspect` (a tqdm bar on a terminal, nothing in logs, none with --quiet)."""
from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
import torch

from mot_lightning.commands.main import main as mot_main
from mot_lightning.logs import LEVEL_VARIABLE, configure_logging
from mot_lightning.tokenizers.media import save_image
from tests.app.conftest import CONFIGS, ROOT, run_fit_subprocess


@pytest.fixture
def mot_logger():
    """The ``mot_lightning`` logger, restored (level and handlers) after the test."""
    logger = logging.getLogger("mot_lightning")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def test_progress_lines_follow_mot_log_level(mot_logger, monkeypatch, capsys):
    monkeypatch.delenv(LEVEL_VARIABLE, raising=False)
    configure_logging()
    configure_logging()  # idempotent: one handler
    logging.getLogger("mot_lightning.tokenizers").info("fit step 1/2")
    err = capsys.readouterr().err
    assert err.count("fit step 1/2") == 1
    assert re.search(r"\[\d\d:\d\d:\d\d mot_lightning.tokenizers\] fit step", err)
    monkeypatch.setenv(LEVEL_VARIABLE, "warning")
    configure_logging()
    logging.getLogger("mot_lightning.data").info("hidden")
    logging.getLogger("mot_lightning.data").warning("shown")
    err = capsys.readouterr().err
    assert "shown" in err and "hidden" not in err
    monkeypatch.setenv(LEVEL_VARIABLE, "chatty")
    with pytest.raises(SystemExit, match="MOT_LOG_LEVEL='chatty' is not a log level"):
        mot_main(["--help"])


@pytest.mark.slow
def test_mot_fit_shows_demo_generation_and_kmeans_fit_progress(tmp_path):
    """A real `mot fit` (a subprocess, nothing configured by the test) prints one line per demo split and
    the k-means iterations of the image tokenizer fit that prepare_data runs."""
    env = {"demo_dir": str(tmp_path / "demo"), "tokenizer_dir": str(tmp_path / "tokenizers")}
    small_demo = ["--data.demo.train_docs", "200", "--data.demo.val_docs", "8"]
    out = run_fit_subprocess(["--config", str(CONFIGS / "chameleon/mot.yaml"), "--trainer.fast_dev_run", "1",
                              *small_demo], env, tmp_path / "runs")
    for split in ("train/image_caption", "train/interleaved", "val_seen/mixed", "val_heldout/mixed"):
        assert f"mot_lightning.data] demo corpus: wrote {split}:" in out
    assert "image k-means: seeded 512 codes" in out
    assert re.search(r"\[\d\d:\d\d:\d\d mot_lightning.tokenizers\] image k-means iter 1/20: mean sq", out)


def _image_pairs(folder, n: int = 6):
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        save_image(folder / f"img{i}.png", torch.rand(3, 16, 16, generator=g))
        (folder / f"img{i}.txt").write_text(f"picture number {i}")


def _on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run `mot <args>` with stderr on a pseudo-terminal; -> (exit code, what the terminal showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mot_lightning.commands", *args], cwd=ROOT, env=env, timeout=300,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, check=False)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal is closed and drained
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return proc.returncode, shown.decode("utf-8", errors="replace")


@pytest.mark.slow
def test_convert_and_inspect_show_a_bar_on_a_terminal_and_none_with_quiet(tmp_path, capsys):
    _image_pairs(tmp_path / "src")
    code, shown = _on_a_terminal(["data", "convert", "images", "--src", str(tmp_path / "src"),
                                  "--out", str(tmp_path / "tty"), "--shard-size", "4"])
    assert code == 0 and re.search(r"convert image: 100%.*6/6", shown), shown
    code, shown = _on_a_terminal(["data", "inspect", str(tmp_path / "tty" / "*.tar")])
    assert code == 0 and re.search(r"inspect: 100%.*2/2", shown), shown

    mot_main(["data", "convert", "images", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "quiet"),
              "--shard-size", "4", "--quiet"])
    mot_main(["data", "inspect", str(tmp_path / "quiet" / "*.tar"), "--quiet"])
    captured = capsys.readouterr()
    assert "wrote 6 samples to 2 shards" in captured.out and "6 readable documents" in captured.out
    assert "%" not in captured.err  # no bar
