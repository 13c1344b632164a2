//! Request limits kept in shared memory, so they hold where a table write cannot: inside READ ONLY
//! transactions (every PostgREST GET) and on a hot standby.
//!
//! One GCRA state (a TAT) per bucket, in a fixed table of 16 partitions × 1,024 slots; each
//! partition has its own LWLock, so backends charging different buckets rarely meet. A bucket is
//! identified by its database and a keyed 64-bit SipHash of its namespace and name, under a secret
//! drawn at server start (so nobody can work out offline which names share a partition).
//!
//! Who can touch what: per-key buckets ("key:<id>") live in partitions 0–7, which only a valid key
//! can reach; `apikey.rate_limit` buckets live in partitions 8–15 and are namespaced by database
//! and by the calling role, so one role cannot fill, lock or reset another's `login:bob`.
//!
//! Lifetime: the table starts empty at server start and after a crash restart (limits restart
//! fresh). A slot is reused only when its bucket is idle (full again: its TAT is in the past), so
//! no bucket that still holds a limit is ever evicted. When a partition has no free or idle slot,
//! a new bucket is refused (53400, retry after 1 s): the table fails closed.

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::gcra::{Outcome, Rate};
use pg_apikey_core::limiter_table::{self, Bucket};
use pg_apikey_core::slots::keyed_hash;
use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use std::cell::Cell;

use crate::errors::raise;
use crate::shmem::now_us;

const SLOTS: usize = 1024;

/// One partition: the core's buckets, in shared memory.
#[derive(Clone, Copy)]
#[repr(C)]
struct Partition([Bucket; SLOTS]);

// SAFETY: a plain #[repr(C)] array of plain #[repr(C)] values with no pointers; every bit pattern
// is a valid Bucket.
unsafe impl PGRXSharedMemory for Partition {}

crate::shmem::partitioned_table!(
    TABLE,
    init_partitions,
    Partition,
    Partition([Bucket::FREE; SLOTS]),
    [
        P0 = c"pg_apikey_limiter_0",
        P1 = c"pg_apikey_limiter_1",
        P2 = c"pg_apikey_limiter_2",
        P3 = c"pg_apikey_limiter_3",
        P4 = c"pg_apikey_limiter_4",
        P5 = c"pg_apikey_limiter_5",
        P6 = c"pg_apikey_limiter_6",
        P7 = c"pg_apikey_limiter_7",
        P8 = c"pg_apikey_limiter_8",
        P9 = c"pg_apikey_limiter_9",
        P10 = c"pg_apikey_limiter_10",
        P11 = c"pg_apikey_limiter_11",
        P12 = c"pg_apikey_limiter_12",
        P13 = c"pg_apikey_limiter_13",
        P14 = c"pg_apikey_limiter_14",
        P15 = c"pg_apikey_limiter_15",
    ]
);

// SAFETY: const construction of a named shared-memory lock; it is registered with
// pg_shmem_init! in init() before any backend uses it.
static SECRET: PgLwLock<[u64; 2]> = unsafe { PgLwLock::new(c"pg_apikey_limiter_secret") };

fn fresh_secret() -> [u64; 2] {
    let mut bytes = [0u8; 16];
    // A failure here leaves the secret zero: still a working table, only the partitions become
    // predictable, so it is not worth refusing to start the server over.
    let _ = pg_apikey_core::format::os_random(&mut bytes);
    [
        u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
    ]
}

pub fn init() {
    if crate::shmem::preloaded() {
        init_partitions();
        pgrx::pg_shmem_init!(SECRET = fresh_secret());
    }
}

thread_local! {
    static SECRET_COPY: Cell<Option<[u64; 2]>> = const { Cell::new(None) };
}

fn secret() -> [u64; 2] {
    if let Some(s) = SECRET_COPY.get() {
        return s;
    }
    let s = *SECRET.share();
    SECRET_COPY.set(Some(s));
    s
}

fn require_preload(what: &'static str) {
    if !crate::shmem::preloaded() {
        raise(ApiError::NotPreloaded(what));
    }
}

/// Which half of the table, and whose names: a key's own limit, or a role's named bucket.
#[derive(Clone, Copy)]
pub enum Namespace {
    Key,
    Role(pg_sys::Oid),
}

/// Charge one request to bucket `name` of the current database. Fails closed with
/// `ApiError::LimiterFull` when a new bucket finds no free or idle slot.
/// Where a bucket lives: its hash, partition, first slot to probe, and whose share it counts in.
struct Place {
    hash: u64,
    part: usize,
    start: usize,
    share: limiter_table::Share,
}

