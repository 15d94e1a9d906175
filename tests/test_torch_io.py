"""Safe checkpoint reading (`convert_weights.torch_io`): the FFCLIP release file, whose `opts` pickles OmegaConf
objects, loads as it is with and without torch; pickled code never runs (every opcode that calls or builds); legacy-
format files read without torch equal torch's own load; damaged files give one-line errors; `convert_weights ffclip`
and `convert_weights all` convert an OmegaConf release file end to end. "Without torch" runs in a subprocess where
importing torch fails."""
import argparse
import builtins
import collections
import contextlib
import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
import types
import typing
import zipfile

import jax
import numpy as np
import pytest
import torch

from convert_weights.__main__ import main as convert_main
from ffclip_jax.errors import CheckpointError, run_cli
from ffclip_jax.weights import pretrained
from convert_weights.torch_io import (LEGACY_MAGIC, LEGACY_PROTOCOL, Placeholder, ensure_loaded,
                                         flatten_state_dict, load_checkpoint)
from torch_ref import mapper as torch_mapper
from torch_ref import stylegan2 as torch_stylegan2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OMEGACONF_GLOBALS = {"omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
                     "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode",
                     "typing.Any"}

# Loads each file named on the command line in a process where `import torch` fails; writes, per file, ("ok", the
# object with placeholders as ("placeholder", name)) or ("error", message), then stdout carries the loader's notes.
TORCH_FREE = r"""
import argparse, pickle, sys
sys.modules["torch"] = None
from ffclip_jax.errors import CheckpointError
from convert_weights.torch_io import load_checkpoint, placeholder_name

def plain(obj, seen):
    if placeholder_name(obj) is not None:
        return ("placeholder", placeholder_name(obj))
    if id(obj) in seen:
        return ("cycle",)
    seen = seen | {id(obj)}
    if isinstance(obj, dict):
        out = type(obj)()
        for k, v in obj.items():
            out[k] = plain(v, seen)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v, seen) for v in obj)
    if isinstance(obj, argparse.Namespace):
        return argparse.Namespace(**{k: plain(v, seen) for k, v in vars(obj).items()})
    return obj

results = []
for path in sys.argv[2:]:
    try:
        results.append(("ok", plain(load_checkpoint(path), set())))
    except CheckpointError as e:
        results.append(("error", str(e)))
assert sys.modules["torch"] is None
with open(sys.argv[1], "wb") as f:
    pickle.dump(results, f)
"""


def torch_free(tmp_path, *paths):
    """([("ok", object) or ("error", message) per path], stdout) of `load_checkpoint` where torch cannot be imported."""
    out = tmp_path / "torch_free.pkl"
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, str(out), *map(str, paths)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:
        return pickle.load(f), proc.stdout


