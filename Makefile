# Each user-facing target sets itself up: a fresh machine needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs bench slow calibrate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bayesmix demo --out demo-output --overwrite

# Two workers (pytest-xdist), each test file on one worker: the suite is mostly compilation,
# which is single-threaded.
test: $(STAMP)
	.ci/ensure-chromium
	$(BIN)/ruff check bayesmix tests benchmarks notebooks docs
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

slow: $(STAMP)
	.ci/ensure-chromium
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m slow

calibrate: $(STAMP)
	$(BIN)/python benchmarks/calibrate.py --out calibration

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_map.py
	$(BIN)/python benchmarks/bench_nuts.py
	$(BIN)/python benchmarks/bench_scale.py

clean:
	rm -rf $(VENV) demo-output site calibration .pytest_cache
