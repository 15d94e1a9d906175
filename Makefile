# make demo: create .venv, install, run the tiny default end to end.  make test: the default suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: install demo test test-slow bench bench-train clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) train.py --config configs/tiny.py --workdir runs/tiny
	rm -rf runs/tiny/edits
	$(PY) -m ffclip_jax.edit --weights runs/tiny/weights --text "Bald" --text "Purple hair" --strength 0.5,1 \
		--random 4 --seed 0 --output runs/tiny/edits
	@echo "demo done: training grids in runs/tiny/grids/, edits in runs/tiny/edits/ (grid.png)"

test: install
	$(PYTEST) tests

test-slow: install
	$(PYTEST) -m "" tests

bench: install
	$(PY) bench/generator.py --size 256 --batch 2

bench-train: install
	$(PY) bench/train_step.py --size 256 --batch 2

clean:
	rm -rf $(VENV) runs
