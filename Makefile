# Every target sets itself up from scratch: .venv, pinned dev dependencies, the package.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench bench-gpu lint clean

$(STAMP): pyproject.toml requirements-dev.txt constraints-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt -c constraints-dev.txt
	$(BIN)/python -m pip install -q -e . -c constraints-dev.txt
	touch $(STAMP)

# The report's browser test (tests/integration/test_report_browser.py) drives headless Chromium:
# Debian's chromium and chromium-driver, installed once if missing (root, or through sudo).
BROWSER_STAMP := $(VENV)/.browser-installed
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(BROWSER_STAMP): $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)
	touch $(BROWSER_STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/netuq benchmark

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) $(BROWSER_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/python -m pip install -q -r requirements-bench.txt -c constraints-dev.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python perf/run_all.py

# The prepared GPU check: the same comparisons on CUDA, one Markdown table (exits 0 without a GPU).
bench-gpu: $(STAMP)
	$(BIN)/python perf/gpu_check.py --out gpu-table.md

clean:
	rm -rf $(VENV) build dist src/*.egg-info
