# The two quickstart commands: `make run` and `make test` (each installs first).
VENV ?= .venv
# The shared arXiv sample (see its PROVENANCE.md); point elsewhere with ARXIV_DATA=...
ARXIV_DATA ?= ../shared/data/arxiv

.PHONY: install run test lint bench lock gpu-check

install:
	@VENV=$(VENV) bash .ci/install

# A small sweep end to end: ingest the cs.LG sample (without it, fetch a week of cs.LG
# from arXiv), embed 2,000 abstracts, train a 2 x 2 grid through Prefect and Ray, record
# it in MLflow and print the results.
run: install
	$(VENV)/bin/python -m flows.quickstart $(ARXIV_DATA)

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest

bench: install
	$(VENV)/bin/python -m sae.bench
	$(VENV)/bin/python -m tasks.embed.bench --n 1000 --repeats 3

# On a GPU machine: correctness and speed of the kernels and the grid, in one go.
gpu-check:
	PYTHON=$(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3) bash scripts/gpu_check.sh

# Re-resolve requirements.lock after changing pyproject.toml.
lock:
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --find-links /opt/wheels --index-strategy unsafe-best-match -c .ci/constraints.txt \
	  --no-emit-find-links -o requirements.lock
