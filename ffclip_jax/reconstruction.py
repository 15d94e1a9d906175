"""The reconstruction report (`ffclip evaluate --reconstruction PHOTOS`): how well each inversion keeps a photo and
how editable it stays. Inversions: e4e; e4e + W+ optimisation (`refine.refine_w_plus` from the e4e code, LPIPS-VGG);
e4e + PTI (`refine.refine_pti` around the e4e code, LPIPS-alex), GANInverter's `--embed_mode e4e --refine_mode ...`.

    nets, variables = load_networks(weights)       # LPIPS-alex, LPIPS-VGG, ArcFace (one-line errors when missing)
    chunks = photo_chunks(editor, files)            # Photos of batch_size photos: targets at the generator's size
    run = reconstruct(editor, nets, variables, chunks, prompts=["blue hair"], steps=100)
    report = build_report(run, meta)
    write_report("recon/", report)                  # report.json, report.md, reconstruction.png [, edits.png]

Per photo and inversion (`RECON_METRICS`), on images clipped to [-1, 1]: `mse` (images mapped to [0, 1]) and `psnr`
(`metrics.psnr`) and both LPIPS, all on the images area-averaged to EVAL_SIZE when larger (GANInverter evaluates at
256), `identity` = cos(ArcFace(photo), ArcFace(reconstruction)) (`metrics.arcface_features`), and the wall seconds per
image of the whole inversion (e4e plus the refinement; compilation included: a first run is slower). Per (prompt,
photo) and inversion (`EDIT_METRICS`), the mapper's edit of the inversion's code rendered with its generator (PTI:
the photo's tuned one): `clip_score` of the edit, `clip_score_delta` (edit minus the inversion's reconstruction),
`identity_photo` (edit vs photo) and `identity_source` (edit vs reconstruction).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ffclip_jax import inputs, metrics, refine
from ffclip_jax.align import align_images
from ffclip_jax.errors import CheckpointError, InputError
from ffclip_jax.fileio import atomic_output_dir
from ffclip_jax.nn import image_ops
from ffclip_jax.pipeline import encoder_input, none_readable, to_unit_range
from ffclip_jax.report import format_stats, json_values, label_scatter, pyplot, save_figure, summary_stats
from ffclip_jax.weights import pretrained, registry
from ffclip_jax.weights.manifest import WeightsDir

INVERSIONS = ("e4e", "w_plus", "pti")
INVERSION_LABELS = {"e4e": "e4e", "w_plus": "e4e + W+", "pti": "e4e + PTI"}
RECON_METRICS = ("mse", "psnr", "lpips_alex", "lpips_vgg", "identity", "seconds")
EDIT_METRICS = ("clip_score", "clip_score_delta", "identity_photo", "identity_source")
LABELS = {"mse": "MSE", "psnr": "PSNR (dB)", "lpips_alex": "LPIPS-alex", "lpips_vgg": "LPIPS-VGG", "identity": "ID",
          "seconds": "s / image", "clip_score": "CLIP score", "clip_score_delta": "Δ CLIP",
          "identity_photo": "ID edit/photo", "identity_source": "ID edit/recon."}
FORMATS = {"mse": ".4f", "psnr": ".2f", "seconds": ".2f"}  # others ".3f"
EVAL_SIZE = 256  # GANInverter's scripts/test.py resizes both images to 256 x 256 before MSE, PSNR and LPIPS
NETWORKS = ("lpips_alex", "lpips_vgg", "arcface")
JSON_FILE, MARKDOWN_FILE, RECON_PLOT, EDIT_PLOT = "report.json", "report.md", "reconstruction.png", "edits.png"

# caopulan/GANInverter README, "Benchmark" (CelebA-HQ test split, 2,824 images, 1024 px FFHQ StyleGAN2); their
# scripts/test.py: MSE of images in [-1, 1] at 256 px (4x ours, which maps them to [0, 1]) and PSNR 10 log10(2 / MSE)
# per image (ours - 3.01 dB); its README says LPIPS-VGG ("LPIPS version: VGG"), its test.py builds
# LPIPS(net_type='alex')
GANINVERTER = (
    {"method": "e4e", "psnr": 16.6616, "mse": 0.0472, "lpips": 0.1974, "id": 0.50, "fid": 28.4952},
    {"method": "Optimization-W+", "psnr": 20.5940, "mse": 0.0242, "lpips": 0.1092, "id": 0.77, "fid": 17.0812},
    {"method": "PTI (W-pivot, no regularisation)", "psnr": 24.6004, "mse": 0.0082, "lpips": 0.0820, "id": None,
     "fid": None},
)

REFERENCE_FORMATS = {"psnr": ".4f", "mse": ".4f", "lpips": ".4f", "id": ".2f", "fid": ".4f"}  # as published


@dataclasses.dataclass
class Photos:
    """The photos of a report: `targets` (N, S, S, 3) float32 in [-1, 1] at the generator's size S (what the
    refinements fit and the metrics compare with), `encoder_inputs` (N, H, W, 3) (e4e's view of the same image),
    `sources` (the files kept), `skipped` [(file, one-line reason)]."""
    targets: np.ndarray
    encoder_inputs: np.ndarray
    sources: List[str]
    skipped: List[Tuple[str, str]]


def _photo_at(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def read_photo(editor, file: str) -> Tuple[np.ndarray, np.ndarray]:
    """(target (S, S, 3), encoder input (H, W, 3)), both float32 in [-1, 1], of one photo (`inputs.read_image`): with
    the Editor's face predictor its largest face FFHQ-aligned once at the generator's size S (QUAD transform at 4 S,
    FFHQ's 1024 / 4096), else the photo resized to S x S (PIL bilinear); the encoder input is that image through
    e4e's preprocessing (`encoder_input`). An unreadable photo or one without a face is an InputError."""
    size = editor.generator[0].size
    image = inputs.read_image(file)
    if editor.predictor is not None:
        aligned, _ = align_images([image], editor.predictor, size, transform_size=4 * size)
        if not aligned:
            raise InputError(f"{file}: no face found")
        image = aligned[0]
    image = _photo_at(image, size)
    return to_unit_range(image), encoder_input(image, editor.input_size)


def photo_chunks(editor, files: Sequence[str], size: Optional[int] = None) -> Iterator[Photos]:
    """The readable photos of `files` (`read_photo`) as Photos of `size` photos each (default the Editor's batch
    size; the last may be smaller), read as they are needed; each chunk lists the files skipped since the previous
    one (unreadable, no face). No photo kept at all is an InputError (after the last file)."""
    h, w = editor.input_size
    if h != w:
        raise InputError(f"the reconstruction report needs a square encoder input, the e4e encoder takes {h}x{w}")
    size = size or editor.batch_size
    targets, encoded, sources, skipped = [], [], [], []
    kept = 0
    for f in files:
        try:
            target, x = read_photo(editor, f)
        except InputError as e:
            skipped.append((f, str(e)))
            continue
        targets.append(target)
        encoded.append(x)
        sources.append(f)
        if len(sources) == size:
            kept += size
            yield Photos(np.stack(targets), np.stack(encoded), sources, skipped)
            targets, encoded, sources, skipped = [], [], [], []
    if sources:
        yield Photos(np.stack(targets), np.stack(encoded), sources, skipped)
    elif not kept:
        raise none_readable(len(files), skipped, editor.predictor is not None)
    elif skipped:  # files skipped after the last full chunk: an empty chunk carries them
        yield Photos(np.zeros((0,)), np.zeros((0,)), [], skipped)


@dataclasses.dataclass(frozen=True)
class ScoringNetworks:
    """LPIPS-alex, LPIPS-VGG and ArcFace modules (hashable: the jit key); their variables travel separately."""
    lpips_alex: Any
    lpips_vgg: Any
    arcface: Any


def missing_network(weights: WeightsDir, name: str) -> CheckpointError:
    """The one-line error for a scoring network the weights directory lacks: which, and how to convert it."""
    entry = registry.network_entry(name)
    return CheckpointError(f"weights directory {weights.root} has no {entry.description} ({name}): needed for the "
                           f"reconstruction report; convert it with `{entry.convert_hint}` and add it to "
                           f"manifest.json's networks as {name!r} (or rerun `ffclip convert all`)")


def load_networks(weights: WeightsDir) -> Tuple[ScoringNetworks, Dict[str, Any]]:
    """(ScoringNetworks, {name: variables}) from the weights directory's manifest; a missing one is a one-line error
    naming it and its conversion (`missing_network`)."""
    for name in NETWORKS:
        if not weights.has(name):
            raise missing_network(weights, name)
    loaded = {name: pretrained.load(weights.path(name, "the reconstruction report")) for name in NETWORKS}
    return ScoringNetworks(**{n: m for n, (m, _) in loaded.items()}), {n: v for n, (_, v) in loaded.items()}


# ---- per-image scores (pure, jitted) ----------------------------------------------------------------------------

def eval_view(x, size: int = EVAL_SIZE):
    """Images clipped to [-1, 1] and area-averaged (adaptive average pooling) to `size` when larger."""
    x = jnp.clip(x, -1.0, 1.0)
    return image_ops.adaptive_avg_pool2d(x, size) if x.shape[1] > size else x


def unit_mse(x, y):
    """Mean squared error per image of images in [-1, 1] mapped to [0, 1]: (B, H, W, 3) x 2 -> (B,)."""
    return jnp.mean(jnp.square((x - y) / 2.0), axis=(1, 2, 3))


def reconstruction_scores(variables: Mapping[str, Any], photo, recon, *, nets: ScoringNetworks) -> Dict[str, Any]:
    """RECON_METRICS but seconds, per image: photo, recon (B, S, S, 3) -> {metric: (B,)}; also the ArcFace features
    of both (`arcface_photo`, `arcface_recon`) for the edit scores."""
    a, b = eval_view(photo), eval_view(recon)
    mse = unit_mse(a, b)
    out = {"mse": mse, "psnr": metrics.psnr(mse),
           "lpips_alex": nets.lpips_alex.apply(variables["lpips_alex"], a, b),
           "lpips_vgg": nets.lpips_vgg.apply(variables["lpips_vgg"], a, b),
           "arcface_photo": metrics.arcface_features((nets.arcface, variables["arcface"]), photo),
           "arcface_recon": metrics.arcface_features((nets.arcface, variables["arcface"]), recon)}
    out["identity"] = jnp.sum(out["arcface_photo"] * out["arcface_recon"], axis=-1)
    return out


def edit_scores(variables: Mapping[str, Any], edit, recon, arcface_photo, arcface_recon, text, *,
                nets: ScoringNetworks, clip) -> Dict[str, Any]:
    """EDIT_METRICS per image: edit, recon (B, S, S, 3), the ArcFace features (B, 512) of the photo and the
    reconstruction, text embeddings (B, E) -> {metric: (B,)}."""
    score = metrics.clip_score(metrics.clip_image_features((clip, variables["clip"]), edit), text)
    source = metrics.clip_score(metrics.clip_image_features((clip, variables["clip"]), recon), text)
    f = metrics.arcface_features((nets.arcface, variables["arcface"]), edit)
    return {"clip_score": score, "clip_score_delta": score - source,
            "identity_photo": jnp.sum(f * arcface_photo, axis=-1), "identity_source": jnp.sum(f * arcface_recon, -1)}


_reconstruction_scores = jax.jit(reconstruction_scores, static_argnames="nets")
_edit_scores = jax.jit(edit_scores, static_argnames=("nets", "clip"))


# ---- the run ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Reconstruction:
    """What `reconstruct` measured, for the N photos kept (`sources`; `skipped` [(file, reason)]): `reconstruction`
    {inversion: {metric: (N,)}}, `edits` {inversion: {metric: (P, N)}} (empty without prompts), `refinement`
    {"w_plus" / "pti": {steps, converged, failed (N,), messages}}, `images` {inversion: (N, S, S, 3)} the
    reconstructions (with keep_images, else empty), `settings` the refinements' settings as dicts."""
    reconstruction: Dict[str, Dict[str, np.ndarray]]
    edits: Dict[str, Dict[str, np.ndarray]]
    refinement: Dict[str, Dict[str, Any]]
    images: Dict[str, np.ndarray]
    prompts: List[str]
    settings: Dict[str, Dict[str, Any]]
    sources: List[str]
    skipped: List[Tuple[str, str]]


def refinement_settings(steps: Optional[int] = None, w_plus: Optional[refine.WPlusSettings] = None,
                        pti: Optional[refine.PTISettings] = None
                        ) -> Tuple[refine.WPlusSettings, refine.PTISettings]:
    """The two refinements' settings (upstream defaults unless given), both with `steps` steps when set."""
    w_plus, pti = w_plus or refine.WPlusSettings(), pti or refine.PTISettings()
    if steps is not None:
        w_plus, pti = dataclasses.replace(w_plus, steps=steps), dataclasses.replace(pti, steps=steps)
    refine.check_settings(w_plus)
    refine.check_settings(pti)
    return w_plus, pti


def _summary(results: Sequence[Tuple[refine.Refinement, Sequence[str]]]) -> Dict[str, Any]:
    """The refinements of every chunk: steps, converged, failed (N,) and the messages, each naming its file."""
    return {"steps": np.concatenate([r.steps for r, _ in results]),
            "converged": np.concatenate([r.converged for r, _ in results]),
            "failed": np.concatenate([r.failed for r, _ in results]),
            "messages": [f"{', '.join(files)}: {m}" for r, files in results for m in r.messages]}


def reconstruct(editor, nets: ScoringNetworks, variables: Mapping[str, Any], photos: Union[Photos, Iterable[Photos]],
                *, prompts: Sequence[str] = (), strength: float = 1.0, steps: Optional[int] = None,
                w_plus: Optional[refine.WPlusSettings] = None, pti: Optional[refine.PTISettings] = None,
                seed: int = 0, progress: bool = True, keep_images: bool = False) -> Reconstruction:
    """Invert the photos three ways, score the reconstructions and, for each prompt (needs the Editor's mapper and
    CLIP), the edits of each inversion. editor: an `ffclip_jax.pipeline.Editor` with e4e and the generator; nets /
    variables: `load_networks`; photos: one Photos or chunks of them (`photo_chunks`: read as they are needed), split
    further into the Editor's batch size (the refinements run a chunk together); steps / w_plus / pti:
    `refinement_settings`; keep_images: keep the reconstructions (memory: N x S x S x 3 floats per inversion).
    Returns a `Reconstruction`."""
    w_plus, pti = refinement_settings(steps, w_plus, pti)
    prompts = inputs.prompts(prompts) if len(prompts) else []
    text = editor.text_embeddings(prompts) if prompts else None
    variables = editor.place(dict(variables, **({"clip": editor.clip[1]} if prompts else {})))
    scores: Dict[str, List[Dict[str, np.ndarray]]] = {k: [] for k in INVERSIONS}
    edits: Dict[str, List[Dict[str, np.ndarray]]] = {k: [] for k in INVERSIONS}
    images: Dict[str, List[np.ndarray]] = {k: [] for k in INVERSIONS}
    refined: Dict[str, List[Tuple[refine.Refinement, List[str]]]] = {"w_plus": [], "pti": []}
    sources: List[str] = []
    skipped: List[Tuple[str, str]] = []
    batch = editor.batch_size
    for chunk in [photos] if isinstance(photos, Photos) else photos:
        skipped += chunk.skipped
        for start in range(0, len(chunk.sources), batch):
            files = chunk.sources[start:start + batch]
            sources += files
            out = _chunk(editor, nets, variables, chunk.targets[start:start + batch],
                         chunk.encoder_inputs[start:start + batch], text, strength, w_plus, pti, seed, progress)
            for name in INVERSIONS:
                scores[name].append(out["scores"][name])
                if keep_images:
                    images[name].append(out["images"][name])
                if text is not None:
                    edits[name].append(out["edits"][name])
            for name in refined:
                refined[name].append((out["refinement"][name], files))
    if not sources:
        raise InputError("no photos to reconstruct")
    return Reconstruction(
        reconstruction={k: {mt: np.concatenate([p[mt] for p in scores[k]]).astype(np.float64) for mt in RECON_METRICS}
                        for k in INVERSIONS},
        edits={k: {mt: np.concatenate([p[mt] for p in edits[k]], axis=1) for mt in EDIT_METRICS}
               for k in INVERSIONS} if text is not None else {},
        refinement={k: _summary(v) for k, v in refined.items()},
        images={k: np.concatenate(v) for k, v in images.items()} if keep_images else {}, prompts=prompts,
        settings={"w_plus": dataclasses.asdict(w_plus), "pti": dataclasses.asdict(pti)}, sources=sources,
        skipped=skipped)


def _chunk(editor, nets: ScoringNetworks, variables, targets, encoder_inputs, text, strength, w_plus, pti, seed,
           progress) -> Dict[str, Any]:
    """One batch of photos: the three inversions (timed), their scores, images and (with text) edit scores, and the
    two refinement results."""
    G, gvars = editor.generator
    m = len(targets)
    t0 = time.perf_counter()
    codes = editor.invert_rows(encoder_inputs)
    e4e_images = editor.render_rows(codes)
    e4e_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    wr = refine.refine_w_plus((G, gvars), (nets.lpips_vgg, variables["lpips_vgg"]), codes, targets, w_plus, seed=seed,
                              progress=progress)
    w_images = editor.render_rows(wr.codes)
    w_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    pr = refine.refine_pti((G, gvars), (nets.lpips_alex, variables["lpips_alex"]), codes, targets, pti, seed=seed,
                           progress=progress)
    p_images = np.asarray(refine.render_tuned(G, pr.params, pr.buffers, codes))
    p_seconds = time.perf_counter() - t0
    inversions = {"e4e": (codes, e4e_images, e4e_seconds), "w_plus": (wr.codes, w_images, e4e_seconds + w_seconds),
                  "pti": (codes, p_images, e4e_seconds + p_seconds)}
    recon_fn = functools.partial(_reconstruction_scores, variables, nets=nets)
    out = {"scores": {}, "images": {}, "edits": {}, "refinement": {"w_plus": wr, "pti": pr}}
    for name, (code, recon, seconds) in inversions.items():
        scores = editor.run(recon_fn, [targets, recon])
        if text is not None:
            out["edits"][name] = _edits(editor, variables, nets, code, recon, scores, text, strength,
                                        pr if name == "pti" else None)
        out["scores"][name] = dict(scores, seconds=np.full((m,), seconds / m))
        out["images"][name] = recon
    return out


def _edits(editor, variables, nets: ScoringNetworks, codes, recon, scores, text, strength,
           tuned: Optional[refine.PTIResult]) -> Dict[str, np.ndarray]:
    """EDIT_METRICS (P, m) of one chunk's inversion: every prompt's edit of `codes`, rendered with the original
    generator or (PTI) each photo's tuned one."""
    m, p = len(codes), len(text)
    rows = np.repeat(codes, p, axis=0)  # photo-major: row i * p + j is photo i, prompt j
    edited = editor.map_rows(rows, np.tile(text, (m, 1)), strength)
    if tuned is None:
        edit_images = editor.render_rows(edited)
    else:
        G = editor.generator[0]
        edit_images = np.asarray(refine.render_tuned(G, tuned.params, tuned.buffers,
                                                     edited.reshape((m, p) + codes.shape[1:])))
        edit_images = edit_images.reshape((m * p,) + edit_images.shape[2:])
    rep = functools.partial(np.repeat, repeats=p, axis=0)
    fn = functools.partial(_edit_scores, variables, nets=nets, clip=editor.clip[0])
    out = editor.run(fn, [edit_images, rep(recon), rep(scores["arcface_photo"]), rep(scores["arcface_recon"]),
                          np.tile(text, (m, 1))])
    return {k: np.asarray(v, np.float64).reshape(m, p).T for k, v in out.items()}


# ---- the report -------------------------------------------------------------------------------------------------

def build_report(run: Reconstruction, meta: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON-able report: meta, photos (kept and skipped), the refinement settings and outcomes, per inversion the
    per-image values and their stats, per inversion and prompt the edits' stats (and overall), GANInverter's rows."""
    recon = {k: {"per_image": {mt: json_values(v) for mt, v in run.reconstruction[k].items()},
                 "stats": {mt: summary_stats(v) for mt, v in run.reconstruction[k].items()}} for k in INVERSIONS}
    edits = {}
    for k, values in run.edits.items():
        edits[k] = {"per_example": {mt: json_values(v) for mt, v in values.items()},
                    "per_prompt": [{"prompt": p, "stats": {mt: summary_stats(v[i]) for mt, v in values.items()}}
                                   for i, p in enumerate(run.prompts)],
                    "overall": {mt: summary_stats(v) for mt, v in values.items()}}
    refinement = {k: {"steps": v["steps"].tolist(), "converged": v["converged"].tolist(),
                      "failed": v["failed"].tolist(), "messages": list(v["messages"]), "settings": run.settings[k]}
                  for k, v in run.refinement.items()}
    return {"meta": dict(meta), "inversions": list(INVERSIONS), "labels": dict(INVERSION_LABELS),
            "reconstruction_metrics": list(RECON_METRICS), "edit_metrics": list(EDIT_METRICS) if edits else [],
            "photos": list(run.sources), "skipped": [list(s) for s in run.skipped], "prompts": run.prompts,
            "reconstruction": recon, "edits": edits, "refinement": refinement,
            "reference": {"source": "caopulan/GANInverter README, Benchmark (CelebA-HQ test, 2,824 images)",
                          "rows": [dict(r) for r in GANINVERTER]}}


def _fmt(stats, metric):
    return format_stats(stats, metric, FORMATS)


def markdown(report: Mapping[str, Any]) -> str:
    """report.md: the setup, the reconstruction table (one row per inversion), the edit tables (overall and per
    prompt), what the columns mean and GANInverter's published rows."""
    meta, labels = report["meta"], report["labels"]
    lines = ["# FFCLIP reconstruction report", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items() if not isinstance(v, (dict, list))]
    lines.append(f"- photos: {len(report['photos'])} (skipped {len(report['skipped'])})")
    for k, r in report["refinement"].items():
        lines.append(f"- {labels[k]}: {r['settings']['steps']} steps at most, mean "
                     f"{np.mean(r['steps']) if r['steps'] else 0:.1f} taken, {sum(r['converged'])} converged, "
                     f"{sum(r['failed'])} failed")
    metrics_ = report["reconstruction_metrics"]
    lines += ["", "## Reconstruction", "", "| inversion | " + " | ".join(LABELS[m] for m in metrics_) + " |",
              "|---|" + "---:|" * len(metrics_)]
    for k in report["inversions"]:
        stats = report["reconstruction"][k]["stats"]
        lines.append(f"| {labels[k]} | " + " | ".join(_fmt(stats[m], m) for m in metrics_) + " |")
    if report["edits"]:
        em = report["edit_metrics"]
        header = ["| inversion | " + " | ".join(LABELS[m] for m in em) + " |", "|---|" + "---:|" * len(em)]
        lines += ["", f"## Edits on each inversion (strength {meta.get('strength', 1.0)})", "", *header]
        for k in report["inversions"]:
            lines.append(f"| {labels[k]} | " + " | ".join(_fmt(report["edits"][k]["overall"][m], m) for m in em)
                         + " |")
        lines += ["", "### Per prompt", "", header[0].replace("| inversion |", "| prompt | inversion |"),
                  "|---" + header[1]]
        for i, prompt in enumerate(report["prompts"]):
            for k in report["inversions"]:
                stats = report["edits"][k]["per_prompt"][i]["stats"]
                lines.append(f"| {prompt} | {labels[k]} | " + " | ".join(_fmt(stats[m], m) for m in em) + " |")
    lines += ["", "Mean ± std over the photos (edits overall: over every photo and prompt). Images clipped to "
              f"[-1, 1]; MSE (images in [0, 1]), PSNR and LPIPS on both images area-averaged to {EVAL_SIZE} px when "
              "larger; ID: ArcFace cosine with the photo; s / image: wall time of the inversion (e4e + refinement, "
              "compilation included) per photo. Edits: the mapper on the inversion's code, rendered with its "
              "generator (PTI: the photo's tuned one); Δ CLIP: the edit's CLIP score minus the reconstruction's; "
              "ID edit/photo, edit/recon.: ArcFace cosines.", "",
              f"Reference for full-size models ({report['reference']['source']}; their MSE is of images in "
              "[-1, 1], 4x ours; their PSNR is 10 log10(2 / MSE), ours - 3.01 dB):", "",
              "| method | PSNR | MSE | LPIPS | ID | FID |", "|---|---:|---:|---:|---:|---:|"]
    for r in report["reference"]["rows"]:
        cells = ["–" if r[c] is None else f"{r[c]:{f}}" for c, f in REFERENCE_FORMATS.items()]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bars(path: str, report: Mapping[str, Any]) -> None:
    plt = pyplot()
    names = [report["labels"][k] for k in report["inversions"]]
    metrics_ = report["reconstruction_metrics"]
    fig, axes = plt.subplots(1, len(metrics_), figsize=(2.6 * len(metrics_), 3.2), squeeze=False)
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for ax, m in zip(axes[0], metrics_):
        stats = [report["reconstruction"][k]["stats"][m] for k in report["inversions"]]
        ax.bar(range(len(names)), [np.nan if s["mean"] is None else s["mean"] for s in stats],
               yerr=[0 if s["std"] is None else s["std"] for s in stats], color=colors, capsize=3, alpha=0.85)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=7, rotation=20)
        ax.set_title(LABELS[m], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Reconstruction of {len(report['photos'])} photos (mean ± std)", fontsize=10)
    save_figure(fig, path)


def _edit_scatter(path: str, report: Mapping[str, Any]) -> None:
    """Δ CLIP against identity to the photo, per (prompt, photo) and per inversion: the editability trade-off."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for k, color in zip(report["inversions"], ("tab:blue", "tab:orange", "tab:green")):
        ex = report["edits"][k]["per_example"]
        x = np.asarray(ex["identity_photo"], float).ravel()
        y = np.asarray(ex["clip_score_delta"], float).ravel()
        ax.scatter(x, y, s=10, alpha=0.4, color=color, label=f"{report['labels'][k]} (per edit)")
        ax.scatter([np.nanmean(x)], [np.nanmean(y)], s=60, color=color, edgecolor="black",
                   label=f"{report['labels'][k]} (mean)")
    label_scatter(ax, "identity of the edit with the photo (ArcFace cosine)", "Δ CLIP score (edit - reconstruction)")
    save_figure(fig, path)


def write_report(output: str, report: Mapping[str, Any], *, overwrite: bool = False) -> List[str]:
    """report.json, report.md, reconstruction.png and (with edits) edits.png into `output`, atomically (all or
    nothing); returns the file names."""
    files = [JSON_FILE, MARKDOWN_FILE, RECON_PLOT] + ([EDIT_PLOT] if report["edits"] else [])
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        with open(os.path.join(tmp, JSON_FILE), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, allow_nan=False, ensure_ascii=False)
        with open(os.path.join(tmp, MARKDOWN_FILE), "w", encoding="utf-8") as f:
            f.write(markdown(report))
        _bars(os.path.join(tmp, RECON_PLOT), report)
        if report["edits"]:
            _edit_scatter(os.path.join(tmp, EDIT_PLOT), report)
    return files
