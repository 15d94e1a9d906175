"""The studio's parts without a browser or a server: the engine (requests -> Editor rows, the slider's re-render, its
scores, the sweep, the cache, one-line errors for every bad value), its files (`studio.outputs`) and its device
thread (`studio.serving`), on small random networks (test_invert's encoder and generator, at its batch size so its
compilations serve here too; a tiny CLIP and MoCo for the scores). Expected values come from the Editor's own runners
on the same rows, so the checks are exact unless a comment derives a bound. (The page in Chromium: test_studio.)"""
import os
import re
import threading
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ffclip_jax import metrics, tiny
from ffclip_jax.errors import FFCLIPError, InputError
from ffclip_jax.grid import to_uint8
from ffclip_jax.models import clip
from ffclip_jax.models.mapper import DynamicMapper
from ffclip_jax.models.moco import ResNet50
from ffclip_jax.pipeline import Editor
from ffclip_jax.studio import engine as engine_module
from ffclip_jax.studio.engine import EditRequest, Engine
from ffclip_jax.studio.outputs import StudioFiles
from ffclip_jax.studio.serving import Shown, Studio
from ffclip_jax.weights import pretrained
from ffclip_jax.weights.clip_dir import save_clip
from test_evaluate import random_variables as filled_variables
from test_invert import SIZE, encoder_dir, random_variables  # noqa: F401  (fixture)

BATCH = 2  # test_invert's batch size
N_LATENT, DIM = 8, 16  # test_invert's encoder and generator


