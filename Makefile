# Quick start:  make demo  (set up + default alpha sweep)  |  make test  (set up + test suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch is pinned in requirements.lock to the CPU build on this machine kind; on a GPU box install your CUDA torch
# into the venv first (the pin then matches or is skipped with SID_KEEP_TORCH=1).
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -z "$$SID_KEEP_TORCH" ]; then $(PY) -m pip install -q -c requirements.lock torch; fi
	$(PY) -m pip install -q -c requirements.lock -e ".[test]"
	touch $(STAMP)

demo: setup
	$(PY) studies/alpha_sweep.py

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/step_throughput.py --device cpu --preset digits

clean:
	rm -rf $(VENV) results figures .pytest_cache
