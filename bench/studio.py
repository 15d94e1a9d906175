"""The studio's benchmarks. The engine (no web server, no gradio): the time per frame of a slider re-render (the
generator only, one frame) and the batching gain with 16 concurrent clients: 16 edit requests (random sources, one
prompt, scores off) run as the serving thread runs a Gradio batch of them (`Engine.edit_many` on chunks of the
Editor's batch size) against one request per call (`--no-batching`). The Gradio server, only where gradio and
gradio_client are installed (otherwise one printed line says it was skipped): requests/s and p50/p95 latency of the
/edit endpoint for 1, 4 and 16 gradio_client users, with and without batching.

    python bench/studio.py --tiny                   # a smoke run on CPU: 32 px, the engine, then the server
    python bench/studio.py --quick                  # CPU: full-width 32 px and 256 px generators
    python bench/studio.py --sizes 1024 --device    # on an accelerator: the 1024 model (random weights)
    python bench/studio.py --one engine --size 1024 --device   # bench/all.py's job: one JSON line

Random weights built here (a full-width StyleGAN2 of each size with a 4-block mapper and a 512-d CLIP); a JAX-only
process (`common.isolate`), importing neither gradio (but in the server rows) nor the test suite. Writes
bench/results/studio-<device>.json.
"""
import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

import common  # noqa: F401  (sys.path: the repo root)
from ffclip_jax import logs  # noqa: E402  (framework-free)

CLIENTS = 16  # the batching target's concurrent clients
PROMPT = "Blue hair"


def build_weights(directory: str, size: int) -> str:
    """Random weights of a full-width `size` px generator (style_dim 512, channel_multiplier 2, n_mlp 8) with a
    4-block mapper and a small CLIP projecting to 512."""
    import jax
    import jax.numpy as jnp

    from ffclip_jax import tiny
    from ffclip_jax.models import clip
    from ffclip_jax.models.mapper import DynamicMapper
    from ffclip_jax.models.stylegan2 import Generator, n_latent
    from ffclip_jax.weights import pretrained
    from ffclip_jax.weights.clip_dir import save_clip
    from ffclip_jax.weights.manifest import write_manifest

    root = os.path.join(directory, f"weights{size}")
    gen_cfg = dict(size=size, style_dim=512, n_mlp=8, channel_multiplier=2)
    mapper_cfg = dict(n_latent=n_latent(size), style_dim=512, num_blocks=4)
    nets = {k: os.path.join(root, k) for k in ("generator", "mapper", "clip")}
    tiny._save_flax(nets["generator"], "stylegan2", Generator(**gen_cfg), gen_cfg, jnp.zeros((1, 512)), 0,
                    numpy_fill=True)
    mapper = DynamicMapper(**mapper_cfg)
    variables = jax.device_get(jax.jit(mapper.init)(jax.random.PRNGKey(1), jnp.zeros((1, mapper_cfg["n_latent"], 512)),
                                                    jnp.zeros((1, 512))))
    pretrained.save(nets["mapper"], "ffclip_mapper", mapper_cfg, variables, overwrite=True)
    config = dict(clip.tiny_config(), embed_dim=512)
    _, variables = clip.init_random(config, 2)
    save_clip(nets["clip"], config, variables, extra={"source": "bench/studio.py (random)"}, overwrite=True)
    write_manifest(root, nets)
    return root


def build_engine(weights: str, batch_size: int, cache: str):
    """The studio engine of a weights directory (scores off, as in the server rows)."""
    from ffclip_jax.pipeline import Editor
    from ffclip_jax.studio.engine import Engine

    return Engine(Editor.from_pretrained(weights, batch_size=batch_size, cache_dir=cache), prompts=[PROMPT])


def requests(n: int, base: int = 0):
    from ffclip_jax.studio.engine import EditRequest

    return [EditRequest(source="random", seed=base + k, truncation=0.7, prompts=PROMPT, strength=1.0, scores=False)
            for k in range(n)]


def serve(engine, reqs, batching: bool) -> float:
    """Seconds to answer `reqs` as the server does: chunks of at most the Editor's batch size in one engine call each
    (a Gradio batch function's lists), or one request per call."""
    size = engine.editor.batch_size if batching else 1
    t0 = time.perf_counter()
    for start in range(0, len(reqs), size):
        answers = engine.edit_many(reqs[start:start + size])
        bad = [a for a in answers if isinstance(a, Exception)]
        if bad:
            raise RuntimeError(str(bad[0]))
    return time.perf_counter() - t0


