"""How loud the command lines are, in one place: third-party logs at WARNING unless asked, and the messages that
mislead a user silenced. Every entry point calls `quiet()` first (`errors.run_cli` does for every tool, train.py
through `ffclip_jax.cli.train`); progress bars and our own one-line messages are untouched.

Silenced: absl/XLA/orbax/TFDS INFO logs (JAX's "Unable to initialize backend 'tpu'", orbax's per-save lines), the
C++ logs of XLA/TSL below WARNING, orbax's warning on every read-only checkpoint manager, TFDS's "Downloading and
preparing dataset" and its progress bars (nothing is downloaded: our builder generates from arrays; the mixin
`QuietPreparation`), transformers' Flax deprecation warning, Starlette's deprecation warning on every studio
request, Gradio's analytics. (Gradio's "set `share=True`" hint is its launch(quiet=True): the studio prints its own
address line.) When restoring checkpoints (`drop_failed_restore_echoes`): the echoes of a damaged checkpoint's other
failed reads, which asyncio and tensorstore report when their futures and coroutines finish, at no fixed time (the
one line naming the damaged checkpoint says what failed).
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

# read by native libraries when they start (XLA/TSL C++ logging: 0 INFO, 1 WARNING, 2 ERROR), so set before jax runs
NATIVE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
# (logger, the start of a message it should not show)
DROPPED_RECORDS = (
    ("transformers.modeling_flax_utils", "TensorFlow and JAX classes are deprecated"),
    ("absl", "Given directory is read only"),  # orbax, on every read-only CheckpointManager (restoring for export)
)
# (warning category, regex the start of its message matches)
IGNORED_WARNINGS = (
    (UserWarning, r"'HTTP_\d+_\w+' is deprecated"),  # Starlette's, through Gradio's routes, on every studio request
)


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet(verbosity: int = -1) -> None:
    """Logs at WARNING (verbosity -1, absl's scale: 0 INFO, 1 DEBUG) and the misleading messages dropped. Sets the
    native libraries' environment only where the user has not (call it before jax computes anything)."""
    for name, value in NATIVE_ENV.items():
        os.environ.setdefault(name, value)
    set_verbosity(verbosity)
    for name, prefix in DROPPED_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessages(prefix))
    for category, message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


# what orbax's concurrent array reads leave behind when one read of a damaged checkpoint fails: the others' errors,
# never retrieved (asyncio logs them when their futures are collected) or raised in coroutines closed unfinished
FAILED_READ_ECHOES = ("Encountered error while reading array index", "OUT_OF_RANGE: Error reading",
                      "Event loop is closed")


class _DropFailedReadEchoes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg) % record.args if record.args else str(record.msg)
        return not ("exception was never retrieved" in text and any(e in text for e in FAILED_READ_ECHOES))


def drop_failed_restore_echoes() -> None:
    """Called before restoring checkpoints (a damaged one is named in one line by the caller): from then on asyncio's
    "exception was never retrieved" records, the "Exception ignored in <coroutine>" reports of the other reads of
    that checkpoint and the "Event loop is closed" errors of tensorstore's callbacks after orbax closed its loop are
    dropped; every other log record, unraisable exception and uncaught error is shown as before."""
    logger = logging.getLogger("asyncio")
    if any(isinstance(f, _DropFailedReadEchoes) for f in logger.filters):
        return
    logger.addFilter(_DropFailedReadEchoes())
    shown_unraisable, shown_exception = sys.unraisablehook, sys.excepthook

    def unraisable_hook(unraisable):
        if not any(e in str(unraisable.exc_value) for e in FAILED_READ_ECHOES):
            shown_unraisable(unraisable)

    def exception_hook(kind, value, traceback):  # callbacks in native threads report through one of the two
        if not (kind is RuntimeError and str(value) in FAILED_READ_ECHOES):
            shown_exception(kind, value, traceback)

    sys.unraisablehook, sys.excepthook = unraisable_hook, exception_hook


def set_verbosity(verbosity: int) -> None:
    """Python and absl logging (orbax, JAX, TFDS log through them) at absl's `verbosity`: -1 WARNING, 0 INFO, 1 DEBUG."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(verbosity)
    logging.getLogger().setLevel(absl_logging.converter.absl_to_standard(verbosity))


class QuietPreparation:
    """Mixin for a TFDS builder that generates from arrays in memory and downloads nothing: TFDS prints "Downloading
    and preparing dataset ..." and "... downloaded and prepared" unconditionally (not through logging), and shows a
    progress bar per split for what takes a moment; the builder's caller reports the result in one line."""

    def download_and_prepare(self, *args, **kwargs):
        from tensorflow_datasets.core.utils import tqdm_utils

        shown = tqdm_utils._active  # TFDS's switch (tfds.display_progress_bar sets it)
        tqdm_utils.display_progress_bar(False)
        try:
            return super().download_and_prepare(*args, **kwargs)
        finally:
            tqdm_utils.display_progress_bar(shown)

    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass
