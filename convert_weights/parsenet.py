"""HairCLIP / FFCLIP face-parsing UNet (`parsenet.pth`: a bare state dict of `unet()`) -> ffclip-jax `parsenet`
directory."""
from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from convert_weights import common
from convert_weights.mapping import Rule, conv, conv_transpose, apply_rules
from ffclip_jax.errors import ConversionError
from ffclip_jax.models.parsenet import BASE_FILTERS, UNet

NAME = "parsenet"
HELP = "face-parsing UNet of the background loss (parsenet.pth) -> Flax"

RULES = [
    Rule(r".*\.conv[12]\.0\.weight", conv),
    Rule(r"final\.weight", conv),
    Rule(r"up_concat\d\.up\.weight", conv_transpose),
    Rule(r"(.*\.conv[12]\.[01]|up_concat\d\.up|final)\.bias"),
    Rule(r".*\.conv[12]\.1\.weight"),
    Rule(r".*\.running_(mean|var)", collection="batch_stats"),
]
IGNORE = [r".*\.num_batches_tracked"]


def infer_config(sd: Mapping[str, np.ndarray], source: str) -> Dict[str, Any]:
    """feature_scale, n_classes and is_batchnorm read off a `unet` state dict."""
    if "conv1.conv1.0.weight" not in sd or "final.weight" not in sd:
        raise ConversionError(f"{source}: not a face-parsing UNet state dict (no conv1.conv1.0.weight / final.weight)")
    first = int(sd["conv1.conv1.0.weight"].shape[0])
    if first == 0 or BASE_FILTERS[0] % first:
        raise ConversionError(f"{source}: conv1.conv1.0.weight has {first} filters; expected 64 / feature_scale")
    return dict(feature_scale=BASE_FILTERS[0] // first, n_classes=int(sd["final.weight"].shape[0]),
                is_batchnorm="conv1.conv1.1.weight" in sd)


def convert_state_dict(sd: Mapping[str, np.ndarray], *, source: str = "checkpoint"):
    """`unet` state dict -> (config, variables) for `ffclip_jax.models.parsenet.UNet`."""
    config = infer_config(sd, source)
    model = UNet(**config)
    expected = common.image_model_shapes(model, 16)
    return config, apply_rules(sd, RULES, expected, ignore=IGNORE, source=source)


def recognise(ckpt: Mapping[str, Any]) -> bool:
    """A bare `unet()` state dict: conv1.conv1.* or up_concat* keys."""
    return any(k.startswith(("conv1.conv1.", "up_concat")) for k in common.inner_keys(ckpt))


def convert(input, output, *, force: bool = False) -> None:
    ckpt = common.load_dict(input)
    common.refuse_other_kinds(ckpt, NAME, input)
    config, variables = convert_state_dict(common.state_dict(ckpt, str(input)), source=str(input))
    common.save(input, output, NAME, config, variables, force=force)
    print(f"wrote {NAME} (feature_scale {config['feature_scale']}, {config['n_classes']} classes) to {output}")
