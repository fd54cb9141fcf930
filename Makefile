# The two commands a newcomer needs: `make demo` and `make test`. Both set up what is missing.
.PHONY: setup demo test lint bench demo-model schema clean

setup:
	@bash scripts/setup.sh

demo: setup
	@.venv/bin/edge-inspector demo $(ARGS)

test: setup
	@bash scripts/test.sh

lint: setup
	@.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

bench: setup
	@.venv/bin/python bench/bench_engine.py $(ARGS)

demo-model: setup
	@.venv/bin/python -m edge_inspector.demo.train $(ARGS)

schema: setup
	@.venv/bin/edge-inspector schema --out edge_inspector/schema

clean:
	rm -rf edge-inspector-demo .pytest_cache .mypy_cache .ruff_cache
