"""The edit studio, a local web page (`ffclip studio`, `ffclip_jax/cli/studio.py`), in parts with one job each:

- `engine`: requests -> the Editor's fixed-batch rows, the slider's re-render and the sweep arithmetic, the cache of
  each edit's w+ and mapper offset; plain numpy in and out (no Gradio, no threads, no files), unit-tested alone.
- `serving`: the engine behind one device thread (every device call on it), its answers written as files.
- `outputs`: the per-edit folders under the server's one temporary folder: PNGs, zip, latents, the sweep's WebP.
- `page`: the Gradio layout and callbacks (gradio is imported only there, when a page is built).
"""
