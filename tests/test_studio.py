"""The studio page end to end on tiny random weights: ONE real `ffclip studio` server process and ONE headless
Chromium at 1400x1000 shared by every test, used as a person would. Checked by what the page shows: the upload's
preview (a photo stored turned with an EXIF orientation tag shown upright) and reconstruction before any edit, input
and results on one screen, small images scaled up with sharp pixels (downloads at the real size), captions visible,
the gallery equal to the Editor's edits, scores that follow the slider (equal to the engine's at that strength), the
sweep at a useful size, results cleared after an error, bad values (a broken or 1x1 upload, strength 5 typed in the
box) answered in the page without a toast or a server traceback, each example prompt once. Also: the named endpoints
through gradio_client, no server path readable, 16 concurrent clients each getting their own answer (the server's
memory flat over 212 requests: slow). (The parts alone: test_studio_engine.)"""
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from ffclip_jax.grid import to_uint8
from ffclip_jax.pipeline import Editor
from ffclip_jax.studio.engine import EditRequest, Engine
import tiny_shared
from test_align import save_rotated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_LATENT, STYLE_DIM, E4E_INPUT = 8, 64, (64, 64)  # the tiny default's generator and e4e (ffclip_jax.tiny)
MAPPER = dict(n_latent=N_LATENT, style_dim=STYLE_DIM, num_blocks=1)
BATCH = 8
VIEWPORT = (1400, 1000)
INSTALL_HINT = "apt-get install -y chromium chromium-driver"
# the manifest's list repeats prompts (as upstream's FFHQ list does, on purpose for training): the page shows each once
MANIFEST_PROMPTS = ["Blue hair", "Bald", "Man aged 10", "Bald", "Smiling", "Blue hair"]
EXAMPLES = ["Blue hair", "Bald", "Man aged 10", "Smiling"]
SCORES = ["clip_score", "clip_score_source", "clip_score_delta", "identity"]


def build_weights(directory: str) -> str:
    """The tiny default's random networks (`tiny.ensure_networks`: 32 px generator, CLIP, ArcFace, parsenet, MoCo,
    e4e for 64x64 photos) + a random 1-block mapper, and a manifest naming them. Returns the weights directory."""
    import jax
    import jax.numpy as jnp

    from ffclip_jax.models.mapper import DynamicMapper
    from ffclip_jax.weights import pretrained, write_manifest

    nets = tiny_shared.ensure_networks(os.path.join(directory, "assets"))
    weights = os.path.join(directory, "weights")
    nets["mapper"] = os.path.join(weights, "mapper")
    if not os.path.isfile(os.path.join(nets["mapper"], pretrained.META_FILE)):
        mapper = DynamicMapper(**MAPPER)
        variables = jax.device_get(jax.jit(mapper.init)(jax.random.PRNGKey(5), jnp.zeros((1, N_LATENT, STYLE_DIM)),
                                                        jnp.zeros((1, STYLE_DIM))))
        pretrained.save(nets["mapper"], "ffclip_mapper", MAPPER, variables, overwrite=True)
    del nets["moco"]  # a face domain: identity scores, not MoCo
    write_manifest(weights, nets, prompts=MANIFEST_PROMPTS)
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


