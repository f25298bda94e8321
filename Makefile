# Two commands do everything on a fresh clone: `make demo` and `make test`.
# Optional features: `make install EXTRAS=all` (or e.g. EXTRAS=video,viewer) installs `.[dev,EXTRAS]`.
PYTHON ?= python3
EXTRAS ?=
comma  := ,
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Idle OpenMP threads sleep instead of spinning: much faster when other processes share the cores (CI, laptops).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)
ifneq ($(strip $(EXTRAS)),)
	$(BIN)/pip install -q -e '.[dev$(comma)$(EXTRAS)]'
endif

demo: $(STAMP)
	$(BIN)/gdensify demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/rasterizer.py

clean:
	rm -rf $(VENV) build outputs
