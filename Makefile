# memseg-kit: every target is idempotent and sets up what it needs.
# `make demo` and `make test` work on a fresh machine (see README).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.memseg-installed
DATA   ?= $(or $(MEMSEG_DATA),data/synthetic)
PORT   ?= 8866
HOST   ?= 127.0.0.1
PYTEST_ARGS ?=

.PHONY: setup demo lab test test-fast lint bench browser-deps slides docs clean help

help:
	@echo "make demo   - set up, build the synthetic dataset, train a quick model if none is cached, serve the Voila dashboard"
	@echo "make test   - set up, lint, and run the whole test suite (unit, integration, notebooks, browser)"
	@echo "make lint   - ruff with the rule set in pyproject.toml (pyflakes, import order, lines <= 120); make test runs it"
	@echo "make lab    - JupyterLab on notebooks/"
	@echo "make slides - the notebooks as reveal.js slide decks that work offline, in build/slides (needs npm)"
	@echo "make docs   - a static site of the executed notebooks and the docs/ pages, in build/site (needs npm)"
	@echo "make bench  - benchmarks (simulation, inference, training step, memory size)"
	@echo "make setup  - create $(VENV) and install memseg with its notebooks, deploy, dev and docs extras"

setup: $(STAMP)

# The torch trap: a CPU-only torch wheel in a local wheel folder cannot load the
# registry's torchvision. Resolve torch and torchvision *together from the registry* by installing
# an unpinned torchvision first (it pulls its matching torch); never pin torch==2.13.0.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch, torchvision; torchvision.ops.nms" 2>/dev/null || \
	    $(BIN)/python -m pip install --quiet torchvision
	$(BIN)/python -m pip install --quiet -e ".[notebooks,deploy,dev,docs]"
	$(BIN)/python -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"
	touch $(STAMP)

# Headless Chromium for the dashboard's browser test comes from Debian packages (root only).
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	else echo "browser tests need Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver"; fi

# ruff's rules live in pyproject.toml ([tool.ruff]): pyflakes, import order and 120 columns, notebooks included.
lint: setup
	$(BIN)/ruff check .

# -v names each test as it starts (a stall shows which one); --durations lists the slowest at the end.
test: setup browser-deps lint
	$(BIN)/python -m pytest tests -v --durations=25 $(PYTEST_ARGS)

test-fast: setup lint
	$(BIN)/python -m pytest tests -m "not slow and not browser and not notebook" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/run.py

lab: setup
	$(BIN)/jupyter lab notebooks/

# Slides and site (docs/publish.py, memseg.notebook.publish): each notebook executes once into $(EXECUTED) (QUICK mode, on DATA)
# and is reused there until it or the memseg package changes; reveal.js and MathJax come from the npm registry
# (cached in build/vendor) and are copied beside the pages, which load nothing from the network.
EXECUTED ?= build/executed
slides: setup
	MEMSEG_DATA="$(abspath $(DATA))" $(BIN)/python docs/publish.py slides --out build/slides --executed "$(EXECUTED)"

docs: setup
	MEMSEG_DATA="$(abspath $(DATA))" $(BIN)/python docs/publish.py docs --out build/site --executed "$(EXECUTED)"

# The container's entrypoint does the serving (prepare, then voila): one place decides about the token
# (none on a loopback HOST; on any other, MEMSEG_TOKEN or a generated one, printed).
demo: setup
	MEMSEG_DATA="$(abspath $(DATA))" MEMSEG_HOST="$(HOST)" PORT="$(PORT)" PATH="$(abspath $(BIN)):$$PATH" bash docker/entrypoint.sh

clean:
	rm -rf $(VENV) .pytest_cache
