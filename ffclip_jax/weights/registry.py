"""The one network registry: every model a converted directory can hold, what builds it, which converter writes it,
and the role of its network in training and editing. `pretrained.load`, `convert_weights all`, the trainer's
config checks and the editor's weights directories all read this table.

Adding a network: one `Entry` here (plus its Flax module under `ffclip_jax/models/`) and its converter file
`convert_weights/<converter>.py` (NAME, HELP, `recognise(ckpt)`, `convert(input, output, *, force, **options)`).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Dict, Tuple

from ffclip_jax.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Entry:
    """One model name of `model.json`.

    target: "module:attr", a Flax module class (built as cls(**config)) or a loader `fn(directory, meta) ->
    (module, variables)`. converter: the `convert_weights` sub-command that writes it. network: its name in weights
    manifests, in `config.weights.<network>` and in `convert_weights all`'s output. trained_with / edits_with: whether
    training loads it as a frozen network (config.weights) / whether the editor loads it. convert_options: the
    converter's other required options, for the conversion hint."""
    model: str
    target: str
    converter: str
    network: str
    description: str
    upstream_file: str
    trained_with: bool = False
    edits_with: bool = False
    convert_options: str = ""

    def resolve(self):
        module, attr = self.target.split(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def convert_hint(self) -> str:
        options = f" {self.convert_options}" if self.convert_options else ""
        return f"ffclip convert {self.converter} --input {self.upstream_file}{options} --output DIR"


ENTRIES: Tuple[Entry, ...] = (
    Entry("stylegan2", "ffclip_jax.models.stylegan2:Generator", "stylegan2", "generator", "StyleGAN2 generator",
          "stylegan2-ffhq-config-f.pt", trained_with=True, edits_with=True),
    Entry("e4e", "ffclip_jax.models.e4e:Encoder4Editing", "e4e", "e4e", "e4e encoder", "e4e_ffhq_encode.pt",
          edits_with=True),
    Entry("psp", "ffclip_jax.models.e4e:GradualStyleEncoder", "e4e", "e4e", "pSp encoder", "psp_ffhq_encode.pt",
          edits_with=True),
    Entry("ffclip_mapper", "ffclip_jax.models.mapper:DynamicMapper", "ffclip", "mapper", "FFCLIP mapper",
          "ffhq_ffclip.pt", edits_with=True),
    Entry("clip", "ffclip_jax.weights.clip_dir:load_clip", "clip", "clip", "CLIP model", "ViT-B-32.pt",
          trained_with=True, edits_with=True),
    Entry("arcface", "ffclip_jax.models.arcface:Backbone", "arcface", "arcface", "ArcFace network",
          "model_ir_se50.pth", trained_with=True),
    Entry("parsenet", "ffclip_jax.models.parsenet:UNet", "parsenet", "parsenet", "face-parsing network",
          "parsenet.pth", trained_with=True),
    Entry("moco", "ffclip_jax.models.moco:ResNet50", "moco", "moco", "MoCo network", "moco_v2_800ep_pretrain.pth.tar",
          trained_with=True),
    # LPIPS v0.1 (the refinement stage's perceptual loss): a torchvision backbone file plus the lpips heads file
    Entry("lpips_alex", "ffclip_jax.models.lpips:LPIPS", "lpips", "lpips_alex", "LPIPS (AlexNet) network",
          "alexnet-owt-7be5be79.pth", convert_options="--heads alex.pth"),
    Entry("lpips_vgg", "ffclip_jax.models.lpips:LPIPS", "lpips", "lpips_vgg", "LPIPS (VGG16) network",
          "vgg16-397923af.pth", convert_options="--heads vgg.pth"),
)
MODELS: Dict[str, Entry] = {e.model: e for e in ENTRIES}
# network -> the model names its directory may hold, in registry order (also the conversion order of `all`)
NETWORKS: Dict[str, Tuple[str, ...]] = {}
for _e in ENTRIES:
    NETWORKS[_e.network] = NETWORKS.get(_e.network, ()) + (_e.model,)
# converters in registry order (the generator first: e4e and FFCLIP files may need its latent_avg)
CONVERTERS: Tuple[str, ...] = tuple(dict.fromkeys(e.converter for e in ENTRIES))
# converter -> the networks it writes, in registry order (lpips writes lpips_alex or lpips_vgg)
CONVERTER_NETWORKS: Dict[str, Tuple[str, ...]] = {}
for _e in ENTRIES:
    CONVERTER_NETWORKS[_e.converter] = tuple(dict.fromkeys(CONVERTER_NETWORKS.get(_e.converter, ()) + (_e.network,)))
TRAINED_NETWORK = "mapper"  # what training produces
# frozen networks of training (generator, CLIP, the loss networks)
TRAINING_NETWORKS: Tuple[str, ...] = tuple(dict.fromkeys(e.network for e in ENTRIES if e.trained_with))
# `config.weights` fields: every network but the trained one; a training export's manifest names those that are set
WEIGHTS_NETWORKS: Tuple[str, ...] = tuple(dict.fromkeys(e.network for e in ENTRIES if e.network != TRAINED_NETWORK))


def entry(model: str) -> Entry:
    if model not in MODELS:
        raise CheckpointError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    return MODELS[model]


def network_entry(network: str) -> Entry:
    """The first entry of a network (its description and conversion hint)."""
    return MODELS[NETWORKS[network][0]]


def network_of(model: str) -> str:
    return entry(model).network
