//! The extension's own objects, found by OID.
//!
//! Every privileged statement names `apikey.keys`, `apikey.formats` and so on. A name is only as
//! trustworthy as whoever controls the schema it is resolved in, so before those statements run we
//! check, once per backend and again after any relcache invalidation, that each name resolves to
//! the very relation that `CREATE EXTENSION pg_apikey` created: a member of the extension (by
//! `pg_depend`), in the extension's own namespace, a plain table, and that the namespace is still
//! owned by the extension's owner. A relation swapped for a view, renamed or re-created by someone
//! else fails closed with an internal error before any statement reads or writes through it.
//!
//! The lookups themselves run with `search_path = pg_catalog, pg_temp` and qualified operators, so
//! nothing a caller or a database owner created can take part in them.

use std::cell::RefCell;
use std::rc::Rc;

use pg_apikey_core::errors::ApiError;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::{raise, spi};

/// The tables every module reads or writes, by the name they have in SQL.
pub const TABLES: [&str; 13] = [
    "owner_limits",
    "keys",
    "formats",
    "audit_log",
    "usage",
    "rate_limits",
    "admins",
    "keys_id_seq",
    "key_imports",
    "events",
    "announcements",
    "held_balances",
    "leases",
];

#[derive(Debug)]
pub struct Catalog {
    pub owner: pg_sys::Oid,
    /// (name, oid) of every table in `TABLES` that exists, checked as described above.
    relations: Vec<(String, pg_sys::Oid)>,
    /// The index verify probes on `apikey.keys (digest)`: the hash index, or the unique B-tree.
    digest_index: pg_sys::Oid,
    /// The digest index is a hash index (it returns rows whose digest only hashes alike).
    digest_index_is_hash: bool,
    key_columns: Option<KeyColumns>,
}

/// Attribute numbers of `apikey.keys`, found by name, for the direct index probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyColumns {
    pub id: i16,
    pub owner: i16,
    pub name: i16,
    pub format: i16,
    pub kind: i16,
    pub scopes: i16,
    pub resource: i16,
    pub digest: i16,
    pub created_at: i16,
    pub expires_at: i16,
    pub revoked_at: i16,
    pub disabled_at: i16,
    pub allowed_ips: i16,
    pub credits: i16,
    pub refill_amount: i16,
    pub refill_interval: i16,
    pub limits: i16,
    pub rate_limit: i16,
    pub rate_period: i16,
    pub rate_burst: i16,
    pub db_role: i16,
    pub metadata: i16,
    /// Added in 0.3.0: the first key of the key's rotation lineage (NULL: the key itself).
    pub lineage: i16,
    /// The highest of them: how far a slot must be deformed.
    pub max: i16,
}

impl Catalog {
    pub fn relation(&self, name: &str) -> pg_sys::Oid {
        self.relations
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, oid)| *oid)
            .unwrap_or_else(|| raise(ApiError::Internal("an extension table is missing")))
    }

    /// A table that may not exist yet (one added by a later version, before the update).
    pub fn relation_if_present(&self, name: &str) -> Option<pg_sys::Oid> {
        self.relations
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, oid)| *oid)
    }

    pub fn is_ours(&self, relid: pg_sys::Oid) -> bool {
        relid == self.digest_index || self.relations.iter().any(|(_, oid)| *oid == relid)
    }

    pub fn digest_index_is_hash(&self) -> bool {
        self.digest_index_is_hash
    }

    pub fn digest_index(&self) -> pg_sys::Oid {
        if self.digest_index == pg_sys::InvalidOid {
            raise(ApiError::Internal(
                "the unique index on apikey.keys (digest) is missing",
            ));
        }
        self.digest_index
    }

    /// Does the keys table invalidate per key? The 0.2.0 schema's row trigger does; 0.1.0's
    /// statement triggers invalidate the whole table, so until `ALTER EXTENSION pg_apikey
    /// UPDATE` runs the caches must treat every change of the table as a change of every key.
    /// Every 0.2.0 column comes with that trigger in one script; `disabled_at` stands for them.
    pub fn per_key_invalidation(&self) -> bool {
        self.key_columns.is_some_and(|k| k.disabled_at != 0)
    }

    pub fn key_columns(&self) -> KeyColumns {
        self.key_columns
            .unwrap_or_else(|| raise(ApiError::Internal("apikey.keys lacks a column")))
    }
}

