# The two commands a newcomer needs: `make demo` and `make test`. Both set up what is missing.
# The project runs from the checkout (PYTHONPATH): the environments are shared, outside it.
.PHONY: setup demo test lint bench demo-model schema release clean
PY := PYTHONPATH=$(CURDIR) .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) -m edge_inspector.cli demo $(ARGS)

test: setup
	@bash scripts/test.sh

lint: setup
	@.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy \
		&& .venv/bin/actionlint .github/workflows/*.yml

bench: setup
	@$(PY) bench/bench_engine.py $(ARGS)

demo-model: setup
	@$(PY) -m edge_inspector.demo.train $(ARGS)

schema: setup
	@$(PY) -m edge_inspector.cli schema --out edge_inspector/schema

release: setup
	@$(PY) scripts/release.py build $(ARGS)

clean:
	rm -rf edge-inspector-demo dist .pytest_cache .mypy_cache .ruff_cache
