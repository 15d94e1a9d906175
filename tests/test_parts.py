"""Resumable parts (ffclip_jax.parts) and photos to the training set (`ffclip data build --images`): the split of the
parts between processes, a changed plan refused, the seeded and listed train/test split, photos without a face or
unreadable skipped and counted (dataset + skipped = inputs), and `kill -9` for real: a build killed with SIGKILL at
several points (FFCLIP_CRASH_AT, deterministic), resumed by the same command, equals an uninterrupted build array for
array. The multi-process runs (2 processes x 4 devices against 1 x 8, a failed host, a rerun doing only what it left)
are in the slow suite."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ffclip_jax import parts
from ffclip_jax.cli import data as data_cli, evaluate as evaluate_cli, invert as invert_cli
from ffclip_jax.data import describe, open_split
from ffclip_jax.data.photos import build_from_photos, seeded_is_test, split_photos
from ffclip_jax.errors import FFCLIPError, InputError, run_cli
from ffclip_jax.pipeline import Editor
from parity import ROOT
from test_align import drawn_photos, predictor_path  # noqa: F401  (fixtures)
from test_evaluate import stub_arcface, tiny_weights  # noqa: F401  (fixtures)
from test_invert import encoder_dir  # noqa: F401  (fixture)

BATCH = 2  # test_invert's and test_pipeline's batch: their compilations serve here


def test_parts_split_between_processes_and_resume(tmp_path):
    items = [f"f{i}" for i in range(10)]
    jobs = [parts.Parts(tmp_path / "w", items, 3, {"tool": "t"}, process=p, processes=2) for p in (0, 1)]
    assert jobs[0].count == 4 and [j.mine() for j in jobs] == [[0, 2], [1, 3]]
    assert [jobs[0].part_items(i) for i in range(4)] == [items[0:3], items[3:6], items[6:9], items[9:]]
    jobs[1].save(3, {"a": np.arange(2)}, {"note": "x"})
    assert jobs[1].todo() == [1] and jobs[0].todo() == [0, 2] and jobs[1].done_items() == 1
    assert jobs[0].missing() == [0, 1, 2]
    arrays, info = jobs[0].load(3)
    np.testing.assert_array_equal(arrays["a"], np.arange(2))
    assert info == {"note": "x"}
    # one process resumes what two started: the parts depend on the items and the part size only
    solo = parts.Parts(tmp_path / "w", items, 3, {"tool": "t"}, process=0, processes=1)
    assert solo.todo() == [0, 1, 2]
    with pytest.raises(InputError, match=r"holds the unfinished parts of another run \(items, part_size differ\)"):
        parts.Parts(tmp_path / "w", items[:9], 4, {"tool": "t"})
    with pytest.raises(InputError, match=r"\(tool differ\); rerun that command to finish it, or remove the folder"):
        parts.Parts(tmp_path / "w", items, 3, {"tool": "u"})
    with pytest.raises(InputError, match=r"3 of 4 parts unfinished \(0, 1, 2\); rerun the same command"):
        solo.finish()


def test_crash_point_kills_the_kth_time():
    code = ("from ffclip_jax.parts import crash_point\nfor i in range(3):\n    crash_point('here')\n"
            "    print(i, flush=True)\n")
    env = dict(os.environ, PYTHONPATH=ROOT, FFCLIP_CRASH_AT="here:2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == -signal.SIGKILL and out.stdout.split() == ["0"]


def test_seeded_and_listed_splits(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    names = [f"{i:02d}.png" for i in range(30)] + ["sub/a.jpg"]
    for n in names:
        (folder / n).write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    got, splits, rule = split_photos(str(folder), test_fraction=0.3, seed=1)
    assert got == sorted(names) and rule["rule"] == "seeded" and rule["seed"] == 1
    assert splits == ["test" if seeded_is_test(n, 1, 0.3) else "train" for n in got]
    assert 3 <= splits.count("test") <= 15  # 30% of 31 photos: a hash, not a count, decides each one
    again, splits_of_more, _ = split_photos(str(folder), test_fraction=0.3, seed=1)
    assert splits_of_more == splits  # deterministic
    (tmp_path / "train.txt").write_text("# train\n00.png\nsub/a.jpg\n\n")
    (tmp_path / "test.txt").write_text("05.png\n")
    got, splits, rule = split_photos(str(folder), train_list=str(tmp_path / "train.txt"),
                                     test_list=str(tmp_path / "test.txt"))
    assert got == ["00.png", "05.png", "sub/a.jpg"] and splits == ["train", "test", "train"]
    assert rule["rule"] == "lists" and rule["unlisted_files_ignored"] == 28
    (tmp_path / "bad.txt").write_text("05.png\nmissing.png\n")
    for train, test, message in (("train.txt", "bad.txt", r"--test-list .*bad.txt: 1 listed file\(s\) not under"),
                                 ("train.txt", "train.txt", r"00.png is in both --train-list and --test-list"),
                                 ("train.txt", None, "give both --train-list and --test-list")):
        with pytest.raises(FFCLIPError, match=message):
            split_photos(str(folder), train_list=str(tmp_path / train),
                         test_list=test and str(tmp_path / test))
    with pytest.raises(FFCLIPError, match="puts none of the 31 photos in test"):
        split_photos(str(folder), test_fraction=1e-9)


def _photos(folder, n=10, seed=0):
    """n random photos (some in a subfolder) and an unreadable file."""
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(
            folder / ("sub" if i % 4 == 0 else "") / f"{i:02d}.png")
    (folder / "05_broken.png").write_bytes(b"not a png")
    return folder


def _dataset(data_dir):
    """Every array of both splits and the metadata of the built custom dataset."""
    out = {"meta": describe(str(data_dir), "custom")}
    for split in ("train", "test"):
        src = open_split(str(data_dir), "custom", split)
        out[split] = {k: np.stack([np.asarray(src[i][k]) for i in range(len(src))]) for k in ("w", "index", "source")}
    return out


def assert_same_dataset(a, b):
    assert a["meta"]["source"] == b["meta"]["source"] and a["meta"]["splits"] == b["meta"]["splits"]
    for split in ("train", "test"):
        for k in ("w", "index", "source"):
            np.testing.assert_array_equal(a[split][k], b[split][k], err_msg=f"{split} {k}")


def _build_args(photos, encoder, data_dir):
    return ["build", "--domain", "custom", "--images", str(photos), "--encoder", encoder, "--data-dir",
            str(data_dir), "--part-size", "3", "--batch-size", str(BATCH), "--test-fraction", "0.3"]


@pytest.fixture(scope="module")
def built(encoder_dir, tmp_path_factory):
    """Photos and their dataset built uninterrupted in this process."""
    base = tmp_path_factory.mktemp("built")
    photos = _photos(base / "photos")
    assert run_cli(data_cli.main, _build_args(photos, encoder_dir, base / "data")) == 0
    return photos, base / "data", _dataset(base / "data")


def test_photos_dataset_records_sources_and_skipped(built, encoder_dir):
    photos, data_dir, ds = built
    meta = ds["meta"]["source"]
    inputs = sorted(os.path.relpath(os.path.join(r, f), photos).replace(os.sep, "/")
                    for r, _, fs in os.walk(photos) for f in fs)
    assert meta["inputs"] == len(inputs) == 11 and [s[0] for s in meta["skipped"]] == ["05_broken.png"]
    assert "not a readable image" in meta["skipped"][0][1]
    sizes = ds["meta"]["splits"]
    assert sizes["train"] + sizes["test"] + len(meta["skipped"]) == meta["inputs"]  # nothing lost, nothing twice
    for split in ("train", "test"):
        for index, source in zip(ds[split]["index"], ds[split]["source"]):
            assert inputs[index] == source.decode()
            assert seeded_is_test(source.decode(), 0, 0.3) == (split == "test")
    assert meta["split"]["rule"] == "seeded" and meta["split"]["test_fraction"] == 0.3
    editor = Editor.from_pretrained(encoder_dir, batch_size=BATCH)
    files = [str(photos / s.decode()) for s in ds["train"]["source"]]
    np.testing.assert_array_equal(ds["train"]["w"], editor.invert([np.asarray(Image.open(f)) for f in files]))
    assert not os.path.exists(os.path.join(ds["meta"]["path"]) + ".parts")
    assert run_cli(data_cli.main, _build_args(photos, encoder_dir, data_dir)) == 0  # the same command: built already
    assert_same_dataset(_dataset(data_dir), ds)


def test_faceless_photos_skipped_and_counted(encoder_dir, predictor_path, drawn_photos, tmp_path):
    """With a predictor: the photo without a face and the broken one are skipped and listed; the group photo's
    largest face is the row."""
    photo_dir, _, _ = drawn_photos
    editor = Editor.from_pretrained(encoder_dir, batch_size=BATCH, align=predictor_path)
    done = build_from_photos(str(tmp_path / "data"), "custom", str(photo_dir), editor, align=predictor_path,
                             part_size=2, test_fraction=0.5, seed=3)
    skipped = dict(done["skipped"])
    assert set(skipped) == {"broken.jpg", "plain.png"} and skipped["plain.png"].endswith("no face found")
    assert sum(done["splits"].values()) + len(skipped) == 4 == done["source"]["inputs"]
    assert done["source"]["align"] == os.path.abspath(predictor_path)


def _child_env(jit_cache, **extra):
    """The children's environment: the tests' float32 matmul precision, no crash hook unless given, and one
    persistent compilation cache (the first child compiles, the others load)."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_DEFAULT_MATMUL_PRECISION="highest",
               JAX_COMPILATION_CACHE_DIR=str(jit_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra)
    env.pop(parts.CRASH_ENV, None)
    return env


