"""``Transformer.compile_blocks`` (what ``model.compile: true`` runs): compiled equals eager, and batches
whose modality counts change (a modality missing, a one-token tower) reuse the graph, not recompile."""
import copy

import pytest
import torch
import torch._inductor.config
from torch._dynamo.testing import CompileCounterWithBackend

from mot_lightning.model import Transformer, TransformerConfig
from tests.model.helpers import interleaved_modality
from tests.numerics import assert_close, transformer_reduction

B, T, DIM = 2, 64, 32
BF16_EPS = torch.finfo(torch.bfloat16).eps


def _tiny(**kw) -> TransformerConfig:
    return TransformerConfig(**{"dim": DIM, "n_layers": 2, "n_heads": 4, "n_modalities": 3,
                                "attn_backend": "sdpa", **kw})


def varying_batches(n: int) -> list[torch.Tensor]:
    """``n`` modality layouts with distinct per-tower counts; some lack speech, some have one speech token."""
    out = []
    for i in range(n):
        modality = interleaved_modality(B, T, 3, seed=i)
        if i % 7 == 3:
            modality[modality == 2] = 0  # no speech at all: an empty tower
        if i % 11 == 5:
            modality[:] = 1
            modality[0, 5] = 2  # images, one speech token and 0, 1 or 2 text tokens: towers of size 0, 1, 2
            modality[1, : i // 11] = 0
        out.append(modality)
    return out


def _close(actual: torch.Tensor, expected: torch.Tensor, cfg: TransformerConfig) -> None:
    """Compiled kernels fuse and reorder sums: equal to eager up to float32 rounding of a transformer pass."""
    assert_close(actual, expected, reduction=transformer_reduction(cfg.n_layers, cfg.dim, cfg.ffn_hidden, T))


def _run(model: Transformer, batches: list[torch.Tensor], counter: CompileCounterWithBackend | None = None,
         frames_after: list[int] | None = None) -> list[torch.Tensor]:
    """Forward + backward of ``mean(out^2)`` per batch (inputs need grad, as an embedding's output does)."""
    g = torch.Generator().manual_seed(0)
    losses = []
    for modality in batches:
        x = torch.randn(B, T, DIM, generator=g, requires_grad=True)
        loss = model(x, modality).pow(2).mean()
        loss.backward()
        losses.append(loss.detach())
        if frames_after is not None:
            frames_after.append(counter.frame_count)
    return losses


@pytest.mark.slow
@torch._inductor.config.patch(force_disable_caches=True)
def test_compiled_blocks_equal_eager_and_compile_once_over_30_varying_batches():
    """Inductor (the default backend) on CPU: losses and every gradient match eager; one compilation serves
    30 batches with different tower sizes, including empty and one-token towers.

    Inductor's on-disk caches are off: their keys leave out ATEN_CPU_CAPABILITY, so kernels cached by a
    run under another kernel set fail to build (CI reruns this folder under `default` and `avx2`)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = Transformer(_tiny())
    compiled = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("inductor")
    compiled.compile_blocks(backend=counter)
    batches = varying_batches(30)
    assert len({tuple(torch.bincount(m.flatten(), minlength=3).tolist()) for m in batches}) == 30
    ref, out = _run(eager, batches), _run(compiled, batches, counter)
    _close(torch.stack(out), torch.stack(ref), eager.cfg)
    # Gradients summed over all 30 batches, compared as one vector (the magnitude is the whole gradient's):
    # under QK-norm the q/k projections' gradients are small differences of much larger terms.
    flat = [torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (compiled, eager)]
    _close(*flat, eager.cfg)
    assert counter.frame_count == 1, f"{counter.frame_count} compilations for 30 batches"


VARIANTS = {
    "mot": {},
    "mot_untie_ffn": {"untie": ("ffn",)},
    "towers_text_image__speech": {"towers": [0, 0, 1]},
    "hybrid_text_moe": {"moe_towers": [0]},
    "moe4x_expert_choice": {"sparsity": "moe"},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_backbone_compiles_once_for_all_tower_sizes(variant):
    """Dynamo + AOTAutograd tracing (backend aot_eager: the graphs inductor would get, without codegen)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = Transformer(_tiny(**VARIANTS[variant]))
    compiled = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled.compile_blocks(backend=counter)
    batches = varying_batches(30)
    _close(torch.stack(_run(compiled, batches, counter)), torch.stack(_run(eager, batches)), eager.cfg)
    assert counter.frame_count == 1


def test_token_choice_moe_stops_compiling_after_warm_up():
    """Token-choice MoE drops tokens by a data-dependent mask, a graph break; the pieces between breaks
    become dynamic after their first recompile, so later batches add no compilations."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Transformer(_tiny(sparsity="moe", moe_router="token_choice"))
    counter = CompileCounterWithBackend("aot_eager")
    model.compile_blocks(backend=counter)
    frames: list[int] = []
    _run(model, varying_batches(20), counter, frames)
    assert frames[9] == frames[-1], frames


def test_grouped_mm_compiles_once_in_bf16():
    """The grouped GEMM takes tower offsets as a tensor: no tower size enters the graph."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Transformer(_tiny(grouped_gemm="grouped_mm"))
    eager = copy.deepcopy(model)
    counter = CompileCounterWithBackend("aot_eager")
    model.compile_blocks(backend=counter)
    batches = varying_batches(10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = torch.stack(_run(model, batches, counter)), torch.stack(_run(eager, batches))
    # the traced graph may round bf16 intermediates at other points than eager: a bf16 rounding of the loss
    torch.testing.assert_close(out, ref, atol=0, rtol=BF16_EPS)
    assert counter.frame_count == 1



def test_flex_attention_compiles_inside_the_blocks():
    """attn_backend flex: FlexAttention traced into each block's graph (forward; CPU has no flex backward),
    block masks of other documents reuse it."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = Transformer(_tiny(attn_backend="flex"))
    compiled = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled.compile_blocks(backend=counter)
    with torch.no_grad():
        for i, modality in enumerate(varying_batches(4)):
            doc_ids = (torch.arange(T) >= 20 + 7 * i).long().expand(B, T)
            x = torch.randn(B, T, DIM)
            _close(compiled(x, modality, doc_ids=doc_ids), eager(x, modality, doc_ids=doc_ids), eager.cfg)
    assert counter.frame_count == 1
