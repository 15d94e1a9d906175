"""Safe reading of PyTorch checkpoint files into nested dicts of numpy arrays: nothing in a pickle is ever run.

One inert unpickler (`_InertUnpickler`) reads every upstream format without torch: the zip format (torch >= 1.6), the
legacy format (a sequence of pickles followed by the raw storages; pre-1.6 files) and TorchScript archives (their
`data.pkl` only: the archive's code is never loaded). It resolves a short allow-list of globals (tensor and storage
rebuilding, plain containers, collections.OrderedDict/Counter, argparse.Namespace); every other global becomes a
`Placeholder` class that is never imported, constructed or called. With torch installed, `load_checkpoint` first tries
`torch.load(weights_only=True)` and falls back to the inert reader where torch refuses a file (e.g. the FFCLIP release,
whose `opts` pickles an OmegaConf config): the result is the same either way.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import collections
import os
import pickle
import zipfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import ml_dtypes
import numpy as np

from ffclip_jax.errors import CheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy-format file
LEGACY_PROTOCOL = 1001  # its second pickle
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}
_NOTED = set()  # files whose placeholders were already named (converters may read a file twice)


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _StorageType:
    """`torch.FloatStorage` and the like: only the element type is used."""

    def __init__(self, name: str):
        self.dtype = _np_dtype(_STORAGE_DTYPES[name])


class Placeholder:
    """Stands for a pickled global outside the allow-list. Each such global gets a subclass named after it
    (`global_name`, read from the file `source`); the pickle's calls of it, `__setstate__` state and appended or set
    items are only recorded (`args`, `kwargs`, `state`, `items`). Converters never use it: `flatten_state_dict` and
    `ensure_loaded` raise on it, so tensors held inside one never reach a conversion."""

    global_name = ""
    source = ""

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):  # calling what a placeholder call returned stays inert too
        return type(self)(*args, **kwargs)

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def __repr__(self):
        return f"<pickled {self.global_name} (not loaded)>"


def _rebuild_tensor(storage, offset, size, stride, *unused) -> np.ndarray:
    """A tensor as a bounds-checked numpy view of its storage (a legacy file's storages are filled afterwards)."""
    size, stride = tuple(size), tuple(stride)
    ints = all(isinstance(n, int) and n >= 0 for n in (offset, *size, *stride))
    if not (isinstance(storage, np.ndarray) and storage.ndim == 1 and storage.flags.c_contiguous) \
            or len(size) != len(stride) or not ints:
        raise ValueError("malformed tensor record")
    if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
        raise ValueError(f"tensor of size {size}, stride {stride} at offset {offset} exceeds its storage of "
                         f"{storage.size} elements")
    return np.lib.stride_tricks.as_strided(storage[offset:], size, [s * storage.itemsize for s in stride])


def _rebuild_parameter(data, *unused):
    return data


def _encode(text: str, encoding: str = "utf-8") -> bytes:  # how protocol-2 pickles store bytes
    return text.encode(encoding)


def _script_list(*args) -> list:  # torch.jit._pickle.build_*list
    return list(args[0]) if args else []


def _restore_type_tag(value, _type):
    return value


_ALLOWED: Dict[str, Any] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.Size": tuple,
    "torch.jit._pickle.restore_type_tag": _restore_type_tag,
    **{f"torch.jit._pickle.build_{kind}list": _script_list for kind in ("int", "double", "bool", "tensor")},
    "collections.OrderedDict": collections.OrderedDict,
    "collections.Counter": collections.Counter,
    "argparse.Namespace": argparse.Namespace,
    "_codecs.encode": _encode,
    **{f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, frozenset, complex)},
}


