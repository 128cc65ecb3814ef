# One entry point for the common tasks. Every target sets itself up from nothing.
#   make setup      - create .venv/ with the runtime requirements (quick when already done)
#   make test       - setup + test extras + the browser the demo test drives + lint + the whole test suite
#   make test-fast  - the inner loop: every test but the slow, browser and distributed ones (a few minutes)
#   make lint       - ruff (lint + format check) and deptry (requirements against imports)
#   make format     - apply ruff's fixes and formatting
#   make demo       - setup + the main job on its embedded default (toy model, generated data, CPU)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup setup-dev browser lint format test test-fast demo clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Stamps make re-runs quick: pip only runs again when a requirements file changed.
$(VENV)/.runtime-stamp: requirements.txt | $(VENV)/bin/python
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-stamp: requirements.txt requirements-dev.txt $(VENV)/.runtime-stamp
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.runtime-stamp

setup-dev: $(VENV)/.dev-stamp

# The demo's browser test drives Debian's chromium through Playwright (never a browser download).
browser:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: /usr/bin/chromium"; \
	else echo "+ apt-get update && apt-get install -y chromium"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/deptry .

format: setup-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# One pytest worker per core, each (and every process a test starts) on one compute thread; loadgroup keeps the
# tests of one xdist_group on one worker (the torch.compile tests that share inductor's cached graphs).
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -n auto --dist loadgroup

test: setup-dev browser lint
	$(PYTEST) --durations=30

test-fast: setup-dev
	$(PYTEST) -m "not slow and not browser and not distributed" --durations=15

# The CPU quickstart (about 9 minutes on 2 CPU cores): ControlNet on the committed toy base, trained on generated
# circles, then scored with control against the same model at control strength 0. Run again, it goes on with the
# run in runs/toy (a finished one is only scored again); delete runs/toy to train from the start.
TOY_RUN := runs/toy
demo: setup
	@test -f $(TOY_RUN)/init.safetensors || { mkdir -p $(TOY_RUN) && \
	  $(PY) tool_add_control.py models/toy_base.safetensors $(TOY_RUN)/init.safetensors --config models/cldm_toy.yaml; }
	$(PY) tutorial_train.py --resume-from auto
	$(PY) tool_eval_control.py --config models/cldm_toy.yaml --base models/toy_base.safetensors \
	  --control $(TOY_RUN)/control.safetensors --grid $(TOY_RUN)/eval_grid.png --out $(TOY_RUN)/eval.json
	@echo "open the demo on the trained weights:"
	@echo "  $(PY) gradio_canny2image.py --config models/cldm_toy.yaml --base models/toy_base.safetensors --control $(TOY_RUN)/control.safetensors"

clean-venv:
	rm -rf $(VENV)