def assert_same(ours, theirs, where="checkpoint"):
    """`ours` (numpy) holds what `theirs` (torch's own load of a trusted file) holds: values, dtypes, shapes."""
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach()
        want = theirs.float().numpy() if theirs.dtype == torch.bfloat16 else theirs.numpy()
        assert isinstance(ours, np.ndarray), where
        assert ours.shape == tuple(theirs.shape), where
        assert ours.dtype.name == str(theirs.dtype).replace("torch.", ""), where
        np.testing.assert_array_equal(np.asarray(ours, want.dtype), want, err_msg=where)
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs), where
        for k in theirs:
            assert_same(ours[k], theirs[k], f"{where}[{k!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is (tuple if isinstance(theirs, tuple) else list), where  # torch.Size: a tuple
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(theirs, argparse.Namespace):
        assert isinstance(ours, argparse.Namespace), where
        assert_same(vars(ours), vars(theirs), where)
    else:
        assert ours == theirs and type(ours) is type(theirs), where


def assert_one_line_error(info, path, text):
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and text in msg, msg


def pickled_globals(path):
    """'module.name' of every GLOBAL in a zip-format checkpoint's data.pkl (torch.save uses pickle protocol 2)."""
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


# ------------------------------------------------------------------------------------------------------------------
# the FFCLIP release file: {'state_dict': ..., 'opts': vars(OmegaConf config)}


class _Record:
    """Pickles like omegaconf's containers, nodes and metadata: the class, then its attribute dict."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)


@contextlib.contextmanager
def omegaconf_standins():
    """Stand-ins for the five omegaconf classes, importable under omegaconf's names while a test pickles them (omegaconf
    itself is not installed): {class name: class}."""
    classes, modules = {}, {"omegaconf": types.ModuleType("omegaconf")}
    for full in sorted(OMEGACONF_GLOBALS - {"typing.Any"}):
        module, name = full.rsplit(".", 1)
        classes[name] = type(name, (_Record,), {"__module__": module, "__qualname__": name})
        setattr(modules.setdefault(module, types.ModuleType(module)), name, classes[name])
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield classes
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module


def omegaconf_opts(c):
    """`vars(OmegaConf.load(train_configs.yaml))` as Coach.__get_save_dict stores it (nodes point back at their
    parents, so the top-level DictConfig is pickled too)."""
    def metadata(key):
        return c["Metadata"](ref_type=typing.Any, object_type=None, optional=True, key=key, flags={},
                             flags_root=False, resolver_cache={})

    def container_metadata(key):
        return c["ContainerMetadata"](ref_type=typing.Any, object_type=None, optional=True, key=key, flags={},
                                      flags_root=False, resolver_cache={}, key_type=typing.Any,
                                      element_type=typing.Any)

    def node(parent, key, value):
        return c["AnyNode"](_metadata=metadata(key), _parent=parent, _val=value)

    root = c["DictConfig"](_metadata=container_metadata(None), _parent=None, _flags_cache=None)
    train = c["DictConfig"](_metadata=container_metadata("train"), _parent=root, _flags_cache=None)
    milestones = c["ListConfig"](_metadata=container_metadata("milestones"), _parent=train, _flags_cache=None)
    milestones._content = [node(milestones, i, v) for i, v in enumerate([0.5, 0.75, 0.9, 0.95])]
    train._content = {"learning_rate": node(train, "learning_rate", 0.0005), "epochs": node(train, "epochs", 20),
                      "milestones": milestones}
    root._content = {"train": train, "exp_dir": node(root, "exp_dir", "experiments/ffhq"),
                     "batch_size": node(root, "batch_size", 8)}
    return vars(root)


def save_release_file(path, state_dict):
    with omegaconf_standins() as classes:
        torch.save({"state_dict": state_dict, "opts": omegaconf_opts(classes)}, path)
    return path


def _small_state_dict():
    g = torch.Generator().manual_seed(0)
    return collections.OrderedDict(
        (k, torch.randn(*shape, generator=g)) for k, shape in [("module.att_mapper.0.q_matrix.weight", (8, 8)),
                                                               ("module.att_mapper.0.gamma_.1.bias", (8,)),
                                                               ("module.generator.input.input", (1, 8, 4, 4))])


def test_release_file_loads_with_and_without_torch(tmp_path, capsys):
    sd = _small_state_dict()
    path = save_release_file(tmp_path / "ffclip.pt", sd)
    found = pickled_globals(path)
    assert {g for g in found if not g.startswith("torch.")} == OMEGACONF_GLOBALS | {"collections.OrderedDict"}
    with pytest.raises(pickle.UnpicklingError):  # why the loader falls back to its own unpickler
        torch.load(path, weights_only=True)

    with_torch = load_checkpoint(path)
    note = capsys.readouterr().out
    assert note.count("\n") == 1 and note.startswith(f"note: ignored non-tensor objects in {path}: ")
    assert all(g in note for g in OMEGACONF_GLOBALS)
    load_checkpoint(path)  # named once per file
    assert capsys.readouterr().out == ""
    [(status, without)], stdout = torch_free(tmp_path, path)
    assert status == "ok" and stdout == note

    for ckpt in (with_torch, without):
        assert list(ckpt) == ["state_dict", "opts"] and isinstance(ckpt["state_dict"], collections.OrderedDict)
        assert_same(ckpt["state_dict"], sd)
    assert set(with_torch["opts"]) == {"_metadata", "_parent", "_flags_cache", "_content"}
    content = with_torch["opts"]["_content"]
    assert isinstance(content["train"], Placeholder)
    assert content["train"].global_name == "omegaconf.dictconfig.DictConfig"
    assert content["train"].state["_content"]["learning_rate"].state["_val"] == 0.0005  # recorded, never built
    assert without["opts"]["_content"] == {k: ("placeholder", "omegaconf.dictconfig.DictConfig" if k == "train" else
                                               "omegaconf.nodes.AnyNode") for k in ("train", "exp_dir", "batch_size")}
    assert flatten_state_dict(with_torch["state_dict"]).keys() == sd.keys()


# ------------------------------------------------------------------------------------------------------------------
# pickled code never runs


class _Call:
    """Pickles as `func(*args)`; nested, as call chains such as getattr(__import__('os'), 'system')('touch X')."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __call__(self, *args):
        raise AssertionError("pickling never calls this")

    def __reduce__(self):
        return self.func, self.args


