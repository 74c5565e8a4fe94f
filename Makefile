# Two entry points, each setting up .venv first: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint docs bench clean

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(INSTALLED)

## demo: execute examples/demo.ipynb on 2 CPU ranks; writes examples/demo.executed.ipynb
demo: $(INSTALLED)
	$(PY) -m ddipp.notebooks examples/demo.ipynb -o examples/demo.executed.ipynb

## test: lint, then every test tier (unit, fuzzer, real CPU ranks, notebooks through nbclient)
test: $(INSTALLED) lint
	$(PY) -m pytest --run-slow --run-notebooks

lint: $(INSTALLED)
	$(VENV)/bin/ruff check ddipp tests bench conftest.py
	$(VENV)/bin/ruff format --check ddipp tests bench conftest.py

## docs: regenerate docs/states.md from the transition table
docs: $(INSTALLED)
	$(PY) -m ddipp.fsm.diagram > docs/states.md

clean:
	rm -rf $(VENV) examples/demo.executed.ipynb .pytest_cache .hypothesis

## bench: every benchmark on 2 CPU ranks against its peer; writes bench/results.json
bench: $(INSTALLED)
	$(PY) -m bench
