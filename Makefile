# Two entry points, each setting up .venv first: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# fastai 1 and fastai 2 share the import name: the fastai 1 lesson runs in its own environment.
VENV1 := .venv-fastai1
INSTALLED1 := $(VENV1)/.installed

.PHONY: demo test lint docs docs-images system-packages bench clean gpu-wheels gpu-check gpu-rehearsal

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
## notebooks through JupyterLab in chromium, engines on simulated hosts), then the fastai tests
## again in the fastai 1 environment (those of fastai 2 skip there)
test: $(INSTALLED) $(INSTALLED1) lint system-packages
	$(PY) -m pytest --run-slow --run-notebooks --run-browser --run-multihost
	$(VENV1)/bin/python -m pytest --run-slow --run-notebooks -m fastai

lint: $(INSTALLED)
	$(VENV)/bin/ruff check ddipp tests bench conftest.py
	$(VENV)/bin/ruff format --check ddipp tests bench conftest.py

## docs: regenerate docs/states.md from the transition table
docs: $(INSTALLED)
	$(PY) -m ddipp.fsm.diagram > docs/states.md

## docs-images: the browser tests' screenshots -> docs/images (README and docs/guide.md show them)
docs-images: $(INSTALLED) system-packages
	$(PY) -m pytest --run-browser --screenshots docs/images tests/test_browser.py

## system-packages: Debian's packages for the browser tier (chromium), the ssh tests (OpenSSH),
## the Slurm tests (slurm-wlm, munge) and the MPI tests (openmpi-bin), installed when run as
## root; else the tests that need them skip, saying so. The tests run sshd, slurmd, slurmctld and munged in their own
## namespaces and folders: services that systemd would start for a new package are disabled
## again (none ran before: the package was missing)
system-packages:
	@missing=""; services=""; \
	command -v chromium >/dev/null || [ -x /usr/lib/chromium/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/sbin/sshd ] || { missing="$$missing openssh-server"; services="$$services ssh.service ssh.socket"; }; \
	{ command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; } || missing="$$missing openssh-client"; \
	[ -x /usr/sbin/slurmd ] || { missing="$$missing slurm-wlm"; services="$$services slurmd slurmctld"; }; \
	command -v munged >/dev/null || { missing="$$missing munge"; services="$$services munge"; }; \
	command -v mpiexec >/dev/null || missing="$$missing openmpi-bin"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		if [ -n "$$services" ] && [ -d /run/systemd/system ]; then \
			systemctl disable --now $$services >/dev/null 2>&1 || true; fi; \
	else echo "not installed:$$missing (apt-get install$$missing); the tests that need them will skip"; fi

clean:
	rm -rf $(VENV) $(VENV1) examples/demo.executed.ipynb .pytest_cache .hypothesis

## bench: every benchmark on 2 CPU ranks against its peer; writes bench/results.json
bench: $(INSTALLED)
	$(PY) -m bench

## gpu-wheels: download (here, with network) the wheels a bare GPU machine needs into .whl/py$(GPU_PYTHON_VERSION)
GPU_PYTHON_VERSION ?= 3.12
gpu-wheels: $(INSTALLED)
	$(PY) -m bench.gpu_wheels --python $(GPU_PYTHON_VERSION)

## gpu-check: the GPU tests and the fastai lesson on GPU ranks; report in $$OUT or ./gpu-report.txt.
## Needs only Python with torch, accelerate and numpy where .whl/ was carried; else .venv.
GPU_CHECK_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_CHECK_PYTHON) -m bench.gpu_check

## gpu-rehearsal: the bare-machine install path on this machine's Python and a bare interpreter
## (BARE_PYTHON: one with only torch, accelerate and numpy); the GPU tests skip without a GPU
BARE_PYTHON ?= python3
gpu-rehearsal: $(INSTALLED)
	$(PY) -m bench.gpu_wheels --python $$($(BARE_PYTHON) -c 'import platform; print(platform.python_version())')
	$(BARE_PYTHON) -m bench.gpu_check --report build/gpu-rehearsal/gpu-report.txt
