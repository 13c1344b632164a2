# pg_apikey. `make demo` and `make test` work on a fresh Debian 12 machine as root.
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config

.PHONY: setup install demo demo-stop test bench lint clean dist package

setup:
	bash .ci/setup.sh

install: setup
	cargo pgrx install --release --pg-config $(PG_CONFIG)
	install -m 644 sql/pg_apikey--0.1.0.sql sql/pg_apikey--0.2.0.sql sql/pg_apikey--0.3.0.sql "$$($(PG_CONFIG) --sharedir)/extension/"

demo: install
	bash examples/demo.sh

demo-stop:
	-bash examples/api.sh stop demo
	bash tests/cluster.sh stop demo

test: setup
	bash tests/run-all.sh

dist:
	bash packaging/build.sh dist

# Installable artifacts for each tested major, built from the source archive: a tree per major
# (cargo pgrx package) and a Debian package for Debian's PostgreSQL.
package: setup
	bash packaging/build.sh package $(PG_CONFIG)

bench: install
	bash bench/run.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --features "pg15 pg_test" --no-default-features -- -D warnings

clean:
	-bash tests/cluster.sh stop demo
	rm -rf .run target
