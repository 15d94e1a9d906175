"""Safe reading of PyTorch checkpoint files into nested dicts of numpy arrays.

With torch installed: `torch.load(..., weights_only=True)` (argparse.Namespace allow-listed, as rosinality files
hold one). Without torch: a restricted unpickler reads the zip format directly, mapping storages to numpy and refusing
every global outside a short allow-list. Either way an arbitrary pickle is refused with a one-line error.
"""
from __future__ import annotations

import argparse
import collections
import os
import pickle
import zipfile
from typing import Any, Dict

import numpy as np

from ffclip_jax.errors import CheckpointError

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16",
}
_TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16",
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


def _np_dtype(d):
    if d == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(d)


class _StorageType:
    def __init__(self, dtype):
        self.dtype = _np_dtype(dtype)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    itemsize = storage.dtype.itemsize
    if len(size) == 0:
        return np.array(storage[offset])
    arr = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                          strides=tuple(s * itemsize for s in stride))
    return np.array(arr)


def _rebuild_parameter(data, *unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles torch's zip format `data.pkl` allowing only tensors, dicts and argparse.Namespace."""

    def __init__(self, fileobj, zf: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(fileobj)
        self._zf, self._prefix, self._path = zf, prefix, path
        self._storages: Dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _StorageType(_TORCH_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "argparse" and name == "Namespace":
            return argparse.Namespace
        raise CheckpointError(
            f"{self._path}: refusing to unpickle {module}.{name}: only tensors, dicts and argparse.Namespace are "
            f"loaded from checkpoints (untrusted pickles are never executed){_resave_hint(module)}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unsupported persistent id {pid!r} in the pickle")
        _, stype, key, _location, numel = pid
        dtype = stype.dtype if isinstance(stype, _StorageType) else _np_dtype(np.float32)
        if key not in self._storages:
            raw = self._zf.read(f"{self._prefix}/data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=numel).astype(dtype)
        return self._storages[key]


def _zip_prefix(zf: zipfile.ZipFile, path: str) -> str:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkl:
        raise CheckpointError(f"{path}: zip archive without data.pkl: not a PyTorch checkpoint")
    return pkl[0].split("/")[0]


def is_torchscript(path: str) -> bool:
    """True for a TorchScript archive (e.g. OpenAI's ViT-B-32.pt), which holds code beside its tensors."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_without_torch(path: str) -> Any:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path}: not a zip-format PyTorch checkpoint (truncated, corrupt, or the legacy format: install torch "
            f"to read legacy files)") from None
    with zf:
        prefix = _zip_prefix(zf, path)
        try:
            with zf.open(f"{prefix}/data.pkl") as f:
                return _RestrictedUnpickler(f, zf, prefix, path).load()
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, KeyError, EOFError, ValueError, pickle.UnpicklingError, OSError) as e:
            raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt): {e}") from None


def _to_numpy(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy().copy()
    if isinstance(obj, dict):
        return type(obj)((k, _to_numpy(v)) for k, v in obj.items()) if isinstance(obj, collections.OrderedDict) \
            else {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v) for v in obj)
    return obj


def _resave_hint(what: str) -> str:
    if "omegaconf" not in what:
        return ""
    return ("; the file stores an OmegaConf config object: if you trust the file, keep only its tensors with "
            "`torch.save({'state_dict': torch.load(F, weights_only=False)['state_dict']}, F2)` and convert F2")


def _load_with_torch(path: str) -> Any:
    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        why = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise CheckpointError(f"{path}: refusing to load an untrusted pickle ({why.strip()}){_resave_hint(why)}") \
            from None
    except Exception as e:  # torch raises many types on random bytes (RuntimeError, IndexError, KeyError, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated, corrupt or not a PyTorch file): {msg}") \
            from None
    return _to_numpy(obj)


def load_checkpoint(path: str, use_torch: bool | None = None) -> Any:
    """Read a PyTorch checkpoint safely; tensors become numpy arrays (bfloat16 upcast to float32 with torch).

    use_torch: None = torch if installed; False forces the torch-free reader (zip format only).
    """
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
    return _load_with_torch(path) if use_torch else _load_without_torch(path)


def flatten_state_dict(tree: Any, prefix: str = "") -> Dict[str, np.ndarray]:
    """Nested dicts of arrays -> {'a.b.c': array}; non-array leaves are dropped."""
    out: Dict[str, np.ndarray] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten_state_dict(v, f"{prefix}{k}."))
    elif isinstance(tree, np.ndarray):
        out[prefix[:-1]] = tree
    return out


class _ScriptObject:
    """A TorchScript module (`__torch__.*` class) read back as a plain attribute holder: no code is run."""


def _script_list(*args):
    return list(args[0]) if args else []


class _TorchScriptUnpickler(_RestrictedUnpickler):
    """`data.pkl` of a TorchScript archive: `__torch__.*` module classes become `_ScriptObject`s whose attributes are
    the modules' parameters, buffers, submodules and plain values; everything else as `_RestrictedUnpickler`."""

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return _script_list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, _type: value
        return super().find_class(module, name)


def _script_tensors(obj, prefix: str, out: Dict[str, np.ndarray]) -> None:
    if isinstance(obj, np.ndarray):
        out[prefix[:-1]] = obj
    elif isinstance(obj, _ScriptObject):
        for k, v in vars(obj).items():
            _script_tensors(v, f"{prefix}{k}.", out)


def load_torchscript_state_dict(path: str) -> Dict[str, np.ndarray]:
    """Every tensor of a TorchScript archive (e.g. OpenAI's `ViT-B-32.pt`) by dotted attribute name, like
    `module.state_dict()` plus tensor attributes that are not parameters (e.g. `attn_mask`), in the stored dtype.
    Read from `data.pkl` with a restricted unpickler: the archive's TorchScript code is never loaded or run."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if not is_torchscript(path):
        raise CheckpointError(f"{path}: not a TorchScript archive (no code/ or constants.pkl in a zip file)")
    with zipfile.ZipFile(path) as zf:
        prefix = _zip_prefix(zf, path)
        try:
            with zf.open(f"{prefix}/data.pkl") as f:
                root = _TorchScriptUnpickler(f, zf, prefix, path).load()
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, KeyError, EOFError, ValueError, TypeError, AttributeError, pickle.UnpicklingError,
                OSError) as e:
            raise CheckpointError(f"{path}: unreadable TorchScript archive (truncated or corrupt): {e}") from None
    out: Dict[str, np.ndarray] = {}
    _script_tensors(root, "", out)
    if not out:
        raise CheckpointError(f"{path}: TorchScript archive without tensors")
    return out