@pytest.fixture(scope="module")
def editor(encoder_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    config = dict(clip.tiny_config(), embed_dim=DIM)
    save_clip(str(d / "clip"), config, filled_variables(clip.build(config), 5, jnp.zeros((1, 224, 224, 3)),
                                                        jnp.zeros((1, 77), jnp.int32)))
    mapper = DynamicMapper(n_latent=N_LATENT, style_dim=DIM, num_blocks=1)
    w = np.zeros((1, N_LATENT, DIM), np.float32)
    return Editor((mapper, random_variables(mapper, [w, w[:, 0]], 2)), pretrained.load(f"{encoder_dir}/generator"),
                  clip=pretrained.load(str(d / "clip")), encoder=pretrained.load(encoder_dir),
                  clip_dir=str(d / "clip"), cache_dir=str(d / "cache"), batch_size=BATCH)


@pytest.fixture(scope="module")
def scorers(editor):
    moco = ResNet50(**tiny.MOCO)
    return (metrics.MetricNetworks(clip=editor.clip[0], moco=moco),
            {"clip": editor.clip[1], "moco": filled_variables(moco, 3, jnp.zeros((1, 64, 64, 3)))})


@pytest.fixture
def engine(editor, scorers):
    return Engine(editor, prompts=["Bald", "Blue hair"], scorers=scorers[0], scorer_variables=scorers[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    paths = {}
    for name, shape in (("photo", (40, 36, 3)), ("other", (SIZE, SIZE, 3)), ("tiny", (1, 1, 3)),
                        ("narrow", (15, 40, 3)), ("smallest", (16, 16, 3))):
        paths[name] = str(d / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[name])
    paths["broken"] = str(d / "broken.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    latents = rng.normal(size=(3, N_LATENT, DIM)).astype(np.float32)
    paths["latents"] = str(d / "w.npy")
    np.save(paths["latents"], latents)
    paths["one"] = str(d / "one.npy")
    np.save(paths["one"], latents[1])
    nan = latents.copy()
    nan[2, 0, 0] = np.nan
    paths["nan"] = str(d / "nan.npy")
    np.save(paths["nan"], nan)
    paths["shape"] = str(d / "shape.npy")
    np.save(paths["shape"], np.zeros((3, DIM), np.float32))
    paths["many"] = str(d / "many.npy")
    np.save(paths["many"], np.zeros((9, N_LATENT, DIM), np.float32))
    return paths, latents


def rows_of(editor, sources, embeddings, strengths):
    """What `Engine.edit_many` computes for jobs [(w (n, L, D), e (k, D), s)], by the Editor's runners on the
    engine's row layout (each job's rows at s, then at 1): [(w_hat (n, k, L, D), delta, recon (n, ...), x_hat)]."""
    rows_w, rows_e, rows_s = [], [], []
    for w, e, s in zip(sources, embeddings, strengths):
        n, k = len(w), len(e)
        rows_w += [np.repeat(w, k, axis=0)] * 2
        rows_e += [np.tile(e, (n, 1))] * 2
        rows_s += [np.full(n * k, s, np.float32), np.ones(n * k, np.float32)]
    w_all = np.concatenate(rows_w)
    mapped = editor.map_rows(w_all, np.concatenate(rows_e), np.concatenate(rows_s))
    out, pos, edited = [], 0, []
    for w, e, _ in zip(sources, embeddings, strengths):
        n, k = len(w), len(e)
        m = n * k
        w_hat, delta = mapped[pos:pos + m], mapped[pos + m:pos + 2 * m] - w_all[pos:pos + m]
        out.append([w_hat.reshape(n, k, N_LATENT, DIM), delta.reshape(n, k, N_LATENT, DIM)])
        edited.append(w_hat)
        pos += 2 * m
    rendered = editor.render_rows(np.concatenate(list(sources) + edited))
    a, b = 0, sum(len(w) for w in sources)
    for item, w, e in zip(out, sources, embeddings):
        n, k = len(w), len(e)
        item += [rendered[a:a + n], rendered[b:b + n * k].reshape((n, k) + rendered.shape[1:])]
        a, b = a + n, b + n * k
    return out


def test_edit_many_runs_many_requests_in_one_batch_and_keeps_errors_apart(engine, editor, files):
    paths, latents = files
    photo = np.asarray(Image.open(paths["photo"]).convert("RGB"))
    requests = [EditRequest(source="photo", photo=paths["photo"], prompts="Bald\nBlue hair", strength=0.5),
                EditRequest(source="random", seed=7, truncation=0.7, prompts="Smiling", strength=1.5,
                            scores=False),
                EditRequest(source="random", seed=1, prompts="", strength=1.0),            # no prompt
                EditRequest(source="latents", latents={"path": paths["latents"], "orig_name": "mine.npy"},
                            all_rows=True, prompts=["Bald", "Bald "], strength=-1),
                EditRequest(source="latents", latents=paths["nan"], all_rows=True, prompts="Bald")]
    answers = engine.edit_many(requests)
    assert [type(a).__name__ for a in answers] == ["Edit", "Edit", "InputError", "Edit", "InputError"]
    assert str(answers[2]) == "no prompt given: expected at least one non-empty text prompt"
    assert str(answers[4]) == "nan.npy: latent 2 contains NaN or inf"
    w_photo = editor.invert([photo])
    w_random = editor.sample_rows([7], [0.7])
    np.testing.assert_array_equal(answers[0].source_latents, w_photo)
    np.testing.assert_array_equal(answers[1].source_latents, w_random)
    np.testing.assert_array_equal(answers[3].source_latents, latents)
    e = [editor.text_embeddings(p) for p in (["Bald", "Blue hair"], ["Smiling"], ["Bald"])]
    want = rows_of(editor, [w_photo, w_random, latents], e, [0.5, 1.5, -1.0])
    for answer, (w_hat, delta, recon, x_hat), prompts in zip([answers[i] for i in (0, 1, 3)], want,
                                                           [["Bald", "Blue hair"], ["Smiling"], ["Bald"]]):
        f = answer.frames
        assert f.prompts == prompts  # repeats dropped, as every tool does
        np.testing.assert_array_equal(f.latents, w_hat)
        np.testing.assert_array_equal(f.images, x_hat)
        np.testing.assert_array_equal(answer.sources, recon)
        np.testing.assert_array_equal(engine.entry(f.token).delta, delta)
    assert answers[1].frames.scores is None and answers[3].frames.scores.shape == (3, 1, 4)
    assert engine.score_names == ["clip_score", "clip_score_source", "clip_score_delta", "moco_similarity"]
    # the scores: source and edit features compared as `metrics.compare` does, one row per (source, prompt)
    x_hat = answers[0].frames.images.reshape((2,) + answers[0].frames.images.shape[2:])
    src = engine.features(np.repeat(answers[0].sources, 2, axis=0))
    got = engine.scores(src, engine.features(x_hat), np.tile(e[0], (1, 1)))
    np.testing.assert_array_equal(answers[0].frames.scores.reshape(2, 4), got)
    scores = answers[0].frames.scores[0]
    np.testing.assert_allclose(scores[:, 2], scores[:, 0] - scores[:, 1], rtol=0, atol=1e-5)  # delta = edit - source


def test_rerender_is_w_plus_strength_times_delta_through_the_generator(engine, editor):
    edit = engine.edit_many([EditRequest(source="random", seed=3, prompts="Bald\nBlue hair\nGrey hair",
                                         strength=0.5)])[0]
    token = edit.frames.token
    entry = engine.entry(token)
    frames = engine.rerender(token, 1.5)
    want = (entry.w[:, None] + np.float32(1.5) * entry.delta).astype(np.float32)
    np.testing.assert_array_equal(frames.latents, want)
    np.testing.assert_array_equal(frames.images.reshape((3,) + frames.images.shape[2:]),
                                  editor.render_rows(want.reshape(3, N_LATENT, DIM), small=True))
    assert frames.scores is None and frames.strength == 1.5 and frames.ms_per_frame >= 0
    # the slider at the edit's strength is the edit: the mapper's w + s * d against w + s * (fl(w + d) - w), a
    # float32 rounding of w + d and of the products: at most (|s| + 2) ulp of |w| + |d| per value
    again = engine.rerender(token, 0.5)
    bound = (0.5 + 2) * np.finfo(np.float32).eps * (np.abs(entry.w[:, None]) + np.abs(entry.delta))
    assert (np.abs(again.latents - edit.frames.latents) <= bound).all()
    # scores follow the slider: those of the frames shown at that strength
    scored = engine.rescore(token, 0.5)
    np.testing.assert_array_equal(scored.images, again.images)
    src = engine.features(np.repeat(edit.sources, 3, axis=0))
    want_scores = engine.scores(src, engine.features(again.images[0]), editor.text_embeddings(entry.prompts))
    np.testing.assert_array_equal(scored.scores[0], want_scores)
    other = engine.rescore(token, 2.0)  # not the last frames shown: rendered again
    assert other.strength == 2.0 and not np.array_equal(other.scores, scored.scores)
    with pytest.raises(InputError, match=r"^strength 5: expected a number from -1 to 2$"):
        engine.rerender(token, 5)
    with pytest.raises(InputError, match="press Edit first"):
        engine.rerender("", 1.0)


def test_a_tuned_generator_per_entry_renders_its_rerenders_and_sweeps(engine, editor):
    """The refinement stage's place: an entry's own generator variables (a photo's tuned generator)."""
    token = engine.edit_many([EditRequest(source="random", seed=4, prompts="Bald")])[0].frames.token
    entry = engine.entry(token)
    module, variables = editor.generator
    tuned = jax.tree.map(lambda a: a * np.float32(0.9), variables)
    entry.generator_variables = tuned
    frames = engine.rerender(token, 1.0)
    own = Editor(generator=(module, tuned), batch_size=BATCH)
    np.testing.assert_array_equal(frames.images[0], own.render_rows(frames.latents[0], small=True))
    assert not np.array_equal(frames.images[0], editor.render_rows(frames.latents[0], small=True))
    sweep = engine.sweep(token, 1.0, 3)
    np.testing.assert_array_equal(sweep.images, own.render_rows(sweep.latents))
    assert editor.generator[1] is variables  # the shared Editor is untouched


def test_sweep_latents_and_frames(engine, editor):
    token = engine.edit_many([EditRequest(source="random", seed=5, prompts="Bald\nSmiling", strength=1.2)])[0] \
        .frames.token
    entry = engine.entry(token)
    sweep = engine.sweep(token, 1.2, 4)
    steps = np.linspace(0, 1.2, 4).astype(np.float32)
    assert sweep.strengths == [float(v) for v in steps]
    np.testing.assert_array_equal(sweep.latents, (entry.w[0] + steps[:, None, None] * entry.delta[0, 0]))
    np.testing.assert_array_equal(sweep.images, editor.render_rows(sweep.latents))
    for frames, message in ((1, "sweep frames 1: expected a number from 2 to 32"),
                            (2.5, "sweep frames 2.5: expected an integer"), ("x", "sweep frames 'x'")):
        with pytest.raises(InputError, match=f"^{message}"):
            engine.sweep(token, 1.0, frames)


def test_preview_and_random_sample(engine, editor, files):
    paths, _ = files
    p = engine.preview({"path": paths["photo"], "orig_name": "face.png"})
    photo = np.asarray(Image.open(paths["photo"]).convert("RGB"))
    np.testing.assert_array_equal(p.photo, photo)
    np.testing.assert_array_equal(p.w, editor.invert([photo]))
    np.testing.assert_array_equal(p.reconstruction, editor.render_rows(p.w)[0])
    s = engine.random_sample(9, 0.5)
    np.testing.assert_array_equal(s.w, editor.sample(1, 9, 0.5))
    np.testing.assert_array_equal(s.image, editor.render_rows(s.w)[0])
    assert (s.seed, s.truncation) == (9, 0.5)


@pytest.mark.parametrize("request_, message", [
    (dict(photo=None), r"^no photo uploaded: upload a photo, or choose latents or a random sample$"),
    (dict(photo="broken"), r"^broken.png: not a readable image \("),
    (dict(photo="tiny"), r"^tiny.png: is 1x1 \(HxW\), expected at least 16 pixels a side$"),
    (dict(photo="narrow"), r"^narrow.png: is 15x40 \(HxW\), expected at least 16 pixels a side$"),
    (dict(source="latents", latents="shape"), r"^shape.npy: expected float w\+ latents of shape \(N, 8, 16\)"),
    (dict(source="latents", latents="many", all_rows=True), r"^many.npy: 9 latents, at most 8 per edit$"),
    (dict(source="latents", latents=None), r"^no latents uploaded: upload a .npy of w\+ latents$"),
    (dict(source="drawing"), r"^unknown source 'drawing': expected one of photo, latents, random$"),
    (dict(source="random", seed=1.5), r"^seed 1.5: expected an integer from 0 to 2147483647$"),
    (dict(source="random", seed=-1), r"^seed -1: expected an integer from 0 to 2147483647$"),
    (dict(source="random", seed=None), r"^seed: expected numbers, got None$"),
    (dict(source="random", truncation=2), r"^truncation 2: expected a number from 0 to 1$"),
    (dict(source="random", strength=5), r"^strength 5: expected a number from -1 to 2$"),
    (dict(source="random", strength=float("nan")), r"^strength: expected finite numbers, got nan$"),
    (dict(source="random", strength="strong"), r"^strength 'strong': expected comma-separated numbers"),
    (dict(source="random", prompts="\n".join(f"p{i}" for i in range(9))), r"^9 prompts: at most 8 per edit$"),
    (dict(photo="smallest", refine="SGD"), r"^refine 'SGD': expected one of none, W\+, PTI$"),
    (dict(photo="smallest", refine="PTI", refine_steps=-3), r"^refine steps -3: expected a number from 0 to 5000$"),
    (dict(photo="smallest", refine="W+", refine_steps=2.5), r"^refine steps 2.5: expected an integer$"),
])
def test_bad_requests_are_one_line_errors(engine, files, request_, message):
    paths, _ = files
    values = dict(dict(prompts="Bald"), **request_)
    for key in ("photo", "latents"):
        if values.get(key) in paths:
            values[key] = paths[values[key]]
    answer = engine.edit_many([EditRequest(**values), EditRequest(source="random", seed=2, prompts="Bald")])
    assert isinstance(answer[0], InputError) and "\n" not in str(answer[0])
    assert re.search(message, str(answer[0])), str(answer[0])
    assert not isinstance(answer[1], FFCLIPError)  # the good request of the same batch is answered


def test_smallest_photo_and_one_latent(engine, files):
    paths, latents = files
    a, b = engine.edit_many([EditRequest(photo=paths["smallest"], prompts="Bald", scores=False),
                             EditRequest(source="latents", latents=paths["one"], prompts="Bald", scores=False)])
    assert a.frames.images.shape[:2] == (1, 1)
    np.testing.assert_array_equal(b.source_latents, latents[1:2])


def test_cache_drops_the_least_recently_used_edit(editor):
    dropped = []
    engine = Engine(editor, cache_entries=2, on_drop=dropped.append)
    tokens = [engine.edit_many([EditRequest(source="random", seed=i, prompts="Bald")])[0].frames.token
              for i in range(2)]
    engine.rerender(tokens[0], 0.5)  # used: the other one is the oldest now
    third = engine.edit_many([EditRequest(source="random", seed=3, prompts="Bald")])[0].frames.token
    assert dropped == [tokens[1]]
    engine.entry(tokens[0])
    engine.entry(third)
    with pytest.raises(InputError, match="the edit expired"):
        engine.rerender(tokens[1], 1.0)
    assert engine.score_names == []  # no scoring networks
    assert engine.edit_many([EditRequest(source="random", prompts="Bald")])[0].frames.scores is None


def test_refine_choice():
    """The page's choice -> the Editor's stage and steps (0 or no value: the stage's default)."""
    assert Engine.refine_choice("none", 5) is None and Engine.refine_choice(None, None) is None
    assert Engine.refine_choice("PTI", 0) == Engine.refine_choice("PTI", "") == ("pti", None)
    assert Engine.refine_choice("W+", 2.0) == ("w+", 2)


def test_domain_prompts_each_once():
    class Weights:
        manifest = {"prompts": ["Bald", " Bald", "Blue hair", "", "Bald"]}

    assert engine_module.domain_prompts(Weights()) == ["Bald", "Blue hair"]
    ffhq = engine_module.domain_prompts(None)
    assert len(ffhq) == len(set(ffhq)) > 10


def test_files_at_their_real_size(engine, tmp_path):
    out = StudioFiles(str(tmp_path), samples_kept=2)
    edit = engine.edit_many([EditRequest(source="random", seed=6, prompts="Bald\nBlue/hair?", strength=0.5,
                                         scores=False)])[0]
    f = out.write_edit(edit)
    assert [p.rsplit("/", 1)[1] for p in f.images[0]] == ["source0__Bald__0.5.png", "source0__Blue_hair__0.5.png"]
    for path, image in zip(f.images[0] + f.sources, list(edit.frames.images[0]) + [edit.sources[0]]):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), to_uint8(image))  # 32 px, as rendered
    with zipfile.ZipFile(f.zip) as z:
        assert sorted(z.namelist()) == ["source0__Bald__0.5.png", "source0__Blue_hair__0.5.png",
                                        "source0__reconstruction.png"]
    np.testing.assert_array_equal(np.load(f.latents), edit.frames.latents)
    np.testing.assert_array_equal(np.load(f.source_latents), edit.source_latents)
    assert f.downloads == [f.zip, f.latents, f.source_latents]
    sweep = engine.sweep(edit.frames.token, 1.0, 3)
    animation, latents = out.write_sweep(sweep)
    with Image.open(animation) as im:
        assert im.n_frames == 3
        im.seek(2)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), to_uint8(sweep.images[2]))  # lossless
    np.testing.assert_array_equal(np.load(latents), sweep.latents)
    samples = [out.write_sample(engine.random_sample(seed, 0.7)) for seed in (1, 2, 3)]
    assert samples[2][0].endswith("seed3_t0.7/sample_seed3.png")
    assert [os.path.exists(png) for png, _ in samples] == [False, True, True]  # 2 kept
    out.remove(edit.frames.token)
    assert not os.path.exists(out.edit_dir(edit.frames.token))


