"""The studio page end to end on tiny random weights: ONE real `ffclip studio` server process and ONE
headless Chromium shared by every test. A browser uploads a photo, edits it with two prompts and checks the gallery
against the Editor; a broken upload shows a message and the next edit works; gradio_client calls the named endpoints;
16 concurrent clients get their own answers and the server's memory stays flat."""
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_LATENT, STYLE_DIM, E4E_INPUT = 8, 64, (64, 64)  # the tiny default's generator and e4e (ffclip_jax.tiny)
MAPPER = dict(n_latent=N_LATENT, style_dim=STYLE_DIM, num_blocks=1)
BATCH = 8
INSTALL_HINT = "apt-get install -y chromium chromium-driver"


def build_weights(directory: str) -> str:
    """The tiny default's random networks (`tiny.ensure_networks`: 32 px generator, CLIP, ArcFace, parsenet, MoCo,
    e4e for 64x64 photos) + a random 1-block mapper, and a manifest naming them. Returns the weights directory."""
    import jax
    import jax.numpy as jnp

    from ffclip_jax import tiny
    from ffclip_jax.models.mapper import DynamicMapper
    from ffclip_jax.weights import pretrained, write_manifest

    nets = tiny.ensure_networks(os.path.join(directory, "assets"))
    weights = os.path.join(directory, "weights")
    nets["mapper"] = os.path.join(weights, "mapper")
    if not os.path.isfile(os.path.join(nets["mapper"], pretrained.META_FILE)):
        mapper = DynamicMapper(**MAPPER)
        variables = jax.device_get(jax.jit(mapper.init)(jax.random.PRNGKey(5), jnp.zeros((1, N_LATENT, STYLE_DIM)),
                                                        jnp.zeros((1, STYLE_DIM))))
        pretrained.save(nets["mapper"], "ffclip_mapper", MAPPER, variables, overwrite=True)
    del nets["moco"]  # a face domain: identity scores, not MoCo
    write_manifest(weights, nets, prompts=["Blue hair", "Bald", "Man aged 10", "Smiling"])
    return weights


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("studio")
    weights = build_weights(str(d))
    return dict(dir=d, weights=weights, cache=str(d / "cache"))


@pytest.fixture(scope="module")
def editor(env):
    from ffclip_jax.pipeline import Editor

    return Editor.from_pretrained(env["weights"], batch_size=BATCH, cache_dir=env["cache"])


