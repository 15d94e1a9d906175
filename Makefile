# make demo: create .venv, install (no torch), run the tiny default end to end.  make test: the default suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FFCLIP := $(VENV)/bin/ffclip
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: install install-test install-studio browser demo studio test test-slow test-latest bench bench-train bench-all \
	clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

$(VENV)/.installed-studio: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[studio]'
	touch $@

# the studio's browser test drives Debian's headless Chromium; installed here when missing and we are root
browser:
	@command -v chromedriver >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null); } || \
		echo "note: no chromium/chromedriver; the browser test will say how to install them"

demo: install
	$(PY) train.py --config configs/tiny.py --workdir runs/tiny
	rm -rf runs/tiny/edits runs/tiny/edits-photo runs/tiny/edits-photo-pti
	$(FFCLIP) edit --weights runs/tiny/weights --text "Bald" --text "Purple hair" --strength 0.5,1 \
		--random 4 --seed 0 --output runs/tiny/edits
	$(FFCLIP) edit --weights runs/tiny/weights --text "Bald" --text "Purple hair" --strength 0.5,1 \
		--images runs/tiny/tiny_assets/photos --output runs/tiny/edits-photo
	$(FFCLIP) edit --weights runs/tiny/weights --text "Bald" --text "Purple hair" --strength 0.5,1 \
		--images runs/tiny/tiny_assets/photos --refine pti --refine-steps 10 --output runs/tiny/edits-photo-pti
	@echo "demo done: training grids in runs/tiny/grids/, edits in runs/tiny/edits/ (grid.png); the photo's edits on" \
		"e4e's inversion in runs/tiny/edits-photo/grid.png, on its PTI-tuned generator in runs/tiny/edits-photo-pti/grid.png"

# the edit studio on the tiny default (trained by `make demo` first when missing): http://127.0.0.1:7860
studio: $(VENV)/.installed-studio
	@test -f runs/tiny/weights/manifest.json || $(MAKE) demo
	$(FFCLIP) studio --weights runs/tiny/weights

test: install-test browser
	$(PYTEST) tests

test-slow: install-test browser
	$(PYTEST) -m "" tests

# make test-latest: the default suite on Python 3.12 with the newest jax/flax/orbax-checkpoint/optax/chex pip serves
# for it within setup.cfg's ranges (a note names any newer release the ranges keep out), transformers < 5 as pinned.
# torch for Python 3.12 comes as a CUDA build here: about 4.6 GB in $(VENV_LATEST), installed once.
PYTHON_LATEST ?= /root/.pyenv/versions/3.12.1/bin/python3
VENV_LATEST ?= .venv-latest
LATEST := jax jaxlib flax orbax-checkpoint optax chex

$(VENV_LATEST)/.installed: setup.cfg pyproject.toml
	$(PYTHON_LATEST) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]' $(LATEST)
	touch $@

test-latest: $(VENV_LATEST)/.installed browser
	@for p in $(LATEST) transformers torch; do \
		have=$$($(VENV_LATEST)/bin/python -c "import importlib.metadata as m; print(m.version('$$p'))"); \
		new=$$($(VENV_LATEST)/bin/python -m pip index versions $$p 2>/dev/null | sed -n 's/^[^ ]* (\(.*\))$$/\1/p'); \
		echo "test-latest: $$p $$have"; \
		[ -z "$$new" ] || [ "$$new" = "$$have" ] || echo "note: pip serves $$p $$new; setup.cfg's range keeps $$have"; \
	done
	$(VENV_LATEST)/bin/python -m pytest -q -p no:cacheprovider tests

bench: install-test
	$(PY) bench/generator.py --size 256 --batch 2

bench-train: install-test
	$(PY) bench/train_step.py --size 256 --batch 2

# every benchmark, sized for the device found (GPU/TPU: 1024 px batch 8; CPU: 256 px batch 2), within 8 minutes
bench-all: install-test
	$(PY) bench/all.py

clean:
	rm -rf $(VENV) $(VENV_LATEST) runs
