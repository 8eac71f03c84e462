# Quick start:  make demo  (set up + default alpha sweep)  |  make test  (set up + test suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

DEMO   := results/alpha_sweep-digits-study

.PHONY: setup demo figures test bench clean lock

setup: $(STAMP)

# torch first, outside the hashed lock, so that each machine gets its build (the version: requirements-torch.txt):
#   make setup                                                      PyTorch's CPU build (Linux; on macOS the MPS one)
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu130   a CUDA 13.0 build (cu126, cu128, ...: pytorch.org)
#   make setup TORCH_INDEX=                                         PyPI's default build (CUDA 13 on Linux x86_64)
#   make setup TORCH=                                               keep the torch already in .venv
# torch's own dependencies (sympy, networkx, ...; for PyPI's build its CUDA libraries) come from PyPI. Then
# requirements.lock (made by `make lock`): every other package, pinned with hashes that pip checks, one lock for Python
# 3.11-3.13 on Linux (x86_64, aarch64) and macOS (arm64); then this project without its dependencies.
TORCH       ?= -r requirements-torch.txt
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml requirements.lock requirements-torch.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(PY) -m pip install -q --no-deps $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)))
	$(if $(TORCH),$(PY) -m pip install -q $(TORCH))
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e ".[test]"
	$(PY) -m pip check
	touch $(STAMP)

# Re-lock after a change to pyproject.toml: keeps the current pins where they still fit (--upgrade for newer ones).
# One universal resolution (markers for each Python and platform) without torch; it installs uv into .venv.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(PY) -m pip install -q "uv>=0.9"
	$(VENV)/bin/uv pip compile --quiet pyproject.toml --extra test --universal --python-version 3.11 --generate-hashes \
		--excludes requirements-torch.txt $(LOCK_FLAGS) -o requirements.lock

# The default study; a second `make demo` resumes it (or, when finished, prints its table again). It ends with the
# study report's path and its verdict.
demo: setup
	$(PY) studies/alpha_sweep.py $(if $(wildcard $(DEMO)/tuner.pkl),--resume,)
	$(MAKE) figures
	$(PY) analysis/report.py $(DEMO) --out $(DEMO)/report

figures: setup
	$(PY) analysis/fid_vs_images.py $(DEMO) --out figures
	$(PY) analysis/ablation.py $(DEMO) --x alpha --out figures
	$(PY) analysis/best_table.py $(DEMO) --out figures
	$(PY) analysis/compare.py $(DEMO) --x alpha --out figures
	$(PY) analysis/decay_rate.py $(DEMO) --x alpha --out figures

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/step_throughput.py --device cpu --preset digits

clean:
	rm -rf $(VENV) results figures .pytest_cache
