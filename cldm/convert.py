"""Key and config conversion between the ldm checkpoint layout and the diffusers / transformers layouts.

One named function per part and direction, written from the public key conventions:

- `model.diffusion_model.*` ↔ diffusers `UNet2DConditionModel`;
- `control_model.*` ↔ diffusers `ControlNetModel` (hint encoder ↔ `controlnet_cond_embedding`, zero convs ↔
  `controlnet_down_blocks`, `middle_block_out` ↔ `controlnet_mid_block`);
- `first_stage_model.*` ↔ diffusers `AutoencoderKL` (the mid-block attention's 1×1 convs ↔ linear layers);
- `cond_stage_model.transformer.text_model.*` ↔ transformers `CLIPTextModel` (with the hub files' `text_model.`
  prefix, or without it as transformers 5 `save_pretrained` writes it).

The architecture is read from the model itself (a ControlLDM, on the meta device when only keys and shapes
matter): its UNet's and ControlNet's `UNetSpec`, the VAE's checked `ddconfig`, the text encoder's sizes. No config
dict travels beside it. Nothing here imports diffusers: the tests check the mappings against it. Tensors are renamed, never copied, except the VAE attention weights, which are reshaped views.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ldm.modules.diffusionmodules.openaimodel import UNetSpec
from ldm.modules.encoders.modules import FrozenCLIPEmbedder

UNET_PREFIX = "model.diffusion_model."
CONTROL_PREFIX = "control_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

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


def _architecture(spec: UNetSpec) -> tuple[int, int, list[bool]]:
    """(levels, res blocks per level, whether each level has attention) of a UNet."""
    levels = len(spec.channel_mult)
    attention = [2**level in spec.attention_resolutions for level in range(levels)]
    return levels, spec.num_res_blocks, attention


def _resnet(rest: str) -> str:
    for ours, theirs in _RESNET.items():
        if rest.startswith(ours + "."):
            return theirs + rest[len(ours) :]
    raise ConversionError(f"no diffusers name for the ResBlock key {rest!r}")


def _encoder_key(key: str, spec: UNetSpec) -> str | None:
    """An encoder key (what the UNet and the ControlNet share) in diffusers' names, or None if not an encoder key."""
    levels, blocks, _ = _architecture(spec)
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


def unet_key(key: str, spec: UNetSpec) -> str:
    if (name := _encoder_key(key, spec)) is not None:
        return name
    levels, blocks, attention = _architecture(spec)
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


def control_key(key: str, spec: UNetSpec) -> str:
    if (name := _encoder_key(key, spec)) is not None:
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


def model_keys(model: torch.nn.Module, prefix: str) -> list[str]:
    """The state_dict keys of `model` under `prefix`, without it (a meta-device model gives them for free)."""
    return [k[len(prefix) :] for k in model.state_dict() if k.startswith(prefix)]


def vae_levels(model: torch.nn.Module) -> int:
    return len(model.first_stage_model.ddconfig["ch_mult"])


