"""Key and config conversion between the ldm checkpoint layout and the diffusers / transformers layouts.

One named function per part and direction, written from the public key conventions:

- `model.diffusion_model.*` ↔ diffusers `UNet2DConditionModel`;
- `control_model.*` ↔ diffusers `ControlNetModel` (hint encoder ↔ `controlnet_cond_embedding`, zero convs ↔
  `controlnet_down_blocks`, `middle_block_out` ↔ `controlnet_mid_block`);
- `first_stage_model.*` ↔ diffusers `AutoencoderKL` (the mid-block attention's 1×1 convs ↔ linear layers);
- `cond_stage_model.transformer.text_model.*` ↔ transformers `CLIPTextModel` (with the hub files' `text_model.`
  prefix, or without it as transformers 5 `save_pretrained` writes it).

The diffusers configs come from our YAML's `model` node. Nothing here imports diffusers: the tests check the
mappings against it. Tensors are renamed, never copied, except the VAE attention weights, which are reshaped views.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ldm.models.autoencoder import DDCONFIG_DEFAULTS

UNET_PREFIX = "model.diffusion_model."
CONTROL_PREFIX = "control_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
CLIP_EMBEDDER = "ldm.modules.encoders.modules.FrozenCLIPEmbedder"

_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
# The hint encoder's convolutions sit at even indices of its Sequential (SiLU between them).
_HINT = {
    "0": "conv_in",
    "2": "blocks.0",
    "4": "blocks.1",
    "6": "blocks.2",
    "8": "blocks.3",
    "10": "blocks.4",
    "12": "blocks.5",
    "14": "conv_out",
}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


class ConversionError(ValueError):
    """A state dict or config that these mappings do not cover; the message says what was expected."""


# ---------------------------------------------------------------------------------------------------------- UNet


def _architecture(unet_params: Mapping[str, Any]) -> tuple[int, int, list[bool]]:
    """(levels, res blocks per level, whether each level has attention) of a UNet's `params`."""
    levels = len(unet_params["channel_mult"])
    attention = [2**level in unet_params["attention_resolutions"] for level in range(levels)]
    return levels, unet_params["num_res_blocks"], attention


def _resnet(rest: str) -> str:
    for ours, theirs in _RESNET.items():
        if rest.startswith(ours + "."):
            return theirs + rest[len(ours) :]
    raise ConversionError(f"no diffusers name for the ResBlock key {rest!r}")


def _encoder_key(key: str, unet_params: Mapping[str, Any]) -> str | None:
    """An encoder key (what the UNet and the ControlNet share) in diffusers' names, or None if not an encoder key."""
    levels, blocks, _ = _architecture(unet_params)
    if key.startswith("time_embed."):
        index, tail = key.split(".", 2)[1:]
        return f"time_embedding.linear_{1 if index == '0' else 2}.{tail}"
    if m := re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key):
        k, layer, rest = int(m[1]), m[2], m[3]
        if k == 0:
            return f"conv_in.{rest}"
        level, j = divmod(k - 1, blocks + 1)
        if j == blocks:
            return f"down_blocks.{level}.downsamplers.0.conv.{rest.removeprefix('op.')}"
        if layer == "0":
            return f"down_blocks.{level}.resnets.{j}.{_resnet(rest)}"
        return f"down_blocks.{level}.attentions.{j}.{rest}"
    if m := re.fullmatch(r"middle_block\.(\d)\.(.+)", key):
        part = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}[m[1]]
        return f"mid_block.{part}.{_resnet(m[2]) if part.startswith('resnets') else m[2]}"
    return None


def unet_key(key: str, unet_params: Mapping[str, Any]) -> str:
    if (name := _encoder_key(key, unet_params)) is not None:
        return name
    levels, blocks, attention = _architecture(unet_params)
    if m := re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key):
        k, layer, rest = int(m[1]), m[2], m[3]
        up, j = divmod(k, blocks + 1)
        if layer == "0":
            return f"up_blocks.{up}.resnets.{j}.{_resnet(rest)}"
        if layer == "1" and attention[levels - 1 - up]:
            return f"up_blocks.{up}.attentions.{j}.{rest}"
        return f"up_blocks.{up}.upsamplers.0.conv.{rest.removeprefix('conv.')}"
    if key.startswith("out.0."):
        return "conv_norm_out." + key[len("out.0.") :]
    if key.startswith("out.2."):
        return "conv_out." + key[len("out.2.") :]
    raise ConversionError(f"no diffusers name for the UNet key {key!r}")


def control_key(key: str, unet_params: Mapping[str, Any]) -> str:
    if (name := _encoder_key(key, unet_params)) is not None:
        return name
    if m := re.fullmatch(r"input_hint_block\.(\d+)\.(.+)", key):
        return f"controlnet_cond_embedding.{_HINT[m[1]]}.{m[2]}"
    if m := re.fullmatch(r"zero_convs\.(\d+)\.0\.(.+)", key):
        return f"controlnet_down_blocks.{m[1]}.{m[2]}"
    if key.startswith("middle_block_out.0."):
        return "controlnet_mid_block." + key[len("middle_block_out.0.") :]
    raise ConversionError(f"no diffusers name for the ControlNet key {key!r}")


