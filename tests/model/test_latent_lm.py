"""TokenLM with continuous image latents (Transfusion): who sees what, through the real backbone."""
from __future__ import annotations

import pytest
import torch

from mot_lightning.model import TransformerConfig
from mot_lightning.model.lm import TimestepEmbedding, TokenLM
from tests.model.helpers import attend_one_position_ahead
from tests.numerics import changed, transformer_reduction

V, D, LAT = 20, 32, 8
BOS, BOI, EOI, EOS, LATENT = 10, 11, 12, 13, 14
# BOS a b BOI [4 latents] EOI c EOS | BOS BOI [4 latents] EOI EOS   (two documents)
TOKENS = [BOS, 1, 2, BOI, *[LATENT] * 4, EOI, 3, EOS, BOS, BOI, *[LATENT] * 4, EOI, EOS]
IMAGE_1, IMAGE_2 = range(4, 8), range(13, 17)
DOC_1 = 11  # tokens in the first document
REDUCTION = transformer_reduction(n_layers=2, dim=D, ffn_hidden=128, seq_len=len(TOKENS)) + D  # + the head


def _row():
    tokens = torch.tensor([TOKENS])
    modality = (tokens == LATENT).long()
    span = torch.full_like(tokens, -1)
    span[0, list(IMAGE_1)] = 0
    span[0, list(IMAGE_2)] = 1
    doc = torch.tensor([[0] * DOC_1 + [1] * (len(TOKENS) - DOC_1)])
    positions = torch.tensor([list(range(DOC_1)) + list(range(len(TOKENS) - DOC_1))])
    return tokens, modality, span, doc, positions


@pytest.fixture(params=["dense", "mot"])
def net(request):
    torch.manual_seed(0)
    # weights at the scale of a trained model (std 1/sqrt(dim), not the 0.02 init): every path moves outputs
    # by far more than float32 rounding, so "changed" and "unchanged" are told apart with a wide margin
    cfg = TransformerConfig(dim=D, n_layers=2, n_heads=4, n_modalities=2, sparsity=request.param,
                            init_std=D ** -0.5)
    net = TokenLM(cfg, V, latent_dim=LAT).eval()
    torch.nn.init.normal_(net.latent_out.weight, std=0.5)  # zero at init: make outputs depend on inputs
    return net


def _outputs(net, latents, tokens=None):
    t0, modality, span, doc, positions = _row()
    tokens = t0 if tokens is None else tokens
    times = torch.full(tokens.shape, 500.0)
    with torch.no_grad():
        logits, pred = net(tokens, modality, positions=positions, doc_ids=doc, span_ids=span, latents=latents,
                           timesteps=times)
    return logits, pred


def _changed(a, b) -> list[int]:
    """Positions whose outputs moved by more than float32 rounding (``tests.numerics``)."""
    return [t for t in range(a.shape[1]) if changed(a[0, t], b[0, t], reduction=REDUCTION)]


def check_image_sees_itself_and_nothing_later(net):
    """Changing the *last* patch of an image changes every patch of that image (bidirectional), nothing
    before the image, and the text after it (causal); the other document never changes."""
    latents = torch.randn(1, len(TOKENS), LAT, generator=torch.Generator().manual_seed(1))
    base_logits, base_pred = _outputs(net, latents)
    bumped = latents.clone()
    bumped[0, IMAGE_1[-1]] += 1.0
    logits, pred = _outputs(net, bumped)
    moved = _changed(base_logits, logits)
    assert moved == list(range(IMAGE_1[0], DOC_1)), moved  # the whole image, EOI, text after, EOS
    assert _changed(base_pred, pred) == moved


def check_text_after_an_image_changes_nothing_before_it(net):
    latents = torch.randn(1, len(TOKENS), LAT, generator=torch.Generator().manual_seed(2))
    base, _ = _outputs(net, latents)
    tokens = torch.tensor([TOKENS])
    tokens[0, 9] = 4  # the text byte after image 1
    after, _ = _outputs(net, latents, tokens)
    assert _changed(base, after) == [9, 10]


def check_timestep_changes_only_image_outputs_and_later(net):
    tokens, modality, span, doc, positions = _row()
    latents = torch.randn(1, len(TOKENS), LAT, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, _ = net(tokens, modality, positions=positions, doc_ids=doc, span_ids=span, latents=latents,
                   timesteps=torch.full(tokens.shape, 10.0))
        b, _ = net(tokens, modality, positions=positions, doc_ids=doc, span_ids=span, latents=latents,
                   timesteps=torch.full(tokens.shape, 900.0))
    assert _changed(a, b) == [*range(4, DOC_1), *range(13, len(TOKENS))]


CAUSALITY_CHECKS = [
    check_image_sees_itself_and_nothing_later,
    check_text_after_an_image_changes_nothing_before_it,
    check_timestep_changes_only_image_outputs_and_later,
]


@pytest.mark.parametrize("check", CAUSALITY_CHECKS)
def test_who_sees_what(check, net):
    check(net)


@pytest.mark.parametrize("check", CAUSALITY_CHECKS)
def test_who_sees_what_checks_catch_a_one_position_look_ahead(check, net, monkeypatch):
    attend_one_position_ahead(monkeypatch)
    with pytest.raises(AssertionError):
        check(net)


def test_latent_rows_outside_images_are_ignored(net):
    """Only span positions read ``latents`` (the data's zero rows elsewhere could hold anything)."""
    latents = torch.randn(1, len(TOKENS), LAT, generator=torch.Generator().manual_seed(3))
    base, _ = _outputs(net, latents)
    noisy = latents.clone()
    noisy[0, [0, 1, 2, 3, 8, 9]] += 5.0
    again, _ = _outputs(net, noisy)
    assert _changed(base, again) == []


def test_without_latents_it_is_the_token_model(net):
    tokens, modality, _, doc, positions = _row()
    out = net(tokens, modality, positions=positions, doc_ids=doc)
    assert isinstance(out, torch.Tensor) and out.shape == (1, len(TOKENS), V)
    with pytest.raises(ValueError, match="span_ids"):
        net(tokens, modality, latents=torch.zeros(1, len(TOKENS), LAT))


def test_timestep_embedding_distinguishes_times():
    emb = TimestepEmbedding(16)
    out = emb(torch.tensor([0.0, 1.0, 500.0, 999.0]))
    assert out.shape == (4, 16)
    assert torch.cdist(out, out).triu(1)[torch.triu(torch.ones(4, 4, dtype=torch.bool), 1)].min() > 1e-4