def _run_build(args, jit_cache, crash=None, timeout=600):
    env = _child_env(jit_cache)
    if crash:
        env[parts.CRASH_ENV] = crash
    return subprocess.run([sys.executable, "-m", "ffclip_jax", "data", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def test_kill_9_at_several_points_then_resume(built, encoder_dir, tmp_path):
    """The build of `built` in subprocesses, each killed with SIGKILL at a named point, then run to the end by the
    same command: the dataset equals the uninterrupted one, array for array. 11 inputs in parts of 3 (4 parts)."""
    photos, _, want = built
    data_dir = tmp_path / "data"
    args = _build_args(photos, encoder_dir, data_dir)
    work = os.path.join(data_dir, "ffclip_latents", "custom", "1.0.0.parts")
    saved = lambda: sorted(f for f in os.listdir(work) if f.startswith("part-"))  # noqa: E731
    steps = [("part-written:2", ["part-00000.npz"]),        # the 2nd part's temporary file written, not renamed
             ("part-saved:1", ["part-00000.npz", "part-00001.npz"]),
             ("dataset-example:4", [f"part-0000{i}.npz" for i in range(4)]),  # all parts; the dataset half written
             ("dataset-renamed", [f"part-0000{i}.npz" for i in range(4)])]    # the dataset in place, parts not removed
    for crash, parts_after in steps:
        out = _run_build(args, tmp_path / "jit", crash)
        assert out.returncode == -signal.SIGKILL, (crash, out.stderr[-3000:])
        assert saved() == parts_after, crash
        if crash == "part-written:2":
            assert [f for f in os.listdir(work) if f.startswith(".part-")]  # the killed write's temporary file
    out = _run_build(args, tmp_path / "jit")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "is built already from these photos" in out.stderr
    assert not os.path.exists(work)
    assert not [f for f in os.listdir(os.path.dirname(work)) if f.startswith(".")]  # no temporary dataset left
    assert_same_dataset(_dataset(data_dir), want)


# ---------------------------------------------------------------------------------------------------------------
# several processes (slow): 2 processes x 4 CPU devices against 1 x 8


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(command, args, jit_cache, crash_process_1=None):
    """`ffclip COMMAND ARGS --distributed ...` as 2 processes of 4 CPU devices each, 1 row per device; Popen
    objects (process 1 with FFCLIP_CRASH_AT=crash_process_1 if given)."""
    port = _free_port()
    procs = []
    for pid in range(2):
        env = _child_env(jit_cache, XLA_FLAGS="--xla_force_host_platform_device_count=4")
        if pid == 1 and crash_process_1:
            env[parts.CRASH_ENV] = crash_process_1
        cmd = [sys.executable, "-m", "ffclip_jax", command, *args, "--devices", "4", "--batch-size", "4",
               "--distributed", "--coordinator-address", f"localhost:{port}", "--num-processes", "2",
               "--process-id", str(pid)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=ROOT))
    return procs


def _finish(procs, timeout=900):
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


@pytest.mark.slow
def test_two_processes_equal_one(encoder_dir, tiny_weights, tmp_path, capsys):
    """invert, data build and evaluate as 2 processes x 4 devices write the files of one process x 8 devices (the
    same rows per device: 1), bit for bit."""
    photos = _photos(tmp_path / "photos", n=13)
    one = ["--devices", "8", "--batch-size", "8"]
    inv = ["--encoder", encoder_dir, "--images", str(photos), "--part-size", "3"]
    build = ["build", "--domain", "custom", "--images", str(photos), "--encoder", encoder_dir, "--part-size", "3",
             "--test-fraction", "0.3"]
    # MoCo scores (--domain other): the faces' ArcFace of the tiny weights is a stand-in the children cannot load
    ev = ["--weights", str(tiny_weights / "weights"), "--latents", str(tiny_weights / "latents.npy"), "--prompts",
          str(tiny_weights / "prompts.txt"), "--cache-dir", str(tiny_weights / "cache"), "--part-size", "1",
          "--domain", "other"]
    assert run_cli(invert_cli.main, inv + one + ["--output", str(tmp_path / "one" / "latents.npy")]) == 0
    assert run_cli(data_cli.main, build + one + ["--data-dir", str(tmp_path / "one_data")]) == 0
    assert run_cli(evaluate_cli.main, ev + one + ["--output", str(tmp_path / "one_eval")]) == 0
    capsys.readouterr()
    _finish(_two_processes("invert", inv + ["--output", str(tmp_path / "two" / "latents.npy")], tmp_path / "jit"))
    _finish(_two_processes("data", build + ["--data-dir", str(tmp_path / "two_data")], tmp_path / "jit"))
    _finish(_two_processes("evaluate", ev + ["--output", str(tmp_path / "two_eval")], tmp_path / "jit"))
    np.testing.assert_array_equal(np.load(tmp_path / "two" / "latents.npy"), np.load(tmp_path / "one" / "latents.npy"))
    assert (tmp_path / "two" / "latents.json").read_text() == (tmp_path / "one" / "latents.json").read_text()
    assert_same_dataset(_dataset(tmp_path / "two_data"), _dataset(tmp_path / "one_data"))
    r1, r2 = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one_eval", "two_eval"))
    assert r2["per_example"] == r1["per_example"] and r2["meta"] == r1["meta"]


@pytest.mark.slow
def test_failed_host_leaves_its_parts_and_a_rerun_does_only_them(encoder_dir, tmp_path):
    """Process 1 is killed (SIGKILL) after saving its first part; process 0 saves all of its parts and waits for
    it (then it is killed too, as its host's job would be). The same 2-process command run again computes only
    the missing parts and writes the files of a one-process run. (That saved parts are not redone is seen by
    marking one: its codes + 1 before the rerun come out in the result.)"""
    photos = _photos(tmp_path / "photos", n=13)  # invert takes the folder's own 10 files: parts of 2, 5 parts
    inv = ["--encoder", encoder_dir, "--images", str(photos), "--part-size", "2",
           "--output", str(tmp_path / "two" / "latents.npy")]
    work = tmp_path / "two" / "latents.parts"
    procs = _two_processes("invert", inv, tmp_path / "jit", crash_process_1="part-saved:1")
    procs[1].communicate(timeout=900)
    assert procs[1].returncode == -signal.SIGKILL
    deadline = time.time() + 900
    while not all((work / f"part-{i:05d}.npz").is_file() for i in (0, 2, 4)):  # process 0's parts
        assert time.time() < deadline and procs[0].poll() is None, "process 0 did not finish its parts"
        time.sleep(0.5)
    procs[0].kill()
    procs[0].communicate()
    assert sorted(f for f in os.listdir(work) if f.startswith("part-")) == [f"part-{i:05d}.npz" for i in (0, 1, 2, 4)]
    items = json.loads((work / "plan.json").read_text())["items"]
    marked_items = []
    for i in (1, 4):  # one saved part of each process, marked: its codes + 1
        with np.load(work / f"part-{i:05d}.npz") as f:
            saved = {k: f[k] for k in f.files}
        marked_items += [items[k] for k in saved["kept"]]
        np.savez(work / f"part-{i:05d}.npz", **dict(saved, w=saved["w"] + 1))
    _finish(_two_processes("invert", inv, tmp_path / "jit"))
    assert not work.exists()
    assert run_cli(invert_cli.main, inv[:-1] + [str(tmp_path / "one" / "latents.npy"), "--devices", "8",
                                                "--batch-size", "8"]) == 0
    one, two = (np.load(tmp_path / d / "latents.npy") for d in ("one", "two"))
    sources = [os.path.abspath(f) for f in json.loads((tmp_path / "one" / "latents.json").read_text())]
    marked = np.isin(sources, marked_items)
    assert marked.sum() == 4
    np.testing.assert_array_equal(two[~marked], one[~marked])
    np.testing.assert_array_equal(two[marked], one[marked] + 1)