@pytest.fixture(scope="module", autouse=True)
def client_temp_files_here(tmp_path_factory):
    """gradio_client (2.5) leaves an empty folder in the temp dir for every file it downloads: this module's temp dir
    is its own folder, removed with the module's others (conftest)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("client_temp")))
        yield


def client(server):
    """A gradio_client user of `server`, downloading the answers' files into this module's folder."""
    from gradio_client import Client

    return Client(server["url"], verbose=False, download_files=server["downloads"])


@pytest.fixture(scope="module")
def editor(env):
    return Editor.from_pretrained(env["weights"], batch_size=BATCH, cache_dir=env["cache"])


@pytest.fixture(scope="module")
def engine(editor):
    """The server's engine, in this process: its scores are what the page must show."""
    return Engine.for_editor(editor)


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

    def output(tail=6000):
        log.flush()
        log.seek(0)
        return log.read()[-tail:]

    deadline = time.time() + 300
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
            pytest.fail(f"studio did not serve {url} within 300 s:\n{output()}")
        time.sleep(0.5)
    yield dict(url=url, proc=proc, output=output, downloads=str(env["dir"] / "downloads"))
    proc.terminate()  # SIGTERM, as a service manager stops it: the server closes and removes its folder
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"studio still running 60 s after SIGTERM:\n{output()}")
    workdir = re.search(r"\(files under (\S+)\)", output(1_000_000)).group(1)
    log.close()
    assert not os.path.exists(workdir), f"{workdir} left behind after SIGTERM"


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
                 "--disable-sync", "--hide-scrollbars", f"--user-data-dir={env['dir'] / 'chrome-profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    # the viewport itself (a window size would include the browser's own frame)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", dict(width=VIEWPORT[0], height=VIEWPORT[1],
                                                                      deviceScaleFactor=1, mobile=False))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def photo(editor, env):
    """A "photo" of the generator's domain: a random sample's image enlarged to the encoder's input (64x64)."""
    path = env["dir"] / "face.png"
    image = Image.fromarray(to_uint8(editor.render(editor.sample(1, 11, 0.7)))[0])
    image.resize(E4E_INPUT[::-1], Image.BICUBIC).save(path)
    return path


@pytest.fixture(scope="module")
def turned_photo(photo, env):
    """The same photo as a phone stores it: the pixels turned 90 degrees and an EXIF Orientation tag (6) saying how
    to turn them back for display (lossless PNG: the page must show exactly `photo`)."""
    path = env["dir"] / "turned.png"
    save_rotated(path, np.asarray(Image.open(photo).convert("RGB")), orientation=6)
    return path


