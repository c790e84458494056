# Two entry points, each setting itself up on a fresh machine:
#   make demo   build a tiny offline checkpoint and chat with it exactly as with a real one; then ask the trained
#               tiny-passkey checkpoint for a key hidden in ~2,000 tokens
#   make test   run the test suite, less the slow end-to-end tests (about a minute on 2 cores)
#   make test-slow   the slow end-to-end tests: CLIs in subprocesses, torchrun, torch.compile, fresh-process loads
#   make test-triton   run the GPU-path tests (fla's Triton kernels) on CPU through Triton's interpreter
#   make train-passkey   retrain checkpoints/tiny-passkey on CPU, sweep it with scripts/needle.py, rewrite its card
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
OLDEST_VENV ?= .venv-transformers-5.17
TRITON_VENV ?= .venv-triton

.PHONY: demo test test-slow test-oldest test-triton train-passkey clean

$(PY): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(PY)

demo: $(PY)
	$(PY) scripts/make_tiny_checkpoint.py --model text --out build/tiny-text
	HF_HUB_OFFLINE=1 $(PY) scripts/generate.py build/tiny-text --prompt "Tell me about lightning attention." --max-new-tokens 24
	$(PY) scripts/make_tiny_checkpoint.py --model vl --out build/tiny-vl
	HF_HUB_OFFLINE=1 $(PY) scripts/generate.py build/tiny-vl --prompt "Describe this image." --image scripts/assets/demo.png --max-new-tokens 24
	HF_HUB_OFFLINE=1 $(PY) scripts/passkey_demo.py checkpoints/tiny-passkey --out build/needle-demo

test: $(PY)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" tests

test-slow: $(PY)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow tests

# A smoke subset on the oldest supported transformers (5.17).
$(OLDEST_VENV)/bin/python: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(OLDEST_VENV)/bin/python -m pip install -q -r requirements-dev.txt "transformers==5.17.*"
	touch $(OLDEST_VENV)/bin/python

test-oldest: $(OLDEST_VENV)/bin/python
	HF_HUB_OFFLINE=1 $(OLDEST_VENV)/bin/python -m pytest -q -m smoke tests

# The GPU paths on CPU tensors: Triton's interpreter runs fla's kernels (pinned versions: spec section 4). The CPU
# torch goes in first and fla's packages name no torch requirement, so pip never swaps it for a CUDA build.
$(TRITON_VENV)/bin/python: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(TRITON_VENV)/bin/python -m pip install -q -r requirements-dev.txt "triton==3.9.0" "flash-linear-attention==0.6.0"
	touch $(TRITON_VENV)/bin/python

test-triton: $(TRITON_VENV)/bin/python
	HF_HUB_OFFLINE=1 TRITON_INTERPRET=1 $(TRITON_VENV)/bin/python -m pytest -q -m triton tests

# Retrain the committed pass-key checkpoint from scratch on CPU (deterministic for the seed and thread count), measure
# it with the needle sweep and rewrite its model card.
PASSKEY_DIR ?= checkpoints/tiny-passkey
PASSKEY_SWEEP ?= build/needle-tiny-passkey
train-passkey: $(PY)
	$(PY) scripts/train_passkey.py --out $(PASSKEY_DIR)
	HF_HUB_OFFLINE=1 $(PY) scripts/needle.py $(PASSKEY_DIR) --lengths 1K 2K 4K 8K --samples 20 20 20 10 \
		--seed 1 --threads 1 --out $(PASSKEY_SWEEP)/short
	HF_HUB_OFFLINE=1 $(PY) scripts/needle.py $(PASSKEY_DIR) --lengths 16K 32K 64K --samples 4 2 1 \
		--seed 2 --threads 1 --out $(PASSKEY_SWEEP)/long
	$(PY) scripts/needle.py --merge $(PASSKEY_SWEEP)/short $(PASSKEY_SWEEP)/long --out $(PASSKEY_SWEEP)
	$(PY) scripts/train_passkey.py --out $(PASSKEY_DIR) --card $(PASSKEY_SWEEP)

clean:
	rm -rf build $(VENV) $(OLDEST_VENV) $(TRITON_VENV)
