# `make run` and `make test` are the two set-up-and-go commands of the README: each
# creates (or refreshes) the virtualenv from requirements.txt and installs the package.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/digits
TESTVECTORS ?= $(or $(MMKD_TESTVECTORS),../shared/testvectors)

.PHONY: install torch run test test-all verify wheel-check clean

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
	# setuptools' notices about editable installs are for packagers, not for the user of `make run`.
	PYTHONWARNINGS=ignore $(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

# Optional: PyTorch (CPU build) for .pth teachers, experiments/compare_pytorch.py and the
# torchvision / timm parity tests (tests/teachers/test_convert.py).
torch: install
	$(PY) -m pip install -q torch==2.13.0 einops==0.8.2 torchvision==0.28.0 timm==1.0.31

# The default job: teachers (trained if missing) -> teacher cache -> MMKD student, on digits.
run: install
	$(PY) -m mmkd_jax.main --config configs/digits.py --workdir $(WORKDIR)

# Parity of the model zoo and of the MMKD hypergradient against the PyTorch reference vectors:
# outputs of the original PyTorch code, not shipped here (MMKD_TESTVECTORS=<their folder>).
verify: install
	@test -d $(TESTVECTORS) || { echo "no reference vectors in $(TESTVECTORS): set MMKD_TESTVECTORS to the folder of testvectors (models/, mmkd/) made from the original PyTorch code"; exit 2; }
	$(PY) -m mmkd_jax.verify models $(TESTVECTORS)/models/*.npz
	$(PY) -m mmkd_jax.verify hypergrad $(TESTVECTORS)/mmkd/hypergrad_*.npz
	$(PY) -m mmkd_jax.verify hypergrad --mode original $(TESTVECTORS)/mmkd/hypergrad_*.npz

# The built wheel installs into a fresh virtualenv and its console script runs a shipped config.
WHEEL_DIR ?= build/wheel-check
wheel-check: install
	rm -rf $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(WHEEL_DIR) .
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/pip install -q -r requirements.txt $(WHEEL_DIR)/mmkd_jax-*.whl
	cd $(WHEEL_DIR) && TFDS_DATA_DIR=$$PWD/tfds venv/bin/mmkd-jax --config mmkd_jax:configs/digits.py:aver,smoke \
	    --workdir run --config.teacher_dir=teachers --config.epochs=1 --config.teacher_training.epochs=1
	test -f $(WHEEL_DIR)/run/summary.json

# The suite in TEST_WORKERS processes (pytest-xdist), a test file per process at a time: a file's
# module fixtures (a trained pipeline, a teacher directory) are built once; the longest files first
# (tests/conftest.py). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: install
	$(PY) -m pytest -q $(XDIST)

test-all: install
	$(PY) -m pytest -q -m "" $(XDIST)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
