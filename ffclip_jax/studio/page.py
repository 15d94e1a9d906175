"""The studio's page: the Gradio layout and its callbacks, on a `serving.Studio`. One screen (1400x1000): the inputs
on the left (source, the refine choice for photos, prompts, strength, Edit), on the right the photo as the encoder
takes it and its reconstruction (shown on upload; with a refine stage, none / W+ / PTI with a step count, the
refined reconstruction beside e4e's, a "Refining ..." line while it runs), the before/after slider, the gallery of
edits captioned "prompt · strength", the scores at the strength shown (recomputed when the slider moves) and the
strength sweep. Small images are scaled up for display with nearest-neighbour pixels (CSS image-rendering:
pixelated); downloads keep the real size.

Named API endpoints (gradio_client): /edit, /rerender, /scores, /sweep, /random_sample, /preview. The device
callbacks take the raw values (preprocess=False): every value, an out-of-range strength typed in the box included,
is checked by the engine and answered in the page; uploaded files still go through Gradio's upload-folder check.
After an error the results of the refused request are cleared; a refused re-render says at which strength the edits
shown are.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from ffclip_jax.errors import FFCLIPError, InputError
from ffclip_jax.grid import to_uint8
from ffclip_jax.studio.engine import (MAX_PROMPTS, MAX_SOURCES, REFINE, SOURCES, STRENGTH_RANGE, SWEEP_FRAMES,
                                      SWEEP_FRAMES_RANGE, TRUNCATION_RANGE, EditRequest, Engine, number)
from ffclip_jax.studio.serving import Shown, Studio

MAX_FILE_SIZE = "20mb"  # Gradio's upload limit (the engine checks engine.MAX_FILE_BYTES too)
IMAGE_HEIGHT = 220  # px of the photo, reconstructions, before/after and sweep boxes
IMAGE_MIN_WIDTH = 120  # px: the five boxes share one row of the results column
EDIT_INPUTS = ("source", "photo", "latents", "all_rows", "seed", "truncation", "prompts", "strength", "scores",
               "refine", "refine_steps")
STRENGTH_INFO = ("1 is upstream FFCLIP, 0 the reconstruction, above 1 exaggerates, below 0 pushes away from the "
                 "text; moving it re-renders with the generator only")
CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.scaled img { width: 100% !important; height: 100% !important; max-width: none !important;
              max-height: none !important; object-fit: contain !important; }
#gallery .caption-label, #gallery .caption { white-space: nowrap; overflow: visible; }
#status { min-height: 1.5em; }
#status.error, #status .error { color: var(--error-text-color); }
footer { display: none !important; }
"""


def gradio():
    """The gradio module, or a one-line error without it."""
    try:
        import gradio as gr  # an optional dependency (the `studio` extra), slow to import: only when a page is built
    except ImportError:
        raise InputError("the studio needs gradio: pip install 'ffclip-jax[studio]'") from None
    return gr


def launch_options() -> Dict:
    """The page's `Blocks.launch` styling: system fonts only (nothing fetched from the internet; the default theme
    would name web fonts) and the CSS above."""
    gr = gradio()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
    return dict(theme=theme, css=CSS)


def caption(prompt: str, strength: float, source: int, sources: int) -> str:
    return f"{prompt} · {strength:g}" + (f" (source {source})" if sources > 1 else "")


def table_rows(frames) -> List[List]:
    """[source, prompt, strength, *scores] per edit; no rows without scores."""
    if frames.scores is None:
        return []
    return [[i, p, round(frames.strength, 4)] + [round(float(v), 4) for v in frames.scores[i, j]]
            for i in range(frames.scores.shape[0]) for j, p in enumerate(frames.prompts)]


def gallery_items(shown: Shown):
    n = len(shown.files.images)
    return [(path, caption(p, shown.frames.strength, i, n))
            for i, row in enumerate(shown.files.images) for p, path in zip(shown.frames.prompts, row)]


