"""InsightFace ArcFace checkpoint (`model_ir_se50.pth`: a plain state dict with input_layer.*, body.*,
output_layer.*) -> ffclip-jax `arcface` directory (`ffclip_jax.arcface.Backbone`)."""
from __future__ import annotations

from convert_weights import common
from convert_weights.e4e import BACKBONE_IGNORE, BACKBONE_RULES, backbone_config
from convert_weights.mapping import convert
from ffclip_jax.errors import CheckpointError, ConversionError

NAME = "arcface"
HELP = "InsightFace ArcFace IR/IR-SE backbone (model_ir_se50.pth) -> Flax"


def convert_state_dict(sd, source: str = "checkpoint"):
    """ArcFace state dict -> (config, variables): depth and mode from body.*, input size from the output Linear."""
    from ffclip_jax.arcface import Backbone

    if "output_layer.3.weight" not in sd:
        raise ConversionError(f"{source}: no output_layer.3.weight (the Linear(512*7*7, 512)); expected an "
                              f"InsightFace Backbone state dict")
    spatial = round((sd["output_layer.3.weight"].shape[1] / 512) ** 0.5)
    config = dict(backbone_config(sd, source), input_size=16 * spatial)
    module = Backbone(**config)
    s = config["input_size"]
    expected = common.image_model_shapes(module, s)
    return config, convert(sd, BACKBONE_RULES, expected, ignore=BACKBONE_IGNORE, source=source)


def run(args) -> None:
    ckpt = common.load_dict(args.input)
    common.refuse_other_kinds(ckpt, NAME, args.input)
    if isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    sd = common.state_dict(ckpt, args.input)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if common.detect_kind(sd) != NAME:
        raise CheckpointError(f"{args.input}: not an ArcFace backbone (expected input_layer.*, body.*, "
                              f"output_layer.* keys, found {', '.join(sorted(sd)[:3]) or 'none'})")
    config, variables = convert_state_dict(sd, source=str(args.input))
    common.save_converted(args, NAME, config, variables)
    print(f"wrote {NAME} ({config['mode']}{config['num_layers']}, input {config['input_size']}) to {args.output}")
