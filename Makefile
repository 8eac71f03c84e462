# Quick start:  make demo  (set up + default alpha sweep)  |  make test  (set up + test suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

DEMO   := results/alpha_sweep-digits-study

.PHONY: setup demo figures test bench clean

setup: $(STAMP)

# requirements.lock pins what the tests ran with. torch is pinned separately: on a GPU machine install your CUDA
# build into .venv first and set SID_KEEP_TORCH=1, so that the pin (a CPU build here) does not replace it.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	grep -v '^torch==' requirements.lock > $(VENV)/constraints.txt
	if [ -z "$$SID_KEEP_TORCH" ]; then $(PY) -m pip install -q "$$(grep '^torch==' requirements.lock)"; fi
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[test]"
	touch $(STAMP)

# The default study; a second `make demo` resumes it (or, when finished, prints its table again). It ends with the
# study report's path and its recommendation.
demo: setup
	$(PY) studies/alpha_sweep.py $(if $(wildcard $(DEMO)/tuner.pkl),--resume,)
	$(MAKE) figures
	$(PY) analysis/report.py $(DEMO) --out $(DEMO)/report

figures: setup
	$(PY) analysis/fid_vs_images.py $(DEMO) --out figures
	$(PY) analysis/ablation.py $(DEMO) --x alpha --out figures
	$(PY) analysis/best_table.py $(DEMO) --out figures
	$(PY) analysis/compare.py $(DEMO) --x alpha --out figures

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/step_throughput.py --device cpu --preset digits

clean:
	rm -rf $(VENV) results figures .pytest_cache
