"""Masks built from ids agree with a plain double loop, and with FlexAttention's own evaluator."""
import torch
from torch.nn.attention.flex_attention import create_mask

from mot_lightning.model.masks import AttentionMask, build_mask_mod, dense_mask

DOCS = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 3], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]])
SPANS = torch.tensor([[-1, 0, 0, -1, 1, 1, -1, -1, -1, -1], [-1, -1, 0, 0, 0, -1, -1, 1, 1, -1]])


def _loop_mask(causal: bool, docs, spans) -> torch.Tensor:
    B, T = docs.shape
    out = torch.zeros(B, 1, T, T, dtype=torch.bool)
    for b in range(B):
        for q in range(T):
            for k in range(T):
                same_doc = docs[b, q] == docs[b, k]
                in_span = spans[b, q] >= 0 and spans[b, q] == spans[b, k]
                out[b, 0, q, k] = same_doc and ((k <= q) or in_span or not causal)
    return out


def test_document_and_span_mask_matches_loop():
    mod = build_mask_mod(causal_=True, doc_ids=DOCS, span_ids=SPANS)
    assert torch.equal(dense_mask(mod, 2, 10, "cpu"), _loop_mask(True, DOCS, SPANS))


def test_bidirectional_document_mask_matches_loop():
    mod = build_mask_mod(causal_=False, doc_ids=DOCS)
    assert torch.equal(dense_mask(mod, 2, 10, "cpu"), _loop_mask(False, DOCS, torch.full_like(DOCS, -1)))


def test_dense_mask_equals_flex_create_mask():
    mod = build_mask_mod(causal_=True, doc_ids=DOCS, span_ids=SPANS)
    flex_dense = create_mask(mod, 2, 1, 10, 10, device="cpu")
    assert torch.equal(dense_mask(mod, 2, 10, "cpu"), flex_dense)


def test_plain_causal_uses_the_sdpa_fast_path():
    m = AttentionMask.build(2, 10, torch.device("cpu"), backend="sdpa")
    assert m.is_causal and m.dense is None and m.block_mask is None


def test_every_row_can_attend_somewhere():
    mod = build_mask_mod(causal_=True, doc_ids=DOCS, span_ids=SPANS)
    assert dense_mask(mod, 2, 10, "cpu").any(dim=-1).all()