# ----------------------------------------------------------------------------------------------------------- VAE


def vae_key(key: str, ch_mult_len: int) -> str:
    key = key.replace("nin_shortcut", "conv_shortcut").replace("norm_out.", "conv_norm_out.")
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(.+)", key):
        return f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(.+)", key):
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\.(.+)", key):
        return f"decoder.up_blocks.{ch_mult_len - 1 - int(m[1])}.resnets.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(.+)", key):
        return f"decoder.up_blocks.{ch_mult_len - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.block_(\d)\.(.+)", key):
        return f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(.+)", key):
        return f"{m[1]}.mid_block.attentions.0.{_VAE_ATTENTION[m[2]]}.{m[3]}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv: the same names


def is_vae_attention_weight(key: str) -> bool:
    return bool(re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight", key))


def vae_tensor_from_diffusers(key: str, value: torch.Tensor) -> torch.Tensor:
    """A diffusers VAE tensor as our `key` (under `first_stage_model.`) holds it: the linear attention weights
    [C, C] become 1×1 convolutions [C, C, 1, 1] (a view, no copy)."""
    if is_vae_attention_weight(key.removeprefix(VAE_PREFIX)) and value.ndim == 2:
        return value[:, :, None, None]
    return value


# --------------------------------------------------------------------------------------------------- both ways


def _rename(state: Mapping[str, torch.Tensor], prefix: str, name: Callable[[str], str]) -> dict[str, torch.Tensor]:
    return {name(k[len(prefix) :]): v for k, v in state.items() if k.startswith(prefix)}


def _inverse(keys: list[str], name: Callable[[str], str], prefix: str) -> dict[str, str]:
    """diffusers name → our full key, for every key of our layout."""
    return {name(k): prefix + k for k in keys}


def _from(dstate: Mapping[str, torch.Tensor], names: Mapping[str, str], what: str) -> dict[str, torch.Tensor]:
    missing = sorted(set(names) - set(dstate))
    unexpected = sorted(set(dstate) - set(names))
    if missing or unexpected:
        raise ConversionError(
            f"the {what} weights do not fit the config: missing {missing[:5]}"
            f"{f' ({len(missing)} in all)' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{f' ({len(unexpected)} in all)' if len(unexpected) > 5 else ''}"
        )
    return {names[k]: v for k, v in dstate.items()}


def our_keys(model_config: Mapping[str, Any], prefix: str) -> list[str]:
    """The state_dict keys under `prefix` of the model a config builds (on the meta device: nothing allocated),
    without the prefix."""
    from ldm.util import instantiate_from_config

    with torch.device("meta"):
        model = instantiate_from_config(model_config)
    return [k[len(prefix) :] for k in model.state_dict() if k.startswith(prefix)]


def unet_to_diffusers(state: Mapping[str, torch.Tensor], model_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """`model.diffusion_model.*` → `UNet2DConditionModel` state dict."""
    unet = model_config["params"]["unet_config"]["params"]
    return _rename(state, UNET_PREFIX, lambda k: unet_key(k, unet))


def unet_from_diffusers(dstate: Mapping[str, torch.Tensor], model_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """`UNet2DConditionModel` state dict → `model.diffusion_model.*`."""
    unet = model_config["params"]["unet_config"]["params"]
    names = _inverse(our_keys(model_config, UNET_PREFIX), lambda k: unet_key(k, unet), UNET_PREFIX)
    return _from(dstate, names, "UNet")


def controlnet_to_diffusers(
    state: Mapping[str, torch.Tensor], model_config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """`control_model.*` → `ControlNetModel` state dict."""
    unet = model_config["params"]["unet_config"]["params"]
    return _rename(state, CONTROL_PREFIX, lambda k: control_key(k, unet))


def controlnet_from_diffusers(
    dstate: Mapping[str, torch.Tensor], model_config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """`ControlNetModel` state dict → `control_model.*`."""
    unet = model_config["params"]["unet_config"]["params"]
    names = _inverse(our_keys(model_config, CONTROL_PREFIX), lambda k: control_key(k, unet), CONTROL_PREFIX)
    return _from(dstate, names, "ControlNet")


def vae_to_diffusers(state: Mapping[str, torch.Tensor], model_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """`first_stage_model.*` → `AutoencoderKL` state dict (attention 1×1 convs become linear weights)."""
    n = len(model_config["params"]["first_stage_config"]["params"]["ddconfig"]["ch_mult"])
    return {
        vae_key(k, n): v[:, :, 0, 0] if is_vae_attention_weight(k) else v
        for k, v in ((k[len(VAE_PREFIX) :], v) for k, v in state.items() if k.startswith(VAE_PREFIX))
    }


def vae_from_diffusers(dstate: Mapping[str, torch.Tensor], model_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """`AutoencoderKL` state dict → `first_stage_model.*` (linear attention weights become 1×1 convs)."""
    n = len(model_config["params"]["first_stage_config"]["params"]["ddconfig"]["ch_mult"])
    keys = our_keys(model_config, VAE_PREFIX)
    names = _inverse(keys, lambda k: vae_key(k, n), VAE_PREFIX)
    return {k: vae_tensor_from_diffusers(k, v) for k, v in _from(dstate, names, "VAE").items()}


def check_clip_text(model_config: Mapping[str, Any]) -> None:
    target = model_config["params"]["cond_stage_config"]["target"]
    if target != CLIP_EMBEDDER:
        raise ConversionError(
            f"the text encoder {target} has no transformers CLIPTextModel mapping here (SD2.x uses OpenCLIP); "
            "convert the UNet, ControlNet and VAE only, or use an SD1.x config"
        )


def text_encoder_to_transformers(
    state: Mapping[str, torch.Tensor], model_config: Mapping[str, Any], *, hub_layout: bool = True
) -> dict[str, torch.Tensor]:
    """`cond_stage_model.transformer.text_model.*` → `CLIPTextModel` state dict: with the `text_model.` prefix
    the hub's files carry (`hub_layout`), or without it, as transformers 5 `save_pretrained` writes it."""
    check_clip_text(model_config)
    prefix = "text_model." if hub_layout else ""
    return {prefix + k: v for k, v in _rename(state, TEXT_PREFIX, lambda k: k).items()}


def text_encoder_from_transformers(
    dstate: Mapping[str, torch.Tensor], model_config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """`CLIPTextModel` state dict, with or without the `text_model.` prefix → our keys. `position_ids` (a
    buffer older files carry) is dropped."""
    check_clip_text(model_config)
    state = {k.removeprefix("text_model."): v for k, v in dstate.items() if not k.endswith("embeddings.position_ids")}
    names = {k: TEXT_PREFIX + k for k in our_keys(model_config, TEXT_PREFIX)}
    return _from(state, names, "text encoder")


# ------------------------------------------------------------------------------------------------------- configs


def _unet_common(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """What `UNet2DConditionModel` and `ControlNetModel` configs share, from our UNet's `params`."""
    unet = model_config["params"]["unet_config"]["params"]
    levels, blocks, attention = _architecture(unet)
    widths = [unet["model_channels"] * m for m in unet["channel_mult"]]
    if unet.get("num_head_channels", -1) != -1:
        heads: int | list[int] = [w // unet["num_head_channels"] for w in widths]
    else:
        heads = unet["num_heads"]  # diffusers calls the SD1.x head count `attention_head_dim`
    return {
        "in_channels": unet["in_channels"],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "block_out_channels": widths,
        "layers_per_block": blocks,
        "cross_attention_dim": unet["context_dim"],
        "attention_head_dim": heads,
        "use_linear_projection": bool(unet.get("use_linear_in_transformer", False)),
        "transformer_layers_per_block": unet.get("transformer_depth", 1),
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "norm_num_groups": 32,
    }


def diffusers_unet_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The `UNet2DConditionModel` config of our locked UNet."""
    unet = model_config["params"]["unet_config"]["params"]
    common = _unet_common(model_config)
    attention = [t == "CrossAttnDownBlock2D" for t in common["down_block_types"]]
    return {
        "_class_name": "UNet2DConditionModel",
        **common,
        "sample_size": model_config["params"]["image_size"],
        "out_channels": unet["out_channels"],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
    }


def diffusers_controlnet_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The `ControlNetModel` config of our ControlNet."""
    control = model_config["params"]["control_stage_config"]["params"]
    return {
        "_class_name": "ControlNetModel",
        **_unet_common(model_config),
        "conditioning_channels": control["hint_channels"],
        "conditioning_embedding_out_channels": [16, 32, 96, 256],
        "controlnet_conditioning_channel_order": "rgb",
    }


def diffusers_vae_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The `AutoencoderKL` config of our first stage."""
    first = model_config["params"]["first_stage_config"]["params"]
    dd = first["ddconfig"]
    if dd.get("attn_resolutions"):
        raise ConversionError("an autoencoder with attention outside its middle block has no AutoencoderKL mapping")
    n = len(dd["ch_mult"])
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]],
        "layers_per_block": dd["num_res_blocks"],
        "latent_channels": first["embed_dim"],
        "norm_num_groups": dd.get("norm_groups", DDCONFIG_DEFAULTS["norm_groups"]),
        "sample_size": dd["resolution"],
        "scaling_factor": model_config["params"]["scale_factor"],
    }


def clip_text_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The transformers `CLIPTextConfig` of our SD1.x text encoder."""
    check_clip_text(model_config)
    params = model_config["params"]["cond_stage_config"].get("params") or {}
    width = params.get("width", 768)
    return {
        "vocab_size": 49408,
        "hidden_size": width,
        "intermediate_size": params.get("mlp_width", 3072),
        "num_hidden_layers": params.get("layers", 12),
        "num_attention_heads": params.get("heads", 12),
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
