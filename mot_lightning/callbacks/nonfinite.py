"""What training does when a loss or gradient stops being finite, or the loss stays far above chance; and
how a run stops on a signal (``Preemption``, last section).

``NonFiniteGuard`` (YAML key ``nonfinite``; always present in ``mot fit``) looks at every optimizer step
before it is taken: the losses of its micro-batches per modality (``MultiModalLM.step_losses``), the
total loss, and the gradients of this rank. The ranks agree by one all-reduce of a few flags, so
they all stop or all skip together.

- ``mode: stop`` (default): raise ``NonFiniteLossError`` naming the optimizer step and the modalities
  (or the gradients) that went non-finite. The update is never applied, and training ends before any
  later checkpoint, so ``last.ckpt`` keeps the last good weights.
- ``mode: skip``: drop the step's gradients (``zero_grad(set_to_none=True)``: the optimizer leaves every
  weight and its state untouched; the schedule still advances), count it in
  ``train/skipped_nonfinite_steps`` (kept across resume), and stop as above once more than
  ``max_skipped`` steps were skipped.

Whatever the mode, a checkpoint whose weights are not all finite is refused before anything is
written. With a GradScaler (``16-mixed``) the scaler owns overflow handling and the guard only warns.

It also warns once when a modality's smoothed training loss stays above ``chance_factor * ln(vocab)``
(a uniform guess over the joint vocabulary) after ``check_after_steps`` steps, naming the learning rate:
a diverged run rarely reaches NaN on its own (a measured run at ``lr: 10`` sat at 978 against 6.65).
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.distributed.tensor import DTensor

from mot_lightning.modality import Modality


class NonFiniteLossError(RuntimeError):
    """Training stopped at a non-finite loss or gradient; the message names the step and the modalities."""


def _local(t: Tensor) -> Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def all_finite(tensors) -> Tensor:
    """bool[] on the tensors' device: every element of this rank's part of every tensor is finite."""
    flags = [torch.isfinite(_local(t)).all() for t in tensors]
    return torch.stack(flags).all() if flags else torch.tensor(True)


class NonFiniteGuard(pl.Callback):
    def __init__(self, mode: Literal["stop", "skip"] = "stop", max_skipped: int = 10,
                 chance_factor: float = 2.0, check_after_steps: int = 100) -> None:
        """
        Args:
            mode: "stop" at the first non-finite step, or "skip" such steps (up to ``max_skipped``).
            max_skipped: with ``mode: skip``, stop when one more step would have to be skipped.
            chance_factor: warn when a smoothed training loss exceeds this times ``ln(vocab_size)``...
            check_after_steps: ...at this optimizer step or any multiple of it (0: never).
        """
        if mode not in ("stop", "skip"):
            raise ValueError(f"nonfinite.mode must be 'stop' or 'skip', got {mode!r}")
        if max_skipped < 0 or chance_factor <= 0 or check_after_steps < 0:
            raise ValueError("nonfinite: max_skipped, check_after_steps must be >= 0, chance_factor > 0; got "
                             f"{max_skipped}, {check_after_steps}, {chance_factor}")
        self.mode, self.max_skipped = mode, max_skipped
        self.chance_factor, self.check_after_steps = chance_factor, check_after_steps
        self.skipped = 0
        self._bad: Tensor | None = None  # float[M + 1]: micro-batches of this step with a non-finite loss
        self._smoothed: Tensor | None = None  # float[M]: moving average of the training loss per modality
        self._warned, self._scaler = False, False

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "warned": self._warned}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped, self._warned = state_dict["skipped"], state_dict["warned"]

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._scaler = getattr(trainer.precision_plugin, "scaler", None) is not None
        if self._scaler:
            rank_zero_warn("nonfinite: the GradScaler of this precision skips overflowing steps itself; the "
                           "guard only checks checkpoints and the loss level")

    def on_before_backward(self, trainer: pl.Trainer, pl_module, loss: Tensor) -> None:
        out = getattr(pl_module, "step_losses", None)
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if out is not None:
            values = out.values.detach()
            bad = torch.cat([(~torch.isfinite(values) & (out.weights > 0)).float(), bad])  # (M + 1,)
            self._smooth(out.values.detach().float(), out.weights > 0)
        self._bad = bad if self._bad is None or self._bad.shape != bad.shape else self._bad + bad

    def _smooth(self, values: Tensor, present: Tensor) -> None:
        keep = present & torch.isfinite(values)
        if self._smoothed is None:
            self._smoothed = torch.where(keep, values, torch.nan)
        else:
            start = torch.isnan(self._smoothed)
            mixed = torch.where(start, values, 0.9 * self._smoothed + 0.1 * values)  # ~10 micro-batches
            self._smoothed = torch.where(keep, mixed, self._smoothed)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module, optimizer) -> None:
        bad, self._bad = self._bad, None
        if bad is None or self._scaler:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads_bad = (~all_finite(grads)).float().reshape(1).to(bad.device)
        flags = trainer.strategy.reduce(torch.cat([bad, grads_bad]), reduce_op="sum")  # every rank the same
        flags = [v > 0 for v in flags.tolist()]
        if not any(flags):
            return
        message = self._describe(trainer, pl_module, flags)
        if self.mode == "stop" or self.skipped >= self.max_skipped:
            limit = "" if self.mode == "stop" else f" (more than nonfinite.max_skipped: {self.max_skipped})"
            raise NonFiniteLossError(
                f"{message}{limit}. The update was not applied; {self._last_ckpt(trainer)}. Lower "
                "model.optimizer.init_args.lr, set trainer.gradient_clip_val, or set nonfinite.mode: skip.")
        optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer changes no weight and no state
        self.skipped += 1
        rank_zero_warn(f"{message}: step skipped ({self.skipped} of at most {self.max_skipped}, "
                       "train/skipped_nonfinite_steps)")

    @staticmethod
    def _describe(trainer: pl.Trainer, pl_module, flags: list[bool]) -> str:
        modalities = [Modality(m).label for m, f in enumerate(flags[:-2]) if f]  # then total loss, gradients
        if modalities:
            what = f"training loss of {', '.join(modalities)} (train/loss_<modality>)"
        else:
            what = "total training loss" if flags[-2] else "gradients (every loss finite)"
        return f"optimizer step {trainer.global_step}: non-finite {what}"

    @staticmethod
    def _last_ckpt(trainer: pl.Trainer) -> str:
        ckpt = trainer.checkpoint_callback
        path = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
        return f"the last good checkpoint is {path}" if path else "no checkpoint was written yet"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        pl_module.log("train/skipped_nonfinite_steps", float(self.skipped), batch_size=1)
        step, every = trainer.global_step, self.check_after_steps
        if self._warned or not every or step == 0 or step % every or self._smoothed is None:
            return
        chance = math.log(pl_module.vocab_size)
        high = {Modality(m).label: v for m, v in enumerate(self._smoothed.tolist())
                if v > self.chance_factor * chance}  # NaN (never seen) compares False
        if high:
            self._warned = True
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            losses = ", ".join(f"loss_{k} {v:.4g}" for k, v in high.items())
            rank_zero_warn(f"after {step} optimizer steps the smoothed training {losses} is above "
                           f"{self.chance_factor} x chance (ln(vocab_size {pl_module.vocab_size}) = "
                           f"{chance:.3g}): the learning rate ({lr:.3g} now; model.optimizer.init_args.lr) "
                           "is likely too high")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        """Refuse to write weights that are not all finite (the previous checkpoint file stays)."""
        bad = (~all_finite(list(pl_module.parameters()))).float().reshape(1).to(pl_module.device)
        if float(trainer.strategy.reduce(bad, reduce_op="sum")) > 0:
            raise NonFiniteLossError(f"refusing to save a checkpoint at step {trainer.global_step}: the "
                                     f"weights are not all finite; {self._last_ckpt(trainer)}")


# --- stop signals and the last step ---------------------------------------------------------------
# What a scheduler sees: a stopped run leaves a resumable ``last.ckpt`` in its own checkpoint dir and an exit
# code that says it was stopped, and a finished run's ``last.ckpt`` holds its last step.
#
# - **SIGTERM** (``docker stop``, a Kubernetes eviction, SLURM's end of the time limit) and, under SLURM with
#   ``requeue: true``, the requeue signal (``SIGUSR1``; ``#SBATCH --signal=USR1@90``): training stops at the end
#   of the optimizer step in progress (Lightning's own stop path, all ranks together), ``last.ckpt`` is written
#   at that step into ``checkpoint.dirpath`` (the run's ``checkpoints/``), and the process exits with
#   ``128 + signal`` (143 for SIGTERM, 138 for SIGUSR1). Under SLURM with ``requeue`` rank 0 then asks
#   ``scontrol requeue $SLURM_JOB_ID``; the requeued job resumes from its own run (``lit_cli.py``).
#   Lightning's own SLURM handler (``hpc_ckpt_<n>.ckpt`` in the working directory) is replaced.
# - **The end of training**: when training stops at ``max_steps`` (or ``max_epochs``) after the last checkpoint
#   was written, ``last.ckpt`` is written once more, so ``mot generate/export/eval`` and ``--ckpt_path last``
#   see the last step.
#
# Data workers ignore SIGTERM and SIGINT (``data/datamodule.py``): a signal sent to the whole process group
# reaches the trainer, which stops the workers itself, instead of a "DataLoader worker killed" error.


class Preemption(Callback):
    """Stop signals -> ``last.ckpt`` at the step reached + exit ``128 + signal``; ``last.ckpt`` = the last step.

    ``requeue``: under SLURM (``SLURMEnvironment.detect()``), also handle ``requeue_signal`` and requeue the job.
    """

    def __init__(self, requeue: bool = True, requeue_signal: str = "SIGUSR1") -> None:
        if not hasattr(signal, requeue_signal) or not requeue_signal.startswith("SIG"):
            raise ValueError(f"preemption.requeue_signal must name a signal such as SIGUSR1, got {requeue_signal!r}")
        self.requeue, self.requeue_signal = requeue, signal.Signals[requeue_signal]
        self.received: signal.Signals | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the handlers after Lightning's (registered just before training starts), chaining to them."""
        self.received = None
        lightning_sigterm = signal.getsignal(signal.SIGTERM)

        def on_signal(signum, frame) -> None:
            if self.received is None:
                self.received = signal.Signals(signum)
                rank_zero_info(f"Received {self.received.name}: stopping after this step and saving last.ckpt")
            if callable(lightning_sigterm):  # sets trainer.received_sigterm; the loops stop at the step's end
                lightning_sigterm(signum, frame)

        signal.signal(signal.SIGTERM, on_signal)
        if self.requeue and SLURMEnvironment.detect():
            signal.signal(self.requeue_signal, on_signal)  # instead of Lightning's hpc_ckpt in the working dir

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or self.received is None:
            return
        path = save_last(trainer)
        if path is not None:
            rank_zero_info(f"{self.received.name}: saved {path} at optimizer step {trainer.global_step}; resume "
                           "with the same command and --ckpt_path last")
        if self.received == self.requeue_signal and trainer.is_global_zero:
            requeue_slurm_job()
        exception.code = 128 + int(self.received)  # SystemExit's exit status: a stopped run is not a success

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        """``last.ckpt`` at the last optimizer step when the step cadence does not save it anyway. Saved here, in
        the hook where ``ModelCheckpoint`` saves (it runs after this one), so the loops' state in the file is
        that of every other step checkpoint: a resume continues the step axis without a gap."""
        ckpt = trainer.checkpoint_callback
        if not isinstance(ckpt, ModelCheckpoint) or not trainer.max_steps or trainer.max_steps < 0:
            return
        every = getattr(ckpt, "_every_n_train_steps", 0) or 0
        if trainer.global_step >= trainer.max_steps and not (every and trainer.global_step % every == 0):
            save_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The same for a run that ends by ``max_epochs`` (the last batch is known only now)."""
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and trainer.global_step > 0 and \
                getattr(ckpt, "_last_global_step_saved", -1) != trainer.global_step:
            save_last(trainer)


def save_last(trainer: pl.Trainer) -> str | None:
    """Write ``last.ckpt`` through the ``ModelCheckpoint`` (its own naming and record of the last file, so
    ``--ckpt_path last`` finds it and no ``last-v1.ckpt`` appears); None without one that keeps a last file."""
    ckpt = trainer.checkpoint_callback
    if not isinstance(ckpt, ModelCheckpoint) or not ckpt.save_last or ckpt.dirpath is None:
        return None
    if trainer.fast_dev_run:
        return None
    if not ckpt._should_skip_saving_checkpoint(trainer):  # skipped when this step was saved already
        ckpt._save_last_checkpoint(trainer, ckpt._monitor_candidates(trainer))  # Lightning's own last-file save
    return ckpt.last_model_path or None


def requeue_slurm_job() -> None:
    """``scontrol requeue`` this job (an array task as ``<array job>_<task>``); a failure is a warning."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array else os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False, capture_output=True, text=True)
    except FileNotFoundError:
        rank_zero_warn(f"could not requeue SLURM job {job}: no `scontrol` on PATH; resubmit it yourself")
        return
    if result.returncode != 0:
        rank_zero_warn(f"`scontrol requeue {job}` failed ({result.returncode}): {result.stderr.strip()}")