@pytest.fixture(scope="module")
def server(env):
    port = free_port()
    log = open(env["dir"] / "server.log", "w+")
    e = dict(os.environ, JAX_PLATFORMS="cpu", GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=ROOT,
             PYTHONUNBUFFERED="1", no_proxy="*", NO_PROXY="*")
    e.pop("XLA_FLAGS", None)
    proc = subprocess.Popen([sys.executable, "-m", "ffclip_jax", "studio", "--weights", env["weights"], "--port",
                             str(port), "--batch-size", str(BATCH), "--cache-dir", env["cache"]],
                            cwd=ROOT, env=e, stdout=log, stderr=subprocess.STDOUT)

    def output():
        log.flush()
        log.seek(0)
        return log.read()[-6000:]

    deadline = time.time() + 240
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            pytest.fail(f"studio exited with {proc.returncode}:\n{output()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"studio did not serve {url} within 240 s:\n{output()}")
        time.sleep(0.5)
    yield dict(url=url, proc=proc, output=output)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def browser(env):
    for binary in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not os.path.exists(binary):
            pytest.fail(f"{binary} is missing: install Chromium with `{INSTALL_HINT}`", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={env['dir'] / 'chrome-profile'}", "--window-size=1200,2400"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    yield driver
    driver.quit()


def png_bytes(rng, size=E4E_INPUT) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def fetch_png(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def expected_uint8(editor, source, prompts, strength):
    from ffclip_jax.grid import to_uint8

    r = editor.edit(source, prompts, strength)
    return r, to_uint8(r.images)


def close(a, b, tol=1):
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= tol


# ---------------------------------------------------------------------------------------------------------------
# browser


def _wait(driver, cond, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; page status: "
                         f"{driver.find_element('id', 'status').text!r}")


def _gallery_srcs(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#gallery img')).map(i => i.src);")


def _set_slider(driver, value):
    driver.execute_script(
        "const r = document.querySelector('#strength input[type=range]');"
        "const n = document.querySelector('#strength input[type=number]');"
        "for (const el of [r, n]) { if (!el) continue; el.value = arguments[0];"
        " el.dispatchEvent(new Event('input', {bubbles: true}));"
        " el.dispatchEvent(new Event('change', {bubbles: true})); }", str(value))


def _upload(driver, path):
    # the page renders its components one after another: on a busy machine the upload input can come after the
    # edit button the page load waits for, so wait for it too
    inp = _wait(driver, lambda: driver.find_elements("css selector", "#photo input[type=file]"), 60,
                "the photo upload input")[0]
    inp.send_keys(str(path))


def _clear_upload(driver):
    btns = driver.find_elements("css selector", "#photo button[aria-label*='lear'], #photo button.label-clear-button")
    for b in btns:
        try:
            b.click()
        except Exception:
            pass


def test_browser_edit(env, server, browser, editor, tmp_path):
    rng = np.random.default_rng(1)
    photo = tmp_path / "face.png"
    photo.write_bytes(png_bytes(rng))
    broken = tmp_path / "broken.png"
    broken.write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    prompts, strength = ["Blue hair", "Bald"], 0.5

    d = browser
    d.get(server["url"])
    _wait(d, lambda: d.find_elements("id", "edit-btn"), 60, "the page")
    # no request may leave the machine: every resource the page loaded is local
    hosts = d.execute_script("return performance.getEntriesByType('resource').map(e => new URL(e.name).host);")
    assert all(h.startswith("127.0.0.1") for h in hosts), hosts

    # 1. a broken file: an error message in the page, the server keeps serving
    _upload(d, broken)
    time.sleep(1.5)
    d.find_element("css selector", "#prompts textarea").send_keys("\n".join(prompts))
    _set_slider(d, strength)
    d.find_element("id", "edit-btn").click()
    msg = _wait(d, lambda: "Error" in d.find_element("id", "status").text and d.find_element("id", "status").text,
                120, "the error message")
    assert "not a readable image" in msg
    d.save_screenshot(str(tmp_path / "error.png"))

    # 2. a real photo
    _clear_upload(d)
    _upload(d, photo)
    time.sleep(1.5)
    d.find_element("id", "edit-btn").click()
    _wait(d, lambda: "Edited" in d.find_element("id", "status").text and len(_gallery_srcs(d)) >= 2, 180,
          "the gallery")
    time.sleep(1.0)
    srcs = _gallery_srcs(d)[:2]
    got = [fetch_png(s) for s in srcs]
    source = np.asarray(Image.open(photo).convert("RGB"))[None]
    _, want = expected_uint8(editor, source, prompts, strength)
    for j, g in enumerate(got):
        assert g.shape == (32, 32, 3) and g.std() > 1, "blank result"
        assert close(g, want[0, j, 0]), (j, np.abs(g.astype(int) - want[0, j, 0]).max())
    captions = d.execute_script("return document.querySelector('#gallery').innerText;")
    assert "Blue hair · 0.5" in captions or "Blue hair" in captions
    shot = tmp_path / "studio.png"
    d.save_screenshot(str(shot))
    out = os.environ.get("STUDIO_SCREENSHOT")
    if out:
        im = Image.open(shot).convert("RGB")
        im.thumbnail((900, 1800))
        im.save(out, format="PNG", optimize=True)
        if os.path.getsize(out) > 300_000:
            im.convert("P", palette=Image.ADAPTIVE, colors=128).save(out, format="PNG", optimize=True)
    # the console has no errors about blocked / refused network loads
    logs = [l["message"] for l in d.get_log("browser") if l["level"] == "SEVERE"]
    assert not [l for l in logs if "ERR_" in l and "127.0.0.1" not in l], logs


def test_no_server_paths(server):
    for path in ("/etc/passwd", ROOT + "/setup.cfg"):
        url = server["url"] + "gradio_api/file=" + path
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        assert status >= 400, (path, status)


# ---------------------------------------------------------------------------------------------------------------
# API


def test_api(server, editor):
    from gradio_client import Client

    from ffclip_jax.grid import to_uint8

    c = Client(server["url"], verbose=False)
    # random_sample
    img, lat, kind, status = c.predict(7, 0.7, api_name="/random_sample")
    w = editor.sample(1, 7, 0.7)
    np.testing.assert_allclose(np.load(lat), w, atol=1e-5)
    assert close(np.asarray(Image.open(img).convert("RGB")), to_uint8(editor.render(w))[0])
    # edit (random source) then sweep on the same session
    prompts, s = ["Smiling", "Man aged 10"], 1.5
    recon, gallery, compare, table, files, token, status = c.predict(
        "random", None, None, False, 7, 0.7, "\n".join(prompts), s, True, api_name="/edit")
    assert "Edited" in status, status
    r, want = expected_uint8(editor, w, prompts, s)
    lat = [f for f in files if f.endswith("edited_latents.npy")][0]
    np.testing.assert_allclose(np.load(lat), r.latents[:, :, 0], atol=1e-5)
    for j, item in enumerate(gallery):
        assert close(np.asarray(Image.open(item["image"]).convert("RGB")), want[0, j, 0])
    assert len(table["data"]) == 2 and "identity" in table["headers"]
    # the slider: generator only, same images as an edit at that strength
    gallery2, _, _, status = c.predict(token, 0.5, api_name="/rerender")
    assert "ms per frame" in status, status
    _, want2 = expected_uint8(editor, w, prompts, 0.5)
    for j, item in enumerate(gallery2):
        assert close(np.asarray(Image.open(item["image"]).convert("RGB")), want2[0, j, 0])
    anim, sweep_lat, status = c.predict(token, s, 4, api_name="/sweep")
    steps = np.linspace(0, s, 4).astype(np.float32)
    ws = np.load(sweep_lat)  # w + t * delta for t from 0 to the strength, delta = (edit at s - w) / s
    np.testing.assert_allclose(ws, w[0] + steps[:, None, None] / s * (r.latents[0, 0, 0] - w[0]), atol=1e-4)
    frames = Image.open(anim)
    assert frames.n_frames == 4
    frames.seek(3)
    assert close(np.asarray(frames.convert("RGB")), to_uint8(editor.render(ws[3:]))[0])
    # bad input: an error message, then a good request works
    *_, status = c.predict("random", None, None, False, 1, 0.7, "", 1.0, True, api_name="/edit")
    assert "no prompt" in status
    *_, status = c.predict("random", None, None, False, 1, 0.7, "\n".join(f"p{i}" for i in range(9)), 1.0, True,
                           api_name="/edit")
    assert "at most 8" in status
    *_, status = c.predict("random", None, None, False, 1, 0.7, "Bald", 1.0, True, api_name="/edit")
    assert "Edited" in status


def test_api_bad_latents(server, env, tmp_path):
    from gradio_client import Client, handle_file

    c = Client(server["url"], verbose=False)
    nan = np.zeros((N_LATENT, STYLE_DIM), np.float32)
    nan[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "shape.npy", np.zeros((3, STYLE_DIM), np.float32))
    for name, expect in (("nan.npy", "NaN"), ("shape.npy", "expected float w+")):
        *_, status = c.predict("latents", None, handle_file(str(tmp_path / name)), False, 0, 0.7, "Bald", 1.0, True,
                               api_name="/edit")
        assert expect in status, status


# ---------------------------------------------------------------------------------------------------------------
# load


def test_load(server, editor):
    """16 clients x 4 requests at once (random sources: no upload; scores off: the generator and mapper are what is
    batched), every answer equal to the Editor's for its own (seed, prompt); RSS after 200 requests within 10% of
    RSS after the first 20."""
    import psutil
    from gradio_client import Client

    from ffclip_jax.grid import to_uint8

    proc = psutil.Process(server["proc"].pid)
    prompts_pool = ["Blue hair", "Bald", "Smiling", "Man aged 10", "Purple hair", "Grey hair", "Beard", "Old"]
    results, errors = {}, []

    def work(k, per_client, base):
        try:
            c = Client(server["url"], verbose=False)
            for i in range(per_client):
                seed = base + k * per_client + i
                prompt = prompts_pool[(k + i) % len(prompts_pool)]
                out = c.predict("random", None, None, False, seed, 0.7, prompt, 1.0, False, api_name="/edit")
                results[(seed, prompt)] = out
        except Exception as e:  # pragma: no cover - surfaced below
            errors.append(repr(e))

    def burst(clients, per_client, base):
        threads = [threading.Thread(target=work, args=(k, per_client, base)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    burst(4, 5, 100_000)  # the first 20 requests
    rss0 = proc.memory_info().rss
    results.clear()
    t0 = time.time()
    burst(16, 4, 0)
    burst_s = time.time() - t0
    assert not errors, errors[:3]
    assert len(results) == 64
    for (seed, prompt), out in results.items():
        assert "Edited" in out[-1], out[-1]
        w = editor.sample(1, seed, 0.7)
        r = editor.edit(w, [prompt], 1.0)
        lat = [f for f in out[4] if f.endswith("edited_latents.npy")][0]
        np.testing.assert_allclose(np.load(lat), r.latents[:, :, 0], atol=1e-5, err_msg=str((seed, prompt)))
        if seed % 8 == 0:
            got = np.asarray(Image.open(out[1][0]["image"]).convert("RGB"))
            assert close(got, to_uint8(r.images)[0, 0, 0]), (seed, prompt)
    for base in (1000, 2000):  # to 212 requests
        burst(16, 4, base)
    assert not errors, errors[:3]
    rss1 = proc.memory_info().rss
    print(f"\nload: 16x4 requests in {burst_s:.1f}s; RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB")
    assert rss1 <= rss0 * 1.10, (rss0, rss1)
    log = server["output"]()
    sizes = [int(l.split("edit: ")[1].split()[0]) for l in log.splitlines() if "request(s)" in l]
    assert max(sizes) > 1, "no batched edit call in the server log"


def test_auth_file(tmp_path):
    """--auth-file: user:password lines (comments and blank lines skipped); a bad or empty file is a one-line error."""
    from ffclip_jax.cli.studio import read_auth as _read_auth
    from ffclip_jax.errors import InputError

    good = tmp_path / "auth"
    good.write_text("# who may edit\nalice:secret\n\nbob:pa:ss\n")
    assert _read_auth(str(good)) == [("alice", "secret"), ("bob", "pa:ss")]
    for text, message in (("alice\n", "line 1: expected user:password"), ("# nobody\n", "no user:password line")):
        good.write_text(text)
        with pytest.raises(InputError, match=message):
            _read_auth(str(good))
    with pytest.raises(InputError, match="unreadable"):
        _read_auth(str(tmp_path / "missing"))