def build_app(studio: Studio, *, batching: bool = True, max_batch_size: Optional[int] = None):
    """The Gradio Blocks of the page around a `serving.Studio` (its `.studio` attribute)."""
    gr = gradio()
    engine = studio.engine
    has_encoder = engine.editor.encoder is not None
    headers = ["source", "prompt", "strength"] + engine.score_names
    max_batch = max_batch_size or max(1, engine.editor.batch_size)
    device = dict(concurrency_limit=1, concurrency_id="device", preprocess=False)
    private = dict(queue=False, api_visibility="private")

    def message(text: str, error: bool = False) -> str:
        return f"**Error:** {text}" if error else text

    # ---- callbacks ---------------------------------------------------------------------------------------------
    # cleared results: gallery, before/after, scores, downloads, token, sweep, sweep latents
    cleared = ([], None, [], None, "", None, None)

    def edit_outputs(answer, request):
        if isinstance(answer, FFCLIPError):  # the source's reconstructions stay (its upload's, or the last edit's)
            return (gr.skip(), gr.skip()) + cleared + (message(str(answer), True),)
        f = answer.files
        refined = request.source == "photo" and request.refine not in (None, "", "none")
        # a refined photo's edits start from the refined reconstruction: it is shown beside e4e's
        recons = (gr.skip(), f.sources[0]) if refined else (f.sources[0], None)
        return recons + (gallery_items(answer), (f.sources[0], f.images[0][0]), table_rows(answer.frames),
                         f.downloads, answer.frames.token, None, None,
                         f"Edited {len(gallery_items(answer))} image(s) at strength {answer.frames.strength:g}"
                         + (f" from the {request.refine} reconstruction." if refined else "."))

    def edit_batch(*columns):
        requests = [EditRequest(**dict(zip(EDIT_INPUTS, row))) for row in zip(*columns)]
        outs = [edit_outputs(a, r) for a, r in zip(studio.edit_many(requests), requests)]
        return [list(col) for col in zip(*outs)]

    def edit_single(*values):
        return tuple(col[0] for col in edit_batch(*[[v] for v in values]))

    def rerender(token, strength):
        try:
            if not token:  # nothing to re-render: only a bad value is worth a word
                number(strength, STRENGTH_RANGE, "strength")
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            shown = studio.rerender(token, strength)
        except FFCLIPError as e:
            shown_still = ". The edits shown are still at the strength in their captions." if token else ""
            return gr.skip(), gr.skip(), gr.skip(), message(f"{e}{shown_still}", True)
        f = shown.files
        return (gallery_items(shown), (f.sources[0], f.images[0][0]), f.downloads,
                f"Re-rendered at strength {shown.frames.strength:g}: {shown.frames.ms_per_frame:.1f} ms per frame "
                f"(generator only).")

    def rescore(token, strength):
        if not token:
            return gr.skip()
        try:
            return table_rows(studio.rescore(token, strength))
        except FFCLIPError:
            return gr.skip()  # the re-render before it said why

    def sweep(token, strength, frames):
        try:
            result, animation, latents = studio.sweep(token, strength, frames)
        except FFCLIPError as e:
            return None, None, message(str(e), True)
        return animation, latents, (f"Sweep: {len(result.strengths)} frames, strength 0 to "
                                    f"{result.strengths[-1]:g} (first source and prompt).")

    def random_sample(seed, truncation):
        try:
            sample, png, latents = studio.random_sample(seed, truncation)
        except FFCLIPError as e:
            return (None, None, None, gr.skip(), None) + cleared + (message(str(e), True),)
        return ((png, png, None, "random", [png, latents]) + cleared +
                (f"Random sample: seed {sample.seed}, truncation {sample.truncation:g}. Press Edit.",))

    def preview(photo, refine="none", steps=None):
        """The upload's photo, e4e's reconstruction and, with a refine stage, the refined one (a generator: a
        "Refining ..." line first, the page's progress indication while the refinement runs)."""
        if not photo:
            yield (None, None, None) + cleared + ("",)
            return
        try:
            choice = Engine.refine_choice(refine, steps)
            if choice is not None:
                yield ((gr.skip(),) * 3 + cleared +
                       (f"Refining the photo with {refine} ({choice[1] or 'default'} steps) ...",))
            p = studio.preview(photo, refine, steps)
        except FFCLIPError as e:
            yield (None, None, None) + cleared + (message(str(e), True),)
            return
        h, w = p.photo.shape[:2]
        text = (f"Photo {w}x{h}{' (aligned)' if engine.editor.predictor is not None else ''}: its reconstruction "
                f"through e4e and the generator is on the right.")
        refined = None
        if p.refined is not None:
            r = p.refined
            refined = to_uint8(p.refined_reconstruction)
            text += (f" Refined with {refine} ({r.steps} steps): LPIPS {r.numbers['lpips_start']:.4f} -> "
                     f"{r.numbers['lpips']:.4f}; edits start from the refined reconstruction.")
        yield (p.photo, to_uint8(p.reconstruction), refined) + cleared + (text,)

    def re_preview(photo, refine, steps):
        """The refine choice changed: the upload previewed again with it (nothing without an upload)."""
        if not photo:
            yield (gr.skip(),) * (3 + len(cleared) + 1)
            return
        yield from preview(photo, refine, steps)

    def show_source(kind):
        return [gr.update(visible=kind == k) for k in SOURCES]

    def add_prompt(text, sample):
        p = sample[0] if isinstance(sample, (list, tuple)) else sample
        lines = [line for line in str(text or "").splitlines() if line.strip()]
        return "\n".join(lines + [str(p)] if str(p) not in lines else lines)

    # ---- layout ------------------------------------------------------------------------------------------------
    buttons = dict(buttons=["download", "fullscreen"])  # no "share" (to Hugging Face): a local page
    image = dict(type="filepath", interactive=False, height=IMAGE_HEIGHT, elem_classes=["pixelated", "scaled"],
                 min_width=IMAGE_MIN_WIDTH, **buttons)
    with gr.Blocks(title="FFCLIP studio", analytics_enabled=False, delete_cache=(1800, 3600),
                   fill_width=True) as app:
        gr.Markdown("## FFCLIP studio · edit an image of the generator's domain with free-form text")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=360):
                source = gr.Radio(list(SOURCES), value="photo" if has_encoder else "random", label="source",
                                  elem_id="source")
                with gr.Group(visible=has_encoder) as photo_box:
                    photo = gr.File(label="photo: an aligned face" + (
                        ", or any photo (it is aligned first)" if engine.editor.predictor is not None else ""),
                        file_types=["image"], type="filepath", elem_id="photo", height=110)
                    with gr.Row():
                        refine = gr.Radio(list(REFINE), value="none", label="refine the inversion",
                                          elem_id="refine", min_width=160, scale=2)
                        refine_steps = gr.Number(label="steps (0: the stage's default)", value=0, minimum=0,
                                                 precision=0, elem_id="refine-steps", min_width=100, scale=1)
                with gr.Group(visible=False) as latents_box:
                    latents = gr.File(label="w+ latents (.npy, (L, D) or (N, L, D))", file_types=[".npy"],
                                      type="filepath", elem_id="latents", height=110)
                    all_rows = gr.Checkbox(label=f"edit every row (at most {MAX_SOURCES})", value=False)
                with gr.Group(visible=not has_encoder) as random_box:
                    with gr.Row():
                        seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed", min_width=80)
                        truncation = gr.Slider(*TRUNCATION_RANGE, value=0.7, step=0.05, label="truncation",
                                               min_width=160)
                    sample_btn = gr.Button("Random sample", elem_id="sample-btn", size="sm")
                    sample_files = gr.File(label="sample (PNG, w+ .npy)", file_count="multiple",
                                           interactive=False, height=80)
                prompts = gr.Textbox(label=f"prompts (one per line, at most {MAX_PROMPTS})", lines=2, max_lines=8,
                                     placeholder="Blue hair\nMan aged 10", elem_id="prompts")
                examples = gr.Dataset(components=[gr.Textbox(visible=False)], samples=[[p] for p in engine.prompts],
                                      label="prompt list (click to add)", type="values", samples_per_page=40,
                                      elem_id="examples")
                strength = gr.Slider(*STRENGTH_RANGE, value=1.0, step=0.05, label="strength", info=STRENGTH_INFO,
                                     elem_id="strength")
                with gr.Row():
                    with_scores = gr.Checkbox(label="scores (CLIP, identity / MoCo)", value=True,
                                              elem_id="with-scores", min_width=120)
                    edit_btn = gr.Button("Edit", variant="primary", elem_id="edit-btn", min_width=120)
                with gr.Row():
                    frames = gr.Slider(*SWEEP_FRAMES_RANGE, value=SWEEP_FRAMES, step=1, label="sweep frames",
                                       min_width=160, scale=2)
                    sweep_btn = gr.Button("Strength sweep", elem_id="sweep-btn", min_width=120, scale=1)
                status = gr.Markdown("", elem_id="status")
                token = gr.Textbox(visible=False, elem_id="token")
            with gr.Column(scale=7, min_width=560):
                with gr.Row():
                    photo_view = gr.Image(label="photo (aligned)" if engine.editor.predictor is not None else "photo",
                                          elem_id="photo-view", format="png",
                                          **dict(image, type="numpy"))
                    recon = gr.Image(label="reconstruction", elem_id="recon", format="png", **image)
                    refined_view = gr.Image(label="refined reconstruction", elem_id="refined", format="png",
                                            **image)
                    compare = gr.ImageSlider(label="before / after", type="filepath", elem_id="compare",
                                             height=IMAGE_HEIGHT, elem_classes=["pixelated", "scaled"],
                                             min_width=IMAGE_MIN_WIDTH, **buttons)
                    sweep_img = gr.Image(label="sweep 0 to the strength", elem_id="sweep", **image)
                gallery = gr.Gallery(label="edits (prompt · strength)", columns=4, height=270, object_fit="contain",
                                     fit_columns=False, elem_id="gallery", elem_classes=["pixelated"], format="png",
                                     allow_preview=True, **buttons)
                table = gr.Dataframe(value=[], headers=headers, label="scores at each row's strength (CLIP score, "
                                     "of the source, the change; identity (ArcFace) or MoCo similarity)",
                                     interactive=False, elem_id="scores", max_height=160)
                with gr.Row():
                    files = gr.File(label="downloads: edits.zip, edited_latents.npy (N, P, L, D), "
                                    "source_latents.npy", file_count="multiple", interactive=False,
                                    elem_id="files", height=100, scale=3)
                    sweep_lat = gr.DownloadButton("sweep latents (.npy)", elem_id="sweep-latents", scale=1,
                                                  size="sm")

        results = [gallery, compare, table, files, token, sweep_img, sweep_lat]
        edit_inputs = [source, photo, latents, all_rows, seed, truncation, prompts, strength, with_scores, refine,
                       refine_steps]
        edit_outputs_ = [recon, refined_view] + results + [status]
        if batching:
            edit_btn.click(edit_batch, edit_inputs, edit_outputs_, api_name="edit", batch=True,
                           max_batch_size=max_batch, **device)
        else:
            edit_btn.click(edit_single, edit_inputs, edit_outputs_, api_name="edit", **device)
        strength.change(rerender, [token, strength], [gallery, compare, files, status], api_name="rerender",
                        trigger_mode="always_last", show_progress="hidden", **device).then(
            rescore, [token, strength], [table], api_name="scores", show_progress="hidden", **device)
        sweep_btn.click(sweep, [token, strength, frames], [sweep_img, sweep_lat, status], api_name="sweep", **device)
        sample_btn.click(random_sample, [seed, truncation], [photo_view, recon, refined_view, source, sample_files]
                         + results + [status], api_name="random_sample", **device)
        previews = [photo_view, recon, refined_view] + results + [status]
        photo.upload(preview, [photo, refine, refine_steps], previews, api_name="preview", **device)
        refine.change(re_preview, [photo, refine, refine_steps], previews, **dict(device, api_visibility="private"))
        refine_steps.submit(re_preview, [photo, refine, refine_steps], previews,
                            **dict(device, api_visibility="private"))
        photo.clear(preview, [photo], previews, **private)
        source.change(show_source, [source], [photo_box, latents_box, random_box], **private)
        examples.click(add_prompt, [prompts, examples], prompts, **private)
    app.studio = studio
    return app
