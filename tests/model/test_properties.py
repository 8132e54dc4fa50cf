"""Properties of the MoT backbone: causality, global attention, isolation, document separation.

"Unchanged" means equal up to float32 rounding (``tests.numerics``), not bitwise: the tolerance is
~2e-5 of the output's magnitude, while a one-position look-ahead moves earlier outputs by ~1e-2, and
each causality check below is shown failing on such a deliberately leaky backbone.
"""
import pytest
import torch

from mot_lightning.modality import Modality
from mot_lightning.model import Transformer, TransformerConfig, masks
from mot_lightning.model.towers import parameter_places
from tests.model.helpers import attend_one_position_ahead, interleaved_modality
from tests.numerics import (
    assert_close,
    assert_unchanged,
    changed,
    max_rel_diff,
    tolerance,
    transformer_reduction,
)

B, T, D = 2, 20, 32
REDUCTION = transformer_reduction(n_layers=2, dim=D, ffn_hidden=128, seq_len=T)
LEAK = 100 * tolerance(torch.float32, REDUCTION)  # a real leak moves outputs by more than this


def _model(norm_layout: str = "pre") -> Transformer:
    """A tiny MoT with weights at the scale of a trained model (std 1/sqrt(dim), not the 0.02 init), so
    attention moves outputs by O(1) and a leak through it stands far above rounding."""
    return Transformer(TransformerConfig(dim=D, n_layers=2, n_heads=4, n_modalities=3, sparsity="mot",
                                         norm_layout=norm_layout, init_std=D ** -0.5))


@pytest.fixture
def mot() -> Transformer:
    return _model()


def check_causal(model: Transformer) -> None:
    """Perturbing position t + 1 leaves positions <= t unchanged and changes position t + 1."""
    x, modality = torch.randn(B, T, D), interleaved_modality(B, T, 3)
    base = model(x, modality)
    for t in (0, 7, T - 2):
        x2 = x.clone()
        x2[:, t + 1] += torch.randn(B, D)
        out = model(x2, modality)
        assert_unchanged(out[:, : t + 1], base[:, : t + 1], reduction=REDUCTION, msg=f"positions <= {t}")
        assert changed(out[:, t + 1], base[:, t + 1], reduction=REDUCTION)


@pytest.mark.parametrize("norm_layout", ["pre", "post_sublayer"])
def test_causality_under_perturbation(norm_layout):
    check_causal(_model(norm_layout))


def check_global_attention(mot: Transformer) -> None:
    """A text token sees an earlier image token; nothing before that image token sees it."""
    modality = torch.zeros(1, T, dtype=torch.long)
    modality[0, 3:8] = Modality.IMAGE
    x = torch.randn(1, T, D)
    base = mot(x, modality)
    x2 = x.clone()
    x2[0, 5] += 1.0  # an image token
    out = mot(x2, modality)
    assert changed(out[0, 10], base[0, 10], reduction=REDUCTION)  # a later text token sees it
    assert_unchanged(out[0, :5], base[0, :5], reduction=REDUCTION, msg="positions before the image token")


def test_attention_is_global_across_modalities(mot):
    check_global_attention(mot)


def test_a_one_position_look_ahead_moves_earlier_outputs_far_beyond_the_tolerance(monkeypatch):
    model, modality = _model(), torch.zeros(1, T, dtype=torch.long)
    x = torch.randn(1, T, D)
    x2 = x.clone()
    x2[0, 1] += 1.0
    assert_unchanged(model(x2, modality)[0, 0], model(x, modality)[0, 0], reduction=REDUCTION)
    attend_one_position_ahead(monkeypatch)
    assert max_rel_diff(model(x2, modality)[0, 0], model(x, modality)[0, 0]) > LEAK


@pytest.mark.parametrize("check", [check_causal, check_global_attention])
def test_causality_checks_catch_a_one_position_look_ahead(check, monkeypatch):
    """The checks above fail on a backbone whose attention also sees the next position."""
    attend_one_position_ahead(monkeypatch)
    with pytest.raises(AssertionError, match="numerics: reduction"):
        check(_model())


