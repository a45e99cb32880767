# Everything a fresh clone needs. Installs go through requirements.lock (the exact set the
# test suite passed with), torch first so no later requirement can pull a CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
LATEST := .venv-latest
TORCH := torch==2.13.0

.PHONY: setup setup-browser setup-postgres demo test test-latest lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(LOCK) pip setuptools
	$(BIN)/python -m pip install -q -c $(LOCK) "$(TORCH)"
	$(BIN)/python -m pip install -q -c $(LOCK) --no-build-isolation -e '.[dev]'
	$(BIN)/python tools/lock.py check $(LOCK)
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/lorastudio demo --out demo_out

# Headless Chromium and a Korean font for the browser tests (report and studio); they skip locally when absent, and fail under CI=true.
# Needs root and Debian's apt; any failure only prints a note.
# fonts-nanum: the studio shows Hangul captions and glossary hints; without a Korean font they render as boxes.
setup-browser:
	@{ command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi nanum; } || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-nanum >/dev/null; } \
		|| echo "note: chromium or fonts-nanum not installed; the browser tests will be skipped"

# Debian's PostgreSQL server for the PostgreSQL half of the serving tests (they start their
# own private cluster as the postgres user; nothing system-wide is configured or started).
setup-postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
		|| echo "note: postgresql not installed; the PostgreSQL serving tests will be skipped (CI fails instead)"

# Two pytest workers (pytest-xdist): most of the slow tests wait on servers, browsers and
# worker processes, so two keep both cores busy. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: setup setup-browser setup-postgres
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

# Drift check (not part of .ci/run): the newest versions pyproject's ranges allow, in a
# separate venv, through the whole suite. Finds upstream breakage before users do.
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip setuptools
	$(LATEST)/bin/python -m pip install -q "$(TORCH)"
	echo "$(TORCH)" > $(LATEST)/torch-pin.txt  # eager upgrades must not swap in a CUDA torch
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager --no-build-isolation \
		-c $(LATEST)/torch-pin.txt -e '.[dev]'
	$(LATEST)/bin/python -m pip list --format=freeze 2>/dev/null | grep -iE '^(diffusers|transformers|peft|accelerate|safetensors|tokenizers|huggingface.hub)=='
	HF_HUB_OFFLINE=1 $(LATEST)/bin/python -m pytest -q -p no:cacheprovider

# Regenerate the lock: the drift check's venv, once its suite passed, becomes the new lock.
lock: test-latest
	$(LATEST)/bin/python tools/lock.py freeze $(LOCK)

clean:
	rm -rf $(VENV) $(LATEST) demo_out
