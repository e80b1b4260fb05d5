# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo lint test test-fast clean

# Mesa renders the simulator's cameras on the CPU (EGL or OSMesa).
MESA_PKGS := libosmesa6 libegl1 libgl1-mesa-dri

$(STAMP): pyproject.toml
	@if ! ldconfig -p | grep -q libOSMesa.so; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(MESA_PKGS) >/dev/null; \
	  else echo "Install Mesa for the simulator first: sudo apt-get install $(MESA_PKGS)"; exit 1; fi; \
	fi
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first (a local wheel on CI machines), so nothing below can pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# openpi's own client, for the tests that drive the policy server with it: its metadata asks for numpy<2, which
	# pip would downgrade to, so it goes in without its dependencies (websockets, msgpack, numpy and pillow are ours)
	# beside the one it lacks; under numpy 2 it works (world_modality/serve/test_openpi_client.py).
	$(BIN)/pip install -q --no-deps openpi-client==0.1.2 dm-tree==0.1.10
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/world-modality demo $(if $(QUICK),--quick,)

# Lint and format check first (ruff, configured in pyproject.toml): seconds, before minutes of tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Test files run in parallel, one pytest worker per core (TEST_JOBS=1 for one process); a file's tests stay on one
# worker, so its module fixtures (a trained checkpoint, a simulator dataset) are built once. The 25 slowest tests
# and fixtures are listed at the end, so that what makes `make test` long is in every run's log.
TEST_JOBS ?= auto
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile --durations=25

test: lint
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not sim"

clean:
	rm -rf $(VENV) runs .pytest_cache
