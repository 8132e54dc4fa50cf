"""Where the progress lines of long jobs go: the ``mot_lightning`` loggers print to stderr.

Library modules only log (``logging.getLogger("mot_lightning.<area>")``); the command-line entry
points call ``configure_logging()`` once, so tokenizer fits inside ``mot fit`` (k-means iterations,
VQ-VAE / KL-VAE steps), demo generation and the tools show what they are doing. The level is INFO
unless the environment variable ``MOT_LOG_LEVEL`` says otherwise (``DEBUG``, ``INFO``, ``WARNING``,
``ERROR`` or a number). Only the ``mot_lightning`` logger gets a handler; the root logger (and with
it Lightning's and other libraries' logging) is left as it was.
"""
from __future__ import annotations

import logging
import os
import sys

LEVEL_VARIABLE = "MOT_LOG_LEVEL"
FORMAT = "[%(asctime)s %(name)s] %(message)s"  # [16:40:02 mot_lightning.tokenizers] image k-means iter 3/20
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (test capture, redirection)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # logging.StreamHandler reads and writes this attribute
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def log_level(value: str | int | None = None) -> int:
    """A level from ``value`` or, when None, from ``$MOT_LOG_LEVEL`` (default INFO); raises ValueError."""
    value = os.environ.get(LEVEL_VARIABLE, "INFO") if value is None else value
    text = str(value).strip().upper()
    if text.isdigit():
        return int(text)
    if text in _LEVELS:
        return logging.getLevelName(text)
    raise ValueError(f"{LEVEL_VARIABLE}={value!r} is not a log level: use one of {', '.join(_LEVELS)} "
                     "or a number (e.g. MOT_LOG_LEVEL=WARNING to hide progress lines)")


def configure_logging(level: str | int | None = None) -> logging.Logger:
    """Give the ``mot_lightning`` logger one stderr handler (once) and set its level; returns it."""
    logger = logging.getLogger("mot_lightning")
    logger.setLevel(log_level(level))
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    return logger
