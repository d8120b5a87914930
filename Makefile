# Two commands: `make run` (set up and start the whole stack) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test lint format venv clean system-deps

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Reinstall only when the pinned requirements change.
$(VENV)/.installed: requirements.txt pyproject.toml $(VENV)/bin/activate $(VENV)/.cpctl
	$(PIP) install --quiet -r requirements.txt
	touch $@

# The `cpctl` command. A strict editable install (links under build/, one plain path in a
# .pth file): the default editable mode imports a finder at every interpreter start,
# 16 ms on each job process, rank and replica of this venv.
$(VENV)/.cpctl: pyproject.toml $(wildcard cpctl/*.py) $(VENV)/bin/activate
	$(PIP) install --quiet --no-deps -e . --config-settings editable_mode=strict
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# Jobs run in a bubblewrap sandbox (Debian's `bubblewrap`): installed here when this
# machine can (root with apt-get); otherwise the worker says what is missing and runs no
# jobs until it is installed (or CP_SANDBOX=off on a trusted single-user install).
system-deps:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null); } \
	  || echo "bubblewrap (bwrap) is missing: install it (apt-get install bubblewrap) to run jobs"

run: $(VENV)/.installed system-deps
	$(PY) -m controlplane.stack

# Exit code 5 means "no tests selected" (an empty PYTEST_ARGS selection): not a failure.
test: $(VENV)/.installed-dev system-deps
	$(PY) -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf var/
