"""MoCo v2 checkpoint (`moco_v2_800ep_pretrain.pth.tar`: `{'state_dict': {'module.encoder_q.*', 'module.encoder_k.*',
'module.queue', ...}, 'optimizer', 'epoch', 'arch'}`) -> ffclip-jax `moco` directory (torchvision ResNet-50 without
fc, the query encoder). A bare torchvision ResNet state dict converts too."""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping

import numpy as np

from convert_weights import common
from convert_weights.mapping import Rule, conv, apply_rules
from ffclip_jax.errors import ConversionError
from ffclip_jax.models.moco import ResNet50

NAME = "moco"
HELP = "MoCo v2 ResNet-50 query encoder (moco_v2_800ep_pretrain.pth.tar) -> Flax"
PREFIX = "module.encoder_q."

BLOCK = r"(layer\d\.\d+\.)?"  # the stem has no block prefix
RULES = [
    Rule(BLOCK + r"(conv\d|downsample\.0)\.weight", conv),
    Rule(BLOCK + r"(bn\d|downsample\.1)\.(weight|bias)"),
    Rule(BLOCK + r"(bn\d|downsample\.1)\.running_(mean|var)", collection="batch_stats"),
]
# the projection head, the momentum (key) encoder and the queue are not part of the feature extractor
IGNORE = [r".*\.num_batches_tracked", r"fc\..*", r"module\.encoder_k\..*", r"module\.queue(_ptr)?"]


def infer_config(sd: Mapping[str, np.ndarray], source: str) -> Dict[str, Any]:
    """width (stem channels) and blocks per stage read off a (prefix-stripped) ResNet state dict."""
    if "conv1.weight" not in sd:
        raise ConversionError(f"{source}: not a ResNet state dict (no {PREFIX}conv1.weight or conv1.weight)")
    stages = [len({m.group(1) for k in sd if (m := re.fullmatch(rf"layer{i}\.(\d+)\.conv1\.weight", k))})
              for i in range(1, 5)]
    return dict(stage_sizes=stages, width=int(sd["conv1.weight"].shape[0]))


def convert_state_dict(sd: Mapping[str, np.ndarray], *, source: str = "checkpoint"):
    """MoCo / torchvision state dict -> (config, variables) for `ffclip_jax.models.moco.ResNet50`."""
    sd = common.strip_prefix(sd, PREFIX)
    config = infer_config(sd, source)
    model = ResNet50(stage_sizes=tuple(config["stage_sizes"]), width=config["width"])
    expected = common.image_model_shapes(model, 32)
    return config, apply_rules(sd, RULES, expected, ignore=IGNORE, source=source)


def recognise(ckpt: Mapping[str, Any]) -> bool:
    """MoCo's DataParallel keys `module.encoder_q.*`, at the top level or under `state_dict`."""
    keys = common.string_keys(ckpt) + common.inner_keys(ckpt)
    return any(k.startswith(PREFIX) for k in keys)


def convert(input, output, *, force: bool = False) -> None:
    ckpt = common.load_dict(input)
    common.refuse_other_kinds(ckpt, NAME, input)
    where = f"{input}[state_dict]" if "state_dict" in ckpt else str(input)
    sd = common.state_dict(ckpt.get("state_dict", ckpt), where)
    config, variables = convert_state_dict(sd, source=where)
    common.save(input, output, NAME, config, variables, force=force)
    print(f"wrote {NAME} (ResNet stages {config['stage_sizes']}, width {config['width']}) to {output}")
