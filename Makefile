# Every target creates or updates the local venv itself: `make serve` and `make test` on a fresh clone need
# nothing else installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser serve test test-fast test-stress bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The speaker encoder's weights (diarize=true); --no-deps: koe reads the file and never needs torch.
	$(BIN)/python -m pip install -q --no-deps resemblyzer==0.1.4
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/koe serve

# Debian's Chromium + ChromeDriver for the web page's browser test (tests/test_web.py). CI runs as root.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q chromium chromium-driver; \
	else echo "make browser: no chromium/chromedriver and cannot apt-get them here; tests/test_web.py will skip"; fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -m "not slow"

# The fast tier: in process, no model, no server (tests/fast: a fake engine, objects in memory) and the pure
# unit modules. Under a minute; `make test` runs these too, with every real end-to-end test.
FAST_TESTS := tests/fast tests/test_options.py tests/test_deploy_units.py tests/test_jobs_queue.py

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(FAST_TESTS)

test-stress: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
