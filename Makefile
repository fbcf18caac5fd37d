# Two commands for a newcomer (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A separate environment for native oracles that conflict with the main one (OpenCV 4.5.5 + NumPy 1).
ORACLE ?= .venv-oracle
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

$(ORACLE)/.installed:
	$(PYTHON) -m venv $(ORACLE)
	$(ORACLE)/bin/python -m pip install -q opencv-python-headless==4.5.5.64 "numpy<2"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

weights: $(VENV)/.installed
	$(BIN)/python -m guide_ray weights pull

demo: weights
	$(BIN)/python -m guide_ray sample --generator mobilestylegan-ffhq1024 --seeds 0-7 --truncation 0.7 --out $(OUT)

test: dev weights $(ORACLE)/.installed
	GUIDE_RAY_ORACLE_PYTHON=$(abspath $(ORACLE))/bin/python $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(ORACLE) outputs
