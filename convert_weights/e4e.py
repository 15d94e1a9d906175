"""e4e / pSp checkpoint (`{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg', 'opts'}`) -> ffclip-jax
directory: DIR holds the encoder (model 'e4e' for Encoder4Editing, 'psp' for GradualStyleEncoder) with latent_avg,
DIR/generator the decoder StyleGAN2 (through the stylegan2 converter). """
from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, Optional

import numpy as np

from convert_weights import common
from convert_weights.irse import BACKBONE_IGNORE, BACKBONE_RULES, backbone_config
from convert_weights.mapping import Rule, apply_rules
from convert_weights.stylegan2 import convert_state_dict as convert_generator
from ffclip_jax.errors import CheckpointError, ConversionError
from ffclip_jax.models import e4e
from ffclip_jax.models.stylegan2 import n_latent as latents_of_size
from convert_weights.torch_io import ensure_loaded, placeholder_name

NAME = "e4e"
HELP = "e4e / pSp encoder checkpoint (encoder, latent_avg and decoder generator) -> Flax"

ENCODER_MODELS = {"Encoder4Editing": "e4e", "GradualStyleEncoder": "psp"}
CARS_INPUT_SIZE, DEFAULT_INPUT_SIZE = (192, 256), (256, 256)


def _opts(ckpt: Mapping[str, Any]) -> Dict[str, Any]:
    opts = ckpt.get("opts")
    if opts is None or placeholder_name(opts) is not None:
        return {}
    return dict(opts) if isinstance(opts, Mapping) else dict(vars(opts))


def _split(sd: Mapping[str, np.ndarray], source: str):
    parts: Dict[str, Dict[str, np.ndarray]] = {"encoder": {}, "decoder": {}}
    other = []
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        if head in parts:
            parts[head][rest] = v
        else:
            other.append(k)
    if other or not parts["encoder"] or not parts["decoder"]:
        raise CheckpointError(f"{source}: expected only encoder.* and decoder.* keys (pSp layout), found "
                              f"{len(parts['encoder'])} encoder, {len(parts['decoder'])} decoder and {len(other)} "
                              f"other keys{' (' + ', '.join(sorted(other)[:3]) + ')' if other else ''}")
    return parts["encoder"], parts["decoder"]


