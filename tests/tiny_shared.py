"""The tiny default's random networks (`ffclip_jax.tiny.ensure_networks`) built once per test session and copied
into each test's own folder: building them (IR-SE50 ArcFace and e4e at full width among them) takes half a minute,
and four test modules use the same ones (seed 0, so the same values either way)."""
import atexit
import shutil
import tempfile

from ffclip_jax import tiny

_BUILT = []  # the session's one folder of built networks
_TEMP = tempfile.gettempdir()  # the system's, whatever a module sets tempfile.tempdir to later


def _built() -> str:
    if not _BUILT:
        _BUILT.append(tempfile.mkdtemp(prefix="ffclip-tiny-networks-", dir=_TEMP))
        atexit.register(shutil.rmtree, _BUILT[0], True)
        tiny.ensure_networks(_BUILT[0])
    return _BUILT[0]


def copy_networks(directory: str) -> None:
    """The session's tiny networks copied into `directory` (which `tiny.ensure_networks` then finds complete)."""
    shutil.copytree(_built(), directory, dirs_exist_ok=True)


def ensure_networks(directory: str):
    copy_networks(directory)
    return tiny.ensure_networks(directory)


def ensure_assets(directory: str):
    copy_networks(directory)
    return tiny.ensure_assets(directory)