/// Attribute numbers by name; None if any 0.1.0 column is missing. Columns added in 0.2.0 are 0
/// when absent (read as NULL), so keys verify between installing the 0.2.0 library and running
/// ALTER EXTENSION pg_apikey UPDATE.
fn key_columns(attrs: &[(String, i16)]) -> Option<KeyColumns> {
    let a = |name: &str| attrs.iter().find(|(n, _)| n == name).map(|(_, n)| *n);
    let mut k = KeyColumns {
        id: a("id")?,
        owner: a("owner")?,
        name: a("name")?,
        format: a("format")?,
        kind: a("kind")?,
        scopes: a("scopes")?,
        resource: a("resource")?,
        digest: a("digest")?,
        created_at: a("created_at")?,
        expires_at: a("expires_at")?,
        revoked_at: a("revoked_at")?,
        disabled_at: a("disabled_at").unwrap_or(0),
        allowed_ips: a("allowed_ips").unwrap_or(0),
        credits: a("credits").unwrap_or(0),
        refill_amount: a("refill_amount").unwrap_or(0),
        refill_interval: a("refill_interval").unwrap_or(0),
        limits: a("limits").unwrap_or(0),
        rate_limit: a("rate_limit")?,
        rate_period: a("rate_period")?,
        rate_burst: a("rate_burst")?,
        db_role: a("db_role")?,
        metadata: a("metadata")?,
        lineage: a("lineage").unwrap_or(0),
        max: 0,
    };
    k.max = [
        k.lineage,
        k.id,
        k.owner,
        k.name,
        k.format,
        k.kind,
        k.scopes,
        k.resource,
        k.digest,
        k.created_at,
        k.expires_at,
        k.revoked_at,
        k.disabled_at,
        k.allowed_ips,
        k.credits,
        k.refill_amount,
        k.refill_interval,
        k.limits,
        k.rate_limit,
        k.rate_period,
        k.rate_burst,
        k.db_role,
        k.metadata,
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    Some(k)
}

thread_local! {
    static CATALOG: RefCell<Option<Rc<Catalog>>> = const { RefCell::new(None) };
}

/// The checked catalog facts; raises 55000 when the extension is not installed here.
pub fn get() -> Rc<Catalog> {
    if let Some(c) = CATALOG.with_borrow(|c| c.clone()) {
        return c;
    }
    let loaded = Rc::new(crate::privilege::with_pinned_search_path(load));
    CATALOG.with_borrow_mut(|c| *c = Some(loaded.clone()));
    loaded
}

/// Like `get`, but None when the extension is not installed in this database (the worker asks).
pub fn installed() -> Option<Rc<Catalog>> {
    // SAFETY: a plain catalog lookup by name; missing_ok = true, so it returns InvalidOid rather
    // than raising when the extension is absent.
    let oid = unsafe { pg_sys::get_extension_oid(c"pg_apikey".as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then(get)
}

/// Forget everything (a relcache invalidation may mean a DROP/CREATE EXTENSION or a swap).
pub fn invalidate(relid: pg_sys::Oid) {
    CATALOG.with_borrow_mut(|c| {
        let drop_it = match c {
            None => false,
            Some(cat) => relid == pg_sys::InvalidOid || cat.is_ours(relid),
        };
        if drop_it {
            *c = None;
        }
    });
}

fn load() -> Catalog {
    const EXTENSION: &str = "
SELECT e.oid, e.extowner, e.extnamespace, n.nspowner
  FROM pg_catalog.pg_extension e
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
 WHERE e.extname OPERATOR(pg_catalog.=) 'pg_apikey'::pg_catalog.name";
    // Members of the extension in its own namespace, with the OID that their qualified name
    // resolves to now (to_regclass under the pinned search_path): the two must agree.
    const MEMBERS: &str = "
SELECT c.relname::pg_catalog.text, c.oid, c.relkind::pg_catalog.text,
       pg_catalog.to_regclass(pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.'
                              OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname))::pg_catalog.oid
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.objid
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
   AND d.refobjid OPERATOR(pg_catalog.=) $1
   AND d.deptype OPERATOR(pg_catalog.=) 'e'
   AND c.relnamespace OPERATOR(pg_catalog.=) $2";
    const COLUMNS: &str = "
SELECT attname::pg_catalog.text, attnum FROM pg_catalog.pg_attribute
 WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped";
    // The index verify probes: valid, on digest alone, no expression or predicate.
    // The hash index on digest when there is one (one bucket page instead of a B-tree descent
    // of bytea comparisons), else the unique B-tree.
    const DIGEST_INDEX: &str = "
SELECT i.indexrelid, (a.amname OPERATOR(pg_catalog.=) 'hash') AS is_hash
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indexrelid
  JOIN pg_catalog.pg_am a ON a.oid OPERATOR(pg_catalog.=) c.relam
 WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisvalid
   AND i.indnatts OPERATOR(pg_catalog.=) 1 AND i.indkey[0] OPERATOR(pg_catalog.=) $2
   AND i.indexprs IS NULL AND i.indpred IS NULL
   AND (i.indisunique OR a.amname OPERATOR(pg_catalog.=) 'hash')
 ORDER BY 2 DESC
 LIMIT 1";
    let found = spi(Spi::connect(|c| {
        let t = c.select(EXTENSION, Some(1), &[])?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        let ext: pg_sys::Oid = r.get(1)?.unwrap_or(pg_sys::InvalidOid);
        let owner: pg_sys::Oid = r.get(2)?.unwrap_or(pg_sys::InvalidOid);
        let namespace: pg_sys::Oid = r.get(3)?.unwrap_or(pg_sys::InvalidOid);
        let nsp_owner: pg_sys::Oid = r.get(4)?.unwrap_or(pg_sys::InvalidOid);
        let mut relations = Vec::new();
        for row in c.select(MEMBERS, None, &[ext.into(), namespace.into()])? {
            let name: String = row.get(1)?.unwrap_or_default();
            let oid: pg_sys::Oid = row.get(2)?.unwrap_or(pg_sys::InvalidOid);
            let kind: String = row.get(3)?.unwrap_or_default();
            let resolves_to: Option<pg_sys::Oid> = row.get(4)?;
            if !TABLES.contains(&name.as_str()) {
                continue;
            }
            let expected_kind = if name.ends_with("_seq") { "S" } else { "r" };
            if kind != expected_kind || resolves_to != Some(oid) {
                return Ok(Some(Err(())));
            }
            relations.push((name, oid));
        }
        let keys = relations.iter().find(|(n, _)| n == "keys").map(|(_, o)| *o);
        let (mut digest_index, mut columns) = (pg_sys::InvalidOid, None);
        let mut digest_index_is_hash = false;
        if let Some(keys) = keys {
            let mut attrs = Vec::new();
            for row in c.select(COLUMNS, None, &[keys.into()])? {
                attrs.push((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<i16>(2)?.unwrap_or_default(),
                ));
            }
            columns = key_columns(&attrs);
            if let Some(cols) = columns {
                let t = c.select(DIGEST_INDEX, Some(1), &[keys.into(), cols.digest.into()])?;
                if !t.is_empty() {
                    let r = t.first();
                    digest_index = r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid);
                    digest_index_is_hash = r.get::<bool>(2)?.unwrap_or(false);
                }
            }
        }
        Ok::<_, pgrx::spi::SpiError>(Some(Ok((
            Catalog {
                owner,
                relations,
                digest_index,
                digest_index_is_hash,
                key_columns: columns,
            },
            nsp_owner,
        ))))
    }));
    match found {
        None => raise(ApiError::NotInstalled),
        Some(Err(())) => raise(ApiError::Internal(
            "an extension table was replaced; reinstall pg_apikey",
        )),
        Some(Ok((cat, nsp_owner))) => {
            // Only the extension's owner may hold its schema: anyone else could create, rename
            // or drop the names our statements use.
            if nsp_owner != cat.owner {
                raise(ApiError::Internal(
                    "the apikey schema is no longer owned by the extension's owner",
                ));
            }
            cat
        }
    }
}

/// The file of relation `relid` (its `relfilenode`); None if there is no such relation.
pub fn file_of(relid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: called in a transaction; RelationIdGetRelation returns a pinned relcache entry or
    // NULL, and the entry is read, then released with RelationClose. Taking no lock is how the
    // relation cache is read for a look at pg_class fields.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return None;
        }
        let file = (*(*rel).rd_rel).relfilenode;
        pg_sys::RelationClose(rel);
        Some(file)
    }
}