def unet_to_diffusers(state: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`model.diffusion_model.*` → `UNet2DConditionModel` state dict, for the architecture of `model`."""
    spec = model.model.diffusion_model.spec
    return _rename(state, UNET_PREFIX, lambda k: unet_key(k, spec))


def unet_from_diffusers(dstate: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`UNet2DConditionModel` state dict → `model.diffusion_model.*` of `model`."""
    spec = model.model.diffusion_model.spec
    names = _inverse(model_keys(model, UNET_PREFIX), lambda k: unet_key(k, spec), UNET_PREFIX)
    return _from(dstate, names, "UNet")


def controlnet_to_diffusers(state: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`control_model.*` → `ControlNetModel` state dict."""
    spec = model.control_model.spec
    return _rename(state, CONTROL_PREFIX, lambda k: control_key(k, spec))


def controlnet_from_diffusers(dstate: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`ControlNetModel` state dict → `control_model.*`."""
    spec = model.control_model.spec
    names = _inverse(model_keys(model, CONTROL_PREFIX), lambda k: control_key(k, spec), CONTROL_PREFIX)
    return _from(dstate, names, "ControlNet")


def vae_to_diffusers(state: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`first_stage_model.*` → `AutoencoderKL` state dict (attention 1×1 convs become linear weights)."""
    n = vae_levels(model)
    return {
        vae_key(k, n): v[:, :, 0, 0] if is_vae_attention_weight(k) else v
        for k, v in ((k[len(VAE_PREFIX) :], v) for k, v in state.items() if k.startswith(VAE_PREFIX))
    }


def vae_from_diffusers(dstate: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`AutoencoderKL` state dict → `first_stage_model.*` (linear attention weights become 1×1 convs)."""
    n = vae_levels(model)
    names = _inverse(model_keys(model, VAE_PREFIX), lambda k: vae_key(k, n), VAE_PREFIX)
    return {k: vae_tensor_from_diffusers(k, v) for k, v in _from(dstate, names, "VAE").items()}


def check_clip_text(model: torch.nn.Module) -> FrozenCLIPEmbedder:
    """The model's text encoder when it is SD1.x's CLIP (the one with a transformers layout)."""
    encoder = model.cond_stage_model
    if not isinstance(encoder, FrozenCLIPEmbedder):
        raise ConversionError(
            f"the text encoder {type(encoder).__name__} has no transformers CLIPTextModel mapping here (SD2.x uses "
            "OpenCLIP); convert the UNet, ControlNet and VAE only, or use an SD1.x config"
        )
    return encoder


def text_encoder_to_transformers(
    state: Mapping[str, torch.Tensor], model: torch.nn.Module, *, hub_layout: bool = True
) -> dict[str, torch.Tensor]:
    """`cond_stage_model.transformer.text_model.*` → `CLIPTextModel` state dict: with the `text_model.` prefix
    the hub's files carry (`hub_layout`), or without it, as transformers 5 `save_pretrained` writes it."""
    check_clip_text(model)
    prefix = "text_model." if hub_layout else ""
    return {prefix + k: v for k, v in _rename(state, TEXT_PREFIX, lambda k: k).items()}


def text_encoder_from_transformers(
    dstate: Mapping[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """`CLIPTextModel` state dict, with or without the `text_model.` prefix → our keys. `position_ids` (a
    buffer older files carry) is dropped."""
    check_clip_text(model)
    state = {k.removeprefix("text_model."): v for k, v in dstate.items() if not k.endswith("embeddings.position_ids")}
    names = {k: TEXT_PREFIX + k for k in model_keys(model, TEXT_PREFIX)}
    return _from(state, names, "text encoder")


# ------------------------------------------------------------------------------------------------------- configs


def _unet_common(spec: UNetSpec) -> dict[str, Any]:
    """What `UNet2DConditionModel` and `ControlNetModel` configs share, from a UNet's spec."""
    levels, blocks, attention = _architecture(spec)
    widths = [spec.model_channels * m for m in spec.channel_mult]
    if spec.num_head_channels != -1:
        heads: int | list[int] = [w // spec.num_head_channels for w in widths]
    else:
        heads = spec.num_heads  # diffusers calls the SD1.x head count `attention_head_dim`
    return {
        "in_channels": spec.in_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "block_out_channels": widths,
        "layers_per_block": blocks,
        "cross_attention_dim": spec.context_dim,
        "attention_head_dim": heads,
        "use_linear_projection": spec.use_linear_in_transformer,
        "transformer_layers_per_block": spec.transformer_depth,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "norm_num_groups": 32,
    }


def diffusers_unet_config(model: torch.nn.Module) -> dict[str, Any]:
    """The `UNet2DConditionModel` config of the model's locked UNet."""
    unet = model.model.diffusion_model
    common = _unet_common(unet.spec)
    attention = [t == "CrossAttnDownBlock2D" for t in common["down_block_types"]]
    return {
        "_class_name": "UNet2DConditionModel",
        **common,
        "sample_size": model.image_size,
        "out_channels": unet.out_channels,
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
    }


def diffusers_controlnet_config(model: torch.nn.Module) -> dict[str, Any]:
    """The `ControlNetModel` config of the model's ControlNet."""
    control = model.control_model
    return {
        "_class_name": "ControlNetModel",
        **_unet_common(control.spec),
        "conditioning_channels": control.hint_channels,
        "conditioning_embedding_out_channels": [16, 32, 96, 256],
        "controlnet_conditioning_channel_order": "rgb",
    }


def diffusers_vae_config(model: torch.nn.Module) -> dict[str, Any]:
    """The `AutoencoderKL` config of the model's first stage."""
    vae = model.first_stage_model
    dd = vae.ddconfig
    if dd["attn_resolutions"]:
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
        "latent_channels": vae.embed_dim,
        "norm_num_groups": dd["norm_groups"],
        "sample_size": dd["resolution"],
        "scaling_factor": model.scale_factor,
    }


def clip_text_config(model: torch.nn.Module) -> dict[str, Any]:
    """The transformers `CLIPTextConfig` of the model's SD1.x text encoder."""
    encoder = check_clip_text(model)
    return {
        "vocab_size": encoder.vocab_size,
        "hidden_size": encoder.width,
        "intermediate_size": encoder.mlp_width,
        "num_hidden_layers": encoder.layers,
        "num_attention_heads": encoder.heads,
        "max_position_embeddings": encoder.max_length,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