fn place(db: u32, ns: Namespace, name: &str) -> Place {
    let (tag, half) = match ns {
        Namespace::Key => (0u32, 0),
        Namespace::Role(r) => (u32::from(r), 1),
    };
    let hash = keyed_hash(
        secret(),
        &[
            &db.to_le_bytes(),
            &tag.to_le_bytes(),
            &[half as u8],
            name.as_bytes(),
        ],
    );
    let per_half = TABLE.len() / 2;
    Place {
        hash,
        part: half * per_half + (hash as usize) % per_half,
        start: (hash as usize / TABLE.len()) % SLOTS,
        // A database holds at most half of a partition's live buckets, and one role's named
        // buckets at most a quarter: a role flooding `rate_limit` in two databases leaves half
        // for everyone else (per-key buckets are made only by keys that exist and committed).
        share: limiter_table::Share {
            db,
            owner: tag,
            per_db: SLOTS / 2,
            per_owner: if half == 0 { SLOTS / 2 } else { SLOTS / 4 },
        },
    }
}

/// The request-limit buckets database `db` holds, and how many the limiter has in all (shared
/// by every database; each database may fill at most half).
pub fn buckets_of(db: u32) -> (usize, usize) {
    if !crate::shmem::preloaded() {
        return (0, 0);
    }
    let used = TABLE
        .iter()
        .map(|part| part.share().0.iter().filter(|b| b.db == db).count())
        .sum();
    (used, TABLE.len() * SLOTS)
}

pub fn charge(ns: Namespace, name: &str, rate: &Rate) -> Result<Outcome, ApiError> {
    require_preload("rate limiting");
    let db = crate::shmem::database();
    let p = place(db, ns, name);
    let rate = rate.scaled(crate::gucs::LIMIT_SCALE.get());
    let now = now_us();
    let mut slots = TABLE[p.part].exclusive();
    limiter_table::charge(&mut slots.0, p.start, p.share, p.hash, name, &rate, now)
        .map_err(|limiter_table::Full| ApiError::LimiterFull)
}

/// One bucket to charge in an all-or-nothing group: its name in the key half, its rate, the
/// cost, and the key whose refusal it records in usage.
pub struct Charge<'a> {
    pub bucket: String,
    pub rate: &'a Rate,
    pub cost: u32,
    pub key_id: i64,
    /// How the refusal names the limit ("API key", "Owner", "\"expensive\"").
    pub what: String,
    /// For a global limit, its name: one bucket on the primary, whose tokens a standby leases
    /// (`global_limits`); never scaled by `apikey.limit_scale`.
    pub global: Option<String>,
}

/// Charge every bucket, all or nothing: every partition involved is locked (in index order, so
/// two backends never wait on each other), every charge is decided, and they are written only if
/// all are allowed. A refusal spends no bucket's allowance.
pub fn charge_all(items: &[Charge]) -> Result<(), ApiError> {
    if items.is_empty() {
        return Ok(());
    }
    require_preload("rate limiting");
    let db = crate::shmem::database();
    if !crate::shmem::on_standby() || items.iter().all(|c| c.global.is_none()) {
        return charge_here(db, &items.iter().collect::<Vec<_>>());
    }
    // On a standby a global limit spends tokens leased from the primary's bucket, first (it may
    // wait for the worker, holding no lock); they go back if a limit kept here refuses.
    let (global, local): (Vec<&Charge>, Vec<&Charge>) =
        items.iter().partition(|c| c.global.is_some());
    let tokens: Vec<crate::global_limits::Token> = global
        .iter()
        .map(|c| crate::global_limits::Token {
            hash: place(db, Namespace::Key, &c.bucket).hash,
            name: c.global.as_deref().unwrap_or_default(),
            key_id: c.key_id,
            cost: i64::from(c.cost),
            what: &c.what,
        })
        .collect();
    let receipts = match crate::global_limits::spend(&tokens) {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, ApiError::RateLimited { .. }) {
                let key_id = global.first().map(|c| c.key_id).unwrap_or_default();
                crate::usage::record(key_id, crate::usage::Event::RateLimited);
            }
            return Err(e);
        }
    };
    charge_here(db, &local).inspect_err(|_| crate::global_limits::refund(&tokens, &receipts))
}

