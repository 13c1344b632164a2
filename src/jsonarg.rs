//! JSON arguments from callers (metadata, named limits, leak reports, import rows): bounded in size
//! and nesting *before* they are parsed, so odd input gets 22023 with a message, never a parser's
//! recursion limit turned into an internal error.

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::json_depth;
use pgrx::pg_sys;

use crate::errors::raise;

/// The largest JSON argument accepted, as text.
const MAX_BYTES: usize = 1 << 20;

/// A `jsonb` argument, parsed only once it is known to be within bounds.
pub struct Json(pub serde_json::Value);

impl Json {
    fn from_text(text: &str) -> Self {
        if text.len() > MAX_BYTES {
            raise(ApiError::InvalidArgument(format!(
                "a JSON argument may be at most {MAX_BYTES} bytes"
            )));
        }
        if !json_depth::within(text, json_depth::MAX_DEPTH) {
            raise(ApiError::InvalidArgument(format!(
                "a JSON argument may nest at most {} levels deep",
                json_depth::MAX_DEPTH
            )));
        }
        match serde_json::from_str(text) {
            Ok(v) => Json(v),
            Err(_) => raise(ApiError::InvalidArgument(
                "a JSON argument could not be read".into(),
            )),
        }
    }
}

impl pgrx::FromDatum for Json {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        // SAFETY: a non-null jsonb datum, as the SQL signature declares; jsonb_out returns a
        // palloc'd NUL-terminated string, copied before it is used.
        let text = unsafe {
            let out = pg_sys::OidOutputFunctionCall(pg_sys::Oid::from(pg_sys::F_JSONB_OUT), datum);
            std::ffi::CStr::from_ptr(out).to_string_lossy().into_owned()
        };
        Some(Json::from_text(&text))
    }
}

impl pgrx::IntoDatum for Json {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        pgrx::JsonB(self.0).into_datum()
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: unboxes through FromDatum; the argument is a jsonb datum, as the SQL signature declares.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for Json {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        // SAFETY: as above.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| raise(ApiError::NullArgument("a JSON argument")))
    }
}

pgrx::impl_sql_translatable!(Json, "jsonb");
