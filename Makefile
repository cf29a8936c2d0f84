# Entry points for developers and CI. Every target that runs code first runs the idempotent
# setup, so a fresh Debian 12 machine only needs `make test`.
.PHONY: setup test demo bench lint

VENV := .venv/bin

setup:
	bash scripts/setup.sh

test: setup
	bash scripts/test.sh $(ARGS)

demo: setup
	$(VENV)/routemesh demo

# The issue 9 harness (tests/bench/README.md); slow pytest benchmarks run with pytest -m slow.
bench: setup
	$(VENV)/python -m tests.bench $(ARGS)

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