def engine_measurement(engine, iters: int, clients: int = CLIENTS) -> dict:
    """ms per frame of the slider (median of `iters` re-renders of one frame, after one warm-up) and the batching gain
    with `clients` requests (median over `iters` rounds of each, after one warm-up round of each: every shape compiled
    by `Engine.warm_up` and that round)."""
    from ffclip_jax.studio.engine import EditRequest

    t0 = time.perf_counter()
    engine.warm_up()
    token = engine.edit_many([EditRequest(source="random", seed=0, prompts=PROMPT, scores=False)])[0].frames.token
    engine.rerender(token, 0.5)
    for batching in (True, False):
        serve(engine, requests(clients, 10_000), batching)
    warmup = time.perf_counter() - t0
    t1 = time.perf_counter()
    frame_ms = float(np.median([engine.rerender(token, round(0.1 * (i % 10), 2)).ms_per_frame
                                for i in range(max(3, iters))]))
    batched = float(np.median([serve(engine, requests(clients, 1000 * i), True) for i in range(iters)]))
    single = float(np.median([serve(engine, requests(clients, 1000 * i + 500), False) for i in range(iters)]))
    return dict(frame_ms=frame_ms, clients=clients, batched_s=batched, one_at_a_time_s=single,
                batching_gain=single / batched, images_per_s=clients / batched,
                requests_per_s_batched=clients / batched, requests_per_s_one_at_a_time=clients / single,
                warmup_s=warmup, timed_s=time.perf_counter() - t1)