def test_serving_runs_every_call_on_one_device_thread(engine, tmp_path, monkeypatch):
    studio = Studio(engine, str(tmp_path))
    threads = set()
    real = engine.edit_many

    def recording(requests):
        threads.add(threading.current_thread().name)
        return real(requests)

    monkeypatch.setattr(engine, "edit_many", recording)
    results = {}

    def client(k):
        results[k] = studio.edit_many([EditRequest(source="random", seed=k, prompts="Bald", scores=False)])[0]

    workers = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(threads) == 1 and threads.pop().startswith("studio-device")
    assert all(isinstance(r, Shown) for r in results.values())
    shown = results[0]
    assert shown.files.images[0][0].startswith(studio.workdir)
    # an entry the engine drops loses its folder
    studio.engine.on_drop(shown.frames.token)
    assert not os.path.exists(studio.files.edit_dir(shown.frames.token))

    def broken(requests):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine, "edit_many", broken)
    answers = studio.edit_many([EditRequest(), EditRequest()])
    assert [str(a) for a in answers] == ["internal error (RuntimeError: device lost)"] * 2


def test_engine_on_8_devices_equals_1(editor, scorers):
    """Every device call of the engine goes through the Editor's runners (`Editor.run`: each batch split over its
    devices, the scoring networks placed there): on 8 simulated devices at the same rows per device as 1 device
    (test_multidevice's claim: the same program per device), the edits, scores, re-render and sweep are the same
    bits. One source and prompt, so the slider's one frame is one row per device on both sides."""
    eight = Editor(editor.mapper, editor.generator, clip=editor.clip, encoder=editor.encoder, clip_dir=editor.clip_dir,
                   cache_dir=editor.cache_dir, batch_size=BATCH * 8, devices=8)
    engines = [Engine(e, scorers=scorers[0], scorer_variables=scorers[1]) for e in (editor, eight)]
    request = EditRequest(source="random", seed=12, prompts="Bald", strength=0.5)
    (one, many) = [e.edit_many([request])[0] for e in engines]
    for name in ("images", "latents", "scores"):
        np.testing.assert_array_equal(getattr(many.frames, name), getattr(one.frames, name), err_msg=name)
    np.testing.assert_array_equal(many.sources, one.sources)
    re1, re8 = [e.rescore(a.frames.token, 1.5) for e, a in zip(engines, (one, many))]
    np.testing.assert_array_equal(re8.images, re1.images)
    np.testing.assert_array_equal(re8.scores, re1.scores)
    sw1, sw8 = [e.sweep(a.frames.token, 1.5, 3) for e, a in zip(engines, (one, many))]
    np.testing.assert_array_equal(sw8.images, sw1.images)  # 3 frames: 1-device batch 2 padded, 8 devices 2 each


