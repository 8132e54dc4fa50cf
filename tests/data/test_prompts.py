"""Generation prompts built by the data layer: a prompt is the start of a training document, and collated
prompts are the rows ``collate_rows`` builds, padded on the left; validation speech-text pairs."""
from __future__ import annotations

import pytest
import torch

from mot_lightning.data.batch import IGNORE_INDEX
from mot_lightning.data.documents import Document, Segment, load_audio
from mot_lightning.data.encode import DocumentEncoder
from mot_lightning.data.packing import LatentDoc, collate_prompts, collate_rows
from mot_lightning.data.sources import SourceConfig
from mot_lightning.modality import Modality
from mot_lightning.tokenizers import KLVAEConfig, LatentImageTokenizer
from mot_lightning.tokenizers.latent import KLVAE
from mot_lightning.tokenizers.text import ByteTokenizer

from .helpers import EnergyTokenizer, PatchCodebookTokenizer, make_datamodule, mixed_corpus, wav_bytes

TEXT, IMAGE, SPEECH = Modality.TEXT, Modality.IMAGE, Modality.SPEECH
IMG = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
WAVE = torch.rand(640 * 5, generator=torch.Generator().manual_seed(1)) - 0.5  # 5 energy units


def _doc(*parts: tuple[Modality, object]) -> Document:
    return Document("d", [Segment(m, v) for m, v in parts])


@pytest.fixture
def encoder() -> DocumentEncoder:
    return DocumentEncoder(ByteTokenizer(), PatchCodebookTokenizer(), EnergyTokenizer())


@pytest.fixture(scope="module")
def latent_encoder() -> DocumentEncoder:
    """Text + a real KL-VAE latent tokenizer (random weights: only shapes and placement matter here)."""
    tok = LatentImageTokenizer(KLVAEConfig(resolution=16, downsample=4, channels=8, res_blocks=0,
                                           latent_channels=2, patch_size=2))
    tok.model = KLVAE(tok.config).eval()
    return DocumentEncoder(ByteTokenizer(), tok)


# (prompt segments, the modality generated next, the training document the prompt starts)
TASKS = {
    "caption_to_image": ([(TEXT, "a red circle")], IMAGE, [(TEXT, "a red circle"), (IMAGE, IMG)]),
    "image_to_caption": ([(IMAGE, IMG)], TEXT, [(IMAGE, IMG), (TEXT, "a red circle")]),
    "text_to_speech": ([(TEXT, "hello")], SPEECH, [(TEXT, "hello"), (SPEECH, WAVE)]),
    "speech_to_text": ([(SPEECH, WAVE)], TEXT, [(SPEECH, WAVE), (TEXT, "hello")]),
    "unconditional_image": ([], IMAGE, [(IMAGE, IMG)]),
}


@pytest.mark.parametrize("task", list(TASKS))
def test_a_prompt_is_the_start_of_the_training_document(encoder, task):
    prefix, then, full = TASKS[task]
    prompt = encoder.encode_prompt(_doc(*prefix), then=then)
    document = encoder.encode(_doc(*full))
    assert torch.equal(prompt, document[: len(prompt)])
    v = encoder.vocab
    assert int(v.modality_of(document[len(prompt)])) == then  # what comes next is of the generated modality
    assert v.eos_id not in prompt.tolist()


def test_prompt_layouts_by_name(encoder):
    v = encoder.vocab
    assert encoder.encode_prompt(_doc((TEXT, "hi")), then=IMAGE).tolist() == [v.bos_id, *b"hi", v.boi_id]
    speech = encoder.encode_prompt(_doc((TEXT, "hi")), then=SPEECH)
    assert speech.tolist() == [v.bos_id, *b"hi", v.bos_speech_id]
    units = v.to_joint(EnergyTokenizer().encode(WAVE), SPEECH).tolist()
    assert encoder.encode_prompt(_doc((SPEECH, WAVE))).tolist() == [v.bos_id, v.bos_speech_id, *units,
                                                                     v.eos_speech_id]
    assert encoder.encode_prompt(_doc(), then=IMAGE).tolist() == [v.bos_id, v.boi_id]
    text_only = DocumentEncoder(ByteTokenizer())
    with pytest.raises(ValueError, match="no image tokenizer"):
        text_only.encode_prompt(_doc((TEXT, "hi")), then=IMAGE)


