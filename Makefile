# The two commands a newcomer needs: `make demo` (a whole site) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest contracts demo clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy
	$(PY) tools/check_firmware.py

pytest: $(STAMP)
	$(VENV)/bin/python tools/services.py ensure
	$(VENV)/bin/python tools/browser.py ensure
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

# Schemathesis against the live cloud and kiosk APIs (fixed seed, bounded examples); `pytest`
# above runs it too, this target runs only it.
contracts: $(STAMP)
	$(VENV)/bin/pytest -q tests/security/test_sec_contracts_schemathesis.py

demo: $(STAMP)
	$(PY) -m tools.demo

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
