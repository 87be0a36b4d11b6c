# Two entry points a newcomer needs: `make demo` (the main job on local hosts) and `make test`.
# Both install what is missing first: Debian packages (as root) and the virtualenv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := openssh-server openssh-client iproute2 iputils-ping util-linux iperf3 pssh tcpdump ethtool nftables \
        procps psmisc sqlite3 chromium iptables cmake pkg-config libssl-dev
# s2n-netbench, built from crates.io once per machine into ~/.cache/enosnet (or $$ENOSNET_CACHE) and reused
NETBENCH_CRATES := s2n-netbench-collector s2n-netbench-scenarios s2n-netbench-cli \
        s2n-netbench-driver-tcp s2n-netbench-driver-s2n-tls s2n-netbench-driver-s2n-quic

.PHONY: deps venv netbench demo test lint lint-ansible typecheck check clean

deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run make as root)"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

netbench: deps venv
	@echo "s2n-netbench: built once per machine (the first time takes minutes), then reused from the cache"
	$(BIN)/python -m enosnet.netbench_build $(NETBENCH_CRATES) >/dev/null

demo: deps venv
	$(BIN)/python examples/demo.py

lint: venv
	$(BIN)/ruff check .

lint-ansible: venv
	$(BIN)/ansible-lint --profile production enosnet/playbooks

typecheck: venv
	$(BIN)/mypy
	$(BIN)/mypy benchmarks  # the benchmarks use the library too: a renamed helper must not break them

test: deps venv netbench lint lint-ansible typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
