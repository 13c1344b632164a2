//! Every statement against the extension's tables, and nothing else.
//!
//! Rows come back as typed structs read by column name. The statements are written for the
//! extension owner with `search_path = pg_catalog, pg_temp` and qualified operators; callers wrap
//! them in [`as_owner`] (the catalog check of `catalog::get` runs first, so every name used here is
//! known to be the extension's own table). The hot path, [`find_by_digest`], does not go through
//! SQL at all: it probes the digest's hash index (or its unique B-tree) directly under the latest
//! snapshot.

use pg_apikey_core::digest::{ct_eq, DIGEST_LEN};
use pg_apikey_core::errors::ApiError;
use pg_apikey_core::gcra::Rate;
use pg_apikey_core::ipnet::{self, Cidr};
use pg_apikey_core::record::{Reader, Writer};
use pg_apikey_core::rights::{KeyKind, Rights};
use pgrx::datum::Interval;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{SpiHeapTupleData, SpiResult};
use pgrx::{FromDatum, IntoDatum, JsonB};

use crate::catalog;
use crate::errors::{raise, spi};
use crate::privilege::Elevated;

mod admins;
mod audit;
mod credits;
mod events;
mod formats;
mod imports;
mod keys;
mod latest;
mod leases;
mod owner_limits;
mod probe;
mod quota;
mod usage;

pub use admins::*;
pub use audit::*;
pub use credits::*;
pub use events::*;
pub use formats::*;
pub use imports::*;
pub use keys::*;
pub use latest::*;
pub use leases::*;
pub use owner_limits::*;
pub use probe::*;
pub use quota::*;
pub use usage::*;

/// Run `f` as the extension owner with the pinned search_path (see `privilege::Elevated`).
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let _guard = Elevated::to_role(catalog::get().owner);
    f()
}

/// Of key rows `ids`, lock those no other transaction holds (`FOR UPDATE SKIP LOCKED`) and say
/// which exist but are held elsewhere: (free, held). A key that does not exist (deleted, or made
/// by a transaction that rolled back) is in neither, so its pending state is settled, not kept.
fn lock_free_keys(
    c: &mut pgrx::spi::SpiClient<'_>,
    ids: &[i64],
) -> SpiResult<(Vec<i64>, Vec<i64>)> {
    let mut free = Vec::new();
    for row in c.update(
        "SELECT k.id FROM apikey.keys k WHERE k.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])
            FOR NO KEY UPDATE SKIP LOCKED",
        None,
        &[ids.to_vec().into()],
    )? {
        if let Some(id) = row.get_by_name::<i64, _>("id")? {
            free.push(id);
        }
    }
    let mut held = Vec::new();
    for row in c.select(
        "SELECT k.id FROM apikey.keys k WHERE k.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])",
        None,
        &[ids.to_vec().into()],
    )? {
        if let Some(id) = row.get_by_name::<i64, _>("id")? {
            if !free.contains(&id) {
                held.push(id);
            }
        }
    }
    Ok((free, held))
}

fn internal(what: &'static str) -> ! {
    raise(ApiError::Internal(what))
}

/// A row read by column name: an iterated row, or the current row of a result.
trait ByName {
    fn by_name<T: IntoDatum + FromDatum>(&self, name: &str) -> SpiResult<Option<T>>;
}

impl ByName for SpiHeapTupleData<'_> {
    fn by_name<T: IntoDatum + FromDatum>(&self, name: &str) -> SpiResult<Option<T>> {
        self.get_by_name::<T, _>(name)
    }
}

impl ByName for pgrx::spi::SpiTupleTable<'_> {
    fn by_name<T: IntoDatum + FromDatum>(&self, name: &str) -> SpiResult<Option<T>> {
        self.get_by_name::<T, _>(name)
    }
}

fn col<T: IntoDatum + FromDatum>(row: &impl ByName, name: &str) -> SpiResult<Option<T>> {
    row.by_name::<T>(name)
}

fn kind_of(text: Option<String>) -> KeyKind {
    text.and_then(|k| KeyKind::parse(&k))
        .unwrap_or_else(|| internal("a stored key has an unknown kind"))
}

fn rate_of(limit: Option<i32>, period: Option<Interval>, burst: Option<i32>) -> Option<Rate> {
    match (limit, period) {
        // Stored limits passed the same checks at creation; a row edited by hand into an invalid
        // limit is refused rather than treated as unlimited.
        (Some(limit), Some(period)) => Some(crate::rates::rate_from(
            limit as i64,
            period,
            burst.map(i64::from),
        )),
        _ => None,
    }
}
