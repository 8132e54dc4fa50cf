"""Properties of the MoT backbone: causality, global attention, isolation, document separation."""
import pytest
import torch

from mot_lightning.model import Transformer, TransformerConfig
from mot_lightning.modality import Modality
from tests.model.helpers import interleaved_modality

B, T, D = 2, 20, 32


@pytest.fixture
def mot() -> Transformer:
    return Transformer(TransformerConfig(dim=D, n_layers=2, n_heads=4, n_modalities=3, sparsity="mot"))


@pytest.mark.parametrize("norm_layout", ["pre", "post_sublayer"])
def test_causality_under_perturbation(norm_layout):
    model = Transformer(TransformerConfig(dim=D, n_layers=2, n_heads=4, n_modalities=3,
                                          norm_layout=norm_layout))
    x, modality = torch.randn(B, T, D), interleaved_modality(B, T, 3)
    base = model(x, modality)
    for t in (0, 7, T - 2):
        x2 = x.clone()
        x2[:, t + 1] += torch.randn(B, D)
        out = model(x2, modality)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_attention_is_global_across_modalities(mot):
    modality = torch.zeros(1, T, dtype=torch.long)
    modality[0, 3:8] = Modality.IMAGE
    x = torch.randn(1, T, D)
    base = mot(x, modality)
    x2 = x.clone()
    x2[0, 5] += 1.0  # an image token
    out = mot(x2, modality)
    assert not torch.allclose(out[0, 10], base[0, 10])  # a later text token sees it
    torch.testing.assert_close(out[0, :5], base[0, :5], rtol=0, atol=0)


def test_text_only_batch_gives_zero_gradient_to_other_towers(mot):
    x = torch.randn(B, T, D, requires_grad=True)
    mot(x, torch.zeros(B, T, dtype=torch.long)).pow(2).sum().backward()
    for name, p in mot.named_parameters():
        assert p.grad is not None, name
        assert p.grad[0].abs().sum() > 0, name
        assert torch.count_nonzero(p.grad[1:]) == 0, name


def test_packed_documents_do_not_see_each_other(mot):
    lengths = [7, 9, 4]
    modality = interleaved_modality(1, sum(lengths), 3, seed=5)
    x = torch.randn(1, sum(lengths), D)
    doc_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]).unsqueeze(0)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    packed = mot(x, modality, doc_ids=doc_ids, positions=positions)
    start = 0
    for n in lengths:
        alone = mot(x[:, start:start + n], modality[:, start:start + n])
        torch.testing.assert_close(packed[:, start:start + n], alone, atol=1e-5, rtol=1e-5)
        start += n


def test_bidirectional_span_sees_its_future_but_nothing_outside(mot):
    modality = torch.zeros(1, T, dtype=torch.long)
    modality[0, 5:12] = Modality.IMAGE
    span_ids = torch.full((1, T), -1)
    span_ids[0, 5:12] = 0
    x = torch.randn(1, T, D)
    base = mot(x, modality, span_ids=span_ids)
    x2 = x.clone()
    x2[0, 11] += 1.0  # last latent of the image
    out = mot(x2, modality, span_ids=span_ids)
    assert not torch.allclose(out[0, 5], base[0, 5])  # first latent sees the last one
    torch.testing.assert_close(out[0, :5], base[0, :5], rtol=0, atol=0)  # text before the image does not
    x3 = x.clone()
    x3[0, 12] += 1.0  # text after the image: invisible to the image
    torch.testing.assert_close(mot(x3, modality, span_ids=span_ids)[0, :12], base[0, :12], rtol=0, atol=0)


def test_shape_errors_name_the_problem(mot):
    with pytest.raises(ValueError, match="modality must have shape"):
        mot(torch.randn(B, T, D), torch.zeros(B, T + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must be float\[B, T, 32\]"):
        mot(torch.randn(B, T, D + 1), torch.zeros(B, T, dtype=torch.long))
    with pytest.raises(ValueError, match="doc_ids must have shape"):
        mot(torch.randn(B, T, D), torch.zeros(B, T, dtype=torch.long), doc_ids=torch.zeros(B, 3))