def test_text_only_batch_gives_zero_gradient_to_other_towers(mot):
    x = torch.randn(B, T, D, requires_grad=True)
    mot(x, torch.zeros(B, T, dtype=torch.long)).pow(2).sum().backward()
    places = parameter_places(mot)
    for name, p in mot.named_parameters():
        assert p.grad is not None, name
        if places[name].tower == 0:
            assert p.grad.abs().sum() > 0, name
        else:  # the image and speech towers' weights (a fully untied MoT has no shared ones)
            assert places[name].tower in (1, 2) and torch.count_nonzero(p.grad) == 0, name


def test_packed_documents_do_not_see_each_other(mot):
    """Packed == each document alone: algebra, so in float64."""
    mot = mot.double()
    lengths = [7, 9, 4]
    modality = interleaved_modality(1, sum(lengths), 3, seed=5)
    x = torch.randn(1, sum(lengths), D, dtype=torch.float64)
    doc_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]).unsqueeze(0)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    packed = mot(x, modality, doc_ids=doc_ids, positions=positions)
    start = 0
    for n in lengths:
        alone = mot(x[:, start:start + n], modality[:, start:start + n])
        assert_close(packed[:, start:start + n], alone, reduction=REDUCTION)
        start += n


def check_span_visibility(mot: Transformer) -> None:
    """An image span (positions 5..11) is bidirectional inside and causal towards everything outside."""
    modality = torch.zeros(1, T, dtype=torch.long)
    modality[0, 5:12] = Modality.IMAGE
    span_ids = torch.full((1, T), -1)
    span_ids[0, 5:12] = 0
    x = torch.randn(1, T, D)
    base = mot(x, modality, span_ids=span_ids)
    x2 = x.clone()
    x2[0, 11] += 1.0  # last latent of the image
    out = mot(x2, modality, span_ids=span_ids)
    assert changed(out[0, 5], base[0, 5], reduction=REDUCTION)  # first latent sees the last one
    assert_unchanged(out[0, :5], base[0, :5], reduction=REDUCTION, msg="text before the image")
    x3 = x.clone()
    x3[0, 12] += 1.0  # text after the image: invisible to the image and to the text before it
    assert_unchanged(mot(x3, modality, span_ids=span_ids)[0, :12], base[0, :12], reduction=REDUCTION,
                     msg="text before and latents of the image")


def test_bidirectional_span_sees_its_future_but_nothing_outside(mot):
    check_span_visibility(mot)


def _span_without_its_marker_check(span_ids):
    """The bug: ``same_span`` forgets ``span >= 0``, so all -1 (text) tokens become one bidirectional span."""
    def mask(b, h, q_idx, kv_idx):
        return span_ids[b, q_idx] == span_ids[b, kv_idx]

    return mask


@pytest.mark.parametrize("bug", ["look_ahead", "text_as_one_span"])
def test_span_check_catches_leaky_masks(bug, mot, monkeypatch):
    if bug == "look_ahead":
        attend_one_position_ahead(monkeypatch)
    else:
        monkeypatch.setattr(masks, "same_span", _span_without_its_marker_check)
    with pytest.raises(AssertionError, match="numerics: reduction"):
        check_span_visibility(mot)


def test_shape_errors_name_the_problem(mot):
    with pytest.raises(ValueError, match="modality must have shape"):
        mot(torch.randn(B, T, D), torch.zeros(B, T + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must be float\[B, T, 32\]"):
        mot(torch.randn(B, T, D + 1), torch.zeros(B, T, dtype=torch.long))
    with pytest.raises(ValueError, match="doc_ids must have shape"):
        mot(torch.randn(B, T, D), torch.zeros(B, T, dtype=torch.long), doc_ids=torch.zeros(B, 3))
