//! `apikey.verify`: a key's record as one `apikey.key_info` composite.

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::key_type::ApiKey;
use crate::lookup::lookup;
use crate::store::RawJsonb;

// SAFETY: returns a whole jsonb varlena (or NULL), matching the declared jsonb return type.
unsafe impl pgrx::callconv::BoxRet for RawJsonb {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        use pgrx::IntoDatum;
        match self.into_datum() {
            // SAFETY: a jsonb datum for a function declared to return jsonb.
            Some(d) => unsafe { fcinfo.return_raw_datum(d) },
            None => fcinfo.return_null(),
        }
    }
}

pgrx::impl_sql_translatable!(RawJsonb, "jsonb");

/// `apikey.key_info` as a datum. `verify` returns one composite value rather than a set: a
/// set-returning function costs a multi-call context and a result tuple descriptor per call,
/// which was most of verify's time over the wire.
pub struct KeyInfo(pg_sys::Datum);

// SAFETY: returns a composite datum built with apikey.key_info's own descriptor.
unsafe impl pgrx::callconv::BoxRet for KeyInfo {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        // SAFETY: a key_info composite datum for a function declared to return apikey.key_info.
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

pgrx::impl_sql_translatable!(KeyInfo, "apikey.key_info");

thread_local! {
    /// The blessed descriptor of apikey.key_info and the type's relation, kept in
    /// TopMemoryContext; forgotten when that relation's relcache entry is invalidated.
    static KEY_INFO_DESC: Cell<(pg_sys::TupleDesc, pg_sys::Oid)> =
        const { Cell::new((std::ptr::null_mut(), pg_sys::InvalidOid)) };
}

fn key_info_desc() -> pg_sys::TupleDesc {
    let (desc, _) = KEY_INFO_DESC.get();
    if !desc.is_null() {
        return desc;
    }
    // SAFETY: the copied descriptor is allocated in TopMemoryContext so it outlives the call;
    // it is forgotten (and leaked, a few hundred bytes) when the type's relation changes.
    unsafe {
        let typoid = pgrx::wrappers::regtypein("apikey.key_info");
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let desc = pg_sys::BlessTupleDesc(pg_sys::lookup_rowtype_tupdesc_copy(typoid, -1));
        pg_sys::MemoryContextSwitchTo(old);
        KEY_INFO_DESC.set((desc, pg_sys::typeidTypeRelid(typoid)));
        desc
    }
}

pub fn key_info_changed(relid: pg_sys::Oid) {
    let (desc, typrelid) = KEY_INFO_DESC.get();
    if !desc.is_null() && (relid == pg_sys::InvalidOid || relid == typrelid) {
        KEY_INFO_DESC.set((std::ptr::null_mut(), pg_sys::InvalidOid));
    }
}

/// Check a key and return its record; raises 28000 for an unknown, revoked, deleted or expired key.
#[pg_extern(stable, strict, parallel_restricted, requires = ["api_key_type"])]
fn verify(key: ApiKey) -> KeyInfo {
    use pgrx::IntoDatum;
    let r = lookup(&key);
    crate::usage::record(r.id, crate::usage::Event::Use);
    let desc = key_info_desc();
    let columns = [
        r.id.into_datum(),
        r.owner.into_datum(),
        r.name.into_datum(),
        r.rights.kind.name().into_datum(),
        r.format.into_datum(),
        r.rights.scopes.into_datum(),
        r.rights.resource.into_datum(),
        r.created_at.into_datum(),
        r.rights
            .expires_at
            .and_then(|t| TimestampWithTimeZone::try_from(t).ok())
            .into_datum(),
        r.metadata.into_datum(),
    ];
    let mut values = columns.map(|d| d.unwrap_or(pg_sys::Datum::from(0)));
    let mut nulls = columns.map(|d| d.is_none());
    // SAFETY: values and nulls have one entry per attribute of the blessed descriptor.
    unsafe {
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        KeyInfo(pg_sys::heap_copy_tuple_as_datum(tuple, desc))
    }
}
