"""Hugging Face Llama / Qwen2 / Qwen3 folders imported into the backbone agree with ``transformers`` on the same
folder: logits, greedy continuations, tokenizer ids; unsupported configs are refused by key."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from mot_lightning.checkpoints.hf_folder import HFFolder
from mot_lightning.model import TransformerConfig
from mot_lightning.model.hf_llama import UnsupportedConfig
from mot_lightning.model.lm import TokenLM
from mot_lightning.tokenizers.hf_text import HFTextTokenizer
from mot_lightning.training.warm_start import WarmStart, warm_start
from tests.hf.hf_models import PROBES, VOCAB, load_hf, make_folder
from tests.numerics import assert_close, transformer_reduction

pytest.importorskip("transformers")

FAMILIES = ["llama", "qwen2", "qwen3"]
T = 24


@pytest.fixture(scope="module", params=FAMILIES)
def folder(request, tmp_path_factory):
    # llama saved in shards with an index: the import reads model.safetensors.index.json
    shard = {"max_shard_size": "40KB"} if request.param == "llama" else {}
    return make_folder(tmp_path_factory.mktemp(request.param), request.param, save_kwargs=shard)


def imported(folder, **backbone) -> TokenLM:
    """The folder as a ``TokenLM`` (dense, or what ``backbone`` changes) through ``model.init_from``."""
    hf = HFFolder(folder)
    cfg = TransformerConfig(**{**hf.cfg.to_dict(), **backbone})
    layout = {"text": hf.vocab_size, "special": 7, "image": 16} if cfg.n_modalities > 1 else {"text": hf.vocab_size}
    net = TokenLM(cfg, sum(layout.values()))
    warm_start(net, WarmStart(str(folder), new_rows="mean_zero_head"), layout)
    return net.eval()


def _reduction(net: TokenLM) -> int:
    cfg = net.backbone.cfg
    return transformer_reduction(cfg.n_layers, cfg.dim, cfg.ffn_hidden, T)


def test_logits_equal_transformers(folder):
    net, hf = imported(folder), load_hf(folder)
    ids = torch.randint(0, VOCAB, (2, T))
    with torch.no_grad():
        assert_close(net(ids, torch.zeros_like(ids)), hf(ids).logits, reduction=_reduction(net))


def test_greedy_continuations_are_identical(folder):
    net, hf = imported(folder), load_hf(folder)
    prompt = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16, do_sample=False,
                             min_new_tokens=16, pad_token_id=0)[0, prompt.shape[1]:].tolist()
        ours = prompt
        for _ in range(16):  # full forward each step: the plain twin of cached decoding
            nxt = net(ours, torch.zeros_like(ours))[:, -1].argmax(-1, keepdim=True)
            ours = torch.cat([ours, nxt], dim=1)
    assert ours[0, prompt.shape[1]:].tolist() == theirs


def test_text_tower_of_an_mot_keeps_the_llm_logits(folder):
    """Text+image MoT, image tower a copy of the LLM: text tokens get the LLM's logits on the LLM's rows; the
    new rows' output is exactly 0 (zero-initialised head rows)."""
    net, hf = imported(folder, sparsity="mot", n_modalities=2), load_hf(folder)
    ids = torch.randint(0, VOCAB, (2, T))
    with torch.no_grad():
        logits = net(ids, torch.zeros_like(ids))
        assert_close(logits[..., :VOCAB], hf(ids).logits, reduction=_reduction(net))
    assert torch.equal(logits[..., VOCAB:], torch.zeros_like(logits[..., VOCAB:]))
    wqkv = net.backbone.layers[0].attn.wqkv.weights
    assert torch.equal(wqkv[0], wqkv[1])  # the image tower starts as the text tower's copy


def test_tokenizer_ids_equal_transformers(folder):
    from transformers import AutoTokenizer

    ours, theirs = HFTextTokenizer(str(folder)), AutoTokenizer.from_pretrained(folder)
    assert ours.vocab_size == VOCAB  # config.json's rows, not the tokenizer's 300 tokens
    assert set(ours.special_tokens) == {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    for text in PROBES:
        ids = ours.encode(text).tolist()
        assert ids == theirs(text, add_special_tokens=False).input_ids, text
        assert ours.decode(ids) == theirs.decode(ids), text
    assert ours.encode("<|im_start|>")[0] == theirs.convert_tokens_to_ids("<|im_start|>")


REFUSED = [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_parameters.rope_type"),
    ({"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window"),
    ({"num_local_experts": 8}, "num_local_experts"),
    ({"model_type": "mistral"}, "model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_bias": True}, "attention_bias"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
]


@pytest.mark.parametrize(("change", "key"), REFUSED, ids=[k for _, k in REFUSED])
def test_unsupported_config_is_refused_naming_the_key(change, key, tmp_path):
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 32,
              "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, **change}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfig, match=key.replace(".", r"\.")):
        HFFolder(tmp_path)


def test_a_backbone_unlike_config_json_is_refused_by_name(folder):
    hf = HFFolder(folder)
    net = TokenLM(TransformerConfig(**{**hf.cfg.to_dict(), "rope_theta": 123.0}), hf.vocab_size)
    with pytest.raises(ValueError, match="rope_theta is 123.0, config.json gives"):
        warm_start(net, WarmStart(str(folder)), {"text": hf.vocab_size})


def test_missing_tensors_are_named(folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match=r"model\.layers\.2\."):
        HFFolder(broken)


def test_mot_hf_backbone_prints_the_backbone_that_imports_the_folder(folder, capsys):
    import yaml

    from mot_lightning.commands.hf import main

    main(["backbone", str(folder)])
    printed = yaml.safe_load(capsys.readouterr().out)
    cfg = TransformerConfig(**printed["model"]["backbone"], sparsity="dense")
    assert cfg == HFFolder(folder).cfg
    assert printed["model"]["init_from"]["checkpoint"] == printed["data"]["text_tokenizer"]["init_args"]["path"]


def test_an_untied_folder_without_its_head_is_refused(folder, tmp_path):
    from safetensors.torch import load_file, save_file

    hf = HFFolder(folder)
    if hf.tied:
        pytest.skip("this family's tiny model ties its head")
    broken = tmp_path / "no_head"
    broken.mkdir()
    shutil.copy(folder / "config.json", broken)
    state = {}
    for f in folder.glob("*.safetensors"):
        state.update(load_file(f))
    del state["lm_head.weight"]
    save_file(state, broken / "model.safetensors")
    with pytest.raises(ValueError, match="lm_head.weight"):
        HFFolder(broken)
