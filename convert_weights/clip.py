"""OpenAI CLIP ViT -> ffclip-jax `clip` directory that is also a transformers Flax checkpoint.

Inputs: OpenAI's TorchScript archive (`ViT-B-32.pt`, read without running its code), a plain OpenAI state dict
(`torch.save(model.state_dict())`, fp16 or fp32), or a local transformers `CLIPModel` directory (config.json with
model.safetensors or pytorch_model.bin). The ViT config (B/32, B/16, L/14, ...) is read off the tensors.
Output DIR: model.json (model 'clip', OpenAI-style config) + config.json + flax_model.msgpack, float32, so both
`ffclip_jax.weights.pretrained.load(DIR)` and `transformers.FlaxCLIPModel.from_pretrained(DIR)` load it.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Mapping

import numpy as np
from safetensors.numpy import load_file

from convert_weights import common
from convert_weights.mapping import Rule, conv, apply_rules, linear, split
from convert_weights.torch_io import is_torchscript, load_torchscript_state_dict
from ffclip_jax.errors import CheckpointError, ConversionError
from ffclip_jax.models import clip as clip_model
from ffclip_jax.weights.clip_dir import save_clip

NAME = "clip"
HELP = "OpenAI CLIP ViT (TorchScript ViT-B-32.pt, state dict, or transformers CLIPModel dir) -> Flax"
EXPECTED = ("OpenAI's TorchScript archive (ViT-B-32.pt), an OpenAI CLIP state dict, or a transformers CLIPModel "
            "directory")
TOWERS = (("", "text_model"), (r"visual\.", "vision_model"))  # OpenAI key prefix -> Flax tower


def _dense(src: str, dst: str) -> List[Rule]:
    """torch Linear `src.weight/bias` -> Flax Dense `dst/kernel/bias`."""
    return [Rule(rf"{src}\.weight", linear, target=f"{dst}/kernel"), Rule(rf"{src}\.bias", target=f"{dst}/bias")]


def _layer_norm(src: str, dst: str) -> List[Rule]:
    return [Rule(rf"{src}\.weight", target=f"{dst}/scale"), Rule(rf"{src}\.bias", target=f"{dst}/bias")]


def _openai_rules() -> List[Rule]:
    rules = [
        Rule(r"token_embedding\.weight", target="params/text_model/embeddings/token_embedding/embedding"),
        Rule(r"positional_embedding", target="params/text_model/embeddings/position_embedding/embedding"),
        *_layer_norm(r"ln_final", "params/text_model/final_layer_norm"),
        Rule(r"text_projection", target="params/text_projection/kernel"),  # x @ P: already (in, out)
        Rule(r"logit_scale", target="params/logit_scale"),
        Rule(r"visual\.conv1\.weight", conv, target="params/vision_model/embeddings/patch_embedding/kernel"),
        Rule(r"visual\.class_embedding", target="params/vision_model/embeddings/class_embedding"),
        Rule(r"visual\.positional_embedding", target="params/vision_model/embeddings/position_embedding/embedding"),
        *_layer_norm(r"visual\.ln_pre", "params/vision_model/pre_layrnorm"),
        *_layer_norm(r"visual\.ln_post", "params/vision_model/post_layernorm"),
        Rule(r"visual\.proj", target="params/visual_projection/kernel"),
    ]
    for src, dst in TOWERS:
        block, layer = rf"{src}transformer\.resblocks\.(\d+)", rf"params/{dst}/encoder/layers/\1"
        rules += [
            Rule(rf"{block}\.attn\.in_proj_weight", split(3, linear),
                 target=tuple(f"{layer}/self_attn/{p}_proj/kernel" for p in "qkv")),
            Rule(rf"{block}\.attn\.in_proj_bias", split(3),
                 target=tuple(f"{layer}/self_attn/{p}_proj/bias" for p in "qkv")),
            *_dense(rf"{block}\.attn\.out_proj", f"{layer}/self_attn/out_proj"),
            *_layer_norm(rf"{block}\.ln_1", f"{layer}/layer_norm1"),
            *_layer_norm(rf"{block}\.ln_2", f"{layer}/layer_norm2"),
            *_dense(rf"{block}\.mlp\.c_fc", f"{layer}/mlp/fc1"),
            *_dense(rf"{block}\.mlp\.c_proj", f"{layer}/mlp/fc2"),
        ]
    return rules


# non-parameter tensors of OpenAI's archive: the causal mask attribute and build_model's scalar entries
OPENAI_IGNORE = [r".*attn_mask", r"input_resolution", r"context_length", r"vocab_size"]

_HF_LAYER = r"(text_model|vision_model)\.encoder\.layers\.(\d+)"
HF_RULES = [
    Rule(r"(text_model|vision_model)\.embeddings\.(token|position)_embedding\.weight",
         target=r"params/\1/embeddings/\2_embedding/embedding"),
    Rule(r"vision_model\.embeddings\.class_embedding", target="params/vision_model/embeddings/class_embedding"),
    Rule(r"vision_model\.embeddings\.patch_embedding\.weight", conv,
         target="params/vision_model/embeddings/patch_embedding/kernel"),
    *_dense(rf"{_HF_LAYER}\.(self_attn|mlp)\.(\w+)", r"params/\1/encoder/layers/\2/\3/\4"),
    *_layer_norm(rf"{_HF_LAYER}\.(layer_norm\d)", r"params/\1/encoder/layers/\2/\3"),
    *_layer_norm(r"(text_model|vision_model)\.(final_layer_norm|pre_layrnorm|post_layernorm)", r"params/\1/\2"),
    Rule(r"(visual|text)_projection\.weight", linear, target=r"params/\1_projection/kernel"),
    Rule(r"logit_scale", target="params/logit_scale"),
]
HF_IGNORE = [r".*position_ids"]


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.fullmatch(pattern, k))})


def _require(sd: Mapping[str, Any], keys, source: str) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise ConversionError(f"{source}: not a CLIP ViT state dict (missing {', '.join(missing)}); "
                              f"expected {EXPECTED}")


def infer_openai_config(sd: Mapping[str, np.ndarray], source: str) -> Dict[str, int]:
    """OpenAI `build_model`'s reading of a ViT state dict (heads = width // 64, as OpenAI)."""
    if "visual.layer1.0.conv1.weight" in sd:
        raise ConversionError(f"{source}: a ResNet CLIP (RN50/RN101/...); only ViT CLIP models are supported")
    _require(sd, ["visual.conv1.weight", "visual.positional_embedding", "visual.proj", "text_projection",
                  "positional_embedding", "token_embedding.weight", "ln_final.weight"], source)
    vw, patch = sd["visual.conv1.weight"].shape[0], sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    tw = sd["ln_final.weight"].shape[0]
    return dict(embed_dim=int(sd["text_projection"].shape[1]), image_resolution=int(patch * grid),
                vision_layers=_count(sd, r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight"),
                vision_width=int(vw), vision_heads=int(vw // 64), vision_patch_size=int(patch),
                context_length=int(sd["positional_embedding"].shape[0]),
                vocab_size=int(sd["token_embedding.weight"].shape[0]), transformer_width=int(tw),
                transformer_heads=int(tw // 64),
                transformer_layers=_count(sd, r"transformer\.resblocks\.(\d+)\.attn\.in_proj_weight"))


def infer_hf_config(sd: Mapping[str, np.ndarray], hf_cfg: Mapping[str, Any], source: str) -> Dict[str, int]:
    """A transformers CLIPModel state dict + its config.json (for the head counts; quick_gelu / eps 1e-5 required)."""
    emb = "vision_model.embeddings."
    _require(sd, [emb + "patch_embedding.weight", emb + "position_embedding.weight", "text_projection.weight",
                  "text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight"],
             source)
    text, vision = hf_cfg.get("text_config") or {}, hf_cfg.get("vision_config") or {}
    for name, sub in (("text_config", text), ("vision_config", vision)):
        act, eps = sub.get("hidden_act", "quick_gelu"), sub.get("layer_norm_eps", 1e-5)
        if act != "quick_gelu" or abs(eps - 1e-5) > 1e-12:
            raise ConversionError(f"{source}: {name} has hidden_act={act!r}, layer_norm_eps={eps}; OpenAI CLIP "
                                  f"(quick_gelu, 1e-5) expected")
    vw, patch = sd[emb + "patch_embedding.weight"].shape[0], sd[emb + "patch_embedding.weight"].shape[-1]
    grid = round((sd[emb + "position_embedding.weight"].shape[0] - 1) ** 0.5)
    tok = sd["text_model.embeddings.token_embedding.weight"]
    layer = r"{}_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.weight"
    return dict(embed_dim=int(sd["text_projection.weight"].shape[0]), image_resolution=int(patch * grid),
                vision_layers=_count(sd, layer.format("vision")), vision_width=int(vw),
                vision_heads=int(vision.get("num_attention_heads", vw // 64)), vision_patch_size=int(patch),
                context_length=int(sd["text_model.embeddings.position_embedding.weight"].shape[0]),
                vocab_size=int(tok.shape[0]), transformer_width=int(tok.shape[1]),
                transformer_heads=int(text.get("num_attention_heads", tok.shape[1] // 64)),
                transformer_layers=_count(sd, layer.format("text")))


def convert_state_dict(sd: Mapping[str, np.ndarray], *, source: str = "checkpoint", hf_cfg=None):
    """OpenAI (or, with `hf_cfg`, transformers) CLIP state dict -> (config, variables) for `ffclip_jax.models.clip.CLIP`."""
    if hf_cfg is not None:
        config = infer_hf_config(sd, hf_cfg, source)
        rules, ignore = HF_RULES, HF_IGNORE
    else:
        config = infer_openai_config(sd, source)
        rules, ignore = _openai_rules(), OPENAI_IGNORE
    variables = apply_rules(sd, rules, clip_model.expected_shapes(config), ignore=ignore, source=source)
    return config, variables


def _read_hf_dir(path: str):
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise CheckpointError(f"{path}: a directory without config.json; expected {EXPECTED}")
    with open(cfg_file) as f:
        hf_cfg = json.load(f)
    safetensors, torch_bin = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(safetensors):
        sd = load_file(safetensors)
    elif os.path.isfile(torch_bin):
        sd = common.state_dict(common.load_dict(torch_bin), torch_bin)
    else:
        raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin (a sharded or Flax-only "
                              f"transformers directory is not supported); expected {EXPECTED}")
    return sd, hf_cfg


def read_input(path: str):
    """(flat state dict, transformers config or None) of any supported input."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _read_hf_dir(path)
    if is_torchscript(path):
        return load_torchscript_state_dict(path), None
    try:
        ckpt = common.load_dict(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; expected {EXPECTED}") from None
    except (IndexError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:  # torch.load on random bytes
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__} while unpickling); "
                              f"expected {EXPECTED}") from None
    common.refuse_other_kinds(ckpt, NAME, path)
    inner = ckpt.get("state_dict")
    sd = common.state_dict(inner if isinstance(inner, Mapping) else ckpt, path)
    is_hf = any(k.startswith("text_model.") for k in sd)
    return sd, ({} if is_hf else None)


def recognise(ckpt: Mapping[str, Any]) -> bool:
    """An OpenAI CLIP state dict (text_projection / visual.proj) or a transformers CLIPModel one (text_model.*)."""
    keys = common.inner_keys(ckpt)
    return bool({"text_projection", "visual.proj"} & set(keys)) or any(k.startswith("text_model.") for k in keys)


def convert(input, output, *, force: bool = False) -> None:
    sd, hf_cfg = read_input(input)
    config, variables = convert_state_dict(sd, source=str(input), hf_cfg=hf_cfg)
    save_clip(output, config, variables, extra={"source": str(input)}, overwrite=force)
    print(f"wrote {NAME} (ViT width {config['vision_width']}, patch {config['vision_patch_size']}, "
          f"{config['image_resolution']}px, embed {config['embed_dim']}) to {output}")
