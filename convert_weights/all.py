"""Convert every upstream checkpoint found in a folder into one weights directory:

    ffclip convert all --from pretrained_models/ --output weights/ffhq [--force]

Files are recognised by content, not by name (each converter's `recognise`, asked in registry order): StyleGAN2,
e4e/pSp, the FFCLIP release, CLIP (TorchScript archive, state dict or a transformers CLIPModel folder), ArcFace, the
face-parsing UNet, MoCo, and LPIPS's two files (a torchvision AlexNet/VGG16 and the lpips heads file of the same
backbone, paired by content: converters with a `part(ckpt)` say which network and which `convert` argument a file
fills). Each is converted by its converter's `convert` into the subdirectory named after its network (`lpips_alex`,
`lpips_vgg` for LPIPS); files that are not recognised, and a backbone or heads file without its partner, are listed
and skipped. OUTPUT/manifest.json maps each network to its
subdirectory, relative to the manifest, so the directory can be moved or copied (`ffclip_jax.weights.resolve`):

    {"format": "ffclip-jax", "networks": {"generator": "generator", "e4e": "e4e", "mapper": "mapper", ...},
     "generators": {"e4e": "generator", "mapper": "generator"},
     "sources": {"mapper": {"file": "/abs/ffclip.pth", "model": "ffclip_mapper"},
                 "lpips_alex": {"file": "/abs/alexnet-owt-7be5be79.pth", "heads": "/abs/alex.pth", ...}, ...},
     "skipped": [...]}

Each network is stored once: the generators inside e4e and FFCLIP files that equal the StyleGAN2 generator (array by
array) are not written again, and `generators` says which generator each composite file carried (its own
subdirectory when it differs). Without a StyleGAN2 file, the first embedded generator becomes `generator/`. FFCLIP
(and latent_avg-less e4e) files get latent_avg from `generator/`. The whole output is written atomically.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from convert_weights import common
from convert_weights.torch_io import is_torchscript, load_torchscript_state_dict
from ffclip_jax.errors import CheckpointError, FFCLIPError
from ffclip_jax.weights import pretrained, registry
from ffclip_jax.weights.manifest import MANIFEST, write_manifest

NAME = "all"
HELP = "every recognised checkpoint in a folder -> one weights directory with manifest.json"
HF_CLIP_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
GENERATOR = "generator"


def add_arguments(parser) -> None:
    parser.add_argument("--from", dest="input", required=True, metavar="FOLDER",
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


def _detect(path: str) -> Tuple[Optional[str], str, bool, Optional[Tuple[str, str]]]:
    """`detect_file` plus, for the converters that take several files (a `part` function: lpips), the (network,
    convert() argument) the file fills."""
    if os.path.isdir(path):
        return "clip", "", False, None
    try:
        ckpt = load_torchscript_state_dict(path) if is_torchscript(path) else common.load_dict(path)
    except FFCLIPError as e:
        return None, str(e).replace(f"{path}: ", "", 1), False, None
    except Exception as e:  # torch.load of arbitrary bytes raises anything (pickle, zip, unicode errors)
        return None, f"not a PyTorch checkpoint ({type(e).__name__})", False, None
    kind = common.recognise(ckpt)
    if kind is None:
        return None, "a checkpoint of no known model", False, None
    part = None
    if hasattr(common.converter(kind), "part"):
        try:
            part = common.converter(kind).part(ckpt)
        except FFCLIPError as e:
            return None, str(e), False, None
    return kind, "", ckpt.get("latent_avg") is not None, part


def detect_file(path: str) -> Tuple[Optional[str], str, bool]:
    """(converter or None, why not recognised, whether the file holds a latent_avg) of one candidate."""
    return _detect(path)[:3]


def _find(folder: str, output: str):
    """({converter: (file, has latent_avg)}, {converter: {network: {convert() argument: file}}} for the converters
    that pair several files (complete pairs only), skipped [{file, reason}]) of the folder's candidates."""
    found: Dict[str, Tuple[str, bool]] = {}
    parts: Dict[str, Dict[str, Dict[str, str]]] = {}
    skipped = []
    for path in tqdm(candidates(folder, output), desc="recognising", unit="file"):
        kind, why, has_latent_avg, part = _detect(path)
        if kind is None:
            skipped.append({"file": path, "reason": why})
        elif part is not None:
            network, option = part
            files = parts.setdefault(kind, {}).setdefault(network, {})
            if option in files:
                raise CheckpointError(f"{folder}: {files[option]} and {path} are both the "
                                      f"{common.converter(kind).describe_part(network, option)}; keep one per folder")
            files[option] = path
        elif kind in found:
            raise CheckpointError(f"{folder}: two {kind} checkpoints ({found[kind][0]} and {path}); keep one "
                                  f"domain's files per folder")
        else:
            found[kind] = (path, has_latent_avg)
    for kind, networks in parts.items():  # a file whose partner is missing is skipped, saying which file is missing
        module = common.converter(kind)
        for network, files in list(networks.items()):
            lacking = [option for option in module.PARTS if option not in files]
            if lacking:
                del networks[network]
                for option, path in files.items():
                    skipped.append({"file": path, "reason": f"{module.describe_part(network, option)}, but no "
                                    f"{' and no '.join(module.describe_part(network, o) for o in lacking)} in the "
                                    f"folder"})
    return found, {k: v for k, v in parts.items() if v}, skipped


