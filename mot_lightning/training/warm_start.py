"""Warm start (``model.init_from``): a new run's weights from a trained checkpoint.

It fills the bare model before any wrapper, or, on FSDP2's meta-device path (``model/meta_init.py``), each
rank's shard of the full tensors after sharding (every rank reads the checkpoint and keeps its rows).

What moves where. Every parameter has a place (``model/towers.py``): its slot and the tower owning it.
A target parameter of tower ``t`` takes the checkpoint's weight at the same slot from the tower that the
checkpoint used for the modality ``t`` serves (or from its one shared weight where the checkpoint ties that
component): a dense checkpoint gives every tower a copy of its weights, an MoT checkpoint with towers
``[0, 0, 1]`` fills a model with towers ``[0, 1, 2]`` (text and image each start from the shared tower), and
a text-only checkpoint (``n_modalities: 1``) fills the text tower while the new modalities' towers start
as ``new_towers`` says. ``towers`` names the source modality of each tower to load explicitly; a
modality left out keeps its fresh initialisation. Shared parameters (embeddings, head, tied components)
load from the same shared parameter.

Vocabulary. The embedding and head rows map block by block by the two joint vocabularies' layouts
(``vocab_rows.py``; every checkpoint written with ``model.vocab_layout`` records it): a block the checkpoint
lacks (a new modality's codes) is new rows, initialised as ``new_rows`` says; a grown block keeps its
first ids. A checkpoint without a recorded layout maps rows by id (a prefix), with a warning.

Refused, with the names: shapes that differ (another width, head count or a smaller vocabulary block),
backbone parameters the checkpoint lacks (more layers, an MoE where it has none), a tied component the
checkpoint unties, and a tower serving modalities the checkpoint keeps in different towers. The file is
read weights-only (``checkpoints/loading.py``); old checkpoints with stacked tower weights are read too.

A Hugging Face folder (``config.json`` + ``*.safetensors``: Llama, Qwen2, Qwen3) is a source too: a dense
one-tower checkpoint whose vocabulary is all ``text`` block (the LLM's ids keep their rows), read one tensor
at a time (``checkpoints/hf_folder.py``). The backbone must equal what config.json describes (``mot hf
backbone DIR`` prints it); a differing RoPE theta, norm eps, head layout, QK-norm or bias is refused by name.
``new_rows: mean_zero_head`` starts the new embedding rows at the mean of the LLM's and the new output rows at
zero (NeMo's BAGEL stage 2 zero-initialised head).

It runs whenever ``fit`` builds the model, a resumed run included (the resumed checkpoint then overwrites
every weight): keep the file while the run may resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from mot_lightning.checkpoints import load_checkpoint
from mot_lightning.checkpoints.hf_folder import HFFolder, is_hf_folder
from mot_lightning.checkpoints.model_config import plain_config
from mot_lightning.modality import Modality
from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.lm import TokenLM
from mot_lightning.model.meta_init import write_full
from mot_lightning.model.towers import Place, clean_name, parameter_places, tower_modalities
from mot_lightning.model.untied import UntiedLinear, UntiedRMSNorm, split_stacked
from mot_lightning.training.vocab_rows import block_ranges, check_layout

VOCAB_MATRICES = ("embed.weight", "head.weight")  # (V, dim): rows are joint-vocabulary ids


@dataclass
class WarmStart:
    """``model.init_from``: which checkpoint starts this run and how its weights fill this model."""

    # a `mot fit` checkpoint file (a sharded one: `mot checkpoint consolidate` first), or a Hugging Face
    # Llama / Qwen2 / Qwen3 folder (config.json + *.safetensors)
    checkpoint: str
    # modality -> the checkpoint's modality whose tower it starts from, e.g. {text: text, image: text};
    # a modality left out starts fresh. None: each modality from its own tower, new ones as `new_towers`.
    towers: dict[str, str] | None = None
    new_towers: Literal["copy_text", "fresh"] = "copy_text"  # modalities the checkpoint was not trained on
    # new vocabulary rows: own init, the mean of the old rows, or that mean in the embedding and zeros in the head
    new_rows: Literal["init", "mean", "mean_zero_head"] = "init"


@dataclass
class WarmStartReport:
    loaded: list[str] = field(default_factory=list)  # target parameter names filled from the checkpoint
    fresh: list[str] = field(default_factory=list)  # target parameters left at their initialisation
    unused: list[str] = field(default_factory=list)  # checkpoint tensors nothing took
    new_rows: dict[str, int] = field(default_factory=dict)  # vocabulary matrix -> rows not in the checkpoint


@dataclass
class _Source:
    cfg: TransformerConfig
    state: dict[str, Tensor]  # TokenLM keys
    places: dict[str, Place]
    layout: dict[str, int] | None


def warm_start(net: TokenLM, spec: WarmStart, layout: dict[str, int] | None = None) -> WarmStartReport:
    """Fill ``net`` (bare, or sharded by FSDP2) from ``spec.checkpoint``; ``layout``: this model's
    vocabulary layout (None: unknown, rows map by id). Raises ``ValueError`` naming what does not fit."""
    src = _read_source(spec.checkpoint)
    report = WarmStartReport()
    problems: list[str] = _backbone_mismatch(net.backbone.cfg, src.cfg) if is_hf_folder(spec.checkpoint) else []
    sources = _assign(net, src, spec, problems)
    params = {clean_name(n): p for n, p in net.named_parameters()}
    with torch.no_grad():
        for name, src_name in sources.items():
            p, value = params[name], src.state[src_name]
            if name in VOCAB_MATRICES and p.shape[1:] == value.shape[1:]:
                full = p.full_tensor() if isinstance(p, DTensor) else p  # collective: same order on every rank
                report.new_rows[name] = _copy_rows(full, value, src.layout, layout, spec.new_rows, name, problems)
                if full is not p:
                    write_full(p, full)
            elif p.shape != value.shape:
                problems.append(f"{name}: checkpoint {src_name} {tuple(value.shape)} vs model {tuple(p.shape)}")
                continue
            else:
                write_full(p, value.to(p.dtype))
            report.loaded.append(name)
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  (+{len(problems) - 12} more)" if len(problems) > 12 else "")
        raise ValueError(f"model.init_from: {spec.checkpoint} does not fit this model:\n  {shown}\n"
                         "A warm start needs the checkpoint's width, heads, depth and kind of FFN; the tower map and "
                         "the vocabulary may grow (mot_lightning/training/warm_start.py).")
    used = set(sources.values())
    report.fresh = [n for n in params if n not in sources]
    report.unused = [n for n in src.state if n not in used]
    rank_zero_info(f"model.init_from {spec.checkpoint}: {len(report.loaded)} tensors loaded; initialised here: "
                   f"{_few(report.fresh)}; new vocabulary rows: {report.new_rows or 'none'}; checkpoint tensors "
                   f"not used: {_few(report.unused)}")
    return report


def _few(names: list[str], n: int = 4) -> str:
    return "none" if not names else ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _read_source(path: str) -> _Source:
    if is_hf_folder(path):
        return _hf_source(path)
    checkpoint = load_checkpoint(path, mmap=True)
    hparams = plain_config(checkpoint.get("hyper_parameters") or {})
    if "state_dict" not in checkpoint or "backbone" not in hparams:
        raise ValueError(f"model.init_from: {path} is not a checkpoint written by `mot fit` (it needs state_dict "
                         "and hyper_parameters.backbone)")
    backbone = hparams["backbone"]
    backbone = backbone.get("init_args", backbone)
    names = {f.name for f in fields(TransformerConfig) if f.init}
    cfg = TransformerConfig(**{k: v for k, v in backbone.items() if k in names})
    state = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    vocab = state["embed.weight"].shape[0]
    with torch.device("meta"):  # the checkpoint's model without memory: its parameter places
        skeleton = TokenLM(cfg, vocab, latent_dim=int(hparams.get("latent_dim") or 0))
    for mname, m in skeleton.named_modules():
        if isinstance(m, (UntiedLinear, UntiedRMSNorm)):
            split_stacked(state, f"{mname}.", m.n_weights)  # written before one Parameter per tower
    layout = hparams.get("vocab_layout")
    check_layout(layout, vocab, where=f"{path}: hyper_parameters.vocab_layout")
    return _Source(cfg, state, parameter_places(skeleton), layout)


def _hf_source(path: str) -> _Source:
    folder = HFFolder(path)
    with torch.device("meta"):
        skeleton = TokenLM(folder.cfg, folder.vocab_size)
    return _Source(folder.cfg, folder.app_state(), parameter_places(skeleton), folder.layout)


HF_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_hidden", "norm_layout", "qk_norm",
             "qkv_bias", "norm_eps", "rope_theta")


def _backbone_mismatch(cfg: TransformerConfig, src: TransformerConfig) -> list[str]:
    """What differs between this backbone and a HF folder's (a difference would change the LLM's outputs)."""
    return [f"model.backbone.{name} is {getattr(cfg, name)!r}, config.json gives {getattr(src, name)!r} "
            "(`mot hf backbone DIR` prints the backbone to use)"
            for name in HF_FIELDS if getattr(cfg, name) != getattr(src, name)]


def _assign(net: TokenLM, src: _Source, spec: WarmStart, problems: list[str]) -> dict[str, str]:
    """Target parameter name -> checkpoint tensor name, for every parameter that loads."""
    by_place = {(p.slot, p.tower): name for name, p in src.places.items()}
    per_tower_slots = {p.slot for p in src.places.values() if p.tower is not None}
    cfg, out = net.backbone.cfg, {}
    for name, place in parameter_places(net).items():
        if place.tower is None:
            if (place.slot, None) in by_place:
                out[name] = by_place[(place.slot, None)]
            elif place.slot in per_tower_slots:
                problems.append(f"{name}: the checkpoint unties {place.slot} into towers, this model ties it")
            elif name.startswith("backbone."):
                problems.append(f"{name}: not in the checkpoint")
            continue
        modality = _source_modality(cfg, src.cfg, place.tower, spec, problems)
        if modality is None:
            continue  # this tower starts fresh
        tower = src.cfg.towers[modality]
        found = by_place.get((place.slot, tower), by_place.get((place.slot, None)))
        if found is None:
            known = any(slot == place.slot for slot, _ in by_place)
            problems.append(f"{name}: " + (f"the checkpoint has no tower {tower} there" if known
                                           else "not in the checkpoint"))
        else:
            out[name] = found
    return out


def _source_modality(cfg: TransformerConfig, src_cfg: TransformerConfig, tower: int, spec: WarmStart,
                     problems: list[str]) -> int | None:
    """The checkpoint modality whose tower fills this model's ``tower`` (None: it starts fresh)."""
    chosen = set()
    for m in tower_modalities(cfg, tower):
        label = Modality(m).label
        if spec.towers is not None:
            source = spec.towers.get(label)
            chosen.add(None if source is None else int(Modality.parse(source)))
        elif m < src_cfg.n_modalities:
            chosen.add(m)
        else:
            chosen.add(int(Modality.TEXT) if spec.new_towers == "copy_text" else None)
    bad = [m for m in chosen if m is not None and m >= src_cfg.n_modalities]
    if bad:
        problems.append(f"model.init_from.towers names {Modality(bad[0]).label}, which the checkpoint "
                        f"(n_modalities={src_cfg.n_modalities}) was not trained on")
        return None
    source_towers = {None if m is None else src_cfg.towers[m] for m in chosen}
    if len(source_towers) > 1:
        labels = "+".join(Modality(m).label for m in tower_modalities(cfg, tower))
        problems.append(f"tower {tower} ({labels}) would start from several checkpoint towers "
                        f"{sorted(chosen, key=str)}: set model.init_from.towers so its modalities name one source")
        return None
    return next(iter(chosen))


