# The two newcomer commands: `make sandbox` (run Tourniquet on an embedded API server) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: sandbox test lint crds bench bench-real clean prometheus postgresql controlplane controlplane-gomod

# kubemu (testing/kubemu): the emulated API server of the sandbox and the tests, a package of its own.
$(BIN)/.installed: pyproject.toml testing/kubemu/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e testing/kubemu -e '.[test]'
	touch $@

install: $(BIN)/.installed

# SANDBOX_ARGS: more `tourniquet sandbox` options, e.g. SANDBOX_ARGS='--dir /tmp/sandbox'.
sandbox: $(BIN)/.installed
	$(BIN)/tourniquet sandbox $(SANDBOX_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check operator testing tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/tourniquet crds --check

# Detection tests run a real Prometheus (Debian's package); without it they are skipped and say why.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null) ; } || \
	  echo "prometheus is not installed and could not be: the detection tests against it will be skipped"

# The ledger tests run a real PostgreSQL server of their own (Debian's package: initdb and postgres, found on PATH or
# in /usr/lib/postgresql/*/bin; only the binaries are used); without it they are skipped and say why.
postgresql:
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ; } || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
	  >/dev/null) ; } || \
	  echo "postgresql is not installed and could not be: the ledger tests against it will be skipped"

# The real control plane the operator tests run on: etcd, kube-apiserver and kube-controller-manager built from
# Go modules (controlplane/versions.env) into .controlplane/, once; a later run finds them and does nothing.
controlplane:
	controlplane/build.sh

# Regenerate controlplane/*/go.mod after changing controlplane/versions.env.
controlplane-gomod:
	controlplane/gomod.sh

test: lint prometheus postgresql controlplane
	$(BIN)/pytest

crds: $(BIN)/.installed
	$(BIN)/tourniquet crds

# The benchmarks on the emulated API server (bench-real: on the real control plane), each with its floor measured
# on the same server in the same run. BENCH_ARGS: more options for both, e.g. BENCH_ARGS='--server all'.
bench: $(BIN)/.installed
	$(BIN)/python bench/bench_agentdeployments.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_incidents.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_ledger.py

bench-real: $(BIN)/.installed controlplane
	$(BIN)/python bench/bench_agentdeployments.py --server real $(BENCH_ARGS)
	$(BIN)/python bench/bench_incidents.py --server real $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .sandbox
