# vcom: `make demo` and `make test` are all a fresh machine needs.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
# Debian packages the end-to-end tests run as real peers.
PEERS  := ser2net socat sredird cyclades-serial-client python3-serial gcc libc6-dev

.PHONY: install test lint demo peers clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $@

# Installs the peers when run as root on Debian; otherwise says what is missing and stops.
peers:
	@missing=""; for p in $(PEERS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing test peers:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages for the tests:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi

# The whole chain on this machine: simulated GPS, built-in RFC 2217 server, virtual port, a reader.
demo: install
	$(VENV)/bin/vcom demo $(if $(DEMO_SECONDS),--seconds $(DEMO_SECONDS))

test: install peers
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check vcom tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache *.egg-info
