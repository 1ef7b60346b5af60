# sdserve: the two commands are `make run` and `make test`; both set everything up themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/cpu.yaml
# torch is pinned so pip takes the CPU wheel on this kind of machine; on a GPU host set
# TORCH_SPEC to the CUDA build of torch 2.13.0 for your driver (PyTorch's install guide gives the
# index URL), e.g. TORCH_SPEC='torch==2.13.0 --index-url <cuda wheel index>'.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: run test test-fast install clean kuberay

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/sdserve --config $(CONFIG) $(if $(SET),$(foreach s,$(SET),--set $(s)))

# pytest exits 5 when it collects no test: that is a failure here, never a silent pass.
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

# The inner loop: everything that needs no Ray cluster (pure decisions, the simulator, parsing, models).
test-fast: install
	$(BIN)/python -m pytest -m "not ray" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

# deploy/kuberay/rayservice.yaml is generated from configs/single.yaml (a test checks it is current)
kuberay: install
	$(BIN)/python deploy/kuberay/generate.py

clean:
	rm -rf $(VENV) .pytest_cache
