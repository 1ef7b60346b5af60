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

# pip compiles each package's bytecode on one core; compileall afterwards uses every core (a fresh
# install is ~17 s shorter on two). Files that do not compile (other Pythons' syntax in some
# packages' own tests) are skipped, as pip skips them.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --no-compile $(TORCH_SPEC)
	$(BIN)/pip install --quiet --no-compile -e '.[test]'
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c 'import site; print(*site.getsitepackages())') >/dev/null || true
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/sdserve --config $(CONFIG) $(if $(SET),$(foreach s,$(SET),--set $(s)))

# Two runs side by side. The main run: the tests on the session's Ray cluster, in one process, which
# their timing needs. The side run, beside it (those tests mostly wait on Ray), at low CPU priority so
# as not to slow them, on one xdist worker whose output follows when both are done: the tests without
# Ray, the 3-node test (its cluster is its own), then the Ray tests marked side_run on a Ray cluster
# of that run's own.
# pytest exits 5 when it collects no test: a failure here, never a silent pass (with PYTEST_ARGS
# selecting tests, one of the two runs may select none; both selecting none still fails).
test: install
	log=$$(mktemp); trap 'kill $$pid 2>/dev/null; rm -f $$log' EXIT INT TERM; \
	nice -n 15 $(BIN)/python -m pytest -n 1 -m "not ray or own_cluster or side_run" $(PYTEST_ARGS) >$$log 2>&1 & pid=$$!; \
	$(BIN)/python -m pytest -m "ray and not own_cluster and not side_run" $(PYTEST_ARGS); ray=$$?; \
	wait $$pid; unit=$$?; \
	echo "==== the side run (without Ray, the 3-node test, side_run), beside the one above ===="; cat $$log; \
	for rc in $$unit $$ray; do \
	  if [ $$rc -eq 5 ] && { [ $(if $(strip $(PYTEST_ARGS)),1,0) -eq 0 ] || [ $$unit -eq $$ray ]; }; then \
	    echo "no tests were collected" >&2; exit 1; fi; \
	  if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi; \
	done

# The inner loop: everything that needs no Ray cluster (pure decisions, the simulator, parsing, models).
test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not ray" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

# deploy/kuberay/rayservice.yaml is generated from configs/single.yaml (a test checks it is current)
kuberay: install
	$(BIN)/python deploy/kuberay/generate.py

clean:
	rm -rf $(VENV) .pytest_cache