@pytest.fixture(scope="module")
def refine_editor(tmp_path_factory):
    """The tiny default's networks (LPIPS included: the refine stage's) at test_studio's sizes."""
    from test_studio import build_weights

    d = tmp_path_factory.mktemp("refine")
    return Editor.from_pretrained(build_weights(str(d)), batch_size=8, cache_dir=str(d / "cache"))


@pytest.mark.slow
def test_refined_photos_preview_edit_and_rerender_on_their_generator(refine_editor, tmp_path):
    """The page's refine choice: W+ and PTI (2 steps) through `Editor.invert(refine=...)`; the preview shows e4e's
    and the refined reconstruction; a PTI photo's edit, slider and sweep render on its tuned generator; the
    preview's refinement serves the edit (kept per file, stage and steps). Expected values: the Editor's own
    runners on the same rows (bit-equal: the same programs)."""
    ed = refine_editor
    image = to_uint8(ed.render(ed.sample(1, 11, 0.7)))[0]
    photo = str(tmp_path / "face.png")
    Image.fromarray(image).resize((64, 64), Image.BICUBIC).save(photo)
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    engine = Engine(ed)
    w_plus = engine.preview(photo, "W+", 2)
    want = ed.invert([pixels], align=False, refine="w+", steps=2)
    np.testing.assert_array_equal(w_plus.refined.w, want.w)
    np.testing.assert_array_equal(w_plus.w, ed.invert([pixels], align=False))
    np.testing.assert_array_equal(w_plus.refined_reconstruction, ed.render_rows(want.w)[0])
    np.testing.assert_array_equal(w_plus.reconstruction, ed.render_rows(w_plus.w)[0])
    assert w_plus.refined.generator_variables is None and w_plus.refined.steps == 2

    pti = engine.preview(photo, "PTI", 2)
    enc = ed.invert([pixels], align=False, refine="pti", steps=2)
    tuned = Editor(generator=(ed.generator[0], ed.tuned_variables(enc.params, 0)), batch_size=ed.batch_size)
    np.testing.assert_array_equal(pti.refined.w, enc.w)  # PTI's pivot: e4e's code
    np.testing.assert_array_equal(pti.refined_reconstruction, tuned.render_rows(enc.w)[0])
    assert not np.array_equal(pti.refined_reconstruction, pti.reconstruction)  # the tuned generator's own

    kept = engine._refined[next(reversed(engine._refined))]
    edit, plain = engine.edit_many([EditRequest(photo=photo, prompts="Bald", strength=0.5, refine="PTI",
                                                refine_steps=2, scores=False),
                                    EditRequest(photo=photo, prompts="Bald", strength=0.5, scores=False)])
    entry = engine.entry(edit.frames.token)
    assert entry.generator_variables is kept.generator_variables  # the preview's refinement, not a new one
    np.testing.assert_array_equal(edit.source_latents, enc.w)
    np.testing.assert_array_equal(edit.sources[0], tuned.render_rows(enc.w)[0])
    np.testing.assert_array_equal(edit.frames.images[0, 0], tuned.render_rows(edit.frames.latents[0])[0])
    assert engine.entry(plain.frames.token).generator_variables is None  # e4e's, on the shared generator
    np.testing.assert_array_equal(plain.frames.images[0, 0], ed.render_rows(plain.frames.latents[0])[0])
    frames = engine.rerender(edit.frames.token, 1.5)
    np.testing.assert_array_equal(frames.images[0], tuned.render_rows(frames.latents[0], small=True))
    sweep = engine.sweep(edit.frames.token, 1.5, 3)
    np.testing.assert_array_equal(sweep.images, tuned.render_rows(sweep.latents))
