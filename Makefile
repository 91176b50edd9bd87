# Tape: the two set-up commands of the README are `make dev` and `make test`.
# Every step installs what it needs; nothing is assumed to be installed by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test install js chromium soak bench dashboard

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

examples/shopping/node_modules/.package-lock.json: examples/shopping/package-lock.json
	cd examples/shopping && npm ci --no-audit --no-fund --loglevel=error

tests/js/node_modules/.package-lock.json: tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error

js: examples/shopping/node_modules/.package-lock.json tests/js/node_modules/.package-lock.json

# Debian's Chromium drives the browser tests (Playwright never downloads a browser here).
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

## Run the demo app (shared shopping list) on the embedded defaults: http://127.0.0.1:3210
dev: install examples/shopping/node_modules/.package-lock.json
	$(BIN)/tape dev examples/shopping

## Run the whole test suite (what CI runs)
test: install js chromium
	$(BIN)/pytest -q

## Long fault-injection runs
soak: install js chromium
	$(BIN)/pytest -q --soak tests/reliability

## Benchmarks (writes bench-results/)
bench: install
	$(BIN)/tape bench

## Rebuild the web dashboard's bundle (gateway/dashboard/dashboard.js, committed: no Node needed to run Tape)
dashboard/node_modules/.package-lock.json: dashboard/package-lock.json
	cd dashboard && npm ci --no-audit --no-fund --loglevel=error

dashboard: dashboard/node_modules/.package-lock.json
	cd dashboard && npm run --silent build
