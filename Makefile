# Two commands for a newcomer (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= outputs/demo

.PHONY: demo test install dev weights clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

weights: $(VENV)/.installed
	$(BIN)/python -m guide_ray weights pull

demo: weights
	$(BIN)/python -m guide_ray sample --generator mobilestylegan-ffhq1024 --seeds 0-7 --truncation 0.7 --out $(OUT)

test: dev weights
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) outputs