class _Thing:  # NEWOBJ + BUILD of a class outside the allow-list
    def __init__(self, value):
        self.value = value


class _Items(list):  # NEWOBJ + APPENDS on a placeholder
    pass


class _Mapping(dict):  # NEWOBJ + SETITEMS on a placeholder
    pass


SYSTEM = f"{os.system.__module__}.system"  # posix.system


def _payloads(sentinels):
    """Globals and calls that would each run `touch SENTINEL` (or could run anything) if unpickled."""
    s = [str(p) for p in sentinels]
    return {"system": os.system, "eval": builtins.eval, "popen": subprocess.Popen,
            "calls": [_Call(os.system, f"touch {s[0]}"),
                      _Call(builtins.eval, f"__import__('os').system('touch {s[1]}')"),
                      _Call(subprocess.Popen, ["touch", s[2]]),
                      _Call(_Call(getattr, _Call(__import__, "os"), "system"), f"touch {s[3]}")],
            "built": [_Thing(torch.ones(2)), _Items([1, 2]), _Mapping(a=1)]}


def _raw_opcode_payload(sentinels):
    """A protocol-0/1/4 pickle exercising INST, OBJ, NEWOBJ_EX, REDUCE on REDUCE's result, BUILD, APPENDS and SETITEMS
    on globals outside the allow-list, each of which would run `touch SENTINEL` if executed."""
    s = [str(p).encode() for p in sentinels]
    items = [b"(Vtouch " + s[0] + b"\nios\nsystem\n",                                          # INST
             b"(cposix\nsystem\nVtouch " + s[1] + b"\no",                                      # OBJ
             b"csubprocess\nPopen\n(Vtouch " + s[2] + b"\nt(Vshell\nI01\nd\x92",               # NEWOBJ_EX
             b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(Vtouch " + s[3] + b"\ntR",  # call chain
             b"cevil\nThing\n)\x81(Vk\nVv\ndb",                                              # NEWOBJ + BUILD
             b"cevil\nItems\n)\x81(I1\nI2\ne",                                               # APPENDS
             b"cevil\nMapping\n)\x81(Vk\nI1\nu"]                                             # SETITEMS
    return b"](" + b"".join(items) + b"e."


def _legacy_file(path, main_pickle: bytes, keys=()):
    """A legacy-format file around a hand-written main pickle (and no storage data)."""
    sys_info = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True, "type_sizes": {"short": 2, "int": 4,
                                                                                          "long": 4}}
    path.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL, sys_info))
                     + main_pickle + pickle.dumps(list(keys), protocol=2))
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_code_never_runs(tmp_path, legacy):
    sentinels = [tmp_path / f"sentinel{i}" for i in range(8)]
    sd = {"w": torch.randn(2, 3), "b": torch.zeros(3)}
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": sd, "opts": _payloads(sentinels[:4])}, path, _use_new_zipfile_serialization=not legacy)
    raw = _legacy_file(tmp_path / "opcodes.pt", _raw_opcode_payload(sentinels[4:]))
    for use_torch in (None, False):
        ckpt = load_checkpoint(path, use_torch=use_torch)
        assert_same(ckpt["state_dict"], sd)
        opts = ckpt["opts"]
        assert {k: v.global_name for k, v in opts.items() if k in ("system", "eval", "popen")} == \
            {"system": SYSTEM, "eval": "builtins.eval", "popen": "subprocess.Popen"}
        calls = opts["calls"]
        assert [c.global_name for c in calls] == [SYSTEM, "builtins.eval", "subprocess.Popen", "builtins.getattr"]
        assert calls[0].args == (f"touch {sentinels[0]}",) and calls[3].args == (f"touch {sentinels[3]}",)
        thing, items, mapping = opts["built"]
        assert isinstance(thing.state["value"], np.ndarray) and items.items == [1, 2] and mapping.items == [("a", 1)]
        objs = load_checkpoint(raw, use_torch=use_torch)
        assert [o.global_name for o in objs] == ["os.system", "posix.system", "subprocess.Popen",
                                                 "builtins.getattr", "evil.Thing", "evil.Items", "evil.Mapping"]
        assert objs[2].args == (f"touch {sentinels[6]}",) and objs[2].kwargs == {"shell": True}
        assert objs[3].args == (f"touch {sentinels[7]}",) and objs[4].state == {"k": "v"}
    results, stdout = torch_free(tmp_path, path, raw)
    assert [r[0] for r in results] == ["ok", "ok"]
    assert results[0][1]["opts"]["system"] == ("placeholder", SYSTEM)
    assert SYSTEM in stdout and "evil.Thing" in stdout
    assert not [p for p in sentinels if p.exists()]