def test_latent_image_prompts_hold_the_placeholder_span(latent_encoder):
    enc, v = latent_encoder, latent_encoder.vocab
    n = enc.tokenizers[IMAGE].num_tokens(None)
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    prompt = enc.encode_prompt(_doc((TEXT, "hi")), then=IMAGE)  # the span the diffusion sampler fills
    assert isinstance(prompt, LatentDoc)
    assert prompt.ids.tolist() == [v.bos_id, *b"hi", v.boi_id, *[v.latent_id] * n]
    assert not prompt.latents.any()
    document = enc.encode(_doc((TEXT, "hi"), (IMAGE, img)))
    assert torch.equal(prompt.ids, document.ids[: len(prompt)])
    caption = enc.encode_prompt(_doc((IMAGE, img)))  # BOS BOI latents EOI: the clean image
    document = enc.encode(_doc((IMAGE, img), (TEXT, "hi")))
    assert torch.equal(caption.ids, document.ids[: len(caption)])
    assert torch.equal(caption.latents, document.latents[: len(caption)])


def _check_left_padded(batch, prompts, vocab):
    """Each row of ``batch`` is ``collate_rows`` of its prompt alone, after a padding document."""
    T = batch.seq_len
    assert T == max(len(p) for p in prompts)
    for i, prompt in enumerate(prompts):
        alone = collate_rows([[prompt]], len(prompt), vocab)
        pad = T - len(prompt)
        for name in ("tokens", "modality", "positions", "targets", "latents", "span_ids"):
            got, want = getattr(batch, name), getattr(alone, name)
            if want is None:
                assert got is None, name
                continue
            assert torch.equal(got[i, pad:], want[0]), name
        # the padding: its own document (id 0, the prompt 1), positions from 0, PAD, no targets, zero latents
        assert torch.equal(batch.doc_ids[i, pad:], alone.doc_ids[0] + (1 if pad else 0))
        assert (batch.doc_ids[i, :pad] == 0).all()
        assert torch.equal(batch.positions[i, :pad], torch.arange(pad))
        assert (batch.tokens[i, :pad] == vocab.pad_id).all()
        assert (batch.targets[i, :pad] == IGNORE_INDEX).all()
        assert (batch.modality[i, :pad] == TEXT).all()
        if batch.latents is not None:
            assert not batch.latents[i, :pad].any() and (batch.span_ids[i, :pad] == -1).all()


def test_collated_prompts_are_collate_rows_rows_padded_on_the_left(encoder):
    prompts = [encoder.encode_prompt(_doc(*prefix), then=then) for prefix, then, _ in TASKS.values()]
    batch = collate_prompts(prompts, encoder.vocab)
    assert batch.batch_size == len(prompts) and batch.latents is None
    _check_left_padded(batch, prompts, encoder.vocab)
    with pytest.raises(ValueError, match="at least one prompt"):
        collate_prompts([], encoder.vocab)


def test_collated_latent_prompts_keep_latents_and_spans(latent_encoder):
    enc = latent_encoder
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))
    prompts = [enc.encode_prompt(_doc((TEXT, "a much longer caption")), then=IMAGE),
               enc.encode_prompt(_doc(), then=IMAGE), enc.encode_prompt(_doc((IMAGE, img)))]
    batch = collate_prompts(prompts, enc.vocab)
    _check_left_padded(batch, prompts, enc.vocab)
    n = enc.tokenizers[IMAGE].num_tokens(None)
    assert (batch.span_ids[:2, -n:] == 0).all() and (batch.span_ids[:2, :-n] == -1).all()  # spans end rows
    assert torch.equal(batch.latents[2, -n - 1:-1], enc.tokenizers[IMAGE].encode(img))  # before EOI


def test_speech_text_pairs_reads_the_first_validation_set(tmp_path):
    """Raw validation speech and their documents' text, in shard order, without tokenizers or setup."""
    mixed_corpus(tmp_path, n=16, shards=4)  # shard 2 holds speech-transcript pairs, shard 3 interleaved docs
    urls = str(tmp_path / "mixed-{000000..000003}.tar")
    val = [SourceConfig("first", urls), SourceConfig("other", "x.tar")]
    dm = make_datamodule(tmp_path, val[:1], val_sets=val)
    waves, texts = dm.speech_text_pairs(6)
    assert texts[:4] == [f"good-{i:03d} transcript" for i in (2, 6, 10, 14)]
    assert texts[4:] == ["good-003 and", "good-007 and"]  # interleaved: text segments joined
    assert all(w.dim() == 1 and w.dtype == torch.float32 for w in waves)
    assert torch.equal(waves[1], load_audio(wav_bytes(6)))
    assert len(dm.speech_text_pairs(100)[0]) == 8  # all there are
    assert make_datamodule(tmp_path, val[:1], val_sets=[]).speech_text_pairs(3) == ([], [])
