"""The pipeline object (`ffclip_jax.pipeline.Editor`) on small random networks: every row runner compiles its network
once whatever the number of rows and gives the jitted network's own rows, random rows equal `sample`, the
chain photo -> align -> e4e -> [refine], files streamed with unreadable and faceless photos skipped
and listed, and one-line errors for missing networks and networks that do not fit together. (The whole chain against
the PyTorch references: test_edit.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ffclip_jax.batching import bucket, jit_apply
from ffclip_jax.errors import CheckpointError, InputError
from ffclip_jax.models.mapper import DynamicMapper
from ffclip_jax.models.stylegan2 import Generator
from ffclip_jax.pipeline import Editor, encoder_input
from ffclip_jax.weights import pretrained
from test_align import drawn_photos, predictor_path  # noqa: F401  (fixtures)
from test_invert import SIZE, encoder_dir, random_variables  # noqa: F401  (fixture)

BATCH = 2  # test_invert's batch size: its compilations of these networks serve here too
N_LATENT, DIM = 8, 16  # test_invert's encoder and generator: stylegan_size 32, style_dim 16


@pytest.fixture(scope="module")
def editor(encoder_dir):
    mapper = DynamicMapper(n_latent=N_LATENT, style_dim=DIM, num_blocks=1)
    w = np.zeros((1, N_LATENT, DIM), np.float32)
    mapper_vars = random_variables(mapper, [w, w[:, 0]], 2)
    return Editor((mapper, mapper_vars), pretrained.load(f"{encoder_dir}/generator"),
                  encoder=pretrained.load(encoder_dir), batch_size=BATCH)


def photos(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 36, 3), dtype=np.uint8)


def test_row_runners_compile_once_and_give_the_networks_rows(editor):
    """Whatever the number of rows, no runner compiles again after its first call (the jit caches are shared by
    the whole test process, so the check is that they do not grow)."""
    generator, mapper = editor.generator[0], editor.mapper[0]
    w = editor.sample(9, seed=1, truncation=0.7)
    e = np.random.default_rng(0).normal(size=(9, DIM)).astype(np.float32)
    runners = [(lambda n: editor.render_rows(w[:n]), jit_apply(generator, input_is_latent=True), (32, 32, 3)),
               (lambda n: editor.map_rows(w[:n], e[:n], 0.5), jit_apply(mapper), (N_LATENT, DIM)),
               (lambda n: editor.invert_rows(np.zeros((n, SIZE, SIZE, 3), np.float32)), jit_apply(editor.encoder[0]),
                (N_LATENT, DIM)),
               (lambda n: editor.sample_rows(range(n), 1.0), jit_apply(generator, method=Generator.w_plus),
                (N_LATENT, DIM))]
    for run, jitted, shape in runners:
        assert run(1).shape == (1,) + shape
        compiled = jitted._cache_size()
        for n in (2, 3, 9):
            assert run(n).shape == (n,) + shape
        assert jitted._cache_size() == compiled
    # rows of a padded batch are the jitted network's own rows (the same compiled program)
    padded = np.concatenate([w[:3], w[2:3]])  # 3 rows: batches of 2, the last padded with its last row
    np.testing.assert_array_equal(editor.render_rows(w[:3]), np.concatenate(
        [np.asarray(editor.render(padded[i:i + 2])) for i in (0, 2)])[:3])
    ones = np.ones((4, DIM), np.float32)
    s = np.array([0.0, 1.0, 2.0, 2.0], np.float32)
    np.testing.assert_array_equal(editor.map_rows(w[:3], ones[:3], s[:3]), np.concatenate(
        [np.asarray(editor.map_latents(padded[i:i + 2], ones[i:i + 2], s[i:i + 2])) for i in (0, 2)])[:3])
    # the slider's small batches: the smallest power of two holding the rows, at most the batch size
    assert [bucket(n, 8) for n in (1, 2, 3, 4, 5, 9)] == [1, 2, 4, 4, 8, 8]
    compiled = jit_apply(generator, input_is_latent=True)._cache_size()
    for n in (1, 2, 3, 1):
        assert editor.render_rows(w[:n], small=True).shape == (n, 32, 32, 3)
    assert jit_apply(generator, input_is_latent=True)._cache_size() <= compiled + 1  # batch 1 at most


def test_sample_rows_are_samples(editor):
    rows = editor.sample_rows([3, 5, 3], [0.7, 1.0, 0.5])
    for row, (seed, t) in zip(rows, [(3, 0.7), (5, 1.0), (3, 0.5)]):
        np.testing.assert_array_equal(row, editor.sample(1, seed, t)[0])
    np.testing.assert_array_equal(rows[0, 0], rows[0, -1])  # w+ of one w
    avg = np.asarray(editor.generator[1]["buffers"]["latent_avg"])
    np.testing.assert_array_equal(editor.sample(2, 9, 0.0), np.broadcast_to(avg, (2, N_LATENT, DIM)))  # avg + 0 * d
    with pytest.raises(InputError, match="number of samples must be >= 1"):
        editor.sample(0)


def test_invert_is_e4e_on_e4e_preprocessing(editor):
    images = photos(5)
    x = np.stack([encoder_input(im, (SIZE, SIZE)) for im in images])
    np.testing.assert_array_equal(editor.invert(images), editor.invert_rows(x))
    np.testing.assert_array_equal(editor.invert(list(images[:2])), editor.invert_rows(x[:2]))
    pil = [Image.fromarray(im) for im in images[:2]]
    np.testing.assert_array_equal(editor.invert(pil), editor.invert_rows(x[:2]))
    with pytest.raises(InputError, match="no images to invert"):
        editor.invert([])
    with pytest.raises(InputError, match=r"^image 1: expected a uint8"):
        editor.invert([images[0], images[1].astype(np.float32)])
    with pytest.raises(InputError, match=r"images must be uint8, got float32 \(2, 40, 36, 3\)"):
        editor.source_latents(images[:2].astype(np.float32))
    np.testing.assert_array_equal(editor.source_latents(x[:1, :N_LATENT, :DIM, 0]), x[:1, :N_LATENT, :DIM, 0])


def test_refine_stage_between_invert_and_map(editor):
    """Without a refine stage the chain's codes are e4e's; the stage needs its LPIPS network, and says so in one
    line (the stage itself: test_refine_pipeline)."""
    images = photos(3, seed=1)
    x = np.stack([encoder_input(im, (SIZE, SIZE)) for im in images])
    np.testing.assert_array_equal(editor.invert(images, refine=None), editor.invert_rows(x))
    with pytest.raises(CheckpointError, match=r"^this Editor has no lpips_vgg: needed for refinement"):
        editor.invert(images, refine="w+", steps=2)


def photo_files(folder, images, broken_at):
    """The images saved as folder/<i>.png, with an unreadable folder/broken.png inserted at `broken_at`: paths."""
    files = []
    for i, im in enumerate(images):
        files.append(str(folder / f"{i}.png"))
        Image.fromarray(im).save(files[-1])
    (folder / "broken.png").write_bytes(b"not a png")
    files.insert(broken_at, str(folder / "broken.png"))
    return files


def test_encode_files_streams_and_lists_what_it_skips(editor, tmp_path):
    images = photos(5, seed=2)
    files = photo_files(tmp_path, images, 2)
    enc = editor.encode_files(files, keep_inputs=3, progress=False)
    assert enc.sources == files[:2] + files[3:]
    assert enc.skipped == [(files[2], f"{files[2]}: not a readable image (UnidentifiedImageError)")]
    np.testing.assert_array_equal(enc.w, editor.invert(images))
    np.testing.assert_array_equal(enc.inputs, np.stack([encoder_input(im, (SIZE, SIZE)) for im in images[:3]]))
    with pytest.raises(InputError, match=r"none of the 1 files could be read as an image \(.*broken.png: not a "):
        editor.encode_files(files[2:3], progress=False)


def test_alignment_stage(editor, encoder_dir, predictor_path, drawn_photos):
    """With a predictor the chain aligns first: `align` = the faces at the encoder's input size; `invert` of a photo
    without a face is an error, `encode_files` skips and lists it."""
    photo_dir, _, _ = drawn_photos
    aligning = Editor(encoder=editor.encoder, batch_size=BATCH, align=predictor_path)
    one, plain = (np.asarray(Image.open(photo_dir / f)) for f in ("one.png", "plain.png"))
    aligned, skipped = aligning.align([one, plain])
    assert skipped == [1] and aligned[0].shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(aligning.invert([one]), editor.invert(aligned))
    np.testing.assert_array_equal(aligning.invert(aligned, align=False), editor.invert(aligned))  # aligned already
    with pytest.raises(InputError, match="^image 1: no face found$"):
        aligning.invert([one, plain])
    enc = aligning.encode_files([str(photo_dir / "one.png"), str(photo_dir / "plain.png")], progress=False)
    assert enc.skipped == [(str(photo_dir / "plain.png"), f"{photo_dir / 'plain.png'}: no face found")]
    with pytest.raises(CheckpointError, match="no face predictor: pass align=PREDICTOR"):
        editor.align([one])


def test_missing_and_mismatched_networks(editor, encoder_dir):
    only_e4e = Editor.from_pretrained(encoder_dir, batch_size=BATCH)
    assert only_e4e.encoder is not None and only_e4e.generator is None and only_e4e.latent_shape == (N_LATENT, DIM)
    where = f"weights directory {only_e4e.weights.root}"
    w = np.zeros((1, N_LATENT, DIM))
    for call, message in ((lambda: only_e4e.render_rows(w), "generator: needed for rendering"),
                          (lambda: only_e4e.map_rows(w, np.zeros((1, DIM)), 1.0), "mapper: needed for editing"),
                          (lambda: only_e4e.text_embeddings(["Bald"]), "CLIP model: needed for text prompts")):
        with pytest.raises(CheckpointError, match=f"^{where} has no {message}$"):
            call()
    with_generator = Editor.from_pretrained(encoder_dir, generator=f"{encoder_dir}/generator",
                                            networks=("generator",))
    assert with_generator.encoder is None and with_generator.generator is not None
    small = Generator(size=16, style_dim=DIM, n_mlp=1)
    small_vars = jax.eval_shape(small.init, jax.random.PRNGKey(0), jnp.zeros((1, DIM)))
    with pytest.raises(CheckpointError, match=r"disagree on w\+: the mapper edits \(8, 16\), the generator renders "
                                              r"\(6, 16\); use the networks the mapper was trained with"):
        Editor(editor.mapper, (small, small_vars))
    with pytest.raises(InputError, match="batch size must be >= 1"):
        Editor(editor.mapper, batch_size=0)