class _InertUnpickler(pickle.Unpickler):
    """Unpickles with `_ALLOWED` globals, storages from `new_storage(key, dtype, numel)` and a `Placeholder` subclass
    for every other global (`placeholders`: name -> class). Nothing outside the allow-list is imported or called."""

    def __init__(self, file, path: str, new_storage: Optional[Callable[[Any, np.dtype, int], np.ndarray]] = None):
        super().__init__(file, encoding="utf-8")
        self._path, self._new_storage = path, new_storage
        self.storages: Dict[Any, np.ndarray] = {}
        self.placeholders: Dict[str, type] = {}

    def find_class(self, module, name):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 pickles name Python 2 modules, as pickle does
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full in _ALLOWED:
            return _ALLOWED[full]
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if full not in self.placeholders:
            self.placeholders[full] = type(full, (Placeholder,), {"global_name": full, "source": self._path})
        return self.placeholders[full]

    def persistent_load(self, pid):
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        if kind == "module" and len(pid) == 4:  # legacy whole-module pickles: the module's class
            return pid[1]
        if kind != "storage" or len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType) \
                or self._new_storage is None:
            raise ValueError(f"unsupported persistent id {str(pid)[:80]}")
        _, storage_type, key, _location, numel, *view = pid
        if key not in self.storages:
            if not isinstance(numel, int) or numel < 0:
                raise ValueError(f"storage {key!r} of {numel!r} elements")
            self.storages[key] = self._new_storage(key, storage_type.dtype, numel)
        storage = self.storages[key]
        if view and view[0] is not None:  # very old legacy files: (view key, offset, numel) inside the storage
            _, offset, numel = view[0]
            return storage[int(offset):int(offset) + int(numel)]
        return storage


def _fill(storage: np.ndarray, raw: bytes) -> None:
    storage[:] = np.frombuffer(raw, storage.dtype.newbyteorder("<"), count=storage.size)


def _zip_prefix(zf: zipfile.ZipFile, path: str) -> str:
    pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkl:
        raise CheckpointError(f"{path}: zip archive without data.pkl: not a PyTorch checkpoint")
    return pkl[0].split("/")[0]


def _read_zip(f, path: str) -> Tuple[Any, _InertUnpickler]:
    """(object, its unpickler) of a zip-format checkpoint or TorchScript archive."""
    with zipfile.ZipFile(f) as zf:
        prefix = _zip_prefix(zf, path)

        def new_storage(key, dtype, numel):
            with zf.open(f"{prefix}/data/{key}") as entry:
                raw = entry.read(numel * dtype.itemsize)
            if len(raw) < numel * dtype.itemsize:
                raise ValueError(f"storage {key!r} holds {len(raw)} bytes, expected {numel * dtype.itemsize}")
            storage = np.empty(numel, dtype)
            _fill(storage, raw)
            return storage

        with zf.open(f"{prefix}/data.pkl") as pkl:
            unpickler = _InertUnpickler(pkl, path, new_storage)
            return unpickler.load(), unpickler


