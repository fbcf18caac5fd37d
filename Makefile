# Two commands for a newcomer (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A separate environment for native oracles that conflict with the main one (OpenCV 4.5.5 + NumPy 1).
ORACLE ?= .venv-oracle
OUT ?= outputs/demo
PHOTO_OUT ?= outputs/demo-photo
UI_PORT ?= 5000

.PHONY: demo demo-photo ui mlflow-server head head-stop quick test install dev weights browser clean

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
	@echo "MLflow UI: make ui   (then open http://127.0.0.1:5000 and pick 'Model training' in the sidebar)"

# A real person erased at 1024²: openpeople's P001 (jobs/demo/photo.csv) from mobilestylegan-ffhq1024 with
# the CPU preset (~40 min on 2 cores), then its picture: photo, before, UFO target, after, 8 samples before/after.
demo-photo: weights
	$(BIN)/python -m guide_ray.fleet jobs/demo/photo.csv --generator mobilestylegan-ffhq1024 \
		--config jobs/configs/mobilestylegan-cpu.yaml --out $(PHOTO_OUT)
	$(BIN)/python benchmarks/erasure_figure.py $$(ls -dt $(PHOTO_OUT)/runs/parallel-*/P001 | head -1) --out $(PHOTO_OUT)/P001.png

# The MLflow UI on the demo's store (OUT=... for another fleet's out dir), on loopback only.
ui: $(VENV)/.installed
	@test -f $(OUT)/mlflow.db || { echo "no MLflow store at $(OUT)/mlflow.db: run 'make demo' first (or OUT=a fleet's --out)"; exit 1; }
	@echo "MLflow UI on $(OUT)/mlflow.db: http://127.0.0.1:$(UI_PORT) (Ctrl-C stops it)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(OUT))/mlflow.db --host 127.0.0.1 --port $(UI_PORT)

# A shared MLflow tracking server (tracking/README.md): SQLite + local artifacts in outputs/mlflow on
# 127.0.0.1:5000 (MLFLOW_DIR, MLFLOW_HOST, MLFLOW_PORT to change); fleets and sweeps log to it with
# MLFLOW_TRACKING_URI=http://127.0.0.1:5000.
mlflow-server: $(VENV)/.installed
	MLFLOW=$(abspath $(BIN))/mlflow bash tracking/server.sh

# A Ray head on this machine, dashboard and job server on 127.0.0.1 (cluster/README.md): its jobs run
# with this venv's python, so the submit command it prints works from any shell. head-stop stops that
# head only (RAY_HEAD_PORT, RAY_DASHBOARD_PORT, ... as for head: cluster/local-head.sh --help).
head: $(VENV)/.installed
	RAY=$(abspath $(BIN))/ray bash cluster/local-head.sh start

head-stop:
	RAY=$(abspath $(BIN))/ray bash cluster/local-head.sh stop

# Debian's Chromium + chromedriver for the MLflow UI browser test (installed when root with apt-get;
# elsewhere that test skips).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
		|| echo "apt-get could not install chromium: the browser test will skip"; \
	else echo "chromium/chromedriver missing (apt-get install chromium chromium-driver): the browser test will skip"; fi

# The quick loop for development: every test but the slow ones (under 3 minutes on 2 cores).
quick: dev weights $(ORACLE)/.installed
	GUIDE_RAY_ORACLE_PYTHON=$(abspath $(ORACLE))/bin/python $(BIN)/python -m pytest -m "not slow" -q

test: dev weights browser $(ORACLE)/.installed
	GUIDE_RAY_ORACLE_PYTHON=$(abspath $(ORACLE))/bin/python $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(ORACLE) outputs
