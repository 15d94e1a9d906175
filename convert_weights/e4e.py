"""e4e / pSp checkpoint (`{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg', 'opts'}`) -> ffclip-jax
directory: DIR holds the encoder (model 'e4e' for Encoder4Editing, 'psp' for GradualStyleEncoder) with latent_avg,
DIR/generator the decoder StyleGAN2 (through the stylegan2 converter). Also home of the IR-SE backbone rules that the
ArcFace converter reuses."""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, Optional

import numpy as np

from convert_weights import common
from convert_weights.mapping import Rule, conv, convert, linear
from convert_weights.stylegan2 import convert_state_dict as convert_generator
from ffclip_jax.errors import CheckpointError, ConversionError
from ffclip_jax.irse import STAGE_UNITS

NAME = "e4e"
HELP = "e4e / pSp encoder checkpoint (encoder, latent_avg and decoder generator) -> Flax"

ENCODER_MODELS = {"Encoder4Editing": "e4e", "GradualStyleEncoder": "psp"}
CARS_INPUT_SIZE, DEFAULT_INPUT_SIZE = (192, 256), (256, 256)


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


def _opts(ckpt: Mapping[str, Any]) -> Dict[str, Any]:
    opts = ckpt.get("opts")
    if opts is None:
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
    n_styles = len({int(m.group(1)) for k in enc if (m := re.match(r"styles\.(\d+)\.", k))})
    if n_styles < 2 or n_styles % 2:
        raise ConversionError(f"{source}: {n_styles} style blocks (encoder.styles.N); expected 2*log2(size)-2 "
                              f"(18 for 1024, 16 for 512, 14 for 256)")
    size = 2 ** ((n_styles + 2) // 2)
    if "stylegan_size" in opts and int(opts["stylegan_size"]) != size:
        raise ConversionError(f"{source}: opts.stylegan_size is {opts['stylegan_size']} but the encoder has "
                              f"{n_styles} style blocks (stylegan_size {size})")
    if input_size is None:
        input_size = CARS_INPUT_SIZE if "car" in str(opts.get("dataset_type", "")).lower() else DEFAULT_INPUT_SIZE
    return dict(backbone_config(enc, source), stylegan_size=size,
                style_dim=int(enc["styles.0.linear.weight"].shape[0]), input_size=[int(s) for s in input_size],
                start_from_latent_avg=bool(opts.get("start_from_latent_avg", True)))


def latent_avg_from(directory: str, source: str) -> np.ndarray:
    """latent_avg (style_dim,) of a converted stylegan2 directory."""
    from ffclip_jax import pretrained

    meta = pretrained.read_meta(directory)
    if meta["model"] != "stylegan2":
        raise CheckpointError(f"--latent-avg-from {directory}: holds model '{meta['model']}', expected a converted "
                              f"stylegan2 generator directory")
    variables = pretrained.restore_variables(os.path.join(directory, pretrained.VARIABLES_DIR))
    return np.asarray(variables["buffers"]["latent_avg"], np.float32)


def latent_avg_for(raw: Optional[np.ndarray], n_styles: int, style_dim: int, source: str) -> np.ndarray:
    """Checkpoint latent_avg (style_dim,), (1, style_dim) or (n_styles, style_dim) -> (n_styles, style_dim)."""
    a = np.asarray(raw, np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != style_dim or a.shape[0] not in (1, n_styles):
        raise ConversionError(f"{source}: latent_avg has shape {np.shape(raw)}; expected ({style_dim},) or "
                              f"({n_styles}, {style_dim})")
    return np.ascontiguousarray(np.broadcast_to(a, (n_styles, style_dim)))


def convert_encoder(enc: Mapping[str, np.ndarray], latent_avg: np.ndarray, config: Dict[str, Any],
                    encoder_type: str, source: str):
    """encoder.* state dict (prefix removed) + latent_avg (n_styles, style_dim) -> Flax variables of
    `ffclip_jax.e4e.<encoder_type>`."""
    from ffclip_jax import e4e

    module = getattr(e4e, encoder_type)(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    h, w = config["input_size"]
    expected = common.image_model_shapes(module, h, w)
    sd = dict(enc, latent_avg=latent_avg)
    return convert(sd, BACKBONE_RULES + [Rule(r"latent_avg", target="buffers/latent_avg")], expected,
                   ignore=BACKBONE_IGNORE, source=source)


def add_arguments(parser) -> None:
    parser.add_argument("--latent-avg-from", metavar="GENERATOR_DIR",
                        help="take latent_avg from this converted stylegan2 directory when the file has none")
    parser.add_argument("--encoder-type", choices=sorted(ENCODER_MODELS),
                        help="override opts.encoder_type (default: from the file's opts, else Encoder4Editing)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="photo size the encoder expects (default: 192 256 for cars, else 256 256)")


def run(args) -> None:
    from ffclip_jax import pretrained

    path = args.input
    ckpt = common.load_dict(path)
    common.refuse_other_kinds(ckpt, NAME, path)
    if "state_dict" not in ckpt:
        found = ", ".join(sorted(str(k) for k in ckpt)[:8])
        raise CheckpointError(f"{path}: no 'state_dict' entry (found: {found}); expected a pSp/e4e checkpoint "
                              f"{{'state_dict': {{'encoder.*', 'decoder.*'}}, 'latent_avg', 'opts'}}")
    enc, dec = _split(common.state_dict(ckpt["state_dict"], f"{path}[state_dict]"), f"{path}[state_dict]")
    opts = _opts(ckpt)
    encoder_type = args.encoder_type or opts.get("encoder_type", "Encoder4Editing")
    if encoder_type not in ENCODER_MODELS:
        raise ConversionError(f"{path}: opts.encoder_type {encoder_type!r} is not supported; expected one of "
                              f"{', '.join(ENCODER_MODELS)}")
    model = ENCODER_MODELS[encoder_type]
    config = encoder_config(enc, opts, f"{path}[encoder]", input_size=args.input_size)
    n_styles = 2 * int(np.log2(config["stylegan_size"])) - 2
    if ckpt.get("latent_avg") is not None:
        raw = ckpt["latent_avg"]
    elif args.latent_avg_from:
        raw = latent_avg_from(args.latent_avg_from, path)
    elif config["start_from_latent_avg"]:
        raise CheckpointError(f"{path}: no 'latent_avg' entry, which e4e adds to every code; pass --latent-avg-from "
                              f"GENERATOR_DIR (a converted stylegan2 directory of the same generator)")
    else:
        raw = np.zeros((config["style_dim"],), np.float32)
    latent_avg = latent_avg_for(raw, n_styles, config["style_dim"], f"{path}[latent_avg]")

    gen_config, gen_vars = convert_generator(dec, latent_avg[0], source=f"{path}[decoder]")
    if gen_config["size"] != config["stylegan_size"] or gen_config["style_dim"] != config["style_dim"]:
        raise ConversionError(f"{path}: the decoder is a {gen_config['size']}px generator with style_dim "
                              f"{gen_config['style_dim']} but the encoder predicts {n_styles} styles of "
                              f"{config['style_dim']} (stylegan_size {config['stylegan_size']})")
    variables = convert_encoder(enc, latent_avg, config, encoder_type, f"{path}[encoder]")
    extra = {"source": str(path), "encoder_type": encoder_type, "n_styles": n_styles,
             "dataset_type": str(opts.get("dataset_type", ""))}
    with pretrained.atomic_output_dir(args.output, args.force) as tmp:
        pretrained.write_model_dir(tmp, model, config, variables, extra=extra)
        os.makedirs(os.path.join(tmp, "generator"))
        pretrained.write_model_dir(os.path.join(tmp, "generator"), "stylegan2", gen_config, gen_vars,
                                   extra={"source": str(path), "from": "decoder"})
    print(f"wrote {model} ({encoder_type}, {n_styles} styles, input {config['input_size'][0]}x"
          f"{config['input_size'][1]}) to {args.output} and its {gen_config['size']}px generator to "
          f"{os.path.join(args.output, 'generator')}")
