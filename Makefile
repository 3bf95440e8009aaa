# Two entry points (see README): `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/petarecon demo --out petarecon-data

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) petarecon-data .pytest_cache
