"""Training data: prompt lists, the ffclip_latents TFDS dataset (files and synthetic, read back without TensorFlow),
input validation, and the deterministic, resumable, multi-process input pipeline with sharded placement."""
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ffclip_jax.weights import pretrained
from ffclip_jax.data import TrainBatches, eval_batches, open_split, synthetic_latents
from ffclip_jax.data.builder import build
from ffclip_jax.cli.data import main as data_main
from ffclip_jax.errors import FFCLIPError, run_cli
from ffclip_jax.text.prompts import load_prompts
from ffclip_jax.models.stylegan2 import Generator
from parity import ROOT, U32

N_TRAIN, N_TEST, N_LATENT, DIM = 37, 7, 6, 16  # custom domain: any (n_latent, style_dim)


def batches(it, n):
    return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ---------------------------------------------------------------- prompts

def test_builtin_prompt_lists():
    ffhq = load_prompts("ffhq")
    assert len(ffhq) == 53 and len(set(ffhq)) == 44
    assert ffhq[:5] == ["Sad", "Surprise", "Fear", "Contempt", "Sad"] and ffhq[-1] == "Bob Cut hairstyle"
    assert ffhq.count("Taylor Swift") == 2 and ffhq.count("Bald") == 2 and ffhq.count("Neutral") == 1
    car = load_prompts("car")
    assert car == ["Red car", "Blue car", "Gray car", "Black car", "White car", "silver car", "Jeep", "Sports car",
                   "From Sixties"]
    church = load_prompts("church")
    assert len(church) >= 8 and all(not p.startswith("#") for p in church)