def _read_exact(f, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise ValueError(f"the file ends inside {what} ({len(data)} of {n} bytes)")
    return data


def _read_legacy(f, path: str) -> Tuple[Any, _InertUnpickler]:
    """(object, its unpickler) of a legacy-format checkpoint: magic number, protocol version, system info, the object
    (storages as persistent ids), the storage keys, then per key an 8-byte element count and the raw elements."""
    try:
        magic = _InertUnpickler(f, path).load()
    except Exception:  # not a pickle at all
        magic = None
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a zip-format or legacy-format PyTorch checkpoint (no zip archive, no "
                              f"legacy magic number)")
    version = _InertUnpickler(f, path).load()
    if version != LEGACY_PROTOCOL:
        raise ValueError(f"protocol version {version!r}, expected {LEGACY_PROTOCOL}")
    _InertUnpickler(f, path).load()  # system info
    file_size = os.fstat(f.fileno()).st_size

    def new_storage(key, dtype, numel):  # filled once the object is read
        if numel * dtype.itemsize > file_size:
            raise ValueError(f"storage {key!r} of {numel} elements is larger than the file")
        return np.empty(numel, dtype)

    unpickler = _InertUnpickler(f, path, new_storage)
    obj = unpickler.load()
    keys = _InertUnpickler(f, path).load()
    if not isinstance(keys, list) or set(keys) != set(unpickler.storages):
        raise ValueError("the list of storage keys does not match the storages of the pickle")
    for key in keys:
        storage = unpickler.storages[key]
        count = int.from_bytes(_read_exact(f, 8, f"the element count of storage {key!r}"), "little")
        if count != storage.size:
            raise ValueError(f"storage {key!r} has {count} elements, expected {storage.size}")
        _fill(storage, _read_exact(f, storage.nbytes, f"storage {key!r}"))
    return obj, unpickler


def _own_arrays(obj, to_numpy: Callable[[Any], Optional[np.ndarray]], memo: Dict[int, Any]):
    """`obj` with each tensor replaced by `to_numpy(tensor)`, an independent C-ordered array: dicts, lists, tuples and
    argparse.Namespace are rebuilt (shared and cyclic references kept), anything else (placeholders too) is kept."""
    if id(obj) in memo:
        return memo[id(obj)]
    array = to_numpy(obj)
    if array is not None:
        out = array
    elif isinstance(obj, dict):  # dict, OrderedDict, Counter
        out = memo[id(obj)] = type(obj)()
        for k, v in obj.items():
            out[k] = _own_arrays(v, to_numpy, memo)
    elif isinstance(obj, list):
        out = memo[id(obj)] = []
        out.extend(_own_arrays(v, to_numpy, memo) for v in obj)
    elif isinstance(obj, argparse.Namespace):
        out = memo[id(obj)] = argparse.Namespace()
        for k, v in vars(obj).items():
            setattr(out, k, _own_arrays(v, to_numpy, memo))
    elif isinstance(obj, tuple):  # torch.Size too
        out = tuple(_own_arrays(v, to_numpy, memo) for v in obj)
    else:
        out = obj
    memo[id(obj)] = out
    return out


def _copy_view(x) -> Optional[np.ndarray]:
    return np.array(x, order="C") if isinstance(x, np.ndarray) else None


def _load_inert(path: str) -> Tuple[Any, List[str]]:
    """(object, names of its placeholder globals) of a zip- or legacy-format file, read by `_InertUnpickler`."""
    with open(path, "rb") as f:
        fmt = "zip" if f.read(4) == b"PK\x03\x04" else "legacy"
        f.seek(0)
        try:
            obj, unpickler = _read_zip(f, path) if fmt == "zip" else _read_legacy(f, path)
            return _own_arrays(obj, _copy_view, {}), sorted(unpickler.placeholders)
        except CheckpointError:
            raise
        except Exception as e:  # whatever damaged bytes make the parser raise
            raise CheckpointError(f"{path}: truncated or corrupt {fmt}-format PyTorch checkpoint "
                                  f"({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def _torch_to_numpy(x) -> Optional[np.ndarray]:
    import torch  # optional (the `torch` extra): only here, where torch itself made x

    if not isinstance(x, torch.Tensor):
        return None
    t = x.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_np_dtype("bfloat16")).copy()
    return t.numpy().copy()


def _load_with_torch(path: str) -> Any:
    import torch  # optional (the `torch` extra): the caller falls back to the inert reader without it

    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return _own_arrays(obj, _torch_to_numpy, {})


def is_torchscript(path: str) -> bool:
    """True for a TorchScript archive (e.g. OpenAI's ViT-B-32.pt), which holds code beside its tensors."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_checkpoint(path, use_torch: Optional[bool] = None) -> Any:
    """Read a zip- or legacy-format PyTorch checkpoint without running anything from it. Tensors become numpy arrays
    (bfloat16 as ml_dtypes.bfloat16); objects of classes outside the allow-list become `Placeholder`s, named once
    per file in a printed note. Damaged files raise a one-line CheckpointError.

    use_torch: None = torch.load(weights_only=True) where torch is installed, the inert reader for files torch refuses;
    False = the inert reader only. The results are the same."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file (.pt/.pth)")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file, expected a PyTorch checkpoint")
    if is_torchscript(path):
        raise CheckpointError(f"{path}: is a TorchScript archive, not a state-dict checkpoint")
    if use_torch is None:
        try:
            import torch  # noqa: F401
            use_torch = True
        except ImportError:
            use_torch = False
    if use_torch:
        try:
            return _load_with_torch(path)
        except Exception:  # globals outside torch's allow-list (FFCLIP's OmegaConf opts), or damaged bytes: the
            pass           # inert reader loads the first and reports the second in one line
    obj, placeholders = _load_inert(path)
    if placeholders and path not in _NOTED:
        _NOTED.add(path)
        print(f"note: ignored non-tensor objects in {path}: {', '.join(placeholders)} (classes outside the "
              f"allow-list are never imported or run)")
    return obj