def run_engine(size: int, batch_size: int, iters: int, work: str, build_only: bool = False) -> dict:
    """The engine's measurement as one result dict, with the `row` bench/all.py's table shows."""
    import jax

    t0 = time.perf_counter()
    weights = build_weights(os.path.join(work, str(size)), size)
    engine = build_engine(weights, batch_size, os.path.join(work, "cache"))
    fields = dict(size=size, batch_size=engine.editor.batch_size, devices=len(engine.editor.devices),
                  platform=jax.devices()[0].platform)
    if build_only:
        return dict(fields, build_only=True, build_s=time.perf_counter() - t0)
    build = time.perf_counter() - t0
    m = engine_measurement(engine, iters)
    r = dict(fields, **m, build_s=build, peak_bytes=common.jax_peak_bytes())
    r["row"] = dict(setting=(f"{size} px, {m['clients']} requests at once, batch {r['batch_size']}: "
                             f"{m['requests_per_s_batched']:.2f} vs {m['requests_per_s_one_at_a_time']:.2f} req/s; "
                             f"slider {m['frame_ms']:.1f} ms/frame"),
                    jax=m["images_per_s"], ratio=m["batching_gain"], peak=r["peak_bytes"])
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(weights: str, batching: bool, batch_size: int, cache: str, log_path: str):
    port = free_port()
    path = os.pathsep.join([common.ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=path, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "ffclip_jax", "studio", "--weights", weights, "--port", str(port), "--batch-size",
           str(batch_size), "--cache-dir", cache] + ([] if batching else ["--no-batching"])
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"studio exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"studio did not start; see {log_path}")


def load(url: str, clients: int, per_client: int):
    from gradio_client import Client

    lat, errors = [], []
    conns = [Client(url, verbose=False) for _ in range(clients)]

    def work(k):
        for i in range(per_client):
            t = time.perf_counter()
            out = conns[k].predict("random", None, None, False, 10_000 * k + i, 0.7, "Blue hair", 1.0, False,
                                   "none", None, api_name="/edit")
            lat.append(time.perf_counter() - t)
            if "Edited" not in out[-1]:
                errors.append(out[-1])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    return dict(clients=clients, requests=len(lat), requests_per_s=len(lat) / wall,
                p50_s=float(np.percentile(lat, 50)), p95_s=float(np.percentile(lat, 95)))


def frame_time(url: str, n: int = 10) -> float:
    """ms per frame of a slider re-render, as the server reports it (the generator only)."""
    from gradio_client import Client

    c = Client(url, verbose=False)
    out = c.predict("random", None, None, False, 0, 0.7, "Blue hair", 1.0, False, "none", None, api_name="/edit")
    token = out[6]
    ms = []
    for i in range(n):
        status = c.predict(token, round(0.1 * (i % 10), 2), api_name="/rerender")[-1]
        ms.append(float(status.split(": ")[1].split(" ms")[0]))
    return float(np.median(ms[1:]))


def gradio_rows(sizes, clients, args, work) -> list:
    rows = []
    for size in sizes:
        t = time.perf_counter()
        weights = build_weights(os.path.join(work, str(size)), size)
        print(f"built {size}px weights in {time.perf_counter() - t:.0f}s", flush=True)
        for batching in (True, False):
            proc, url = start_server(weights, batching, args.batch_size, os.path.join(work, "cache"),
                                     os.path.join(work, f"server-{size}-{batching}.log"))
            try:
                load(url, 1, 1)  # first request: prompt embedding, caches
                frame_ms = frame_time(url, 3 if args.tiny else 5 if args.quick else 20)
                for n in clients:
                    per = 1 if args.tiny else ((2 if n >= 4 else 4) if args.quick else 8)
                    if size >= 256 and args.quick and not args.device:
                        per = 1 if n >= 4 else 2
                    r = dict(size=size, batching=batching, frame_ms=frame_ms, **load(url, n, per))
                    rows.append(r)
                    print(r, flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
    print("\n| size | batching | clients | requests | req/s | p50 (s) | p95 (s) | re-render ms/frame |")
    print("|---:|:---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {'yes' if r['batching'] else 'no'} | {r['clients']} | {r['requests']} | "
              f"{r['requests_per_s']:.2f} | {r['p50_s']:.3f} | {r['p95_s']:.3f} | {r['frame_ms']:.1f} |")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a smoke run: 32 px, one timed round, one request a client")
    p.add_argument("--quick", action="store_true", help="fewer requests (a CPU run in about 3 minutes)")
    p.add_argument("--sizes", default=None, help="comma-separated generator sizes (default 32,256; --device 1024)")
    p.add_argument("--size", type=int, default=None, help="one size (with --one)")
    p.add_argument("--device", action="store_true", help="run on the accelerator (the 1024 model)")
    p.add_argument("--part", choices=("engine", "gradio", "all"), default="all",
                   help="the engine without a server, the Gradio server (where installed), or both")
    p.add_argument("--one", choices=("engine",), default=None,
                   help="bench/all.py's mode: the engine at --size, its result as the last stdout line (JSON)")
    p.add_argument("--build-only", action="store_true", help="with --one: build the engine, time nothing")
    p.add_argument("--clients", default="1,4,16", help="the server rows' concurrent clients")
    p.add_argument("--iters", type=int, default=None, help="the engine's timed rounds (default 1 tiny, 3 else)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", default=None, help="results file (default bench/results/studio-<device>.json)")
    args = p.parse_args()
    common.isolate("jax")
    logs.quiet()  # as the tools: no transformers Flax deprecation line, no INFO logs
    if not args.device:
        os.environ["JAX_PLATFORMS"] = "cpu"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stopped: the work folder goes too
    work = tempfile.mkdtemp(prefix="bench-studio-")
    tempfile.tempdir = work  # gradio_client leaves an empty folder in the temp dir per file it downloads: here
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: str) -> None:
    iters = args.iters or (1 if args.tiny else 3)
    if args.one:
        size = args.size or (1024 if args.device else 32)
        print(json.dumps(run_engine(size, args.batch_size, iters, work, args.build_only)))
        return
    sizes = [int(s) for s in (args.sizes or ("32" if args.tiny else "1024" if args.device else "32,256")).split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    import jax

    device = jax.devices()[0].platform
    engine_rows, server_rows = [], []
    if args.part in ("engine", "all"):
        for size in sizes:
            r = run_engine(size, args.batch_size, iters, work)
            engine_rows.append(r)
            print(f"engine {size} px: slider {r['frame_ms']:.1f} ms/frame; {r['clients']} requests batched "
                  f"{r['batched_s']:.2f} s vs one at a time {r['one_at_a_time_s']:.2f} s: batching gain "
                  f"{r['batching_gain']:.2f}x", flush=True)
    if args.part in ("gradio", "all"):
        if importlib.util.find_spec("gradio") is None or importlib.util.find_spec("gradio_client") is None:
            print("gradio server rows skipped: gradio and gradio_client are not installed "
                  "(pip install 'ffclip-jax[studio]')", flush=True)
        else:
            server_rows = gradio_rows(sizes, clients, args, work)
    out = args.json or os.path.join(common.ROOT, "bench", "results", f"studio-{device}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    common.write_results(out, dict(hardware=common.hardware(), batch_size=args.batch_size, quick=args.quick,
                                   tiny=args.tiny, engine=engine_rows, results=server_rows))


if __name__ == "__main__":
    main()