/// Charge every bucket in this server's limiter, all or nothing.
fn charge_here(db: u32, items: &[&Charge]) -> Result<(), ApiError> {
    if items.is_empty() {
        return Ok(());
    }
    let scale = crate::gucs::LIMIT_SCALE.get();
    let places: Vec<Place> = items
        .iter()
        .map(|c| place(db, Namespace::Key, &c.bucket))
        .collect();
    let mut parts: Vec<usize> = places.iter().map(|p| p.part).collect();
    parts.sort_unstable();
    parts.dedup();
    let mut guards: Vec<_> = parts.iter().map(|&i| (i, TABLE[i].exclusive())).collect();
    let now = now_us();
    let mut planned = Vec::with_capacity(items.len());
    for (p, c) in places.iter().zip(items) {
        let guard = &guards.iter().find(|(i, _)| *i == p.part).expect("locked").1;
        let rate = if c.global.is_some() {
            *c.rate
        } else {
            c.rate.scaled(scale)
        };
        let plan = limiter_table::plan(&guard.0, p.start, p.share, p.hash, &rate, now, c.cost)
            .map_err(|limiter_table::Full| ApiError::LimiterFull)?;
        planned.push(plan);
    }
    let refused = planned
        .iter()
        .zip(items)
        .filter(|(p, _)| !p.outcome.allowed)
        .max_by_key(|(p, _)| p.outcome.retry_after);
    if let Some((p, c)) = refused {
        let (retry, key_id, what) = (p.outcome.retry_after, c.key_id, c.what.clone());
        drop(guards);
        crate::usage::record(key_id, crate::usage::Event::RateLimited);
        return Err(ApiError::rate_limited(&what, retry));
    }
    for ((p, plan), c) in places.iter().zip(&planned).zip(items) {
        let guard = &mut guards
            .iter_mut()
            .find(|(i, _)| *i == p.part)
            .expect("locked")
            .1;
        limiter_table::commit(&mut guard.0, plan, p.share, p.hash, &c.bucket);
    }
    drop(guards);
    Ok(())
}

/// On the primary, for a standby's lease of a global limit: take tokens out of the limit's
/// bucket (the one this server's own requests charge) by `limiter_table::take`. Returns (tokens
/// taken, µs until the bucket admits `need` when none were).
pub fn take_tokens(
    bucket: &str,
    rate: &Rate,
    need: i64,
    want: i64,
) -> Result<(i64, i64), ApiError> {
    require_preload("rate limiting");
    let db = crate::shmem::database();
    let p = place(db, Namespace::Key, bucket);
    let now = now_us();
    let mut slots = TABLE[p.part].exclusive();
    limiter_table::take(
        &mut slots.0,
        p.start,
        p.share,
        p.hash,
        bucket,
        rate,
        now,
        need,
        want,
    )
    .map_err(|limiter_table::Full| ApiError::LimiterFull)
}

/// An application's own limit: at most `max` calls per `per` (at most 31 days), bursts of `burst`
/// (default `max`). Returns how many more calls would pass now; over the limit it raises 53400
/// with the seconds to wait in DETAIL. Buckets belong to the calling role in this database.
/// State is in shared memory: works in READ ONLY transactions and on standbys.
#[pg_extern(volatile, parallel_unsafe)]
fn rate_limit(
    bucket: Option<&str>,
    max: Option<i32>,
    per: Option<pgrx::datum::Interval>,
    burst: default!(Option<i32>, "NULL"),
) -> i32 {
    let bucket = bucket.unwrap_or_else(|| raise(ApiError::NullArgument("bucket")));
    let max = max.unwrap_or_else(|| raise(ApiError::NullArgument("max")));
    let per = per.unwrap_or_else(|| raise(ApiError::NullArgument("per")));
    if bucket.is_empty() {
        raise(ApiError::InvalidArgument("bucket must not be empty".into()));
    }
    let rate = crate::rates::rate_from(max as i64, per, burst.map(i64::from));
    let o = charge(
        Namespace::Role(crate::privilege::caller()),
        &format!("app:{bucket}"),
        &rate,
    )
    .unwrap_or_else(|e| raise(e));
    if !o.allowed {
        raise(ApiError::rate_limited("Request", o.retry_after));
    }
    o.remaining as i32
}

/// What the limiter holds for this database: one row per bucket, with the seconds until it is
/// full again (0: idle, the slot may be reused).
#[pg_extern(volatile, parallel_restricted)]
fn rate_limit_buckets(
) -> TableIterator<'static, (name!(bucket, String), name!(reset_after_seconds, f64))> {
    require_preload("the rate limiter state");
    if !crate::admin::caller_is_admin() {
        raise(ApiError::AdminOnly("read the rate limiter state"));
    }
    let db = crate::shmem::database();
    let now = now_us();
    let mut rows = Vec::new();
    for part in TABLE.iter() {
        let slots = part.share();
        for s in slots.0.iter().filter(|s| s.db == db) {
            rows.push((
                String::from_utf8_lossy(s.label()).into_owned(),
                ((s.tat - now).max(0) as f64) / 1e6,
            ));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    TableIterator::new(rows)
}
