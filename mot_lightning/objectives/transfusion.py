"""The Transfusion objective: text by next token, images as continuous latents by diffusion.

Every image (latent span) gets one diffusion time, broadcast to its patches; the patches are
noised (``NoiseSchedule`` for DDPM, ``FlowMatching`` for rectified flow), the network sees the
noisy patches plus a timestep embedding, attends bidirectionally inside the image, and its latent
head predicts the noise (DDPM) or the velocity (flow) of each patch. Text (and speech) keep the
next-token loss. The training loss is ``L_LM + lam * L_diffusion`` (``lam`` = 5 in Transfusion);
``loss_image`` is the diffusion MSE per latent element over the latent positions.

Training times and noise come from the step's seed (run seed, optimizer step, batch, rank), so a
resumed run redraws them exactly; validation times are spread evenly over the schedule and the noise
is fixed by ``val_seed`` and the batch's position, identical in every run.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.modality import Modality
from mot_lightning.model.lm import TokenLM
from mot_lightning.objectives.base import Objective, StepLosses, document_index, document_sums, per_document
from mot_lightning.objectives.diffusion import (
    EpsFn,
    FlowMatching,
    NoiseSchedule,
    ddim_sample,
    ddpm_sample,
    diffusion_loss,
    fixed_noise,
    flow_sample,
)
from mot_lightning.objectives.next_token import NextToken

OBJECTIVES = ("ddpm", "flow")
SAMPLERS = ("ddpm", "ddim", "flow")
T_SAMPLING = ("uniform", "logit_normal")
KEY = "model.objective.init_args"


class Transfusion(Objective):
    """Next-token text + diffusion over continuous image latents (the data's ``LatentImageTokenizer``)."""

    def __init__(self, objective: str = "ddpm", schedule: str = "cosine", num_steps: int = 1000,
                 lam: float = 5.0, val_seed: int = 0, t_sampling: str = "uniform",
                 clip_x0: float | None = 3.0, z_loss: float = 0.0,
                 loss_weights: dict[str, float] | None = None) -> None:
        """
        Args:
            objective: "ddpm" (noise prediction over ``num_steps`` steps with the ``schedule`` betas, "cosine"
                or "linear"; Transfusion's choice: cosine, 1000 steps) or "flow" (rectified flow, velocity).
            lam: weight of the diffusion loss: ``L = L_LM + lam * L_diffusion``.
            val_seed: seed of the validation noise and times (the same in every run: curves compare).
            t_sampling: training times "uniform" (Transfusion) or "logit_normal" (u = sigmoid(n), n ~ N(0, 1):
                more mid-noise times, as in Stable Diffusion 3; DDPM steps floor(u T)).
            clip_x0: DDPM/DDIM sampling clamps each predicted clean latent to [-clip_x0, clip_x0] (3 = three
                standard deviations of the unit-variance VAE latents; ``None`` = off); without it a briefly
                trained model's samples keep a coloured-noise background.
            z_loss / loss_weights: of the next-token part (text, speech), as in ``NextToken``.
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"{KEY}.objective must be one of {OBJECTIVES}, got {objective!r}")
        if t_sampling not in T_SAMPLING:
            raise ValueError(f"{KEY}.t_sampling must be one of {T_SAMPLING}, got {t_sampling!r}")
        if clip_x0 is not None and clip_x0 <= 0:
            raise ValueError(f"{KEY}.clip_x0 must be positive or null, got {clip_x0}")
        if lam < 0:
            raise ValueError(f"{KEY}.lam must be >= 0, got {lam}")
        self.objective, self.num_steps, self.lam, self.val_seed = objective, num_steps, lam, val_seed
        self.t_sampling, self.clip_x0 = t_sampling, clip_x0
        # NoiseSchedule checks schedule and num_steps
        self.process = FlowMatching() if objective == "flow" else NoiseSchedule(num_steps, kind=schedule)
        self.next_token = NextToken(z_loss=z_loss, loss_weights=loss_weights)

    def setup(self, modalities: Sequence[Modality], latent_dim: int) -> None:
        if latent_dim <= 0:
            raise ValueError("model.objective Transfusion trains images as continuous latents, but the data's"
                             " image tokenizer is discrete or missing: set data.image_tokenizer to "
                             "mot_lightning.tokenizers.LatentImageTokenizer (configs/transfusion/*.yaml)")
        if Modality.IMAGE in {Modality.parse(k) for k in self.next_token.loss_weights}:
            raise ValueError(f"{KEY}.loss_weights weigh next-token targets; images are trained by diffusion: "
                             f"weigh them with {KEY}.lam")
        self.next_token.setup(modalities, latent_dim=0)  # its targets are tokens; the latents are ours

    def eval_groups(self) -> list[tuple[list[int], float]]:
        """val/loss = L_LM (CE pooled over the text and speech targets) + lam * L_diffusion."""
        lm = [int(m) for m in self.next_token.modalities if m != Modality.IMAGE]
        return [(lm, 1.0), ([int(Modality.IMAGE)], self.lam)]

    # ------------------------------------------------------------------ training
    def sample_t(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | None = None) -> Tensor:
        """Training times: long[n] DDPM steps in [0, num_steps) or float[n] flow times in [0, 1)."""
        if self.t_sampling == "uniform":
            u = torch.rand(n, generator=generator, device=device)
        else:
            u = torch.sigmoid(torch.randn(n, generator=generator, device=device))
        if self.objective == "flow":
            return u
        return (u * self.num_steps).long().clamp(0, self.num_steps - 1)

    def time_input(self, t: Tensor) -> Tensor:
        """Timesteps as the model's timestep embedding sees them: DDPM steps as they are, flow times
        (in [0, 1]) scaled to the same range."""
        return t.float() * self.num_steps if self.objective == "flow" else t.float()

    def noise_level(self, t: Tensor) -> Tensor:
        """Diffusion times as a fraction of the schedule, float in [0, 1): DDPM steps / num_steps, flow times
        as they are (0 = clean, towards 1 = pure noise)."""
        return t.float() if self.objective == "flow" else t.float() / self.num_steps

    def times_and_noise(self, batch: MultiModalBatch, stage: str, seed: int) -> tuple[Tensor, Tensor]:
        """One diffusion time per image (span), broadcast to its positions.

        -> (t long[B, T] DDPM steps or float[B, T] flow times, noise float[B, T, D])."""
        B, latents = batch.batch_size, batch.latents
        n_spans = max(int(batch.span_ids.max()) + 1, 1)
        device = latents.device
        if stage == "train":
            g = torch.Generator(device=device).manual_seed(seed)
            t_table = self.sample_t(B * n_spans, generator=g, device=device).view(B, n_spans)
            noise = torch.randn(latents.shape, generator=g, device=device, dtype=latents.dtype)
        else:  # the same times and noise for this validation batch in every run
            val = self.val_seed * 1_000_003 + seed
            t_table = self.process.fixed_t(B * n_spans, device=device)
            perm = torch.randperm(B * n_spans, generator=torch.Generator().manual_seed(val)).to(device)
            t_table = t_table[perm].view(B, n_spans)  # times spread evenly, not sorted by position
            noise = fixed_noise(latents.shape, val, device=device, dtype=latents.dtype)
        t = t_table.gather(1, batch.span_ids.clamp_min(0))  # (B, T); non-latent positions are never used
        return t, noise

    def loss(self, net: TokenLM, batch: MultiModalBatch, *, stage: str, seed: int) -> StepLosses:
        if not batch.has_latents:
            raise ValueError("model.objective Transfusion needs batches with image latents "
                             "(data.image_tokenizer: mot_lightning.tokenizers.LatentImageTokenizer)")
        mask, x0 = batch.latent_mask(), batch.latents  # (B, T), (B, T, D)
        t, noise = self.times_and_noise(batch, stage, seed)
        B, T, D = x0.shape
        flat = (x0.reshape(B * T, D), noise.reshape(B * T, D), t.reshape(-1))  # per-position rows
        x_t = self.process.corrupt(*flat).view(B, T, D)
        logits, pred = net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids,
                           span_ids=batch.span_ids, latents=x_t, timesteps=self.time_input(t))
        target = self.process.target(*flat).view(B, T, D)
        lm, diff = self.next_token.token_losses(logits, batch), diffusion_loss(pred, target, mask)
        values, weights = (lm.ce_sum / lm.count.clamp_min(1)).clone(), lm.count.clone()
        values[Modality.IMAGE], weights[Modality.IMAGE] = diff, mask.sum()  # images: the diffusion loss
        extras = {"loss_lm": lm.loss, **({"z_loss": lm.z_loss} if self.next_token.z_loss else {})}
        out = StepLosses(total=lm.loss + self.lam * diff, values=values, weights=weights, extras=extras)
        if per_document(stage, batch):
            out.doc_sums, out.doc_weights = self.next_token.document_losses(lm, batch)
            index, n = document_index(batch)
            one = torch.zeros_like(index)  # a single column: the image's
            err = (pred.float() - target.float()).pow(2).mean(-1).detach()  # (B, T): per latent element
            per_position = torch.where(mask, err, 0.0)
            out.doc_sums[:, Modality.IMAGE] = document_sums(per_position, index, one, n, 1)[:, 0]
            out.doc_weights[:, Modality.IMAGE] = document_sums(mask.float(), index, one, n, 1)[:, 0]
            out.latent_err, out.noise_level = per_position, self.noise_level(t)
        return out

    # ------------------------------------------------------------------ sampling
    def sample(self, eps_fn: EpsFn, shape: Sequence[int], sampler: str = "ddim", steps: int = 50,
               generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
        """Clean latents float[shape] from a denoiser ``eps_fn(x_t, t)`` (``t`` in the objective's own units:
        DDPM steps or flow times). ``sampler``: "ddpm" (all ``num_steps``), "ddim" (``steps``, deterministic)
        or, for flow matching, "flow" (``steps`` Euler steps; "ddim"/"ddpm" map to it)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if self.objective == "flow":
            return flow_sample(eps_fn, shape, steps, generator=generator, device=device)
        if sampler == "flow":
            raise ValueError(f"the 'flow' sampler needs {KEY}.objective: flow; use 'ddim' or 'ddpm'")
        if sampler == "ddpm":
            return ddpm_sample(eps_fn, self.process, shape, generator=generator, device=device,
                               clip_x0=self.clip_x0)
        return ddim_sample(eps_fn, self.process, shape, steps=steps, generator=generator, device=device,
                           clip_x0=self.clip_x0)