def test_user_prompt_file_and_errors(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# my list\n\nred hair\n  blue eyes  \n# another comment\nred hair\n")
    assert load_prompts(str(f)) == ["red hair", "blue eyes", "red hair"]
    (tmp_path / "empty.txt").write_text("# nothing here\n\n")
    for path, words in [(tmp_path / "empty.txt", "no prompts"), (tmp_path / "missing.txt", "no such prompt file")]:
        with pytest.raises(FFCLIPError) as e:
            load_prompts(str(path))
        assert str(path) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- dataset from files

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A custom-domain dataset built in-process from random .npy files; returns (data_dir, train, test)."""
    root = tmp_path_factory.mktemp("latents")
    rng = np.random.default_rng(0)
    train = rng.standard_normal((N_TRAIN, N_LATENT, DIM)).astype(np.float32)
    test = rng.standard_normal((N_TEST, N_LATENT, DIM)).astype(np.float64)  # any float dtype; stored as float32
    np.save(root / "train.npy", train)
    np.save(root / "test.npy", test)
    data_dir = str(root / "tfds")
    assert run_cli(data_main, ["build", "--domain", "custom", "--train", str(root / "train.npy"),
                               "--test", str(root / "test.npy"), "--data-dir", data_dir]) == 0
    return data_dir, train, test.astype(np.float32)


def test_build_reads_back_equal_without_tensorflow(built):
    data_dir, train, test = built
    for split, want in (("train", train), ("test", test)):
        src = open_split(data_dir, "custom", split)
        assert len(src) == len(want)
        got = src.__getitems__(list(range(len(want))))
        np.testing.assert_array_equal(np.stack([g["w"] for g in got]), want)
        assert [int(g["index"]) for g in got] == list(range(len(want)))
        assert got[0]["w"].dtype == np.float32
    assert "tensorflow" not in sys.modules
    import grain
    import tensorflow_datasets as tfds

    same = tfds.data_source("ffclip_latents/custom", data_dir=data_dir, split="test")
    np.testing.assert_array_equal(same[3]["w"], test[3])
    np.testing.assert_array_equal(grain.MapDataset.source(same)[5]["w"], test[5])


def test_build_leaves_nothing_in_the_temp_dir(tmp_path, monkeypatch):
    """A build writes only its dataset: TFDS's DatasetInfo made (and left) an empty temporary folder per build."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    rng = np.random.default_rng(1)
    splits = {s: rng.standard_normal((2, N_LATENT, DIM)).astype(np.float32) for s in ("train", "test")}
    build(str(tmp_path / "tfds"), "custom", splits, {})
    assert os.listdir(temp) == []


def test_cli_subprocess_build_info_and_no_overwrite(tmp_path, capsys):
    np.save(tmp_path / "train_latents.npy", np.ones((3, 18, 512), np.float32))
    np.save(tmp_path / "test_latents.npy", np.zeros((2, 18, 512), np.float16))
    args = ["build", "--domain", "ffhq", "--manual-dir", str(tmp_path), "--data-dir", str(tmp_path / "d")]
    r = subprocess.run([sys.executable, "-m", "ffclip_jax", "data"] + args, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "wrote ffclip_latents/ffhq (train 3, test 2; w (18, 512))" in r.stdout
    assert run_cli(data_main, args) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and len(err.splitlines()) == 1
    assert run_cli(data_main, ["info", "--domain", "ffhq", "--data-dir", str(tmp_path / "d")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["n_latent"], info["style_dim"], info["splits"]) == (18, 512, {"train": 3, "test": 2})
    assert info["source"]["source"] == "files"


SHAPE_ERROR = "expected float w+ latents of shape (N, 18, 512) or (18, 512) (expected by domain ffhq), got"
BAD_INPUTS = {
    "wrong rank": (np.zeros((4, 18 * 512), np.float32), f"{SHAPE_ERROR} float32 (4, 9216)"),
    "wrong n_latent": (np.zeros((4, 14, 512), np.float32), f"{SHAPE_ERROR} float32 (4, 14, 512)"),
    "wrong style dim": (np.zeros((4, 18, 256), np.float32), f"{SHAPE_ERROR} float32 (4, 18, 256)"),
    "int dtype": (np.zeros((4, 18, 512), np.int64), f"{SHAPE_ERROR} int64 (4, 18, 512)"),
    "nan": (np.concatenate([np.zeros((2, 18, 512)), np.full((1, 18, 512), np.nan)]).astype(np.float32),
            "latent 2 contains NaN"),
    "inf": (np.full((1, 18, 512), np.inf, np.float32), "latent 0 contains NaN or inf"),
    "empty": (np.zeros((0, 18, 512), np.float32), "empty"),
    "missing": (None, "no such latents file"),
    "not npy": (b"this is not an array", "not a readable .npy"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_latents_one_line_error_and_nothing_written(tmp_path, capsys, case):
    content, words = BAD_INPUTS[case]
    np.save(tmp_path / "good.npy", np.zeros((2, 18, 512), np.float32))
    bad = tmp_path / "bad.npy"
    if isinstance(content, np.ndarray):
        np.save(bad, content)
    elif content is not None:
        bad.write_bytes(content)
    rc = run_cli(data_main, ["build", "--domain", "ffhq", "--train", str(tmp_path / "good.npy"), "--test", str(bad),
                             "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {bad}:") and words in err, err
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- synthetic source

@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    """A random Generator(size=16, style_dim=64, n_mlp=2) saved as a converted directory (n_latent 6)."""
    config = dict(size=16, style_dim=64, n_mlp=2)
    shapes = jax.eval_shape(Generator(**config).init, jax.random.PRNGKey(0), jnp.zeros((1, 64)))
    rng = np.random.default_rng(0)  # random values straight from numpy: no slow eager init of the synthesis net
    variables = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
    variables["buffers"]["latent_avg"] = np.full((64,), 0.3, np.float32)
    path = str(tmp_path_factory.mktemp("gen") / "stylegan2")
    pretrained.save(path, "stylegan2", config, variables)
    return path


def test_synthetic_latents_deterministic_truncated_broadcast(tiny_generator):
    module, variables = pretrained.load(tiny_generator)
    w1 = synthetic_latents(module, variables, 10, seed=3, stream=0, chunk=4)
    assert w1.shape == (10, 6, 64) and w1.dtype == np.float32
    np.testing.assert_array_equal(w1, w1[:, :1].repeat(6, 1))  # w broadcast to every layer
    np.testing.assert_array_equal(w1, synthetic_latents(module, variables, 10, seed=3, stream=0))  # chunk-free
    assert not np.allclose(w1, synthetic_latents(module, variables, 10, seed=4, stream=0))
    avg = np.asarray(variables["buffers"]["latent_avg"])
    wt = synthetic_latents(module, variables, 10, seed=3, stream=0, truncation=0.5)
    # avg + 0.5 (w - avg), then minus avg again: 4 float32 roundings of magnitudes <= max |w| + |avg|
    np.testing.assert_allclose(wt - avg, 0.5 * (w1 - avg), rtol=0, atol=4 * U32 * (np.abs(w1).max() + 0.3))


def test_synthetic_build_and_generator_checks(tiny_generator, tmp_path, capsys):
    data_dir = str(tmp_path / "d")
    assert run_cli(data_main, ["build", "--domain", "ffhq", "--synthetic", "10", "--synthetic-test", "4",
                               "--generator", tiny_generator, "--truncation", "0.7", "--seed", "5",
                               "--data-dir", data_dir]) == 0
    module, variables = pretrained.load(tiny_generator)
    want = synthetic_latents(module, variables, 10, seed=5, stream=0, truncation=0.7)
    src = open_split(data_dir, "ffhq", "train")
    np.testing.assert_array_equal(np.stack([src[i]["w"] for i in range(10)]), want)
    assert len(open_split(data_dir, "ffhq", "test")) == 4  # same shapes as above: no recompilation
    # files checked against the generator's n_latent (6), not the ffhq default (18)
    np.save(tmp_path / "w18.npy", np.zeros((2, 18, 64), np.float32))
    capsys.readouterr()
    assert run_cli(data_main, ["build", "--domain", "ffhq", "--train", str(tmp_path / "w18.npy"), "--test",
                               str(tmp_path / "w18.npy"), "--generator", tiny_generator,
                               "--data-dir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert "shape (N, 6, 64) or (6, 64) (expected by generator" in err and "got float32 (2, 18, 64)" in err
    assert len(err.splitlines()) == 1


# ---------------------------------------------------------------- input pipeline

def test_train_batches_deterministic_and_prompt_uniform(built):
    src = open_split(built[0], "custom", "train")
    make = lambda seed: TrainBatches(src, global_batch_size=8, num_prompts=5, seed=seed, prefetch=2)  # noqa: E731
    with make(1) as a, make(1) as b, make(2) as c:
        first, second = batches(a, 10), batches(b, 10)
        assert_same_batches(first, second)
        assert not np.array_equal(first[0]["index"], batches(c, 1)[0]["index"])
    assert a.steps_per_epoch == N_TRAIN // 8  # last partial global batch dropped
    b0 = first[0]
    assert b0["w"].shape == (8, N_LATENT, DIM) and b0["w"].dtype == np.float32
    assert b0["prompt"].dtype == np.int32 and b0["index"].dtype == np.int32
    np.testing.assert_array_equal(b0["w"], built[1][b0["index"]])
    epochs = [np.concatenate([x["index"] for x in first[e * 4:(e + 1) * 4]]) for e in range(2)]
    assert all(len(set(e)) == 32 for e in epochs) and not np.array_equal(epochs[0], epochs[1])  # reshuffled
    # prompts: uniform over entries (duplicates weigh), fresh per epoch
    from ffclip_jax.data import train_prompts

    counts = np.bincount(train_prompts(0, 0, np.arange(53_000), 53), minlength=53)
    # integer hashing: the same counts everywhere; a uniform draw gives 1000 +- 31 per entry, 850..1150 is 4.8 sigma
    assert counts.min() > 850 and counts.max() < 1150
    assert (train_prompts(0, 0, np.arange(100), 53) != train_prompts(0, 1, np.arange(100), 53)).any()


def test_resume_continues_exactly(built):
    src = open_split(built[0], "custom", "train")
    with TrainBatches(src, global_batch_size=8, num_prompts=7, seed=3) as full:
        reference = batches(full, 11)  # crosses two epoch boundaries (4 batches per epoch)
    with TrainBatches(src, global_batch_size=8, num_prompts=7, seed=3, prefetch=3) as first:
        head = batches(first, 6)
        saved = json.loads(json.dumps(first.state()))
    assert (saved["epoch"], saved["position"]) == (1, 2)
    with TrainBatches(src, global_batch_size=8, num_prompts=7, seed=3, state=saved) as resumed:
        tail = batches(resumed, 5)
    assert_same_batches(head + tail, reference)
    with pytest.raises(FFCLIPError, match="global_batch_size=8 but this pipeline has 4"):
        TrainBatches(src, global_batch_size=4, num_prompts=7, seed=3, state=saved)


def test_four_processes_cover_each_example_once_per_epoch(built):
    src = open_split(built[0], "custom", "train")
    single = TrainBatches(src, global_batch_size=8, num_prompts=5, seed=9, prefetch=0, num_epochs=2)
    whole = list(single)
    assert len(whole) == 2 * single.steps_per_epoch
    shares = [list(TrainBatches(src, global_batch_size=8, num_prompts=5, seed=9, prefetch=0, num_epochs=2,
                                process_index=p, process_count=4)) for p in range(4)]
    for step, batch in enumerate(whole):
        joined = {k: np.concatenate([shares[p][step][k] for p in range(4)]) for k in batch}
        assert_same_batches([joined], [batch])  # the 4 local shares make up the global batch
    for epoch in range(2):
        seen = np.concatenate([s[step]["index"] for s in shares
                               for step in range(epoch * 4, (epoch + 1) * 4)])
        assert len(seen) == len(set(seen)) == 32  # every kept example exactly once; 37 - 32 = 5 dropped


def test_sharded_placement_on_8_devices(built):
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    src = open_split(built[0], "custom", "train")
    with TrainBatches(src, global_batch_size=16, num_prompts=5, seed=0, sharding=sharding) as placed, \
            TrainBatches(src, global_batch_size=16, num_prompts=5, seed=0, prefetch=0) as host:
        got, want = next(placed), next(host)
    for key in ("w", "prompt", "index"):
        assert isinstance(got[key], jax.Array) and got[key].shape[0] == 16
        assert got[key].sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data")), got[key].ndim)
        assert {s.data.shape[0] for s in got[key].addressable_shards} == {2}
        np.testing.assert_array_equal(np.asarray(got[key]), want[key])
    with pytest.raises(FFCLIPError, match="does not split evenly"):
        TrainBatches(src, global_batch_size=12, num_prompts=5, sharding=sharding)


def test_eval_batches_in_order_with_fixed_prompts(built):
    data_dir, _, test = built
    src = open_split(data_dir, "custom", "test")
    run = lambda bs: list(eval_batches(src, batch_size=bs, num_prompts=5, seed=1))  # noqa: E731
    got = run(4)
    assert len(got) == 2 and got[1]["valid"].tolist() == [True, True, True, False]
    index = np.concatenate([b["index"][b["valid"]] for b in got])
    np.testing.assert_array_equal(index, np.arange(N_TEST))
    np.testing.assert_array_equal(np.concatenate([b["w"] for b in got])[:N_TEST], test)
    prompts = np.concatenate([b["prompt"][b["valid"]] for b in got])
    np.testing.assert_array_equal(prompts, np.concatenate([b["prompt"][b["valid"]] for b in run(2)]))
