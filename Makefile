# pg_apikey. `make demo` and `make test` work on a fresh Debian 12 machine as root.
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config

.PHONY: all setup install demo demo-stop test bench lint clean dist package

# What `make` alone (and so PGXN's client) runs: nothing is built ahead of `make install`.
all:
	@echo "make install [PG_CONFIG=...]: build and install pg_apikey into that server (needs Rust and cargo-pgrx 0.18.0)"

setup:
	bash .ci/setup.sh

# Into the server of PG_CONFIG, with the install scripts of every earlier version (CREATE
# EXTENSION ... VERSION, and the upgrades from them).
install:
	cargo pgrx install --release --pg-config $(PG_CONFIG)
	install -m 644 sql/pg_apikey--*.sql "$$($(PG_CONFIG) --sharedir)/extension/"

demo: setup install
	bash examples/demo.sh

demo-stop:
	-bash examples/api.sh stop demo
	bash tests/cluster.sh stop demo

test: setup
	bash tests/run-all.sh

dist:
	bash packaging/build.sh dist

# Installable artifacts for every tested major, built from the source archive: a tarball with
# install.sh, a .deb and an .rpm per major (packaging/build.sh).
PG_CONFIGS ?= /usr/lib/postgresql/15/bin/pg_config /usr/local/pgsql-16/bin/pg_config \
	/usr/local/pgsql-17/lib/postgresql/17/bin/pg_config /usr/local/pgsql-18/bin/pg_config
package: setup
	for c in $(PG_CONFIGS); do bash packaging/build.sh package $$c || exit 1; done

bench: setup install
	bash bench/run.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --features "pg15 pg_test" --no-default-features -- -D warnings

clean:
	-bash tests/cluster.sh stop demo
	rm -rf .run target