def encoder_config(enc: Mapping[str, np.ndarray], opts: Mapping[str, Any], source: str, *,
                   input_size=None) -> Dict[str, Any]:
    """Encoder config: backbone depth/mode, stylegan_size from the number of style blocks, style_dim, input size
    (cars 192x256 by opts.dataset_type, else 256x256) and start_from_latent_avg (opts, default True)."""
    n_latent = len({int(m.group(1)) for k in enc if (m := re.match(r"styles\.(\d+)\.", k))})
    if n_latent < 2 or n_latent % 2:
        raise ConversionError(f"{source}: {n_latent} style blocks (encoder.styles.N); expected 2*log2(size)-2 "
                              f"(18 for 1024, 16 for 512, 14 for 256)")
    size = 2 ** ((n_latent + 2) // 2)
    if "stylegan_size" in opts and int(opts["stylegan_size"]) != size:
        raise ConversionError(f"{source}: opts.stylegan_size is {opts['stylegan_size']} but the encoder has "
                              f"{n_latent} style blocks (stylegan_size {size})")
    if input_size is None:
        input_size = CARS_INPUT_SIZE if "car" in str(opts.get("dataset_type", "")).lower() else DEFAULT_INPUT_SIZE
    return dict(backbone_config(enc, source), stylegan_size=size,
                style_dim=int(enc["styles.0.linear.weight"].shape[0]), input_size=[int(s) for s in input_size],
                start_from_latent_avg=bool(opts.get("start_from_latent_avg", True)))


def latent_avg_for(raw: Optional[np.ndarray], n_latent: int, style_dim: int, source: str) -> np.ndarray:
    """Checkpoint latent_avg (style_dim,), (1, style_dim) or (n_latent, style_dim) -> (n_latent, style_dim)."""
    a = np.asarray(raw, np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != style_dim or a.shape[0] not in (1, n_latent):
        raise ConversionError(f"{source}: latent_avg has shape {np.shape(raw)}; expected ({style_dim},) or "
                              f"({n_latent}, {style_dim})")
    return np.ascontiguousarray(np.broadcast_to(a, (n_latent, style_dim)))


def convert_encoder(enc: Mapping[str, np.ndarray], latent_avg: np.ndarray, config: Dict[str, Any],
                    encoder_type: str, source: str):
    """encoder.* state dict (prefix removed) + latent_avg (n_latent, style_dim) -> Flax variables of
    `ffclip_jax.models.e4e.<encoder_type>`."""
    module = getattr(e4e, encoder_type)(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    h, w = config["input_size"]
    expected = common.image_model_shapes(module, h, w)
    sd = dict(enc, latent_avg=latent_avg)
    return apply_rules(sd, BACKBONE_RULES + [Rule(r"latent_avg", target="buffers/latent_avg")], expected,
                   ignore=BACKBONE_IGNORE, source=source)


def add_arguments(parser) -> None:
    parser.add_argument("--latent-avg-from", metavar="GENERATOR_DIR",
                        help="take latent_avg from this converted stylegan2 directory when the file has none")
    parser.add_argument("--encoder-type", choices=sorted(ENCODER_MODELS),
                        help="override opts.encoder_type (default: from the file's opts, else Encoder4Editing)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="photo size the encoder expects (default: 192 256 for cars, else 256 256)")


def recognise(ckpt: Mapping[str, Any]) -> bool:
    """A pSp/e4e checkpoint: `state_dict` with encoder.* keys (and no FFCLIP mapper keys)."""
    keys = common.string_keys(ckpt.get("state_dict"))
    return any(k.startswith("encoder.") for k in keys) and not any("att_mapper." in k for k in keys)


def convert(input, output, *, force: bool = False, latent_avg_from: Optional[str] = None,
            encoder_type: Optional[str] = None, input_size=None) -> None:
    path = input
    ckpt = common.load_dict(path)
    common.refuse_other_kinds(ckpt, NAME, path)
    if "state_dict" not in ckpt:
        found = ", ".join(sorted(str(k) for k in ckpt)[:8])
        raise CheckpointError(f"{path}: no 'state_dict' entry (found: {found}); expected a pSp/e4e checkpoint "
                              f"{{'state_dict': {{'encoder.*', 'decoder.*'}}, 'latent_avg', 'opts'}}")
    enc, dec = _split(common.state_dict(ckpt["state_dict"], f"{path}[state_dict]"), f"{path}[state_dict]")
    opts = _opts(ckpt)
    encoder_type = encoder_type or opts.get("encoder_type", "Encoder4Editing")
    if encoder_type not in ENCODER_MODELS:
        raise ConversionError(f"{path}: opts.encoder_type {encoder_type!r} is not supported; expected one of "
                              f"{', '.join(ENCODER_MODELS)}")
    model = ENCODER_MODELS[encoder_type]
    config = encoder_config(enc, opts, f"{path}[encoder]", input_size=input_size)
    n_latent = latents_of_size(config["stylegan_size"])
    if ckpt.get("latent_avg") is not None:
        raw = ensure_loaded(ckpt["latent_avg"], f"{path}[latent_avg]")
    elif latent_avg_from:
        raw = common.read_latent_avg(latent_avg_from)
    elif config["start_from_latent_avg"]:
        raise CheckpointError(f"{path}: no 'latent_avg' entry, which e4e adds to every code; pass --latent-avg-from "
                              f"GENERATOR_DIR (a converted stylegan2 directory of the same generator)")
    else:
        raw = np.zeros((config["style_dim"],), np.float32)
    latent_avg = latent_avg_for(raw, n_latent, config["style_dim"], f"{path}[latent_avg]")

    gen_config, gen_vars = convert_generator(dec, latent_avg[0], source=f"{path}[decoder]")
    if gen_config["size"] != config["stylegan_size"] or gen_config["style_dim"] != config["style_dim"]:
        raise ConversionError(f"{path}: the decoder is a {gen_config['size']}px generator with style_dim "
                              f"{gen_config['style_dim']} but the encoder predicts {n_latent} styles of "
                              f"{config['style_dim']} (stylegan_size {config['stylegan_size']})")
    variables = convert_encoder(enc, latent_avg, config, encoder_type, f"{path}[encoder]")
    extra = {"encoder_type": encoder_type, "n_latent": n_latent, "dataset_type": str(opts.get("dataset_type", ""))}
    common.save(path, output, model, config, variables, force=force, generator=(gen_config, gen_vars), extra=extra)
    print(f"wrote {model} ({encoder_type}, {n_latent} styles, input {config['input_size'][0]}x"
          f"{config['input_size'][1]}) to {output} and its {gen_config['size']}px generator to "
          f"{os.path.join(output, common.GENERATOR_SUBDIR)}")