def test_payloads_run_when_unpickled(tmp_path):
    """The control: torch.load(weights_only=False) of the same payloads does run them."""
    sentinels = [tmp_path / f"control{i}" for i in range(4)]
    torch.save({"opts": _payloads(sentinels)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)["opts"]["calls"][2].wait()
    assert all(p.exists() for p in sentinels)


def test_tensors_inside_placeholders_are_errors(tmp_path):
    paths = [tmp_path / f"{name}.pt" for name in ("leaf", "wrapped", "listed")]
    torch.save({"state_dict": {"w": torch.ones(2), "inner": _Call(_Thing, torch.ones(3))}}, paths[0])  # an argument
    torch.save({"state_dict": _Thing({"w": torch.ones(2)}), "opts": {}}, paths[1])  # __setstate__ state
    torch.save({"state_dict": [torch.ones(2)], "opts": {"run": os.system}}, paths[2])  # a bare global
    leaf, wrapped, listed = (load_checkpoint(p) for p in paths)
    with pytest.raises(CheckpointError) as info:
        flatten_state_dict(leaf["state_dict"])
    assert_one_line_error(info, paths[0], "state dict entry 'inner'): a pickled test_torch_io._Thing object")
    with pytest.raises(CheckpointError) as info:
        flatten_state_dict(wrapped["state_dict"])
    assert_one_line_error(info, paths[1], "a pickled test_torch_io._Thing object, which is never loaded")
    with pytest.raises(CheckpointError) as info:
        ensure_loaded(wrapped["state_dict"], f"{paths[1]}[state_dict]")
    assert_one_line_error(info, f"{paths[1]}[state_dict]", "expected tensors")
    assert ensure_loaded(listed["state_dict"], "x") == listed["state_dict"]
    with pytest.raises(CheckpointError) as info:
        flatten_state_dict(listed["opts"])
    assert_one_line_error(info, paths[2], f"state dict entry 'run'): a pickled {SYSTEM} object")
    for path, text in zip(paths, ["state dict entry 'inner'): a pickled test_torch_io._Thing",
                                  "a pickled test_torch_io._Thing object, which is never loaded",
                                  "expected a state dict, found list"]):
        with pytest.raises(CheckpointError) as info:
            convert_main(["ffclip", "--input", str(path), "--output", str(tmp_path / "out")])
        assert_one_line_error(info, path, text)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------------------
# the legacy format


def _legacy_objects():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    shared = torch.randn(10, dtype=torch.float64)
    return {
        "f16": torch.randn(3, 5).half(), "f32": torch.randn(2, 3, 4), "f64": torch.randn(7, dtype=torch.float64),
        "i64": torch.arange(-5, 5), "i32": torch.arange(6, dtype=torch.int32), "u8": torch.arange(4, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]), "bf16": torch.randn(4).to(torch.bfloat16),
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3),
        "shared_a": shared[:4], "shared_b": shared[2:].view(2, 4),            # two tensors on one storage
        "slice": base[1:3, 2:], "transposed": base.t(), "row": base[2],     # views of `base`: offsets, strides
        "strided": base[:, ::2], "expanded": torch.ones(3, 1).expand(3, 4), "param": torch.nn.Parameter(torch.ones(2)),
        "args": argparse.Namespace(size=8, lr=0.002, name="ffhq", latent=torch.ones(2)),
        "nested": {"list": [torch.ones(2), 3, "x", (1, 2.5, None)],
                   "od": collections.OrderedDict(a=torch.zeros(1, 2), b=None), "size": torch.Size([2, 3])},
    }


def _pickle_ends(path):
    """End offsets of the five pickles of a legacy file (the storages follow the last)."""
    ends = []
    with open(path, "rb") as f:
        for _ in range(5):
            for _ in pickletools.genops(f):
                pass
            ends.append(f.tell())
    return ends