def _copy_rows(p: nn.Parameter, value: Tensor, src_layout, layout, new_rows: str, name: str,
               problems: list[str]) -> int:
    """Copy the checkpoint's vocabulary rows into ``p`` (V, dim); returns how many rows are new."""
    pairs = _row_pairs(value.shape[0], p.shape[0], src_layout, layout, name, problems)
    if pairs is None:
        return 0
    new = torch.ones(p.shape[0], dtype=torch.bool)
    if new_rows == "mean_zero_head" and name == "head.weight":
        p.zero_()
    elif new_rows in ("mean", "mean_zero_head"):
        p[:] = value.float().mean(0).to(p.dtype)
    for (s_lo, s_hi), (t_lo, _) in pairs:
        p[t_lo:t_lo + s_hi - s_lo] = value[s_lo:s_hi].to(p.dtype)
        new[t_lo:t_lo + s_hi - s_lo] = False
    return int(new.sum())


def _row_pairs(n_src: int, n_tgt: int, src_layout, layout, name: str, problems: list[str]):
    """[((src_lo, src_hi), (tgt_lo, tgt_hi))] row blocks to copy, or None after naming a problem."""
    if src_layout is None or layout is None:
        if n_src > n_tgt:
            problems.append(f"{name}: the checkpoint has {n_src} vocabulary rows, this model {n_tgt}")
            return None
        if n_src != n_tgt or src_layout != layout:
            rank_zero_warn(f"model.init_from: {name} maps the checkpoint's {n_src} vocabulary rows to the first ids "
                           f"of this model's {n_tgt} by id: the {'checkpoint' if src_layout is None else 'model'} "
                           "records no vocabulary layout (model.vocab_layout). Right only if those ids mean the "
                           "same tokens in both vocabularies.")
        return [((0, n_src), (0, n_src))]
    pairs = []
    src_ranges, tgt_ranges = block_ranges(src_layout), block_ranges(layout)
    for block, (s_lo, s_hi) in src_ranges.items():
        t_lo, t_hi = tgt_ranges[block]
        if s_hi - s_lo > t_hi - t_lo:
            problems.append(f"{name}: the checkpoint's {block} block has {s_hi - s_lo} ids, this model's "
                            f"{t_hi - t_lo} (another tokenizer?)")
        elif s_hi > s_lo:
            pairs.append(((s_lo, s_hi), (t_lo, t_hi)))
            if s_hi - s_lo < t_hi - t_lo:
                rank_zero_warn(f"model.init_from: {name}: the {block} block grows from {s_hi - s_lo} to "
                               f"{t_hi - t_lo} ids; the first {s_hi - s_lo} keep the checkpoint's rows (right if "
                               "the tokenizer kept their ids)")
    return pairs
