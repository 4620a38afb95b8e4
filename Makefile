# `make demo` and `make test` set everything up (a venv in .venv) and run; see README.md.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A CPU build of torch (this pin is served from local disk on ksir's CI machines). On a GPU
# machine: make setup TORCH=torch  (or any CUDA build you prefer).
TORCH  ?= torch==2.13.0
# Every package pinned (constraints.txt): results and tests come from one known environment. `make lock`
# re-resolves it to the newest releases; `make setup LOCK=` installs without it (newest of everything).
LOCK   ?= constraints.txt
PIN    := $(if $(LOCK),-c $(LOCK))

.PHONY: setup demo test test-all lint bench clean lock gpu-check
setup: $(VENV)/.ksir-installed

# pip -qq: errors only (a failed install still says why and stops); PIP_QUIET= make setup shows pip's warnings.
# torch comes through pip (pip's own configuration says where its build is); the rest through uv where pip can
# install it, else through pip itself, with the same pins either way: uv resolves and unpacks ksir's ~140 packages
# in seconds, pip in a minute and a half. Nothing is byte-compiled at install (pip would compile every file, a
# minute more); scripts/compile_imports.py compiles what the jobs and the tests import, and `make test` and
# `make demo` let Python cache the rest on first use, even where PYTHONDONTWRITEBYTECODE is set (as on ksir's CI
# machines: without .pyc files every process would compile its imports from source).
PIP_QUIET ?= -qq
PIP_FLAGS := $(PIP_QUIET) --no-compile
UV_FLAGS  := $(if $(PIP_QUIET),-q)
# For the commands that run ksir: cache bytecode of what they import (in .venv and __pycache__/, both ignored by git).
PYENV := PYTHONDONTWRITEBYTECODE=
$(VENV)/.ksir-installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip $(PIN)
	$(BIN)/python -m pip install $(PIP_FLAGS) "$(TORCH)" $(PIN)
	( $(BIN)/python -m pip install $(PIP_FLAGS) uv $(PIN) && \
	  $(BIN)/python -m uv pip install $(UV_FLAGS) --python $(BIN)/python -e ".[dev]" $(PIN) ) || \
	  $(BIN)/python -m pip install $(PIP_FLAGS) -e ".[dev]" $(PIN)
	$(BIN)/python scripts/compile_imports.py
	touch $@

# Upgrade the lock: resolve ksir[dev] afresh in a scratch venv, pin what it got, then sync .venv to it.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q "$(TORCH)"
	.lock-venv/bin/python -m pip install -q -e ".[dev]" uv
	$(PYTHON) scripts/lock.py .lock-venv/bin/python > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .lock-venv
	$(MAKE) setup

demo: setup
	$(PYENV) PATH="$(abspath $(BIN)):$$PATH" ksir-repro demo --out outputs/demo

# One BLAS/OpenMP thread per process and one pytest worker per core (pytest-xdist; a test file stays on one
# worker, in order): the suite's models are tiny, so threads within a process only contend, while two
# processes use both cores of the 2-core CI machine.
test: setup
	$(PYENV) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow and not gpu and not slurm" --timeout 900 -n auto --dist loadfile --no-loadscope-reorder --durations=15

test-all: setup
	$(BIN)/python -m pytest --timeout 1800

# On a CUDA machine (make setup TORCH=torch first): every check that needs the GPU, in one call of at most
# 10 minutes, into outputs/gpu-check/<date>/ (scripts/gpu_check.sh --plan lists the parts).
gpu-check: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/gpu_check.sh

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/bench_quant.py
	$(BIN)/python benchmarks/bench_fit.py

clean:
	rm -rf outputs

# A real one-node SLURM cluster on this machine (needs root; the first run installs slurm-wlm,
# munge, slurmdbd and mariadb-server with apt-get), then the tests marked `slurm`. The cluster
# stays up afterwards: stop it with `bash scripts/slurm-local.sh stop`.
.PHONY: slurm-test
slurm-test: setup
	bash scripts/slurm-local.sh start
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m slurm tests/test_slurm.py -v
