"""Masks built from ids agree with a plain double loop, and with FlexAttention's own evaluator."""
import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from mot_lightning.model.attention import attend
from mot_lightning.model.masks import AttentionMask, build_mask_mod, dense_mask
from tests.numerics import assert_close

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


def _ids_across_blocks(T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(doc_ids, span_ids) for 2 rows of T tokens whose documents and bidirectional spans straddle the
    128-token blocks of a BlockMask (so whole blocks are skipped, partial blocks are masked)."""
    doc_ids = torch.stack([(torch.arange(T) >= 100).long() + (torch.arange(T) >= 250).long(),
                           (torch.arange(T) >= 200).long()])
    span_ids = torch.full((2, T), -1)
    span_ids[0, 110:150] = 0  # one image crossing the block boundary at 128
    span_ids[0, 255:290] = 1
    span_ids[1, 120:140] = 0
    return doc_ids, span_ids


# kind -> (causal, with documents, with bidirectional spans)
MASKS = {
    "causal": (True, False, False),
    "causal_documents": (True, True, False),
    "causal_documents_spans": (True, True, True),
    "bidirectional": (False, False, False),
    "bidirectional_documents": (False, True, False),
}


def _mask_args(kind: str, T: int) -> dict:
    causal_, docs, spans = MASKS[kind]
    doc_ids, span_ids = _ids_across_blocks(T)
    return {"causal_": causal_, "doc_ids": doc_ids if docs else None, "span_ids": span_ids if spans else None}


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("kind", list(MASKS))
def test_flex_block_mask_attention_equals_sdpa_dense_mask(kind, kv_heads):
    """FlexAttention with the BlockMask (eager: forward only on CPU) == SDPA with the dense boolean mask,
    for sequences of 2.3 blocks, so block skipping and partial blocks both take part."""
    B, H, T, hd = 2, 4, 300, 16
    args = _mask_args(kind, T)
    q, k, v = torch.randn(B, H, T, hd), torch.randn(B, kv_heads, T, hd), torch.randn(B, kv_heads, T, hd)
    masks = {backend: AttentionMask.build(B, T, torch.device("cpu"), backend=backend, **args)
             for backend in ("flex", "sdpa")}
    assert masks["flex"].block_mask is not None
    with torch.no_grad():
        flex, sdpa = attend(q, k, v, masks["flex"]), attend(q, k, v, masks["sdpa"])
    assert_close(flex, sdpa, reduction=T + hd)  # softmax rows of T terms, dot products of hd


@pytest.mark.parametrize("kind", list(MASKS))
def test_block_mask_keeps_every_block_the_dense_mask_needs(kind):
    """The BlockMask's (row block, column block) map is exactly the set of 128x128 tiles holding a True."""
    T = 300
    args = _mask_args(kind, T)
    mod = build_mask_mod(**args)
    block = AttentionMask.build(2, T, torch.device("cpu"), backend="flex", **args).block_mask
    dense = dense_mask(mod, 2, T, "cpu")  # (B, 1, T, T)
    n = -(-T // 128)
    padded = torch.zeros(2, 1, n * 128, n * 128, dtype=torch.bool)
    padded[..., :T, :T] = dense
    tiles = padded.unflatten(2, (n, 128)).unflatten(4, (n, 128)).any(dim=(3, 5))  # (B, 1, n, n)
    assert torch.equal(block.to_dense().bool(), tiles)
