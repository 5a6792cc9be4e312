# Two commands for a newcomer: `make quickstart` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-all venv clean

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/unlearn-audit run search_spaces/quickstart.yaml

# Test files spread over worker processes (each file's tests stay in one, sharing its
# fixtures); the few tests that bound a wall time run after, with the machine to themselves.
TEST_WORKERS ?= 3

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -x -q -n $(TEST_WORKERS) --dist loadfile -m "not alone"
	$(BIN)/python -m pytest -x -q -m alone

clean:
	rm -rf $(VENV) RESULTS .artifacts