def _share_generator(tmp: str, network: str) -> str:
    """Store the generator converted inside `network`'s file once: moved to generator/ when there is none yet,
    dropped when equal to generator/; returns the manifest path of the generator it carried."""
    embedded = os.path.join(tmp, network, common.GENERATOR_SUBDIR)
    shared = os.path.join(tmp, GENERATOR)
    if not os.path.isdir(embedded):
        return ""
    if not os.path.isdir(shared):
        os.rename(embedded, shared)
        return GENERATOR
    if pretrained.same_model(embedded, shared):
        shutil.rmtree(embedded)
        return GENERATOR
    print(f"note: the generator inside the {network} file differs from {GENERATOR}/; kept as "
          f"{network}/{common.GENERATOR_SUBDIR}")
    return f"{network}/{common.GENERATOR_SUBDIR}"


def convert(input, output, *, force: bool = False, e4e_input_size=None) -> None:
    folder, output = os.path.abspath(input), os.path.abspath(output)
    if not os.path.isdir(folder):
        raise CheckpointError(f"--from {input}: no such folder")
    found, parts, skipped = _find(folder, output)
    for s in skipped:
        print(f"skipped {s['file']}: {s['reason']}")
    if not found and not parts:
        raise CheckpointError(f"--from {input}: no recognised checkpoint among {len(skipped)} file(s) (expected "
                              f"{', '.join(e.description for e in registry.ENTRIES)} files)")

    networks, sources, generators = {}, {}, {}
    with pretrained.atomic_output_dir(output, force) as tmp:
        for kind in registry.CONVERTERS:  # the generator first: others may need its latent_avg
            for network in registry.CONVERTER_NETWORKS[kind]:  # lpips: a backbone file and its heads file
                if network not in parts.get(kind, {}):
                    continue
                files = parts[kind][network]
                others = {option: path for option, path in files.items() if option != "input"}
                print(f"converting {', '.join(files.values())} ({kind}) -> {os.path.join(output, network)}")
                common.converter(kind).convert(files["input"], os.path.join(tmp, network), **others)
                networks[network] = network
                sources[network] = {"file": files["input"], **others,
                                    "model": pretrained.read_meta(os.path.join(tmp, network))["model"]}
            if kind not in found:
                continue
            path, has_latent_avg = found[kind]
            network, module = registry.CONVERTER_NETWORKS[kind][0], common.converter(kind)
            takes = inspect.signature(module.convert).parameters
            options = {}
            if "input_size" in takes and e4e_input_size:
                options["input_size"] = e4e_input_size
            if "latent_avg_from" in takes and not has_latent_avg and os.path.isdir(os.path.join(tmp, GENERATOR)):
                options["latent_avg_from"] = os.path.join(tmp, GENERATOR)
            print(f"converting {path} ({kind}) -> {os.path.join(output, network)}")
            module.convert(path, os.path.join(tmp, network), **options)
            networks[network] = network
            sources[network] = {"file": path, "model": pretrained.read_meta(os.path.join(tmp, network))["model"]}
            carried = _share_generator(tmp, network)
            if carried:
                generators[network] = carried
                networks.setdefault(GENERATOR, GENERATOR)
                sources.setdefault(GENERATOR, dict(sources[network], model="stylegan2"))
        write_manifest(tmp, networks, generators=generators, sources=sources, skipped=skipped)
    wrote = ", ".join(f"{n} ({sources[n]['model']})" for n in networks)
    print(f"wrote {wrote} and {MANIFEST} to {output}")
