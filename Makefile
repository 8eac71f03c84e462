# Quick start:  make demo  (set up + default alpha sweep)  |  make test  (set up + test suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

DEMO   := results/alpha_sweep-digits-study

.PHONY: setup demo figures test bench clean lock

setup: $(STAMP)

# requirements.lock (made by `make lock`) pins every package the tests ran with, with hashes that pip checks. Its
# torch is the CPU build (requirements-torch.txt): on a GPU machine install your CUDA build into .venv first and set
# SID_KEEP_TORCH=1, so that the lock's torch entry is left out and does not replace it.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	awk -v keep="$$SID_KEEP_TORCH" '/^torch==/ {skip = keep != ""; if (skip) next} /^[^ ]/ && !/^torch==/ {skip = 0} !skip' \
		requirements.lock > $(VENV)/lock.txt
	$(PY) -m pip install -q --require-hashes -r $(VENV)/lock.txt
	$(PY) -m pip install -q --no-deps -e ".[test]"
	touch $(STAMP)

# Re-lock after a change to pyproject.toml: keeps the current pins where they still fit (--upgrade for newer ones).
# LOCK_FLAGS: where your indexes are, e.g. --extra-index-url https://download.pytorch.org/whl/cpu for the CPU torch.
lock:
	uv pip compile pyproject.toml --extra test --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--generate-hashes --override requirements-torch.txt --index-strategy unsafe-best-match $(LOCK_FLAGS) \
		-o requirements.lock

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
