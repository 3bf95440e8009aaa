# Two entry points (see README): `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup demo test lint infra clean

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

# What the Docker + Kubernetes tier (tests/e2e/kubernetes) needs, cached outside the repo under
# $${PETARECON_CACHE:-~/.cache/petarecon}: system packages (only missing ones), the Kubernetes
# binaries (built once, ~20 min on 2 cores), the local base image and the worker/airflow
# images (layer cache). The Docker engine is stopped again afterwards; the tier starts its own.
infra: setup
	tests/infra/install.sh
	k8s/local/build.sh
	eval "$$(docker/engine.sh start)" && export DOCKER_HOST \
	  && docker/base-image.sh petarecon-base:bookworm \
	  && PETARECON_GPU_BASE=petarecon-base:bookworm docker/build.sh petarecon-base:bookworm; \
	  status=$$?; docker/engine.sh stop; exit $$status

test: lint infra
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) petarecon-data .pytest_cache
