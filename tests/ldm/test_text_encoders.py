import json

import pytest
import torch
import transformers
from open_clip.transformer import TextTransformer

from ldm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder

TINY = dict(width=32, layers=2, heads=2, mlp_width=64)


def _manifest(repo_root, name):
    keys = json.loads((repo_root / "tests/data" / name).read_text())["keys"]
    return {k[len("cond_stage_model.") :]: v for k, v in keys.items() if k.startswith("cond_stage_model.")}


def test_sd15_text_encoder_keys(repo_root):
    with torch.device("meta"):
        enc = FrozenCLIPEmbedder()
    assert {k: list(v.shape) for k, v in enc.state_dict().items()} == _manifest(repo_root, "sd15_controlnet_keys.json")


def test_sd21_text_encoder_keys(repo_root):
    with torch.device("meta"):
        enc = FrozenOpenCLIPEmbedder()
    assert {k: list(v.shape) for k, v in enc.state_dict().items()} == _manifest(repo_root, "sd21_controlnet_keys.json")


def test_tokenizer_pads_with_end_of_text_and_truncates():
    enc = FrozenCLIPEmbedder(**TINY)
    ids = enc.tokenize(["a photograph of a dog", "dog " * 100])
    assert ids.shape == (2, 77)
    assert ids[0, 0] == 49406 and ids[0, 6] == 49407 and (ids[0, 6:] == 49407).all()
    assert ids[1, 76] == 49407 and (ids[1, 1:76] != 49407).all()
    assert enc.count_tokens("dog " * 100) == 102


def test_openclip_tokenizer_pads_with_zero():
    ids = FrozenOpenCLIPEmbedder(**TINY).tokenize(["a dog"])
    assert ids[0, 3] == 49407 and (ids[0, 4:] == 0).all()


def test_clip_text_matches_transformers_clip():
    torch.manual_seed(0)
    ours = FrozenCLIPEmbedder(**TINY)
    config = transformers.CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    )
    theirs = transformers.CLIPTextModel(config).eval()
    for p in theirs.parameters():
        torch.nn.init.normal_(p, std=0.2)
    prefix = "transformer.text_model."
    their_state = theirs.state_dict()
    mapped = {
        prefix + (k[len("text_model.") :] if k.startswith("text_model.") else k): v for k, v in their_state.items()
    }
    mapped = {k: v for k, v in mapped.items() if not k.endswith("position_ids")}
    ours.load_state_dict(mapped, strict=True)
    prompts = ["a photograph of a chihuahua", "a red circle"]
    ids = ours.tokenize(prompts)
    expected = theirs(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours.encode(prompts), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer, skip", [("penultimate", 1), ("last", 0)])
def test_openclip_text_matches_open_clip_blocks(layer, skip):
    torch.manual_seed(0)
    ours = FrozenOpenCLIPEmbedder(layer=layer, width=64, layers=3, heads=2, mlp_width=256, embed_dim=64)
    ref = TextTransformer(width=64, heads=2, layers=3, output_dim=64).eval()
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.2)
    state = {k: v for k, v in ref.state_dict().items() if k != "attn_mask"}
    state["logit_scale"] = torch.tensor(1.0)
    ours.model.load_state_dict(state, strict=True)
    ids = ours.tokenize(["a photograph of a dog"])
    x = ref.token_embedding(ids) + ref.positional_embedding
    blocks = ref.transformer.resblocks
    for block in blocks[: len(blocks) - skip]:
        x = block(x, attn_mask=ref.attn_mask)
    torch.testing.assert_close(ours.encode(["a photograph of a dog"]), ref.ln_final(x), atol=1e-5, rtol=1e-5)


def test_frozen_encoder_stays_in_eval_and_without_grads():
    enc = FrozenCLIPEmbedder(**TINY)
    enc.train()
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())


def test_single_string_prompt_is_a_type_error():
    with pytest.raises(TypeError, match="list of strings"):
        FrozenCLIPEmbedder(**TINY).encode("a dog")
