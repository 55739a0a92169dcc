# Two commands do everything on a fresh Linux machine (see README):
#   make run    executes notebooks 00-04 headless into outputs/<profile>/
#   make test   runs pytest on helpers/ and executes every notebook with nbmake (smoke profile)
#   make demo   notebooks 00-04 offline with the small SAM + CLIP trained on the shapes (outputs/demo/)
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp
# torch and torchvision both from PyPI: the only pair that loads together on CPU here and on Colab.
TORCH_PINS = "torch==2.13.0" "torchvision==0.28.0"

.PHONY: install run smoke demo test lint clean strip ray-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade uv
	$(VENV)/bin/uv pip install --python $(PY) -e ".[test,ray]" $(TORCH_PINS)
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m helpers.run_notebooks

smoke: $(STAMP)
	SAMCLIP_PROFILE=smoke $(PY) -m helpers.run_notebooks

# The trained demo models (helpers/demo/weights/, sha256-checked) on unseen demo images: no download.
demo: $(STAMP)
	SAMCLIP_PROFILE=demo $(PY) -m helpers.run_notebooks 00 01 02 03 04

# The smoke dataset through a private 2-worker Ray instance; notebooks 03-04 then read its cache.
ray-demo: $(STAMP)
	SAMCLIP_PROFILE=smoke $(PY) -c "from helpers.config import load_config; from helpers.data import prepare_dataset; prepare_dataset(load_config())"
	SAMCLIP_PROFILE=smoke $(PY) -m helpers.distributed --address local --workers 2

test: $(STAMP) lint
	SAMCLIP_PROFILE=smoke SAMCLIP_START_DIR=$(CURDIR) $(PY) -m pytest -q --nbmake --nbmake-timeout=300 tests notebooks

lint: $(STAMP)
	$(VENV)/bin/ruff check helpers tests benchmarks
	$(VENV)/bin/ruff format --check helpers tests benchmarks

strip: $(STAMP)
	$(VENV)/bin/nbstripout notebooks/*.ipynb

clean:
	rm -rf outputs .pytest_cache
