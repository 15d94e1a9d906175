"""ffclip studio: serve the edit studio (`ffclip_jax.studio`), a Gradio page on the real Editor.

    ffclip studio --weights runs/tiny/weights [--host 127.0.0.1] [--port 7860] [--align PREDICTOR]
        [--auth-file users.txt] [--batch-size 8] [--no-batching] [--devices N|all] [--frozen-sharding fsdp]

It binds 127.0.0.1 unless --host says otherwise, never makes share links, and serves no server path but the files
the page wrote (one temporary folder per server, removed on exit: Ctrl-C or SIGTERM).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
from typing import List, Tuple

from ffclip_jax.cli.arguments import (add_align_argument, add_batch_size_argument, add_cache_dir_argument,
                                      add_devices_arguments, at_least)
from ffclip_jax.errors import InputError
from ffclip_jax.pipeline import Editor
from ffclip_jax.studio import page
from ffclip_jax.studio.engine import Engine
from ffclip_jax.studio.serving import Studio, log


def read_auth(path: str) -> List[Tuple[str, str]]:
    """(user, password) pairs of an --auth-file: user:password lines, blank and `#` lines skipped."""
    pairs = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                user, sep, password = line.partition(":")
                if not sep or not user or not password:
                    raise InputError(f"--auth-file {path}: line {n}: expected user:password")
                pairs.append((user, password))
    except OSError as e:
        raise InputError(f"--auth-file {path}: unreadable ({e.strerror})") from None
    if not pairs:
        raise InputError(f"--auth-file {path}: no user:password line")
    return pairs


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a service manager's stop) closes the server like Ctrl-C, then the finally


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ffclip studio", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="weights directory (manifest, trainer export or workdir)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 only when you mean it)")
    p.add_argument("--port", type=int, default=7860)
    add_align_argument(p)
    p.add_argument("--auth-file", help="file of user:password lines (Gradio auth)")
    add_batch_size_argument(p)
    p.add_argument("--no-batching", action="store_true", help="run edit requests one at a time (benchmarks)")
    add_cache_dir_argument(p)
    add_devices_arguments(p)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    at_least(args, 1, "batch_size")
    auth = read_auth(args.auth_file) if args.auth_file else None
    if args.align and not os.path.isfile(args.align):
        raise InputError(f"--align {args.align}: no such file")
    workdir = tempfile.mkdtemp(prefix="ffclip-studio-")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(workdir, "gradio")  # gradio's own files too (read at its import)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_SERVER_NAME", args.host)
    try:
        options = page.launch_options()  # gradio first: without it, one line before any network is loaded
        log(f"loading networks from {args.weights}")
        editor = Editor.from_pretrained(args.weights, batch_size=args.batch_size, cache_dir=args.cache_dir,
                                        align=args.align, devices=args.devices, frozen=args.frozen_sharding)
        studio = Studio(Engine.for_editor(editor), workdir)
        studio.warm_up()
        app = page.build_app(studio, batching=not args.no_batching)
        app.queue(default_concurrency_limit=1, max_size=1024)
        log(f"serving on http://{args.host}:{args.port} (files under {workdir})")
        app.launch(server_name=args.host, server_port=args.port, share=False, auth=auth, inbrowser=False,
                   allowed_paths=[workdir], max_file_size=page.MAX_FILE_SIZE, show_error=True, ssr_mode=False,
                   quiet=True, enable_monitoring=False, mcp_server=False, pwa=False, **options)
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(workdir, ignore_errors=True)
