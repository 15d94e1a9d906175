"""Studio server throughput: requests/s and p50/p95 latency of the /edit endpoint for 1, 4 and 16 concurrent
gradio_client users, with and without batching, and the time per frame of a slider re-render (generator only).

    python bench/studio.py --quick                 # CPU: full-width 32 px and 256 px generators
    python bench/studio.py --size 1024 --device    # on an accelerator: the 1024 model (random weights)

Each setting starts a real `ffclip studio` server (`--no-batching` for the unbatched rows) on random
weights built here (a full-width StyleGAN2 of each size with a 4-block mapper and a 512-d CLIP), sends random-sample
edits (no upload; scores off) and writes bench/results/studio-<device>.json. Needs gradio (the `studio` extra).
"""
import argparse
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

import common  # noqa: F401  (sys.path: the repo root)


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
                                   api_name="/edit")
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
    out = c.predict("random", None, None, False, 0, 0.7, "Blue hair", 1.0, False, api_name="/edit")
    token = out[5]
    ms = []
    for i in range(n):
        status = c.predict(token, round(0.1 * (i % 10), 2), api_name="/rerender")[-1]
        ms.append(float(status.split(": ")[1].split(" ms")[0]))
    return float(np.median(ms[1:]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer requests (a CPU run in about 3 minutes)")
    p.add_argument("--sizes", default=None, help="comma-separated generator sizes (default 32,256; --device 1024)")
    p.add_argument("--device", action="store_true", help="run on the accelerator (the 1024 model)")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", default=None, help="results file (default bench/results/studio-<device>.json)")
    args = p.parse_args()
    if importlib.util.find_spec("gradio") is None or importlib.util.find_spec("gradio_client") is None:
        sys.exit("error: bench/studio.py needs gradio and gradio_client (pip install 'ffclip-jax[studio]')")
    common.isolate("jax")
    if not args.device:
        os.environ["JAX_PLATFORMS"] = "cpu"
    sizes = [int(s) for s in (args.sizes or ("1024" if args.device else "32,256")).split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    import jax

    device = jax.devices()[0].platform
    work = tempfile.mkdtemp(prefix="bench-studio-")
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
                frame_ms = frame_time(url, 5 if args.quick else 20)
                for n in clients:
                    per = (2 if n >= 4 else 4) if args.quick else 8
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
    out = args.json or os.path.join(common.ROOT, "bench", "results", f"studio-{device}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    common.write_results(out, dict(hardware=common.hardware(), batch_size=args.batch_size, quick=args.quick,
                                   results=rows))


if __name__ == "__main__":
    main()
