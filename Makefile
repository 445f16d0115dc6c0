# clipsearch developer targets. `make demo` installs into .venv and runs the demo;
# `make test` runs the whole suite (lint + pytest); `make test-fast` the fast tier.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch pinned to the release this project is tested with (pyproject allows <2.15).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO := .demo

.PHONY: install demo test test-fast lint browser fuzz bench bench-scale fixture-model clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev,heif,cluster]'  # cluster: make test runs tests/test_ray.py
	$(BIN)/python -m bench.bytecode  # as pip does for a wheel, even with PYTHONDONTWRITEBYTECODE
	touch $@

demo: install
	rm -rf $(DEMO)
	$(BIN)/python -m clipsearch.demo_photos $(DEMO)/photos
	$(BIN)/clipsearch index $(DEMO)/photos --library $(DEMO)/library --model shapes-tiny
	$(BIN)/clipsearch query "a red circle" --library $(DEMO)/library -n 5
	$(BIN)/clipsearch query "a blue star" --library $(DEMO)/library -n 3 --json
	$(BIN)/clipsearch classify $(DEMO)/photos/green-triangle-0.png --library $(DEMO)/library \
		"a green triangle" "a red circle" "a blue star" "a yellow square"
	$(BIN)/clipsearch status --library $(DEMO)/library

test: install lint browser
	$(BIN)/python -m pytest -q

# The edit loop: every test but those tests/conftest.py lists as slow (no Ray, no browser).
test-fast: install lint
	$(BIN)/python -m pytest -q -m "not slow"

# Headless Chromium for tests/test_serve_browser.py (Debian packages; quick once installed).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq chromium chromium-driver; } || \
		echo "chromium/chromium-driver not installed: the browser test will be skipped"

lint: install
	$(BIN)/ruff check .

fuzz: install
	CLIPSEARCH_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q tests/test_decode_fuzz.py \
		tests/test_crawl_fuzz.py

bench: install
	$(BIN)/python -m bench

# The vector index at 10k / 100k / 1M CLIP-like vectors -> bench/results/scale.json
# (docs/scale.md; the 1M library takes ~15 min to write once, into bench/.cache).
bench-scale: install
	$(BIN)/python -m bench.scale

fixture-model: install
	$(BIN)/python data/train_shapes_model.py --out data/models/shapes-tiny

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
