"""How loud the command lines are, in one place: third-party logs at WARNING unless asked, and the messages that
mislead a user silenced. Every entry point calls `quiet()` first (`errors.run_cli` does for every tool, train.py
through `ffclip_jax.cli.train`); progress bars and our own one-line messages are untouched.

Silenced: absl/XLA/orbax/TFDS INFO logs (JAX's "Unable to initialize backend 'tpu'", orbax's per-save lines), the
C++ logs of XLA/TSL below WARNING, orbax's warning on every read-only checkpoint manager, TFDS's "Downloading and
preparing dataset" and its progress bars (nothing is downloaded: our builder generates from arrays; the mixin
`QuietPreparation`), transformers' Flax deprecation warning, Starlette's deprecation warning on every studio
request, Gradio's analytics. (Gradio's "set `share=True`" hint is its launch(quiet=True): the studio prints its own
address line.) When restoring checkpoints (`drop_failed_restore_echoes`): the echoes of a damaged checkpoint's other
failed reads, which asyncio and tensorstore report when their futures and coroutines are collected, at no fixed time
(the one line naming the damaged checkpoint says what failed).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import sys
import traceback
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


# absl's canonical status codes: tensorstore's errors start with one ("OUT_OF_RANGE: Error reading ...")
STATUS_CODE = re.compile(r"(CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|ALREADY_EXISTS|"
                         r"PERMISSION_DENIED|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|"
                         r"UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS|UNAUTHENTICATED): ")
ASYNCIO_DIR = os.path.join(os.path.dirname(asyncio.__file__), "")  # frames only here: no Python code called


class _ReadEchoes:
    """Which reports are echoes of a failed checkpoint read: an error raised in orbax's or tensorstore's code, or one
    tensorstore set on a future (no Python frame, an absl status code); a coroutine of theirs closed unfinished or
    never awaited; an asyncio loop's "closed" error raised where no Python code called (tensorstore's callbacks,
    from native threads, on the loop orbax has closed)."""

    def __init__(self, packages):
        self.packages = tuple(os.path.join(os.path.realpath(p), "") for p in packages)

    def in_packages(self, filename: str) -> bool:
        return os.path.realpath(filename).startswith(self.packages)

    def raised_in_reads(self, error) -> bool:
        frames = traceback.extract_tb(getattr(error, "__traceback__", None))
        if frames:
            return any(self.in_packages(f.filename) for f in frames)
        return isinstance(error, Exception) and bool(STATUS_CODE.match(str(error)))

    def coroutine_of_reads(self, obj) -> bool:
        return inspect.iscoroutine(obj) and self.in_packages(obj.cr_code.co_filename)

    @staticmethod
    def callback_on_closed_loop(error) -> bool:
        frames = traceback.extract_tb(getattr(error, "__traceback__", None))
        return (isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and bool(frames)
                and all(f.filename.startswith(ASYNCIO_DIR) for f in frames))

    def unraisable(self, u) -> bool:
        return (self.raised_in_reads(u.exc_value) or self.coroutine_of_reads(u.object)
                or self.callback_on_closed_loop(u.exc_value))


class _DropReadEchoRecords(logging.Filter):
    """asyncio's records of a read's echo: an error of futures, tasks and callbacks raised in the reads (never
    retrieved), or a task of theirs destroyed pending (its coroutine "running at" or "defined at" a file of theirs)."""

    def __init__(self, echoes: _ReadEchoes):
        super().__init__()
        self.echoes = echoes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            return not self.echoes.raised_in_reads(record.exc_info[1])
        message = record.getMessage()
        running = re.search(r"coro=<.*? (?:running|defined) at (.+?):\d+>", message)
        return not (message.startswith("Task was destroyed but it is pending") and running
                    and self.echoes.in_packages(running.group(1)))


def drop_failed_restore_echoes() -> None:
    """Called before restoring checkpoints (a damaged one is named in one line by the caller). A failed read leaves
    its concurrent siblings' errors behind, reported when their futures and coroutines are collected, at no fixed
    time: asyncio's "exception was never retrieved" and "Task was destroyed but it is pending" records, "Exception
    ignored in <coroutine>" reports, "coroutine ... was never awaited" warnings, tensorstore's callbacks failing on
    orbax's closed loop. From then on those are dropped, told apart by where they were raised (orbax's and
    tensorstore's code: `_ReadEchoes`), not by their wording; every other log record, unraisable exception, uncaught
    error and warning is shown as before."""
    import orbax.checkpoint
    import tensorstore

    logger = logging.getLogger("asyncio")
    if any(isinstance(f, _DropReadEchoRecords) for f in logger.filters):
        return
    echoes = _ReadEchoes([os.path.dirname(orbax.checkpoint.__file__), os.path.dirname(tensorstore.__file__)])
    logger.addFilter(_DropReadEchoRecords(echoes))
    shown_unraisable, shown_exception, shown_warning = sys.unraisablehook, sys.excepthook, warnings._showwarnmsg

    def unraisable_hook(unraisable):
        if not echoes.unraisable(unraisable):
            shown_unraisable(unraisable)

    def exception_hook(kind, value, tb):  # a native thread's callback may report through either hook
        if not echoes.callback_on_closed_loop(value):
            shown_exception(kind, value, tb)

    def warning_hook(message):  # the warnings module's hook ("replace if you like"), given the warning's source
        if not (issubclass(message.category, RuntimeWarning) and echoes.coroutine_of_reads(message.source)):
            shown_warning(message)

    sys.unraisablehook, sys.excepthook, warnings._showwarnmsg = unraisable_hook, exception_hook, warning_hook


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
