//! The server-independent core of pg_apikey: nothing here knows about Postgres, so all of it is
//! unit-tested (and fuzzed) without a server. The extension crate is glue around these functions.

#![forbid(unsafe_code)]

pub mod checksum;
pub mod conninfo;
pub mod credits_table;
pub mod digest;
pub mod errors;
pub mod events;
pub mod format;
pub mod gcra;
pub mod growth;
pub mod imported;
pub mod ipnet;
pub mod json_depth;
pub mod lease_table;
pub mod limiter_table;
pub mod owner_limits;
pub mod permexpr;
pub mod record;
pub mod rehash_queue;
pub mod rights;
pub mod scope;
pub mod seal;
pub mod shared_keys;
pub mod slots;
pub mod stat;
pub mod subxact;
#[cfg(test)]
mod test_rng;
pub mod token_leases;
pub mod usage_table;
pub mod window;