@pytest.fixture(scope="module")
def legacy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("legacy") / "legacy.pt"
    torch.save(_legacy_objects(), path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def damage_source(tmp_path_factory):
    """A legacy file to cut: torch writes storages in the order of their keys, which are memory addresses, so which
    storage comes first or last changes from run to run; without the empty tensor every storage holds >= 3 bytes,
    so each cut below lands in the same kind of field whatever the order (the empty-storage case is
    `test_cut_inside_an_empty_storage_count`, on a file whose layout is written by hand)."""
    path = tmp_path_factory.mktemp("damage") / "legacy.pt"
    torch.save({k: v for k, v in _legacy_objects().items() if k != "empty"}, path, _use_new_zipfile_serialization=False)
    return path


def _very_old_legacy_file(path):
    """A legacy file in the oldest layout: storage ids with view metadata (view key, offset, numel); written with a
    custom persistent_id, as today's torch writes `None` there."""
    class Storage:
        def __init__(self, key, numel, view=None):
            self.key, self.numel, self.view = key, numel, view

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = storage, offset, size, stride

        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (*self.args, False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return "storage", torch.FloatStorage, obj.key, "cpu", obj.numel, obj.view
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"whole": Tensor(Storage("root", 6), 0, (2, 3), (3, 1)),
                                   "view": Tensor(Storage("root", 6, ("v", 2, 3)), 1, (2,), (1,))})
    data = np.arange(6, dtype=np.float32)
    _legacy_file(path, buf.getvalue(), keys=["root"])
    with open(path, "ab") as f:
        f.write((6).to_bytes(8, "little") + data.tobytes())
    return path


def test_legacy_format_without_torch_equals_torch(tmp_path, legacy_file):
    old = _very_old_legacy_file(tmp_path / "old.pt")
    zip_path = tmp_path / "zip.pt"
    torch.save(_legacy_objects(), zip_path)
    results, _ = torch_free(tmp_path, legacy_file, old, zip_path)
    assert [r[0] for r in results] == ["ok"] * 3, results
    for path, (_, ours) in zip((legacy_file, old, zip_path), results):
        theirs = torch.load(path, weights_only=False)  # the test's own trusted files
        assert_same(ours, theirs)
        assert_same(load_checkpoint(path), theirs)
        assert_same(load_checkpoint(path, use_torch=False), theirs)
    np.testing.assert_array_equal(results[1][1]["view"], [3, 4])
    ours = results[0][1]
    assert all(a.flags.c_contiguous and a.flags.writeable for a in flatten_state_dict(ours).values())
    ours["shared_a"][:] = 0  # arrays are independent, as torch's .numpy().copy()
    assert ours["shared_b"].any()


def _cut(src, dst, n):
    dst.write_bytes(src.read_bytes()[:n])
    return dst


@pytest.mark.parametrize("use_torch", [False, True], ids=["inert", "torch"])
def test_damaged_files(tmp_path, damage_source, use_torch):
    legacy_file = damage_source
    ends = _pickle_ends(legacy_file)
    size = legacy_file.stat().st_size
    cuts = {"magic": ends[0] - 3, "version": ends[1] - 1, "sys info": ends[2] - 5, "object": (ends[2] + ends[3]) // 2,
            "keys": ends[4] - 2, "count": ends[4] + 4, "storage": ends[4] + 8 + 3, "last byte": size - 1}
    specific = {"magic": "not a zip-format or legacy-format PyTorch checkpoint (no zip archive, no legacy magic",
                "count": "the file ends inside the element count of storage",
                "last byte": "the file ends inside storage"}
    for what, n in cuts.items():
        path = _cut(legacy_file, tmp_path / f"cut {what}.pt", n)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, use_torch=use_torch)
        assert_one_line_error(info, path, specific.get(what, "truncated or corrupt legacy-format PyTorch checkpoint"))
    data = legacy_file.read_bytes()
    damaged = {"random.pt": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                             "not a zip-format or legacy-format PyTorch checkpoint"),
               "magic.pt": (pickle.dumps(LEGACY_MAGIC + 1, protocol=2) + data[ends[0]:],
                            "not a zip-format or legacy-format PyTorch checkpoint"),
               "version.pt": (data[:ends[0]] + pickle.dumps(1000, protocol=2) + data[ends[1]:],
                              "protocol version 1000, expected 1001"),
               "count.pt": (data[:ends[4]] + (10 ** 6).to_bytes(8, "little") + data[ends[4] + 8:],
                            "elements, expected"),
               "zip.pt": (b"PK\x03\x04" + data, "truncated or corrupt zip-format PyTorch checkpoint")}
    for name, (content, text) in damaged.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name, use_torch=use_torch)
        assert_one_line_error(info, tmp_path / name, text)
    zip_path = tmp_path / "zip_format.pt"
    torch.save({"w": torch.ones(100)}, zip_path)
    path = _cut(zip_path, tmp_path / "cut_zip.pt", zip_path.stat().st_size // 2)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, use_torch=use_torch)
    assert_one_line_error(info, path, "truncated or corrupt zip-format PyTorch checkpoint")


def test_cut_inside_an_empty_storage_count(tmp_path):
    """A file whose last storage is empty (0 elements: only its 8-byte count), cut in its last byte: the error names
    that count. Hand-written layout: storage 'a' (6 floats), then 'z' (empty)."""
    class Storage:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class Tensor:
        def __init__(self, storage, size):
            self.storage, self.size = storage, size

        def __reduce__(self):
            stride = (1,) * len(self.size)
            return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.size, stride, False,
                                                     collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel, None) if isinstance(obj, Storage) \
                else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"a": Tensor(Storage("a", 6), (6,)), "z": Tensor(Storage("z", 0), (0,))})
    path = _legacy_file(tmp_path / "empty_last.pt", buf.getvalue(), keys=["a", "z"])
    with open(path, "ab") as f:
        f.write((6).to_bytes(8, "little") + np.arange(6, dtype=np.float32).tobytes() + (0).to_bytes(8, "little"))
    whole = load_checkpoint(path, use_torch=False)
    np.testing.assert_array_equal(whole["a"], np.arange(6))
    assert whole["z"].shape == (0,)
    cut = _cut(path, tmp_path / "cut.pt", path.stat().st_size - 1)
    for use_torch in (False, True):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(cut, use_torch=use_torch)
        assert_one_line_error(info, cut, "the file ends inside the element count of storage 'z'")


