# Two entry points, each setting up .venv first: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# fastai 1 and fastai 2 share the import name: the fastai 1 lesson runs in its own environment.
VENV1 := .venv-fastai1
INSTALLED1 := $(VENV1)/.installed

.PHONY: demo test lint docs docs-images chromium bench clean

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,fastai,browser]'
	touch $(INSTALLED)

$(INSTALLED1): pyproject.toml constraints.txt constraints-fastai1.txt
	$(PYTHON) -m venv $(VENV1)
	$(VENV1)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-fastai1.txt \
		-e '.[test,fastai1]' torch torchvision pandas numpy setuptools spacy
	touch $(INSTALLED1)

## demo: execute examples/demo.ipynb on 2 CPU ranks; writes examples/demo.executed.ipynb
demo: $(INSTALLED)
	$(PY) -m ddipp.notebooks examples/demo.ipynb -o examples/demo.executed.ipynb

## test: lint, then every test tier (unit, fuzzer, real CPU ranks, notebooks through nbclient,
## notebooks through JupyterLab in chromium), then the fastai 1 lesson in its own environment
test: $(INSTALLED) $(INSTALLED1) lint chromium
	$(PY) -m pytest --run-slow --run-notebooks --run-browser
	$(VENV1)/bin/python -m pytest --run-notebooks -m notebook -k fastai_v1

lint: $(INSTALLED)
	$(VENV)/bin/ruff check ddipp tests bench conftest.py
	$(VENV)/bin/ruff format --check ddipp tests bench conftest.py

## docs: regenerate docs/states.md from the transition table
docs: $(INSTALLED)
	$(PY) -m ddipp.fsm.diagram > docs/states.md

## docs-images: the browser tests' screenshots -> docs/images (README and docs/guide.md show them)
docs-images: $(INSTALLED) chromium
	$(PY) -m pytest --run-browser --screenshots docs/images tests/test_browser.py

## chromium: Debian's package for the browser tier, installed when run as root; else that tier skips
chromium:
	@if command -v chromium >/dev/null || [ -x /usr/lib/chromium/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "chromium is not installed: the browser tests will skip (apt-get install chromium)"; fi

clean:
	rm -rf $(VENV) $(VENV1) examples/demo.executed.ipynb .pytest_cache .hypothesis

## bench: every benchmark on 2 CPU ranks against its peer; writes bench/results.json
bench: $(INSTALLED)
	$(PY) -m bench
