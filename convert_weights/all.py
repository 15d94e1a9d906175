"""Convert every upstream checkpoint found in a folder into one weights directory:

    python -m convert_weights all --from pretrained_models/ --output weights/ffhq [--force]

Files are recognised by content (`common.detect_kind`), not by name: StyleGAN2, e4e/pSp, the FFCLIP release, CLIP
(TorchScript archive, state dict or a transformers CLIPModel folder), ArcFace, the face-parsing UNet and MoCo. Each
is converted by its own converter's `run` into a subdirectory; files that are not recognised are listed and skipped.
OUTPUT/manifest.json maps each network to its subdirectory (the layout `ffclip_jax.weights.resolve` reads):

    {"format": "ffclip-jax", "networks": {"generator": "generator", "e4e": "e4e", "mapper": "mapper", ...},
     "sources": {"mapper": {"file": "/abs/ffclip.pth", "model": "ffclip_mapper"}, ...}, "skipped": [...]}

FFCLIP (and latent_avg-less e4e) files get the generator's latent_avg from the StyleGAN2 file of the same folder.
The whole output is written atomically.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

from convert_weights import common
from ffclip_jax.errors import CheckpointError, FFCLIPError

NAME = "all"
HELP = "every recognised checkpoint in a folder -> one weights directory with manifest.json"
MANIFEST = "manifest.json"

# converter (= detected kind) -> network name in the manifest (= its subdirectory); also the conversion order:
# the generator first, since e4e and FFCLIP files may need its latent_avg.
NETWORK = {"stylegan2": "generator", "e4e": "e4e", "ffclip": "mapper", "clip": "clip", "arcface": "arcface",
           "parsenet": "parsenet", "moco": "moco"}
# files without latent_avg take it from a generator converted before them (in this order of preference)
LATENT_AVG_FROM = {"e4e": ("generator",), "ffclip": ("generator", "e4e/generator")}
HF_CLIP_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def add_arguments(parser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="FOLDER",
                        help="folder of upstream checkpoints (searched recursively; names do not matter)")
    parser.add_argument("--e4e-input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="photo size the e4e encoder expects (default: 192 256 for cars, else 256 256)")


def _is_hf_clip_dir(path: str) -> bool:
    try:
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("model_type") == "clip"
            and any(os.path.isfile(os.path.join(path, w)) for w in HF_CLIP_WEIGHTS))


def candidates(folder: str, exclude: str) -> List[str]:
    """Files under `folder` (sorted, hidden ones and `exclude` left out); a transformers CLIP folder counts as one."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.abspath(os.path.join(root, d)) != exclude)
        if root != folder and _is_hf_clip_dir(root):
            found.append(root)
            dirs[:] = []
            continue
        found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return found


def detect_file(path: str) -> Tuple[Optional[str], str, bool]:
    """(kind or None, why not recognised, whether the file holds a latent_avg) of one candidate."""
    from ffclip_jax.torch_io import is_torchscript, load_torchscript_state_dict

    if os.path.isdir(path):
        return "clip", "", False
    try:
        if is_torchscript(path):
            ckpt = load_torchscript_state_dict(path)
        else:
            ckpt = common.load_dict(path)
    except FFCLIPError as e:
        return None, str(e).replace(f"{path}: ", "", 1), False
    except Exception as e:  # torch.load of arbitrary bytes raises anything (pickle, zip, unicode errors)
        return None, f"not a PyTorch checkpoint ({type(e).__name__})", False
    kind = common.detect_kind(ckpt)
    why = "" if kind else "a checkpoint of no known model"
    return kind, why, ckpt.get("latent_avg") is not None


def _run_converter(kind: str, source: str, output: str, extra: List[str]) -> None:
    """The converter's own `run` with its own argument defaults (as `python -m convert_weights KIND ...`)."""
    import importlib

    from convert_weights.__main__ import build_parser

    module = importlib.import_module(f"convert_weights.{kind}")
    args = build_parser({kind: module}).parse_args([kind, "--input", source, "--output", output, *extra])
    module.run(args)


def run(args) -> None:
    from tqdm import tqdm

    from ffclip_jax import pretrained

    folder = os.path.abspath(args.source)
    if not os.path.isdir(folder):
        raise CheckpointError(f"--from {args.source}: no such folder")
    output = os.path.abspath(args.output)
    found: Dict[str, Tuple[str, bool]] = {}
    skipped = []
    for path in tqdm(candidates(folder, output), desc="recognising", unit="file"):
        kind, why, has_latent_avg = detect_file(path)
        if kind is None:
            skipped.append({"file": path, "reason": why})
        elif kind in found:
            raise CheckpointError(f"{folder}: two {kind} checkpoints ({found[kind][0]} and {path}); keep one "
                                  f"domain's files per folder")
        else:
            found[kind] = (path, has_latent_avg)
    for s in skipped:
        print(f"skipped {s['file']}: {s['reason']}")
    if not found:
        raise CheckpointError(f"--from {args.source}: no recognised checkpoint among {len(skipped)} file(s) "
                              f"(expected StyleGAN2, e4e, FFCLIP, CLIP, ArcFace, parsenet or MoCo files)")

    networks, sources = {}, {}
    with pretrained.atomic_output_dir(output, args.force) as tmp:
        for kind, network in NETWORK.items():
            if kind not in found:
                continue
            path, has_latent_avg = found[kind]
            extra = []
            if kind == "e4e" and args.e4e_input_size:
                extra += ["--input-size", *map(str, args.e4e_input_size)]
            if kind in LATENT_AVG_FROM and not has_latent_avg:
                generator = next((os.path.join(tmp, d) for d in LATENT_AVG_FROM[kind]
                                  if os.path.isdir(os.path.join(tmp, d))), None)
                extra += ["--latent-avg-from", generator] if generator else []
            print(f"converting {path} ({kind}) -> {os.path.join(args.output, network)}")
            _run_converter(kind, path, os.path.join(tmp, network), extra)
            networks[network] = network
            sources[network] = {"file": path, "model": pretrained.read_meta(os.path.join(tmp, network))["model"]}
        if "generator" not in networks:  # the generator embedded in an FFCLIP or e4e file
            embedded = next((f"{n}/generator" for n in ("mapper", "e4e")
                             if os.path.isdir(os.path.join(tmp, n, "generator"))), None)
            if embedded:
                networks["generator"] = embedded
                sources["generator"] = dict(sources[embedded.split("/")[0]], model="stylegan2")
        manifest = {"format": pretrained.FORMAT, "networks": networks, "sources": sources, "skipped": skipped}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
    wrote = ", ".join(f"{n} ({sources[n]['model']})" for n in networks)
    print(f"wrote {wrote} and {MANIFEST} to {args.output}")