def test_damaged_files_without_torch(tmp_path, damage_source):
    legacy_file = damage_source
    ends = _pickle_ends(legacy_file)
    paths = [_cut(legacy_file, tmp_path / "header.pt", ends[1] - 1), _cut(legacy_file, tmp_path / "data.pt",
                                                                           ends[4] + 20)]
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(1).integers(0, 256, 999, dtype=np.uint8).tobytes())
    results, _ = torch_free(tmp_path, *paths, tmp_path / "random.pt")
    assert [r[0] for r in results] == ["error"] * 3
    for path, (_, msg), text in zip(paths + [tmp_path / "random.pt"], results,
                                    ["truncated or corrupt legacy-format", "the file ends inside",
                                     "not a zip-format or legacy-format"]):
        assert "\n" not in msg and str(path) in msg and text in msg, msg


# ------------------------------------------------------------------------------------------------------------------
# converters, end to end


SMALL = dict(n_latent=4, dim=16, size=8)  # an 8px generator has 4 latents


@pytest.fixture(scope="module")
def omegaconf_release(tmp_path_factory):
    torch.manual_seed(3)
    ref = torch_mapper.randomize_layer_norms_(torch_mapper.DynamicMapper(SMALL["n_latent"], SMALL["dim"])).eval()
    gen = torch_stylegan2.randomize_(torch_stylegan2.Generator(SMALL["size"], style_dim=SMALL["dim"], n_mlp=2)).eval()
    folder = tmp_path_factory.mktemp("release") / "pretrained"
    folder.mkdir()
    path = save_release_file(folder / "ffhq_ffclip.pt", torch_mapper.release_checkpoint(ref, gen)["state_dict"])
    return path, ref, gen


def _check_converted(mapper_dir, generator_dir, ref, gen):
    from convert_weights.ffclip import convert_mapper

    _, variables = pretrained.load(str(mapper_dir))
    _, want = convert_mapper({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, want)
    _, gvars = pretrained.load(str(generator_dir))
    np.testing.assert_array_equal(gvars["params"]["style_1"]["weight"], gen.style[1].weight.detach().numpy().T)


def test_convert_omegaconf_release_file(omegaconf_release, tmp_path, capsys):
    path, ref, gen = omegaconf_release
    assert run_cli(convert_main, ["ffclip", "--input", str(path), "--output", str(tmp_path / "ffclip")]) == 0
    out = capsys.readouterr().out
    assert "note: ignored non-tensor objects" in out and "wrote ffclip_mapper" in out
    _check_converted(tmp_path / "ffclip", tmp_path / "ffclip" / "generator", ref, gen)

    assert run_cli(convert_main, ["all", "--from", str(path.parent), "--output", str(tmp_path / "all")]) == 0
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert manifest["networks"] == {"generator": "generator", "mapper": "mapper"} and not manifest["skipped"]
    _check_converted(tmp_path / "all" / "mapper", tmp_path / "all" / "generator", ref, gen)
