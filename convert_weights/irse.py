"""Key rules of the IR / IR-SE backbone (`input_layer`, `body.N.*`) shared by the e4e/pSp and ArcFace converters
(not a sub-command of its own)."""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping

import numpy as np

from convert_weights.mapping import Rule, conv, linear
from ffclip_jax.errors import ConversionError
from ffclip_jax.models.irse import STAGE_UNITS


def torch_weight(a: np.ndarray) -> np.ndarray:
    """Any torch `weight` by rank: conv (out, in, kh, kw) -> HWIO, linear (out, in) -> (in, out), 1D as is."""
    return conv(a) if a.ndim == 4 else linear(a) if a.ndim == 2 else a


# Plain torch.nn layers (Conv2d, BatchNorm, PReLU, Linear) and EqualLinear, named after their keys.
BACKBONE_RULES = [
    Rule(r".*\.weight", torch_weight),
    Rule(r".*\.bias"),
    Rule(r".*\.running_(mean|var)", collection="batch_stats"),
]
BACKBONE_IGNORE = [r".*\.num_batches_tracked"]


def backbone_config(sd: Mapping[str, np.ndarray], source: str) -> Dict[str, Any]:
    """num_layers and mode ('ir' / 'ir_se') of an IR backbone, read off its `body.N.*` keys."""
    units = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k))}
    by_units = {sum(v): depth for depth, v in STAGE_UNITS.items()}
    if len(units) not in by_units:
        raise ConversionError(f"{source}: {len(units)} body units; expected "
                              f"{', '.join(f'{n} (depth {d})' for n, d in by_units.items())}")
    mode = "ir_se" if any(re.fullmatch(r"body\.\d+\.res_layer\.5\.fc1\.weight", k) for k in sd) else "ir"
    return dict(num_layers=by_units[len(units)], mode=mode)
