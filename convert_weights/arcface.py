"""InsightFace ArcFace checkpoint (`model_ir_se50.pth`: a plain state dict with input_layer.*, body.*,
output_layer.*) -> ffclip-jax `arcface` directory (`ffclip_jax.models.arcface.Backbone`)."""
from __future__ import annotations

from typing import Any, Mapping

from convert_weights import common
from convert_weights.irse import BACKBONE_IGNORE, BACKBONE_RULES, backbone_config
from convert_weights.mapping import apply_rules
from ffclip_jax.errors import CheckpointError, ConversionError
from ffclip_jax.models.arcface import Backbone

NAME = "arcface"
HELP = "InsightFace ArcFace IR/IR-SE backbone (model_ir_se50.pth) -> Flax"


def convert_state_dict(sd, source: str = "checkpoint"):
    """ArcFace state dict -> (config, variables): depth and mode from body.*, input size from the output Linear."""
    if "output_layer.3.weight" not in sd:
        raise ConversionError(f"{source}: no output_layer.3.weight (the Linear(512*7*7, 512)); expected an "
                              f"InsightFace Backbone state dict")
    spatial = round((sd["output_layer.3.weight"].shape[1] / 512) ** 0.5)
    config = dict(backbone_config(sd, source), input_size=16 * spatial)
    module = Backbone(**config)
    s = config["input_size"]
    expected = common.image_model_shapes(module, s)
    return config, apply_rules(sd, BACKBONE_RULES, expected, ignore=BACKBONE_IGNORE, source=source)


def recognise(ckpt: Mapping[str, Any]) -> bool:
    """An InsightFace Backbone state dict (possibly DataParallel-prefixed or under `state_dict`): body.* beside
    output_layer.*."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in common.inner_keys(ckpt)]
    return any(k.startswith("output_layer.") for k in keys) and any(k.startswith("body.") for k in keys)


def convert(input, output, *, force: bool = False) -> None:
    ckpt = common.load_dict(input)
    common.refuse_other_kinds(ckpt, NAME, input)
    if not recognise(ckpt):
        found = ", ".join(sorted(common.inner_keys(ckpt))[:3]) or "none"
        raise CheckpointError(f"{input}: not an ArcFace backbone (expected input_layer.*, body.*, output_layer.* "
                              f"keys, found {found})")
    inner = ckpt.get("state_dict")
    sd = common.strip_prefix(common.state_dict(inner if isinstance(inner, dict) else ckpt, str(input)))
    config, variables = convert_state_dict(sd, source=str(input))
    common.save(input, output, NAME, config, variables, force=force)
    print(f"wrote {NAME} ({config['mode']}{config['num_layers']}, input {config['input_size']}) to {output}")
