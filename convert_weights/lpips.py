"""LPIPS v0.1 (the `lpips` 0.1.4 package) from its two upstream files -> one ffclip-jax `lpips_alex` / `lpips_vgg`
directory (`ffclip_jax.models.lpips.LPIPS`):

    ffclip convert lpips --backbone-file alexnet-owt-7be5be79.pth --heads alex.pth --output weights/lpips-alex
    ffclip convert lpips --backbone-file vgg16-397923af.pth --heads vgg.pth --output weights/lpips-vgg

The backbone file is torchvision's ImageNet state dict (`features.<i>.weight/bias`; `classifier.*` is ignored), its
architecture recognised from which `features` indices hold convs; the heads file is the package's
`lpips/weights/v0.1/{alex,vgg}.pth` (`lin<k>.model.1.weight`, (1, C_k, 1, 1)), its backbone recognised from the
channels. A heads file of the other backbone is refused. `--input` is the same option as `--backbone-file`.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from convert_weights import common
from convert_weights.mapping import Rule, apply_rules, conv
from ffclip_jax.errors import CheckpointError, ConversionError
from ffclip_jax.models.lpips import BACKBONES, LPIPS

NAME = "lpips"
HELP = ("LPIPS v0.1: torchvision AlexNet/VGG16 (alexnet-owt-7be5be79.pth, vgg16-397923af.pth) + the lpips heads "
        "(weights/v0.1/alex.pth, vgg.pth) -> Flax")
INPUT_ALIASES = ("--backbone-file",)
# the files of each backbone, for messages: torchvision's download name, the heads' path in the lpips package
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
HEADS_FILES = {"alex": "lpips/weights/v0.1/alex.pth", "vgg": "lpips/weights/v0.1/vgg.pth"}
TORCHVISION_NAMES = {"alex": "AlexNet", "vgg": "VGG16"}
# what `convert_weights all` pairs: convert()'s arguments, each filled by one file that `part` assigns
PARTS = ("input", "heads")

BACKBONE_RULES = [
    Rule(r"features\.(\d+)\.weight", conv, r"params/features/\1/weight"),
    Rule(r"features\.(\d+)\.bias", target=r"params/features/\1/bias"),
]
BACKBONE_IGNORE = [r"classifier\..*"]  # ImageNet classifier: not part of LPIPS
HEADS_RULES = [Rule(r"lin(\d+)\.model\.1\.weight", conv, r"params/lin\1/weight")]
CONV_KEY = re.compile(r"features\.(\d+)\.weight")
HEAD_KEY = re.compile(r"lin(\d+)\.model\.1\.weight")


def network_name(backbone: str) -> str:
    """The model / network name of a converted LPIPS directory: 'lpips_alex', 'lpips_vgg'."""
    return f"lpips_{backbone}"


def backbone_of(keys) -> Optional[str]:
    """'alex' / 'vgg' when the `features.<i>.weight` indices are exactly torchvision's alexnet / vgg16 convs."""
    convs = tuple(sorted(int(m.group(1)) for k in keys if (m := CONV_KEY.fullmatch(k))))
    return next((name for name, spec in BACKBONES.items() if convs == spec.conv_indices), None)


def is_heads(keys) -> bool:
    """Only `lin<k>.model.1.weight` keys: an lpips heads file (of any backbone)."""
    return bool(keys) and all(HEAD_KEY.fullmatch(k) for k in keys)


def heads_backbone(sd: Mapping[str, np.ndarray], source: str) -> str:
    """The backbone whose tapped channels are the heads' input channels; a one-line error naming the missing head
    or the channels otherwise."""
    present = {int(m.group(1)): np.shape(v) for k, v in sd.items() if (m := HEAD_KEY.fullmatch(k))}
    fits = [name for name, spec in BACKBONES.items()
            if all(k < len(spec.channels) and shape == (1, spec.channels[k], 1, 1) for k, shape in present.items())]
    complete = [name for name in fits if len(present) == len(BACKBONES[name].channels)]
    if complete:
        return complete[0]
    if fits:
        spec = BACKBONES[fits[0]]
        missing = [f"lin{k}.model.1.weight (1, {c}, 1, 1)" for k, c in enumerate(spec.channels) if k not in present]
        raise ConversionError(f"{source}: missing {', '.join(missing)} of the {' or '.join(fits)} heads")
    shapes = ", ".join(f"lin{k} {present[k]}" for k in sorted(present))
    known = "; ".join(f"{name} {spec.channels}" for name, spec in BACKBONES.items())
    raise ConversionError(f"{source}: LPIPS heads {shapes} fit no supported backbone (expected (1, C, 1, 1) for C in "
                          f"{known}: the package's weights/v0.1/alex.pth or vgg.pth)")


def missing_convs(keys) -> str:
    """For `features.*` keys that are not a complete backbone: which conv weights a torchvision alexnet / vgg16
    lacks (the one whose conv indices include all present), else ''."""
    convs = {int(m.group(1)) for k in keys if (m := CONV_KEY.fullmatch(k))}
    for name, spec in BACKBONES.items():
        if convs and convs < set(spec.conv_indices):
            lacking = ", ".join(f"features.{i}.weight" for i in spec.conv_indices if i not in convs)
            return f"missing {lacking} of torchvision's {TORCHVISION_NAMES[name]}"
    return ""


