//! The `apikey.api_key` base type: a presented key, checked for shape as it is parsed.
//!
//! Stored as a text varlena, so it is binary-compatible with `text`. The input function checks the
//! prefix, length, alphabet and checksum against `apikey.formats` without looking at any key, and
//! its errors (22P02) say what is wrong without echoing the input. Plaintext keys are never stored
//! in tables, so the on-disk form matters only for values in flight.

use std::ffi::{CStr, CString};

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum};

use crate::formats;

/// A well-formed key (its format was recognised when it was parsed).
pub struct ApiKey(String);

impl ApiKey {
    pub fn new_checked(text: String) -> Self {
        // A malformed key never reaches a lookup: it is counted here, as presented and refused.
        if let Err(e) = formats::try_detect(&text) {
            crate::counting::counted::<()>(Err(e)).unwrap_or_else(|e| crate::errors::raise(e));
        }
        ApiKey(text)
    }

    /// A key we just generated from a format: well-formed by construction.
    pub fn from_generated(text: String) -> Self {
        ApiKey(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromDatum for ApiKey {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        typoid: pg_sys::Oid,
    ) -> Option<Self> {
        // SAFETY: api_key is a text varlena (LIKE text), so the text conversion applies.
        unsafe { String::from_polymorphic_datum(datum, is_null, typoid).map(ApiKey) }
    }
}

impl IntoDatum for ApiKey {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        self.0.into_datum()
    }

    fn type_oid() -> pg_sys::Oid {
        pgrx::wrappers::regtypein("apikey.api_key")
    }
}

// SAFETY: unboxes through FromDatum, which handles the text varlena api_key is.
unsafe impl<'fcx> ArgAbi<'fcx> for ApiKey {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        // SAFETY: the argument is an api_key (text) datum, as the SQL signature declares.
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| {
            crate::errors::raise(pg_apikey_core::errors::ApiError::NullArgument("api_key"))
        })
    }
}

// SAFETY: returns a text varlena datum (or NULL), matching the declared api_key return type.
unsafe impl BoxRet for ApiKey {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        match self.into_datum() {
            // SAFETY: a text datum for a function declared to return api_key (a text varlena).
            Some(d) => unsafe { fcinfo.return_raw_datum(d) },
            None => fcinfo.return_null(),
        }
    }
}

pgrx::impl_sql_translatable!(ApiKey, "apikey.api_key");

#[pg_extern(stable, strict, parallel_restricted, requires = ["bootstrap"])]
fn api_key_in(input: &CStr) -> ApiKey {
    // A non-UTF-8 string is certainly not a key; say so without showing it.
    let text = input.to_str().unwrap_or("\u{0}");
    ApiKey::new_checked(text.to_owned())
}

#[pg_extern(immutable, strict, parallel_safe, requires = ["bootstrap"])]
fn api_key_out(key: ApiKey) -> CString {
    CString::new(key.0).unwrap_or_default()
}

#[pg_extern(stable, strict, parallel_restricted, requires = ["bootstrap"])]
fn api_key_recv(mut buf: pgrx::Internal) -> ApiKey {
    // SAFETY: the receive function's argument is the StringInfo of the message; we read the
    // unread bytes [cursor, len) and mark them consumed, as textrecv does.
    let text = unsafe {
        let buf = buf.get_mut::<pg_sys::StringInfoData>().unwrap_or_else(|| {
            crate::errors::raise(pg_apikey_core::errors::ApiError::NullArgument("api_key"))
        });
        let bytes = std::slice::from_raw_parts(
            buf.data.add(buf.cursor as usize) as *const u8,
            (buf.len - buf.cursor) as usize,
        );
        buf.cursor = buf.len;
        String::from_utf8_lossy(bytes).into_owned()
    };
    ApiKey::new_checked(text)
}

#[pg_extern(immutable, strict, parallel_safe, requires = ["bootstrap"])]
fn api_key_send(key: ApiKey) -> Vec<u8> {
    key.0.into_bytes()
}

pgrx::extension_sql!(
    r#"
CREATE TYPE apikey.api_key (
    INPUT = apikey.api_key_in,
    OUTPUT = apikey.api_key_out,
    RECEIVE = apikey.api_key_recv,
    SEND = apikey.api_key_send,
    LIKE = pg_catalog.text,
    CATEGORY = 'S'
);
COMMENT ON TYPE apikey.api_key IS 'A presented API key, checked for format (prefix, length, alphabet, checksum) on input. Never stored in tables.';
"#,
    name = "api_key_type",
    requires = [api_key_in, api_key_out, api_key_recv, api_key_send]
);