def placeholder_name(obj: Any) -> Optional[str]:
    """The pickled global that `obj` stands for if it is a `Placeholder` (an object of it, or the bare global), else
    None."""
    if isinstance(obj, Placeholder) or (isinstance(obj, type) and issubclass(obj, Placeholder)):
        return obj.global_name
    return None


def ensure_loaded(obj: Any, where: str) -> Any:
    """`obj`, unless it is a `Placeholder`: then a one-line CheckpointError naming `where` and the pickled global."""
    name = placeholder_name(obj)
    if name is not None:
        raise CheckpointError(f"{where}: a pickled {name} object, which is never loaded (only tensors, plain "
                              f"containers and argparse.Namespace are); expected tensors")
    return obj


def flatten_state_dict(tree: Any, prefix: str = "") -> Dict[str, np.ndarray]:
    """Nested dicts of arrays -> {'a.b.c': array}; other leaves are dropped, a `Placeholder` raises CheckpointError."""
    if placeholder_name(tree) is not None:
        ensure_loaded(tree, f"{tree.source} (state dict entry '{prefix[:-1]}')" if prefix else tree.source)
    out: Dict[str, np.ndarray] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten_state_dict(v, f"{prefix}{k}."))
    elif isinstance(tree, np.ndarray):
        out[prefix[:-1]] = tree
    return out


def _script_tensors(obj, prefix: str, out: Dict[str, np.ndarray]) -> None:
    if isinstance(obj, np.ndarray):
        out[prefix[:-1]] = np.array(obj, order="C")
    elif isinstance(obj, Placeholder) and obj.global_name.startswith("__torch__.") and isinstance(obj.state, dict):
        for k, v in obj.state.items():
            _script_tensors(v, f"{prefix}{k}.", out)


def load_torchscript_state_dict(path) -> Dict[str, np.ndarray]:
    """Every tensor of a TorchScript archive (e.g. OpenAI's `ViT-B-32.pt`) by dotted attribute name, like
    `module.state_dict()` plus tensor attributes that are not parameters (e.g. `attn_mask`), in the stored dtype.
    Read from `data.pkl` by the inert unpickler (modules are `__torch__.*` placeholders): no code is loaded or run."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if not is_torchscript(path):
        raise CheckpointError(f"{path}: not a TorchScript archive (no code/ or constants.pkl in a zip file)")
    with open(path, "rb") as f:
        try:
            root, _ = _read_zip(f, path)
        except CheckpointError:
            raise
        except Exception as e:  # whatever damaged bytes make the parser raise
            raise CheckpointError(f"{path}: truncated or corrupt TorchScript archive ({_first_line(e)})") from None
    out: Dict[str, np.ndarray] = {}
    _script_tensors(root, "", out)
    if not out:
        raise CheckpointError(f"{path}: TorchScript archive without tensors")
    return out