def recognise(ckpt: Mapping[str, Any]) -> bool:
    """Either LPIPS file: torchvision's alexnet / vgg16 state dict, or an lpips heads file."""
    keys = common.string_keys(ckpt)
    return backbone_of(keys) is not None or is_heads(keys)


def part(ckpt: Mapping[str, Any]) -> Tuple[str, str]:
    """(network, convert() argument) of a recognised file: ('lpips_alex', 'input') for torchvision's AlexNet,
    ('lpips_vgg', 'heads') for the VGG heads, ...; how `convert_weights all` pairs the files of a folder."""
    keys = common.string_keys(ckpt)
    backbone = backbone_of(keys)
    if backbone is not None:
        return network_name(backbone), "input"
    return network_name(heads_backbone(common.state_dict(ckpt, "heads"), "heads file")), "heads"


def describe_part(network: str, option: str) -> str:
    backbone = network[len("lpips_"):]
    if option == "input":
        return f"torchvision {TORCHVISION_NAMES[backbone]} file ({BACKBONE_FILES[backbone]})"
    return f"LPIPS {backbone} heads file ({HEADS_FILES[backbone]})"


EXPECTED_BACKBONE = ("torchvision's alexnet or vgg16 state dict, features.<i>.weight at "
                     + " or ".join(str(s.conv_indices) for s in BACKBONES.values()))
EXPECTED_HEADS = "an lpips heads file with lin<k>.model.1.weight keys"


def _read(path, what: str, expected: str) -> Tuple[Dict[str, np.ndarray], Tuple[str, ...]]:
    """(flat state dict, top-level keys) of either LPIPS file, refusing files of other models."""
    ckpt = common.load_dict(path)
    common.refuse_other_kinds(ckpt, NAME, path)
    keys = common.string_keys(ckpt)
    if not recognise(ckpt):
        found = ", ".join(sorted(keys)[:3]) or "none"
        raise CheckpointError(f"{path}: {missing_convs(keys) or f'not {what}'} (expected {expected}; found keys "
                              f"{found})")
    return common.state_dict(ckpt, str(path)), keys


def convert_state_dicts(backbone_sd: Mapping[str, np.ndarray], heads_sd: Mapping[str, np.ndarray], backbone: str, *,
                        backbone_source: str = "backbone", heads_source: str = "heads"):
    """The two state dicts -> (config, variables) for `LPIPS(backbone)`; strict (every key consumed or ignored,
    every parameter filled, shapes checked)."""
    module = LPIPS(backbone)
    x = jnp.zeros((1, module.min_size, module.min_size, 3))
    params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, x))["params"]
    features = apply_rules(backbone_sd, BACKBONE_RULES, {"params": {"features": params["features"]}},
                           ignore=BACKBONE_IGNORE, source=backbone_source)
    heads = apply_rules(heads_sd, HEADS_RULES, {"params": {k: v for k, v in params.items() if k != "features"}},
                        source=heads_source)
    return {"backbone": backbone}, {"params": {**features["params"], **heads["params"]}}


def convert(input, output, *, force: bool = False, heads: Optional[str] = None) -> None:
    if not heads:
        raise CheckpointError("lpips: --heads FILE is required (the lpips package's weights/v0.1/alex.pth or vgg.pth)")
    backbone_sd, keys = _read(input, "a torchvision backbone", EXPECTED_BACKBONE)
    backbone = backbone_of(keys)
    if backbone is None:
        raise CheckpointError(f"{input}: an lpips heads file, not a torchvision backbone; pass it as --heads and the "
                              f"torchvision file ({' or '.join(BACKBONE_FILES.values())}) as --backbone-file")
    heads_sd, head_keys = _read(heads, "an lpips heads file", EXPECTED_HEADS)
    if not is_heads(head_keys):
        raise CheckpointError(f"--heads {heads}: a torchvision {TORCHVISION_NAMES[backbone_of(head_keys)]} "
                              f"backbone, not an lpips heads file ({' or '.join(HEADS_FILES.values())})")
    heads_for = heads_backbone(heads_sd, str(heads))
    if heads_for != backbone:
        raise CheckpointError(f"--heads {heads}: LPIPS heads of the {heads_for} backbone, but {input} is torchvision's "
                              f"{TORCHVISION_NAMES[backbone]}; use {HEADS_FILES[backbone]}")
    config, variables = convert_state_dicts(backbone_sd, heads_sd, backbone, backbone_source=str(input),
                                            heads_source=str(heads))
    name = network_name(backbone)
    common.save(input, output, name, config, variables, force=force, extra={"heads": str(heads)})
    print(f"wrote {name} (LPIPS v0.1, {TORCHVISION_NAMES[backbone]} backbone) to {output}")


def add_arguments(parser) -> None:
    parser.add_argument("--heads", required=True, metavar="FILE",
                        help="the lpips package's weights/v0.1/alex.pth or vgg.pth (matching the backbone)")
