"""Files and directories the tools write follow the umask like any other program's (0644 / 0755 under umask 022,
0600 / 0700 under 077): atomic writes (PNG, .npy, JSON), converted directories (orbax inside), training checkpoints,
TFDS datasets. The trainer's and the editor's own outputs are checked end to end in test_train."""
import os
import stat

import numpy as np
import orbax.checkpoint as ocp
import pytest

from ffclip_jax.cli.data import main as data_main
from ffclip_jax.fileio import atomic_write, write_json_atomic
from ffclip_jax.grid import save_png
from ffclip_jax.train import checkpoint as ckpt
from ffclip_jax.weights import pretrained


def modes_not_following(root, umask):
    """(mode, path) of every directory not 0777 & ~umask and every file not 0666 & ~umask under root (root too)."""
    bad = []
    for directory, dirs, files in os.walk(root):
        for path, full in [(directory, 0o777)] + [(os.path.join(directory, f), 0o666) for f in files]:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if mode != full & ~umask:
                bad.append((oct(mode), path))
    return sorted(set(bad))


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_written_files_follow_the_umask(umask, tmp_path, capsys):
    out = tmp_path / "out"
    save_png(str(out / "images" / "a.png"), np.zeros((4, 4, 3), np.float32))
    atomic_write(str(out / "w.npy"), lambda tmp: np.save(tmp, np.ones(2)))
    write_json_atomic(str(out / "manifest.json"), {"a": 1})
    pretrained.save(str(out / "model"), "stylegan2", {"size": 8}, {"params": {"w": np.ones(3, np.float32)}})
    manager = ckpt.checkpoint_manager(str(out / "workdir"), keep=2)
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": np.ones(4, np.float32)}),
                                            data=ocp.args.JsonSave({"epoch": 0})), force=True)
    manager.wait_until_finished()
    manager.close()
    np.save(tmp_path / "latents.npy", np.zeros((3, 6, 16), np.float32))
    assert data_main(["build", "--domain", "custom", "--train", str(tmp_path / "latents.npy"), "--test",
                      str(tmp_path / "latents.npy"), "--data-dir", str(out / "data")]) is None
    # TFDS's "Downloading and preparing dataset" and its progress bars are not printed (logs.QuietPreparation)
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [f"wrote ffclip_latents/custom (train 3, test 3; w (6, 16)) to "
                                        f"{out / 'data' / 'ffclip_latents' / 'custom' / '1.0.0'}"] and not printed.err
    assert not modes_not_following(str(out), umask)
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporaries left
