//! The key formats table, cached per backend.
//!
//! The `api_key` input function consults the formats on every key it parses, so they are read once
//! and kept. Any change to `apikey.formats` fires a statement trigger that queues a relcache
//! invalidation for the table; Postgres delivers it to every backend at its next transaction or
//! lock, and `keycache`'s relcache callback calls [`invalidate`]. Aborted changes are undone the
//! same way, so a cache never holds rows that did not commit.

use std::cell::{Cell, RefCell};

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::format::{self, Alphabet, Checksum, Format};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::raise;

/// A format row: its shape, and whether its keys are also stored sealed (recoverable).
struct Row {
    format: Format,
    recoverable: bool,
}

thread_local! {
    static FORMATS: RefCell<Option<Vec<Format>>> = const { RefCell::new(None) };
    static RECOVERABLE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static FORMATS_RELID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

fn load() -> Vec<Format> {
    let rows = crate::privilege::with_pinned_search_path(load_rows);
    RECOVERABLE.with_borrow_mut(|r| {
        *r = rows
            .iter()
            .filter(|row| row.recoverable)
            .map(|row| row.format.name.clone())
            .collect()
    });
    rows.into_iter().map(|row| row.format).collect()
}

/// Are keys of this format also stored sealed, so their owner can see them again?
pub fn is_recoverable(name: &str) -> bool {
    with_formats(|_| ());
    RECOVERABLE.with_borrow(|r| r.iter().any(|n| n == name))
}

fn load_rows() -> Vec<Row> {
    FORMATS_RELID.set(crate::catalog::get().relation("formats"));
    crate::store::formats()
        .into_iter()
        .filter_map(|r| {
            // Rows are validated by apikey.add_format; a row edited by hand into an invalid
            // shape is skipped rather than trusted.
            let alphabet = Alphabet::parse(&r.alphabet)?;
            let checksum = Checksum::parse(&r.checksum)?;
            Format::new(
                &r.name,
                &r.prefix,
                alphabet,
                r.body_length.max(0) as usize,
                checksum,
            )
            .ok()
            .map(|format| Row {
                format,
                recoverable: r.recoverable,
            })
        })
        .collect()
}

pub fn with_formats<R>(f: impl FnOnce(&[Format]) -> R) -> R {
    let cached = FORMATS.with_borrow(|c| c.is_some());
    if !cached {
        let loaded = load();
        FORMATS.with_borrow_mut(|c| *c = Some(loaded));
    }
    FORMATS.with_borrow(|c| f(c.as_deref().unwrap_or_default()))
}

/// The format a presented key is in, or why it is malformed (22P02 naming what is wrong).
pub fn try_detect(key: &str) -> Result<Format, ApiError> {
    with_formats(|all| format::detect(all, key).cloned()).map_err(ApiError::MalformedKey)
}

pub fn by_name(name: &str) -> Format {
    with_formats(|all| all.iter().find(|f| f.name == name).cloned()).unwrap_or_else(|| {
        raise(ApiError::InvalidArgument(format!(
            "unknown key format \"{name}\""
        )))
    })
}

/// Drop the cache when `apikey.formats` (or everything) is invalidated.
pub fn invalidate(relid: pg_sys::Oid) {
    let ours = FORMATS_RELID.get();
    if relid == pg_sys::InvalidOid || relid == ours || ours == pg_sys::InvalidOid {
        FORMATS.with_borrow_mut(|c| *c = None);
    }
}

/// Statement trigger on the cached tables: tell every backend to drop its cache at commit.
#[pg_trigger]
fn invalidate_caches<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
    // SAFETY: queues a relcache invalidation for the trigger's own table, sent at commit.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(trigger.relid()?) };
    Ok(None)
}

/// Add a key format. Superusers and this database's pg_apikey administrators only.
#[pg_extern(volatile)]
fn add_format(
    name: Option<&str>,
    prefix: Option<&str>,
    alphabet: Option<&str>,
    body_length: Option<i32>,
    checksum: default!(Option<&str>, "'none'"),
    recoverable: default!(Option<bool>, false),
    description: default!(Option<&str>, "NULL"),
) -> String {
    let name = name.unwrap_or_else(|| raise(ApiError::NullArgument("name")));
    let prefix = prefix.unwrap_or_else(|| raise(ApiError::NullArgument("prefix")));
    let alphabet = alphabet.unwrap_or_else(|| raise(ApiError::NullArgument("alphabet")));
    let body_length = body_length.unwrap_or_else(|| raise(ApiError::NullArgument("body_length")));
    let checksum = checksum.unwrap_or_else(|| raise(ApiError::NullArgument("checksum")));
    let recoverable = recoverable.unwrap_or_else(|| raise(ApiError::NullArgument("recoverable")));
    crate::privilege::require_primary("add key formats");
    if !crate::admin::caller_is_admin() {
        raise(ApiError::AdminOnly("add key formats"));
    }
    let alphabet = Alphabet::parse(alphabet).unwrap_or_else(|| {
        raise(ApiError::InvalidArgument(
            "alphabet must be \"hex\" or \"base62\"".into(),
        ))
    });
    let checksum = Checksum::parse(checksum).unwrap_or_else(|| {
        raise(ApiError::InvalidArgument(
            "checksum must be \"none\" or \"crc32\"".into(),
        ))
    });
    let f = Format::new(
        name,
        prefix,
        alphabet,
        body_length.max(0) as usize,
        checksum,
    )
    .unwrap_or_else(|e| raise(ApiError::InvalidArgument(e.to_string())));
    let clash = with_formats(|all| {
        all.iter()
            .find(|o| {
                o.name == f.name
                    || (!f.prefix.is_empty() && o.prefix == f.prefix)
                    || (f.prefix.is_empty()
                        && o.prefix.is_empty()
                        && o.total_len() == f.total_len())
            })
            .map(|o| o.name.clone())
    });
    if let Some(existing) = clash {
        raise(ApiError::DuplicateFormat(existing));
    }
    crate::store::as_owner(|| {
        crate::store::insert_format(
            &crate::store::FormatRow {
                name: f.name.clone(),
                prefix: f.prefix.clone(),
                alphabet: f.alphabet.name().to_owned(),
                body_length,
                checksum: f.checksum.name().to_owned(),
                recoverable,
            },
            description,
        )
    });
    f.name
}

/// Mark a format recoverable (new keys are also stored sealed) or not. Admins only; existing keys
/// keep what they have.
#[pg_extern(volatile, strict)]
fn alter_format(name: &str, recoverable: bool) -> bool {
    crate::privilege::require_primary("alter key formats");
    if !crate::admin::caller_is_admin() {
        raise(ApiError::AdminOnly("alter key formats"));
    }
    by_name(name);
    crate::store::as_owner(|| crate::store::set_format_recoverable(name, recoverable));
    true
}

/// Rows for the built-in formats; the install script inserts them.
#[pg_extern(immutable, parallel_safe)]
fn builtin_formats() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(prefix, String),
        name!(alphabet, String),
        name!(body_length, i32),
        name!(checksum, String),
        name!(description, String),
    ),
> {
    TableIterator::new(format::builtin().into_iter().map(|(f, description)| {
        (
            f.name,
            f.prefix,
            f.alphabet.name().to_owned(),
            f.body_len as i32,
            f.checksum.name().to_owned(),
            description.to_owned(),
        )
    }))
}