def png_bytes(rng, size=E4E_INPUT) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def fetch_png(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def expected_uint8(editor, source, prompts, strength):
    r = editor.edit(source, prompts, strength)
    return r, to_uint8(r.images)


def close(a, b, tol=1):
    """uint8 images of float32 renders from other batches: a value at a rounding boundary may round either way."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= tol


# ---------------------------------------------------------------------------------------------------------------
# browser helpers: what a person sees


def _status(d) -> str:
    return d.find_element("id", "status").text


def _wait(d, cond, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; page status: {_status(d)!r}")


def _images(d, selector):
    """[{src, natural width, rendered box, image-rendering}] of the <img> elements under `selector`."""
    return d.execute_script("""
        return Array.from(document.querySelectorAll(arguments[0] + ' img')).map(i => {
            const r = i.getBoundingClientRect();
            return {src: i.src, natural: i.naturalWidth, width: r.width, height: r.height, top: r.top,
                    bottom: r.bottom, left: r.left, right: r.right,
                    rendering: getComputedStyle(i).imageRendering};
        });""", selector)


def _captions(d):
    """[(text, fully shown)] of the gallery's captions: inside the viewport and the gallery, text not cut."""
    return d.execute_script("""
        const g = document.querySelector('#gallery').getBoundingClientRect();
        return Array.from(document.querySelectorAll('#gallery .caption-label')).map(c => {
            const r = c.getBoundingClientRect();
            const shown = r.width > 0 && r.top >= Math.max(0, g.top) && r.bottom <= Math.min(innerHeight, g.bottom)
                && r.left >= g.left && r.right <= g.right && c.scrollWidth <= c.clientWidth + 1;
            return [c.innerText, shown];
        });""")


def _table(d):
    """The scores table as shown: [[source, prompt, strength, *scores]] (text cells)."""
    text = d.execute_script("return document.querySelector('#scores').innerText;")
    cells = [c.strip() for c in text.splitlines() if c.strip()]
    headers = ["source", "prompt", "strength"] + SCORES
    start = max(i for i in range(len(cells) - len(headers) + 1) if cells[i:i + len(headers)] == headers)
    values = cells[start + len(headers):]
    return [values[i:i + len(headers)] for i in range(0, len(values) - len(headers) + 1, len(headers))]


def _set_strength(d, value):
    """Type a value into the strength slider's number box, as a person would (Enter, no blur)."""
    from selenium.webdriver.common.keys import Keys

    box = d.find_element("css selector", "#strength input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.ENTER)


def _upload(d, path):
    # the page renders its components one after another: on a busy machine the upload input can come after the
    # edit button the page load waits for, so wait for it too
    _wait(d, lambda: d.find_elements("css selector", "#photo input[type=file]"), 60,
          "the photo upload input")[0].send_keys(str(path))


def _toasts(d):
    return [t for t in d.execute_script(
        "return Array.from(document.querySelectorAll('.toast-body')).map(t => t.innerText);") if t.strip()]


def _visible(rect):
    return rect["width"] > 0 and rect["top"] >= 0 and rect["left"] >= 0 and rect["bottom"] <= VIEWPORT[1] \
        and rect["right"] <= VIEWPORT[0]


def _box(d, css):
    return d.execute_script("const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                            "return {width: r.width, top: r.top, bottom: r.bottom, left: r.left, right: r.right};", css)


def _open(d, server):
    d.get(server["url"])
    _wait(d, lambda: d.find_elements("id", "edit-btn"), 60, "the page")
    time.sleep(1.0)


# ---------------------------------------------------------------------------------------------------------------
# browser


def test_browser_bad_inputs_are_answered_in_the_page(server, browser, photo, tmp_path):
    """A broken file, a 1x1 image and strength 5 typed in the box: a one-line message in the page, no toast, no
    traceback in the server's log; the page keeps working."""
    d = browser
    _open(d, server)
    rng = np.random.default_rng(2)
    broken, tiny = tmp_path / "broken.png", tmp_path / "tiny.png"
    broken.write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    Image.new("RGB", (1, 1), "red").save(tiny)
    _upload(d, broken)
    assert "broken.png: not a readable image" in _wait(d, lambda: "Error" in _status(d) and _status(d), 60,
                                                        "the broken upload's message")
    assert not _images(d, "#photo-view") and not _images(d, "#recon")
    d.find_element("css selector", "#photo button[aria-label='Clear']").click()
    _wait(d, lambda: "Error" not in _status(d), 30, "the message to clear with the upload")
    _upload(d, tiny)
    assert "tiny.png: is 1x1 (HxW), expected at least 16 pixels a side" in _wait(
        d, lambda: "Error" in _status(d) and _status(d), 60, "the tiny upload's message")
    d.find_element("css selector", "#photo button[aria-label='Clear']").click()
    _upload(d, photo)
    d.find_element("css selector", "#prompts textarea").send_keys("Bald")
    _set_strength(d, 5)
    msg = _wait(d, lambda: "strength 5" in _status(d) and _status(d), 60, "the strength message")
    assert "strength 5: expected a number from -1 to 2" in msg
    # Gradio's slider sets its box back within its range when it loses focus: the edit says what it used
    d.find_element("id", "edit-btn").click()
    _wait(d, lambda: "Edited 1 image(s) at strength 2." in _status(d), 120, "the edit at strength 2")
    assert [c for c, _ in _captions(d)] == ["Bald · 2"]
    assert not _toasts(d)
    log = server["output"](100_000)
    assert "Traceback" not in log and "share=True" not in log, log[-3000:]


def test_browser_edit(env, server, browser, editor, engine, photo, turned_photo):
    d = browser
    _open(d, server)
    # no request may leave the machine: every resource the page loaded is local
    hosts = d.execute_script("return performance.getEntriesByType('resource').map(e => new URL(e.name).host);")
    assert all(h.startswith("127.0.0.1") for h in hosts), hosts
    # each example prompt once; a chip clicked twice adds its prompt once
    chips = d.execute_script("return Array.from(document.querySelectorAll('#examples button')).map(b => b.innerText);")
    assert [c.strip() for c in chips] == EXAMPLES
    for _ in range(2):
        d.find_elements("css selector", "#examples button")[0].click()
        time.sleep(0.5)
    assert d.find_element("css selector", "#prompts textarea").get_attribute("value") == "Blue hair"

    # 1. the upload (stored turned, with an EXIF orientation tag): previewed upright and reconstructed at once,
    # before any edit, scaled up with sharp pixels
    stored = np.asarray(Image.open(turned_photo).convert("RGB"))
    _upload(d, turned_photo)
    _wait(d, lambda: _images(d, "#recon") and _images(d, "#photo-view"), 60, "the upload's preview")
    source = np.asarray(Image.open(photo).convert("RGB"))
    w = editor.invert([source])
    shown = fetch_png(_images(d, "#recon")[0]["src"])
    assert close(shown, to_uint8(editor.render(w))[0]), "the reconstruction is not the photo's"
    np.testing.assert_array_equal(fetch_png(_images(d, "#photo-view")[0]["src"]), source)  # as displayed
    assert not np.array_equal(stored, source)  # (the file's own pixels are turned)
    for selector, scale in (("#photo-view", 2), ("#recon", 4)):  # the 64 px photo, the 32 px reconstruction
        im = _images(d, selector)[0]
        assert im["rendering"] == "pixelated" and im["width"] >= scale * im["natural"], (selector, im)

    # 2. the edit: the gallery is the Editor's, captioned, at the real size for download
    d.find_element("css selector", "#prompts textarea").send_keys("\nBald")
    _set_strength(d, 0.5)
    d.find_element("id", "edit-btn").click()
    _wait(d, lambda: "Edited" in _status(d) and len(_images(d, "#gallery")) == 2, 180, "the gallery")
    _wait(d, lambda: len(_table(d)) == 2, 30, "the scores")
    prompts = ["Blue hair", "Bald"]
    _, want = expected_uint8(editor, source[None], prompts, 0.5)
    for j, im in enumerate(_images(d, "#gallery")):
        got = fetch_png(im["src"])
        assert got.shape == (32, 32, 3) and got.std() > 1, "blank result"
        assert close(got, want[0, j, 0]), (j, np.abs(got.astype(int) - want[0, j, 0]).max())
        assert im["rendering"] == "pixelated" and im["width"] >= 4 * im["natural"], im
    assert _captions(d) == [["Blue hair · 0.5", True], ["Bald · 0.5", True]]
    # input and results on one screen: no scrolling
    assert d.execute_script("return window.scrollY;") == 0
    for selector in ("#photo-view", "#recon", "#compare", "#gallery"):
        for im in _images(d, selector):
            assert _visible(im), (selector, im)
    for css in ("#prompts", "#strength", "#edit-btn", "#status", "#scores", "#sweep-btn", "#sweep", "#refined",
                "#files"):
        assert _visible(_box(d, css)), css
    # 3. the slider: the gallery re-rendered at the new strength, the scores recomputed there (the engine's)
    before = _table(d)
    _set_strength(d, 1.5)
    _wait(d, lambda: [c for c, _ in _captions(d)] == ["Blue hair · 1.5", "Bald · 1.5"], 60, "the re-render")
    _wait(d, lambda: [row[2] for row in _table(d)] == ["1.5", "1.5"], 60, "the scores at 1.5")
    _, want = expected_uint8(editor, source[None], prompts, 1.5)
    for j, im in enumerate(_images(d, "#gallery")):
        assert close(fetch_png(im["src"]), want[0, j, 0])
    edit = engine.edit_many([EditRequest(photo=str(photo), prompts="\n".join(prompts), strength=0.5)])[0]
    scores = engine.rescore(edit.frames.token, 1.5).scores[0]
    table = _table(d)
    # the same programs on the same CPU give the same numbers; the page shows them rounded to 4 decimals
    # (5e-5) and `round` here may land on the other side of that rounding (another 5e-5)
    assert np.abs(np.array([[float(v) for v in row[3:]] for row in table]) - scores).max() <= 1e-4, (table, scores)
    assert [row[3:] for row in table] != [row[3:] for row in before]

    # 4. strength 5 typed in the box: a message in the page; the edits shown say their strength
    _set_strength(d, 5)
    assert "strength 5: expected a number from -1 to 2" in _wait(d, lambda: "strength 5" in _status(d) and _status(d),
                                                                 60, "the strength message")
    assert [c for c, _ in _captions(d)] == ["Blue hair · 1.5", "Bald · 1.5"] and not _toasts(d)
    _set_strength(d, 1.5)

    # 5. the sweep: an animated WebP of 0 to the strength, shown at a useful size with sharp pixels
    d.find_element("id", "sweep-btn").click()
    _wait(d, lambda: "Sweep" in _status(d) and _images(d, "#sweep"), 120, "the sweep")
    im = _images(d, "#sweep")[0]
    assert im["rendering"] == "pixelated" and im["width"] >= 128 and _visible(im), im
    with urllib.request.urlopen(im["src"], timeout=30) as r:
        assert Image.open(io.BytesIO(r.read())).n_frames == 8
    out = os.environ.get("STUDIO_SCREENSHOT")  # the README's picture: every box of the page filled
    if out:
        d.find_element("css selector", "h2").click()  # no focus ring on the last control used
        time.sleep(1.0)
        d.save_screenshot(str(env["dir"] / "studio.png"))
        picture = Image.open(env["dir"] / "studio.png").convert("RGB")
        picture.save(out, format="PNG", optimize=True)
        if os.path.getsize(out) > 200_000:
            picture.quantize(colors=128).save(out, format="PNG", optimize=True)

    # 6. a refused edit clears the results it would replace
    d.find_element("css selector", "#prompts textarea").send_keys("".join(f"\np{i}" for i in range(8)))
    d.find_element("id", "edit-btn").click()
    assert "10 prompts: at most 8 per edit" in _wait(d, lambda: "Error" in _status(d) and _status(d), 60,
                                                      "the prompt message")
    _wait(d, lambda: not _images(d, "#gallery"), 30, "the gallery to clear")
    assert not _table(d) and not _images(d, "#compare") and not _images(d, "#sweep")
    assert _images(d, "#recon") and _images(d, "#photo-view")  # the upload's, still true
    _set_strength(d, 1.0)  # no edit left to re-render: nothing happens
    time.sleep(2)
    assert not _images(d, "#gallery") and "Error" in _status(d)
    # the console has no errors about blocked / refused network loads
    logs = [entry["message"] for entry in d.get_log("browser") if entry["level"] == "SEVERE"]
    assert not [entry for entry in logs if "ERR_" in entry and "127.0.0.1" not in entry], logs


@pytest.mark.slow
def test_browser_refined_photo(server, browser, engine, photo):
    """The refine choice (PTI, 2 steps): a "Refining ..." line while it runs, e4e's and the refined reconstruction
    side by side, the edit and the slider rendered on the photo's tuned generator (the engine's, in this process)."""
    d = browser
    _open(d, server)
    d.execute_script("""
        window.statusSeen = [];
        const el = document.querySelector('#status');
        new MutationObserver(() => window.statusSeen.push(el.innerText)).observe(
            el, {subtree: true, childList: true, characterData: true});""")
    d.find_element("css selector", "#refine input[value='PTI']").click()
    from selenium.webdriver.common.keys import Keys

    steps = d.find_element("css selector", "#refine-steps input")
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys("2")
    _upload(d, photo)
    _wait(d, lambda: _images(d, "#refined") and "Refined with PTI (2 steps)" in _status(d), 600, "the refinement")
    seen = d.execute_script("return window.statusSeen;")
    assert any("Refining the photo with PTI (2 steps)" in t for t in seen), seen
    want = engine.preview(str(photo), "PTI", 2)
    assert close(fetch_png(_images(d, "#refined")[0]["src"]), to_uint8(want.refined_reconstruction))
    assert close(fetch_png(_images(d, "#recon")[0]["src"]), to_uint8(want.reconstruction))
    d.find_element("css selector", "#prompts textarea").send_keys("Bald")
    _set_strength(d, 0.5)
    d.find_element("id", "edit-btn").click()
    _wait(d, lambda: "from the PTI reconstruction" in _status(d) and _images(d, "#gallery"), 300, "the edit")
    edit = engine.edit_many([EditRequest(photo=str(photo), prompts="Bald", strength=0.5, refine="PTI",
                                         refine_steps=2, scores=False)])[0]
    assert close(fetch_png(_images(d, "#gallery")[0]["src"]), to_uint8(edit.frames.images[0, 0]))
    _set_strength(d, 1.5)
    _wait(d, lambda: [c for c, _ in _captions(d)] == ["Bald · 1.5"], 120, "the re-render")
    again = engine.rerender(edit.frames.token, 1.5)
    assert close(fetch_png(_images(d, "#gallery")[0]["src"]), to_uint8(again.images[0, 0]))


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


def test_api(server, editor, photo):
    from gradio_client import handle_file

    c = client(server)
    # preview of an upload: the photo and its reconstruction
    view, recon, refined, *_, status = c.predict(handle_file(str(photo)), "none", None, api_name="/preview")
    source = np.asarray(Image.open(photo).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(view).convert("RGB")), source)
    assert close(np.asarray(Image.open(recon).convert("RGB")), to_uint8(editor.render(editor.invert([source])))[0])
    # random_sample
    img, _, _, kind, sample_files, *_, status = c.predict(7, 0.7, api_name="/random_sample")
    w = editor.sample(1, 7, 0.7)
    lat = [f for f in sample_files if f.endswith(".npy")][0]
    np.testing.assert_allclose(np.load(lat), w, atol=1e-5)
    assert kind == "random" and close(np.asarray(Image.open(img).convert("RGB")), to_uint8(editor.render(w))[0])
    # edit (random source) then re-render, scores and sweep on the same session
    prompts, s = ["Smiling", "Man aged 10"], 1.5
    recon, _, gallery, compare, table, files, token, sweep_img, sweep_lat, status = c.predict(
        "random", None, None, False, 7, 0.7, "\n".join(prompts), s, True, "none", None, api_name="/edit")
    assert "Edited" in status, status
    r, want = expected_uint8(editor, w, prompts, s)
    lat = [f for f in files if f.endswith("edited_latents.npy")][0]
    np.testing.assert_allclose(np.load(lat), r.latents[:, :, 0], atol=1e-5)
    for j, item in enumerate(gallery):
        assert close(np.asarray(Image.open(item["image"]).convert("RGB")), want[0, j, 0])
        assert item["caption"] == f"{prompts[j]} · 1.5"
    assert len(table["data"]) == 2 and table["headers"][3:] == SCORES
    # the slider: generator only, same images as an edit at that strength; then its scores
    gallery2, _, _, status = c.predict(token, 0.5, api_name="/rerender")
    assert "ms per frame" in status, status
    _, want2 = expected_uint8(editor, w, prompts, 0.5)
    for j, item in enumerate(gallery2):
        assert close(np.asarray(Image.open(item["image"]).convert("RGB")), want2[0, j, 0])
    table2 = c.predict(token, 0.5, api_name="/scores")
    assert [row[2] for row in table2["data"]] == [0.5, 0.5] and table2["data"] != table["data"]
    anim, sweep_lat, status = c.predict(token, s, 4, api_name="/sweep")
    steps = np.linspace(0, s, 4).astype(np.float32)
    ws = np.load(sweep_lat)  # w + t * delta for t from 0 to the strength, delta = (edit at s - w) / s
    np.testing.assert_allclose(ws, w[0] + steps[:, None, None] / s * (r.latents[0, 0, 0] - w[0]), atol=1e-4)
    frames = Image.open(anim)
    assert frames.n_frames == 4
    frames.seek(3)
    assert close(np.asarray(frames.convert("RGB")), to_uint8(editor.render(ws[3:]))[0])
    # bad input: a message, then a good request works
    for prompts_, strength, message in (("", 1.0, "no prompt"), ("\n".join(f"p{i}" for i in range(9)), 1.0,
                                                                   "at most 8"), ("Bald", 5, "strength 5")):
        *_, status = c.predict("random", None, None, False, 1, 0.7, prompts_, strength, True, "none", None,
                               api_name="/edit")
        assert message in status, status
    *_, status = c.predict(token, 7, api_name="/rerender")
    assert "strength 7: expected a number from -1 to 2" in status
    *_, status = c.predict("random", None, None, False, 1, 0.7, "Bald", 1.0, True, "none", None, api_name="/edit")
    assert "Edited" in status


def test_api_bad_files(server, tmp_path):
    from gradio_client import handle_file

    c = client(server)
    nan = np.zeros((N_LATENT, STYLE_DIM), np.float32)
    nan[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "shape.npy", np.zeros((3, STYLE_DIM), np.float32))
    for name, expect in (("nan.npy", "NaN"), ("shape.npy", "expected float w+")):
        *_, status = c.predict("latents", None, handle_file(str(tmp_path / name)), False, 0, 0.7, "Bald", 1.0, True,
                               "none", None, api_name="/edit")
        assert expect in status, status
    # a file path the client did not upload is refused by Gradio before the engine sees it
    forged = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
    try:
        *_, status = c.predict("photo", forged, None, False, 0, 0.7, "Bald", 1.0, True, "none", None, api_name="/edit")
    except Exception as e:  # gradio_client raises the server's refusal
        status = str(e)
    assert "root:" not in status and "Edited" not in status, status


# ---------------------------------------------------------------------------------------------------------------
# load


def _burst(server, clients, per_client, base, results, errors):
    """`clients` gradio_client users at once, each sending `per_client` random-source edits (scores off: the mapper
    and the generator are what is batched); results[(seed, prompt)] = the /edit answer."""

    def work(k):
        try:
            c = client(server)
            for i in range(per_client):
                seed = base + k * per_client + i
                prompt = LOAD_PROMPTS[(k + i) % len(LOAD_PROMPTS)]
                results[(seed, prompt)] = c.predict("random", None, None, False, seed, 0.7, prompt, 1.0, False,
                                                    "none", None, api_name="/edit")
        except Exception as e:  # pragma: no cover - surfaced by the caller
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


LOAD_PROMPTS = ["Blue hair", "Bald", "Smiling", "Man aged 10", "Purple hair", "Grey hair", "Beard", "Old"]


def test_load(server, editor):
    """16 clients x 2 requests at once: every answer equal to the Editor's for its own (seed, prompt), and the
    server's log shows edit calls that served several requests together."""
    results, errors = {}, []
    _burst(server, 16, 2, 0, results, errors)
    assert not errors, errors[:3]
    assert len(results) == 32
    for (seed, prompt), out in results.items():
        assert "Edited" in out[-1], out[-1]
        w = editor.sample(1, seed, 0.7)
        r = editor.edit(w, [prompt], 1.0)
        lat = [f for f in out[5] if f.endswith("edited_latents.npy")][0]
        np.testing.assert_allclose(np.load(lat), r.latents[:, :, 0], atol=1e-5, err_msg=str((seed, prompt)))
        if seed % 8 == 0:
            got = np.asarray(Image.open(out[2][0]["image"]).convert("RGB"))
            assert close(got, to_uint8(r.images)[0, 0, 0]), (seed, prompt)
    log = server["output"](1_000_000)
    sizes = [int(line.split("edit: ")[1].split()[0]) for line in log.splitlines() if "request(s)" in line]
    assert max(sizes) > 1, "no batched edit call in the server log"


@pytest.mark.slow
def test_memory_stays_flat(server):
    """RSS of the server after 212 edit requests within 10% of its RSS after the first 20 (the edits' cache and
    files are bounded; every device call on one thread, so one malloc arena)."""
    import psutil

    proc = psutil.Process(server["proc"].pid)
    results, errors = {}, []
    _burst(server, 4, 5, 100_000, results, errors)
    rss0 = proc.memory_info().rss
    for base in (1000, 2000, 3000):
        _burst(server, 16, 4, base, results, errors)
    assert not errors, errors[:3]
    rss1 = proc.memory_info().rss
    print(f"\nload: RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB")
    assert rss1 <= rss0 * 1.10, (rss0, rss1)


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
