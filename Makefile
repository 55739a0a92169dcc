# Two commands do everything on a fresh Linux machine (see README):
#   make run    executes every notebook (00-06) headless into outputs/<profile>/
#   make test   runs pytest on helpers/ and executes every notebook with nbmake (smoke profile)
#   make demo   notebooks 00-04 offline with the small SAM + CLIP trained on the shapes (outputs/demo/)
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp
READY   = $(VENV)/.bytecode-stamp
PINS    = $(VENV)/.pins
# torch and torchvision both from PyPI: the only pair that loads together on CPU here and on Colab.
TORCH_PINS = "torch==2.13.0" "torchvision==0.28.0"

.PHONY: FORCE install run smoke demo test test-fast lint clean strip ray-demo readme-figure

install: $(READY)

# The pins as a file rewritten only when they change, so that a new pin reinstalls and an edit elsewhere in this
# Makefile does not (a reinstall needs the network; make demo must not). A .venv made before this file has the
# pins of its install stamp's day: the file starts with that stamp's date.
$(PINS): FORCE
	@mkdir -p $(VENV)
	@if [ ! -e $@ ] && [ -e $(STAMP) ]; then echo '$(TORCH_PINS)' > $@ && touch -r $(STAMP) $@; fi
	@echo '$(TORCH_PINS)' | cmp -s - $@ || echo '$(TORCH_PINS)' > $@

$(STAMP): pyproject.toml $(PINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade uv
	$(VENV)/bin/uv pip install --python $(PY) -e ".[test,ray]" $(TORCH_PINS)
	touch $(STAMP)

# The installed packages compiled to bytecode, offline (~45 s once; ~10 s to check again when the Makefile changes):
# uv leaves that to the first import, and where Python may not write __pycache__ (PYTHONDONTWRITEBYTECODE=1, a
# read-only install) every kernel then compiled torch's Python anew: make demo took 3 min 9 s - 3 min 19 s without,
# 1 min 43 s - 1 min 45 s with (docs/performance.md#make-demo). A .venv made before this step gets it at its next
# make. -x: one of torch's own test files is Python 3.12 syntax, which 3.11 cannot compile and nothing imports;
# any other that does not compile is listed in bytecode.log, not fatal.
$(READY): $(STAMP) Makefile
	$(PY) -m compileall -q -j 0 -x 'py312_intrinsics' "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
	  > $(VENV)/bytecode.log || echo "some files did not compile ($(VENV)/bytecode.log): imports work, only slower"
	touch $(READY)

run: $(READY)
	$(PY) -m helpers.run_notebooks

smoke: $(READY)
	SAMCLIP_PROFILE=smoke $(PY) -m helpers.run_notebooks

# The trained demo models (helpers/demo/weights/, sha256-checked) on unseen demo images: no download.
demo: $(READY)
	SAMCLIP_PROFILE=demo $(PY) -m helpers.run_notebooks 00 01 02 03 04

# The README's picture: notebook 04's four panels in the demo profile on an unseen image (seed 11), as a
# 256-colour PNG; rerun after anything that changes what the demo shows.
readme-figure: demo
	$(PY) -c "from PIL import Image; Image.open('outputs/demo/figures/demo/04_demo_000_circle.png').convert('RGB')\
	.quantize(256).save('docs/demo_four_panels.png', optimize=True)"

# The smoke dataset through a private 2-worker Ray instance; notebooks 03-04 then read its cache.
ray-demo: $(READY)
	SAMCLIP_PROFILE=smoke $(PY) -c "from helpers.config import load_config; from helpers.data import prepare_dataset; prepare_dataset(load_config())"
	SAMCLIP_PROFILE=smoke $(PY) -m helpers.distributed --address local --workers 2

# pytest-xdist workers (tests/conftest.py keeps the notebooks in order on one worker, Ray's tests on one).
WORKERS ?= 2
PYTEST  = SAMCLIP_PROFILE=smoke SAMCLIP_START_DIR=$(CURDIR) $(PY) -m pytest -q -n $(WORKERS)

test: $(READY) lint
	$(PYTEST) --nbmake --nbmake-timeout=300 tests notebooks

# The inner loop: everything but the notebooks, the real-data notebook flows and Ray (about a minute).
test-fast: $(READY)
	$(PYTEST) tests --ignore=tests/test_notebook_flow.py --ignore=tests/test_distributed.py

lint: $(READY)
	$(VENV)/bin/ruff check helpers tests benchmarks
	$(VENV)/bin/ruff format --check helpers tests benchmarks

strip: $(READY)
	$(VENV)/bin/nbstripout notebooks/*.ipynb

clean:
	rm -rf outputs .pytest_cache
