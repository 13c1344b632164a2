//! pg_apikey: API-key authentication inside PostgreSQL.
//!
//! The pure logic (formats, digests, scopes, limiter arithmetic, the error catalogue) lives in the
//! `pg_apikey_core` crate; the modules here are the Postgres glue, one concern each, and each with
//! its own `init()` that `_PG_init` calls.

#![deny(
    unsafe_op_in_unsafe_fn,
    ffi_unwind_calls,
    clippy::undocumented_unsafe_blocks
)]

use pgrx::prelude::*;

mod admin;
mod audit;
mod auth;
mod authority;
mod catalog;
mod client;
mod counting;
mod credits;
mod errors;
mod events;
mod formats;
mod global_limits;
mod gucs;
mod identity;
mod imports;
mod jsonarg;
mod key_columns;
mod key_type;
mod keycache;
mod leaks;
mod ledger;
mod lifecycle;
mod limiter;
mod limits;
mod lookup;
mod pending;
mod policy;
mod privilege;
mod quota;
mod rates;
mod recovery;
mod sealing;
mod sharedkeys;
mod shmem;
mod stats;
mod store;
mod usage;
mod verify;
mod worker;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pgrx puts a captured backtrace in the DETAIL of an error made from a Rust panic when the
    // server's environment asks for one (RUST_BACKTRACE=1); a backtrace is no user's business and
    // may carry values from the stack. RUST_LIB_BACKTRACE outranks RUST_BACKTRACE for
    // `Backtrace::capture`, which reads it once: set before anything here can panic. A backend
    // (and the postmaster while preloading) is single-threaded, so changing the environment
    // races with nothing.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    shmem::init();
    gucs::init(shmem::preloaded());
    errors::init();
    keycache::init();
    sharedkeys::init();
    // Every other backend-local cache is dropped through keycache's one relcache callback.
    keycache::register(formats::invalidate);
    keycache::register(catalog::invalidate);
    keycache::register(verify::key_info_changed);
    keycache::register(limits::invalidate);
    keycache::register(ledger::invalidate);
    keycache::register(pending::invalidate);
    identity::init();
    limiter::init();
    credits::init();
    worker::init();
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_apikey'"]
    }
}
