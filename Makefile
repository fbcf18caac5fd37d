# Two commands for a newcomer (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A separate environment for native oracles that conflict with the main one (OpenCV 4.5.5 + NumPy 1).
ORACLE ?= .venv-oracle
OUT ?= outputs/demo

.PHONY: demo ui test install dev weights clean

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

# The main job: a fleet of identities (jobs/demo/ids.csv) on an embedded Ray, tracked in MLflow.
demo: weights
	$(BIN)/python -m guide_ray.fleet jobs/demo/ids.csv --generator dcgan-digiface64 \
		--config jobs/configs/demo-cpu.yaml --out $(OUT)
	@echo "MLflow UI: make ui   (then open http://127.0.0.1:5000)"

# The MLflow UI on the demo's store (OUT=... for another fleet's out dir).
ui: $(VENV)/.installed
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(OUT))/mlflow.db --host 127.0.0.1 --port 5000

test: dev weights $(ORACLE)/.installed
	GUIDE_RAY_ORACLE_PYTHON=$(abspath $(ORACLE))/bin/python $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(ORACLE) outputs
