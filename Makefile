# boxtel -- the two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test bench lint venv mosquitto daemons clean install uninstall

demo: venv mosquitto  ## broker + agent on simulated hardware, live view until Ctrl-C (RAW=1: raw MQTT; DEMO=config/simulate-modbus.toml: the generator over Modbus)
	$(BIN)/python -m agent.demo $(DEMO) $(if $(RAW),--raw)

test: venv mosquitto daemons  ## the whole suite against real mosquitto brokers (and real gpsd and chrony)
	$(BIN)/python -m pytest

bench: venv mosquitto  ## benchmarks with figures against baselines measured in the same run
	$(BIN)/python -m bench

lint: venv
	$(BIN)/ruff check .

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		echo "installing python3-venv"; rm -rf $(VENV); \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv >/dev/null && \
		$(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

mosquitto:  ## the broker for the demo and the tests (and openssl, which the TLS tests use)
	@{ command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; } && command -v openssl >/dev/null || { \
		echo "installing mosquitto"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients openssl >/dev/null; }

# The GPS tests run the real Debian gpsd and chrony, each privately in a temp dir (chrony only with -x:
# a test never moves the clock). Installing must not start their services either: a policy-rc.d that
# refuses every start stands for the duration of the install (and goes again only if we put it there).
# chrony replaces systemd-timesyncd, which is fine: it is the NTP client Raspberry Pi OS boxes run anyway.
POLICY_RC := /usr/sbin/policy-rc.d
daemons:  ## gpsd and chrony for their tests, installed without starting their services
	@{ command -v gpsd >/dev/null 2>&1 || test -x /usr/sbin/gpsd; } && command -v chronyc >/dev/null || { \
		echo "installing gpsd and chrony (services not started)"; \
		created=; \
		if [ ! -e $(POLICY_RC) ]; then \
			printf '#!/bin/sh\n# boxtel make daemons: no service starts while installing\nexit 101\n' \
				| $(SUDO) tee $(POLICY_RC) >/dev/null && $(SUDO) chmod 755 $(POLICY_RC) && created=1; \
		fi; \
		trap '[ -z "$$created" ] || $(SUDO) rm -f $(POLICY_RC)' EXIT INT TERM; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends gpsd chrony >/dev/null; }

PREFIX ?= /opt/boxtel
INSTALL_ENV = DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" PYTHON="$(PYTHON)"

install:  ## on a Pi, as root: venv in /opt/boxtel, the systemd unit, an example config (kept if present)
	$(INSTALL_ENV) sh systemd/install.sh install

uninstall:  ## reverses install; keeps /etc/boxtel and /var/lib/boxtel unless PURGE=1
	$(INSTALL_ENV) sh systemd/install.sh uninstall $(if $(PURGE),purge)

clean:
	rm -rf $(VENV) .demo *.egg-info .pytest_cache .hypothesis
