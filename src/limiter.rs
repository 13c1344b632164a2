//! Request limits kept in shared memory, so they hold where a table write cannot: inside READ ONLY
//! transactions (every PostgREST GET) and on a hot standby.
//!
//! One GCRA state (a TAT) per bucket, in a fixed table of 16 partitions × `SLOTS` slots; each
//! partition has its own LWLock, so backends charging different buckets rarely meet. A bucket is
//! identified by its database and a 64-bit SipHash of its name ("key:<id>" for per-key limits).
//!
//! Lifetime: the table starts empty at server start and after a crash restart (limits restart
//! fresh). When a partition is full, the slot whose TAT is lowest (the bucket closest to being
//! full again, so the least state is lost) is reused: a full table can only make limits more
//! lenient for that one bucket, never refuse a bucket that has room, and it never errors.

use std::hash::{Hash, Hasher};

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::gcra::{self, Outcome, Rate};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

use crate::errors::raise;

const SLOTS: usize = 256;
const LABEL: usize = 48;

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    /// 0 = free (no database has oid 0).
    db: u32,
    hash: u64,
    tat: i64,
    /// The bucket's name, truncated, for the state view.
    label: [u8; LABEL],
}

impl Slot {
    const FREE: Slot = Slot {
        db: 0,
        hash: 0,
        tat: 0,
        label: [0; LABEL],
    };
}

unsafe impl PGRXSharedMemory for Slot {}

type Partition = [Slot; SLOTS];

crate::shmem::partitioned_table!(
    TABLE,
    init_partitions,
    Partition,
    [Slot::FREE; SLOTS],
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

pub fn init() {
    if crate::shmem::preloaded() {
        init_partitions();
    }
}

fn require_preload(what: &'static str) {
    if !crate::shmem::preloaded() {
        raise(ApiError::NotPreloaded(what));
    }
}

fn bucket_hash(name: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    name.hash(&mut h);
    h.finish().max(1)
}

fn now_us() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Charge one request to bucket `name` of the current database.
pub fn charge(name: &str, rate: &Rate) -> Outcome {
    require_preload("rate limiting");
    let db = u32::from(unsafe { pg_sys::MyDatabaseId });
    let hash = bucket_hash(name);
    let part = TABLE[(hash as usize) % TABLE.len()];
    let start = (hash as usize / TABLE.len()) % SLOTS;
    let now = now_us();
    let mut slots = part.exclusive();
    let mut found = None;
    let mut free = None;
    let mut oldest: Option<usize> = None;
    for i in 0..SLOTS {
        let idx = (start + i) % SLOTS;
        let s = &slots[idx];
        if s.db == db && s.hash == hash {
            found = Some(idx);
            break;
        }
        if s.db == 0 {
            free.get_or_insert(idx);
        } else if oldest.is_none_or(|o| s.tat < slots[o].tat) {
            oldest = Some(idx);
        }
    }
    let (idx, tat) = match (found, free) {
        (Some(i), _) => (i, Some(slots[i].tat)),
        (None, Some(i)) => (i, None),
        (None, None) => (oldest.unwrap_or(start), None),
    };
    let outcome = gcra::charge(rate, tat, now);
    if outcome.allowed {
        let mut label = [0u8; LABEL];
        let n = name.len().min(LABEL);
        label[..n].copy_from_slice(&name.as_bytes()[..n]);
        slots[idx] = Slot {
            db,
            hash,
            tat: outcome.tat,
            label,
        };
    }
    outcome
}

pub fn rate_from(limit: i64, period: pgrx::datum::Interval, burst: Option<i64>) -> Rate {
    let micros = period.as_micros().clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    Rate::new(limit, micros, burst)
        .unwrap_or_else(|e| raise(ApiError::InvalidArgument(e.to_string())))
}

fn rate_limited(what: &str, retry_after: u64) -> ApiError {
    ApiError::RateLimited {
        message: format!("{what} rate limit exceeded. Please try again in {retry_after} seconds."),
        retry_after,
    }
}

/// The per-key request limit, checked by `authenticate`.
pub fn charge_key(key_id: i64, rate: &Rate) -> Result<(), ApiError> {
    let o = charge(&format!("key:{key_id}"), rate);
    if o.allowed {
        return Ok(());
    }
    crate::usage::record(key_id, crate::usage::Event::RateLimited);
    Err(rate_limited("API key", o.retry_after))
}

/// An application's own limit: at most `max` calls per `per`, bursts of `burst` (default `max`).
/// Returns how many more calls would pass now; over the limit it raises 53400 with the seconds to wait in DETAIL.
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
    let rate = rate_from(max as i64, per, burst.map(i64::from));
    let o = charge(&format!("app:{bucket}"), &rate);
    if !o.allowed {
        raise(rate_limited("Request", o.retry_after));
    }
    o.remaining as i32
}

/// What the limiter holds for this database: one row per bucket, with the seconds until it is
/// full again (0: idle, the slot may be reused).
#[pg_extern(volatile, parallel_restricted)]
fn rate_limit_buckets(
) -> TableIterator<'static, (name!(bucket, String), name!(reset_after_seconds, f64))> {
    require_preload("the rate limiter state");
    let db = u32::from(unsafe { pg_sys::MyDatabaseId });
    let now = now_us();
    let mut rows = Vec::new();
    for part in TABLE.iter() {
        let slots = part.share();
        for s in slots.iter().filter(|s| s.db == db) {
            let end = s.label.iter().position(|&b| b == 0).unwrap_or(LABEL);
            rows.push((
                String::from_utf8_lossy(&s.label[..end]).into_owned(),
                ((s.tat - now).max(0) as f64) / 1e6,
            ));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    TableIterator::new(rows)
}
