# The two quickstart commands: `make run` and `make test` (each installs first).
VENV ?= .venv

.PHONY: install run test lint bench lock

install:
	@VENV=$(VENV) bash .ci/install

run: install
	$(VENV)/bin/sae train

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest

bench: install
	$(VENV)/bin/python -m sae.bench
	$(VENV)/bin/python -m tasks.embed.bench --n 1000 --repeats 3

# Re-resolve requirements.lock after changing pyproject.toml.
lock:
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --find-links /opt/wheels --index-strategy unsafe-best-match -c .ci/constraints.txt \
	  --no-emit-find-links -o requirements.lock
