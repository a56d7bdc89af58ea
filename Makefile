# mm2ct — every target creates .venv on first use (torch pinned first: see README "Install").
VENV       ?= .venv
PY         := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PROFILE    ?= demo
# OpenMP threads that sleep instead of spinning: small CPU models run up to 100x slower without it on a busy
# 2-core machine (several processes, each with its own thread pool).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install reproduce test lab bench gpu-check clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[notebooks,test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mm2ct)" >/dev/null
	@touch $@

install: $(VENV)/.installed

reproduce: install   ## run every notebook with papermill (PROFILE=demo by default) -> reports/$(PROFILE)/
	$(VENV)/bin/mm2ct reproduce --profile $(PROFILE)

test: install        ## unit tests + every notebook through nbval (smoke profile)
	$(VENV)/bin/pytest

lab: install         ## open the notebooks in JupyterLab
	$(VENV)/bin/jupyter lab notebooks

bench: install       ## benchmark scripts (ratio tables)
	$(PY) benchmarks/selective_scan.py

# The GPU path in one run (benchmarks/gpu_check.py): no `install` step, because a GPU machine often has its own
# CUDA torch and no internet; the .venv's python when there is one, else python3. Give built wheels with
# GPU_CHECK_ARGS="--wheels DIR" (mamba-ssm, causal-conv1d and whatever they need that is missing).
GPU_PY         ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_ARGS ?=
gpu-check:           ## kernels, every model's training step (fp32 / bf16), torchrun, NIfTI inference -> runs/gpu_check/
	$(GPU_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf runs reports/smoke reports/*/executed data/generated data/cache
