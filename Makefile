# Two commands: `make run` (set up and start the whole stack) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test lint format venv clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Reinstall only when the pinned requirements change.
$(VENV)/.installed: requirements.txt pyproject.toml $(VENV)/bin/activate
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -e .  # the `cpctl` command
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m controlplane.stack

# Exit code 5 means "no tests selected" (an empty PYTEST_ARGS selection): not a failure.
test: $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf var/
