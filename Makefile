# vcom: `make demo` and `make test` are all a fresh machine needs.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
# Debian packages the end-to-end tests run as real peers.
PEERS  := ser2net socat sredird cyclades-serial-client python3-serial tmux gcc libc6-dev iproute2 util-linux systemd udev mount \
          picocom mbpoll strace nftables

.PHONY: venv install test test-express test-python lint demo peers bench clean install-system uninstall install-app install-units install-rules install-group

# The development environment: .venv with vcom (editable) and the test tools.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $@

# openssl's command line is a TLS peer of the tests (s_client, certificate checks).
PEERS  += openssl

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
demo: venv
	$(VENV)/bin/vcom demo $(if $(DEMO_SECONDS),--seconds $(DEMO_SECONDS))

# Three workers (pytest-xdist): the tests mostly wait on peers and sockets, so even 2 cores keep three busy.
# TEST_ARGS="-n 0" runs them one at a time.
TEST_ARGS ?= -n 3
test: venv peers
	$(PY) -m pytest $(TEST_ARGS)

# The same suite with every eligible port moved off the event loop at its second chunk (vcom.port.express),
# so that each test also runs through the C relay and its hand-overs.
test-express: venv peers
	VCOM_EXPRESS_HOT=1 $(PY) -m pytest $(TEST_ARGS)

# The same suite as vcom runs where its C extensions were not built (no compiler, no Python headers): the
# RFC 2217 codec's loops in Python, every port's data on the event loop.  Tests of the C itself are left out.
test-python: venv peers
	VCOM_PURE_PYTHON=1 $(PY) -m pytest $(TEST_ARGS)

# vcom against socat on the same echo servers, and the many-ports figures (about 100 seconds; see README).
bench: venv peers
	$(PY) tests/bench/run.py $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check vcom tests
	$(VENV)/bin/mypy

# System-wide install, as root: vcom and its libraries in $(PREFIX)/lib/vcom, a launcher at
# $(PREFIX)/bin/vcom run by the system's $(TARGET_PYTHON), `vcom` on the PATH, the systemd units and
# udev rules, group vcom (may use the control socket).  DESTDIR stages everything under another root
# (then no group is made and no daemon is told); the staged tree names no staging or build path, so it
# can be packaged or copied into place as it is.
PREFIX        ?= /opt/vcom
BINDIR        ?= /usr/local/bin
UNITDIR       ?= /etc/systemd/system
RULESDIR      ?= /etc/udev/rules.d
TARGET_PYTHON ?= /usr/bin/python3
UNITS    := vcom.service vcom-share@.service
RULES    := 90-vcom-share.rules 91-vcom-net.rules
LIB      := $(PREFIX)/lib/vcom
# The daemons are told only on the real root, and only when they run.
SYSTEMD_UP = [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null
UDEVD_UP   = [ -z "$(DESTDIR)" ] && command -v udevadm >/dev/null && udevadm control --ping 2>/dev/null

install: install-system

install-system: install-app install-units install-rules install-group
	@echo "installed; start the manager with: systemctl enable --now vcom.service"

# Built from a copy of the sources, so that setuptools leaves no build/ here, with the pip of a
# throw-away venv (Debian's python3 has no pip of its own; python3-venv brings one).  pip's own
# launchers (bin/), direct_url.json and RECORD name the build machine's interpreter and directories:
# they are dropped, and the byte code is compiled with the final paths in it.  LDSHARED: an interpreter
# built with a run path (pyenv) would write it into vcom._speedups, which needs no library of it.
install-app:
	rm -rf $(DESTDIR)$(LIB)
	tmp=$$(mktemp -d) && mkdir "$$tmp/src" && cp -r pyproject.toml README.md vcom "$$tmp/src"/ && \
	  $(PYTHON) -m venv "$$tmp/venv" && \
	  LDSHARED="$${CC:-cc} -shared" "$$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile \
	    --no-warn-script-location --target $(DESTDIR)$(LIB) "$$tmp/src"; \
	  rc=$$?; rm -rf "$$tmp"; exit $$rc
	rm -rf $(DESTDIR)$(LIB)/bin
	find $(DESTDIR)$(LIB) -name direct_url.json -delete
	find $(DESTDIR)$(LIB) -name RECORD -delete
	$(PYTHON) -m compileall -q $(if $(DESTDIR),-s $(DESTDIR) -p /) $(DESTDIR)$(LIB) >/dev/null
	install -d $(DESTDIR)$(PREFIX)/bin
	sed 's|@PYTHON@|$(TARGET_PYTHON)|' vcom/launcher.in > $(DESTDIR)$(PREFIX)/bin/vcom
	chmod 755 $(DESTDIR)$(PREFIX)/bin/vcom
	if [ "$(PREFIX)/bin" != "$(BINDIR)" ]; then \
	  install -d $(DESTDIR)$(BINDIR) && ln -sfn $(PREFIX)/bin/vcom $(DESTDIR)$(BINDIR)/vcom; fi

# The units name the real PREFIX (not DESTDIR): that is where they will run it.
install-units:
	install -d $(DESTDIR)$(UNITDIR)
	for u in $(UNITS); do \
	  sed 's|/opt/vcom/bin/vcom|$(PREFIX)/bin/vcom|' systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u && \
	  chmod 644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	if $(SYSTEMD_UP); then systemctl daemon-reload; fi

install-rules:
	install -d $(DESTDIR)$(RULESDIR)
	for r in $(RULES); do install -m 644 udev/$$r $(DESTDIR)$(RULESDIR)/$$r || exit 1; done
	if $(UDEVD_UP); then udevadm control --reload; fi

install-group:
	if [ -z "$(DESTDIR)" ] && ! getent group vcom >/dev/null; then groupadd --system vcom; fi

# Removes what install-system put in place; /etc/vcom (the configuration) stays.  Only vcom's own
# files go: $(PREFIX) itself only if nothing else is left in it (a PREFIX of /usr/local survives).
# wrap-all is turned off first, and the interposer library goes only if no longer listed in
# /etc/ld.so.preload: a listed library that disappears would break every program start.
uninstall:
	if [ -z "$(DESTDIR)" ] && [ -x $(PREFIX)/bin/vcom ]; then $(PREFIX)/bin/vcom wrap-all off; fi
	if ! grep -qs libvcom-interposer.so $(DESTDIR)/etc/ld.so.preload; then \
	  rm -f $(DESTDIR)/usr/local/lib/libvcom-interposer.so; fi
	if $(SYSTEMD_UP); then \
	  systemctl disable --now vcom.service 2>/dev/null; systemctl stop 'vcom-share@*.service' 2>/dev/null; true; fi
	rm -f $(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS)) $(addprefix $(DESTDIR)$(RULESDIR)/,$(RULES)) \
	  $(DESTDIR)$(UNITDIR)/multi-user.target.wants/vcom.service
	if $(SYSTEMD_UP); then systemctl daemon-reload; fi
	if $(UDEVD_UP); then udevadm control --reload; fi
	if [ -L $(DESTDIR)$(BINDIR)/vcom ]; then rm -f $(DESTDIR)$(BINDIR)/vcom; fi
	if grep -qs '^# vcom launcher' $(DESTDIR)$(PREFIX)/bin/vcom; then rm -f $(DESTDIR)$(PREFIX)/bin/vcom; fi
	rm -rf $(DESTDIR)$(LIB)
	-rmdir $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX) 2>/dev/null
	rm -rf $(DESTDIR)/var/cache/vcom
	if [ -z "$(DESTDIR)" ] && getent group vcom >/dev/null; then groupdel vcom; fi

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache *.egg-info
