//! Imported keys waiting for their first use (bcrypt).

use super::*;

/// What verify needs to know about waiting bcrypt imports of one key format.
pub struct PendingImports {
    pub format: String,
    pub min_len: usize,
    pub max_len: usize,
    pub max_cost: u32,
}

pub fn pending_imports() -> Vec<PendingImports> {
    // Cached per backend: read under the latest snapshot (see owner_limits).
    latest(
        c"SELECT k.format, pg_catalog.min(pg_catalog.length(i.lookup)),
                 pg_catalog.max(pg_catalog.length(i.lookup)), pg_catalog.max(i.cost)
            FROM apikey.key_imports i
            JOIN apikey.keys k ON k.id OPERATOR(pg_catalog.=) i.key_id
           GROUP BY k.format",
        &[],
        |r| PendingImports {
            format: r.get::<String>(1).unwrap_or_default(),
            min_len: r.get::<i32>(2).unwrap_or(0).max(0) as usize,
            max_len: r.get::<i32>(3).unwrap_or(0).max(0) as usize,
            max_cost: r.get::<i32>(4).unwrap_or(4).max(4) as u32,
        },
    )
}

/// Serialize imports of bcrypt keys, so two concurrent imports cannot add overlapping lookup
/// parts.
pub fn lock_imports() {
    spi(Spi::connect_mut(|c| {
        c.update(
            "LOCK TABLE apikey.key_imports IN SHARE ROW EXCLUSIVE MODE",
            None,
            &[],
        )
        .map(|_| ())
    }))
}

/// A stored lookup part that is a prefix of `lookup` or that `lookup` is a prefix of, with its
/// hash. (Lookup parts are ASCII, so the range [lookup, lookup with its last byte + 1) holds
/// exactly the strings it begins.)
pub fn lookup_overlap(lookup: &str) -> Option<(String, String)> {
    let shorter: Vec<String> = (1..lookup.len()).map(|n| lookup[..n].to_owned()).collect();
    let mut upper = lookup.as_bytes().to_vec();
    if let Some(last) = upper.last_mut() {
        *last = last.saturating_add(1);
    }
    let upper = String::from_utf8_lossy(&upper).into_owned();
    spi(Spi::connect(|c| {
        let t = c.select(
            "SELECT lookup::pg_catalog.text AS lookup, hash FROM apikey.key_imports
              WHERE lookup OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
                 OR (lookup OPERATOR(pg_catalog.>=) $2 AND lookup OPERATOR(pg_catalog.<) $3)
              LIMIT 1",
            Some(1),
            &[shorter.into(), lookup.into(), upper.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok::<_, pgrx::spi::SpiError>(Some((
            col::<String>(&r, "lookup")?.unwrap_or_default(),
            col::<String>(&r, "hash")?.unwrap_or_default(),
        )))
    }))
}

pub fn insert_import(key_id: i64, lookup: &str, hash: &str, cost: u32) {
    spi(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO apikey.key_imports (key_id, lookup, hash, cost) VALUES ($1, $2, $3, $4)",
            None,
            &[
                key_id.into(),
                lookup.into(),
                hash.into(),
                (cost as i32).into(),
            ],
        )
        .map(|_| ())
    }))
}

/// The import whose lookup part is one of `candidates`: (key id, bcrypt hash, stand-in digest).
/// A waiting bcrypt import: its key, its hash, and the stand-in digest its key row holds.
pub struct WaitingImport {
    pub key_id: i64,
    pub hash: String,
    pub stand_in: Vec<u8>,
}

pub fn find_import(candidates: Vec<String>) -> Option<WaitingImport> {
    spi(Spi::connect(|c| {
        let t = c.select(
            "SELECT i.key_id, i.hash, k.digest
               FROM apikey.key_imports i
               JOIN apikey.keys k ON k.id OPERATOR(pg_catalog.=) i.key_id
              WHERE i.lookup OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])
              LIMIT 1",
            Some(1),
            &[candidates.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok::<_, pgrx::spi::SpiError>(Some(WaitingImport {
            key_id: col::<i64>(&r, "key_id")?.unwrap_or(0),
            hash: col::<String>(&r, "hash")?.unwrap_or_default(),
            stand_in: col::<Vec<u8>>(&r, "digest")?.unwrap_or_default(),
        }))
    }))
}

/// Store an imported key's SHA-256 in place of its stand-in and forget its bcrypt hash. Returns
/// (owner, name) when this call did it (None: already done, or the key is gone).
pub fn rehash(key_id: i64, digest: &[u8], last4: &str) -> Option<(String, String)> {
    spi(Spi::connect_mut(|c| {
        let t = c.update(
            // A key row locked by another transaction is skipped, never waited for (the worker
            // applies queued rehashes, and a holder may keep the row locked): the import stays
            // waiting and a later verify rehashes it.
            "WITH free AS (SELECT k.id FROM apikey.keys k WHERE k.id OPERATOR(pg_catalog.=) $1
                            FOR UPDATE SKIP LOCKED),
                  done AS (DELETE FROM apikey.key_imports i USING free
                            WHERE i.key_id OPERATOR(pg_catalog.=) free.id RETURNING i.key_id)
             UPDATE apikey.keys k SET digest = $2, last4 = $3
               FROM done WHERE k.id OPERATOR(pg_catalog.=) done.key_id
             RETURNING k.owner, k.name",
            Some(1),
            &[key_id.into(), digest.to_vec().into(), last4.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok::<_, pgrx::spi::SpiError>(Some((
            col::<String>(&r, "owner")?.unwrap_or_default(),
            col::<String>(&r, "name")?.unwrap_or_default(),
        )))
    }))
}
