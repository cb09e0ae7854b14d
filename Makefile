# The two commands of README.md: `make run` and `make test`.
# Both install what they need first (system packages via scripts/deps.sh,
# the Python exporter environment in .venv for the tests).

PYTHON ?= python3
VENV := .venv
IMAGE ?= tests/fixtures/images/garage.png
PROMPT ?= What is in the picture?

.PHONY: run test deps build venv check fixtures

deps:
	@scripts/deps.sh

build: deps
	cargo build --release

# Builds blipd and answers a question with the embedded defaults (the tiny test bundle).
run: build
	./target/release/blipd ask --json --image "$(IMAGE)" "$(PROMPT)"

$(VENV)/.stamp: models/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r models/requirements.txt
	touch $@

venv: deps $(VENV)/.stamp

# Formatting and lints, as CI runs them.
check: deps
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings

# The whole test suite: Rust (goldens, errors, CLI) and the exporter's own tests.
test: build venv
	cargo test --release
	$(VENV)/bin/python -m pytest -q models/tests

# Regenerates tests/fixtures/ (deterministic; see tests/fixtures/README.md).
fixtures: venv
	$(VENV)/bin/python models/make_tiny.py
