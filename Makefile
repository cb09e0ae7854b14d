# The two commands of README.md: `make run` and `make test`.
# Both install what they need first (system packages via scripts/deps.sh,
# the Python exporter environment in .venv for the tests).

PYTHON ?= python3
VENV := .venv

.PHONY: run test deps test-deps build venv check fixtures

deps:
	@scripts/deps.sh build

test-deps:
	@scripts/deps.sh test

build: deps
	cargo build --release

# Builds blipd, starts the daemon on its embedded defaults (embedded broker,
# test-pattern camera, tiny test bundle), asks it one question over MQTT and
# keeps serving until Ctrl-C.
run: build
	scripts/run.sh

$(VENV)/.stamp: models/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r models/requirements.txt
	touch $@

venv: test-deps $(VENV)/.stamp

# Formatting and lints, as CI runs them.
check: deps
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings
	scripts/structure.sh

# The whole test suite: Rust (goldens, errors, CLI) and the exporter's own tests.
test: test-deps build venv
	cargo test --release
	$(VENV)/bin/python -m pytest -q models/tests

# Regenerates tests/fixtures/ (deterministic; see tests/fixtures/README.md).
fixtures: venv
	$(VENV)/bin/python models/make_tiny.py
