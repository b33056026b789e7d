# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit bench bench-quick deploy-plan clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

## Run a whole release of the sample app through the local stack.
demo: $(STAMP)
	$(PY) -m local.demo $(DEMO_ARGS)

## Run the whole test suite (unit, integration against the emulators, e2e).
# The tests spend most of their time waiting on real clocks (stage deadlines, bakes, redelivery),
# so the files run on TEST_WORKERS pytest-xdist workers; a file stays on one worker (its module
# fixtures, e.g. a local stack, start once) and each worker starts its own emulators.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## Every benchmark in full (about 5 minutes; prints figures, asserts none).
bench: $(STAMP)
	$(PY) -m bench.run_all

## Every benchmark at a small scale: fails only when one crashes (CI runs it after the tests).
bench-quick: $(STAMP)
	$(PY) -m bench.run_all --quick

deploy-plan: $(STAMP)
	$(PY) -m deploy.plan --dry-run

clean:
	rm -rf $(VENV) .local-stack test-output
