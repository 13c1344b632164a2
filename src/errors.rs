//! Raising the catalogue's errors, and keeping the statement that caused them out of the log.
//!
//! Postgres logs the text of a failing statement (`log_min_error_statement = error` by default). For
//! `SELECT apikey.verify('cfk_…')` that statement *is* the secret, so every error we raise carries
//! the text domain `pg_apikey`, and an `emit_log_hook` marks those errors `hide_stmt` before the
//! server logs them. pgrx's `ErrorReport` has no `errhidestmt`, which is why this is a hook.

use std::ffi::CStr;

use pg_apikey_core::errors::{ApiError, Sqlstate};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

const DOMAIN: &CStr = c"pg_apikey";

fn pg_code(state: Sqlstate) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match state {
        Sqlstate::InvalidTextRepresentation => ERRCODE_INVALID_TEXT_REPRESENTATION,
        Sqlstate::InvalidParameterValue => ERRCODE_INVALID_PARAMETER_VALUE,
        Sqlstate::NullValueNotAllowed => ERRCODE_NULL_VALUE_NOT_ALLOWED,
        Sqlstate::InvalidAuthorization => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        Sqlstate::InsufficientPrivilege => ERRCODE_INSUFFICIENT_PRIVILEGE,
        Sqlstate::NoDataFound => ERRCODE_NO_DATA_FOUND,
        Sqlstate::RateLimited => ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        Sqlstate::NotInPrerequisiteState => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        Sqlstate::DuplicateObject => ERRCODE_DUPLICATE_OBJECT,
        Sqlstate::ReadOnly => ERRCODE_READ_ONLY_SQL_TRANSACTION,
    }
}

/// Raise `err` as an ERROR. Never returns.
pub fn raise(err: ApiError) -> ! {
    let mut report = ErrorReport::new(pg_code(err.sqlstate()), err.to_string(), "pg_apikey")
        .set_domain(DOMAIN.to_str().expect("ASCII"));
    if let Some(detail) = err.detail() {
        report = report.set_detail(detail);
    }
    if let Some(hint) = err.hint() {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Unwrap an SPI result; an SPI failure inside our own queries is a bug or a damaged install, and
/// it must fail closed without describing arguments (which may include digests).
pub fn spi<T>(r: Result<T, pgrx::spi::SpiError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => pgrx::error!("pg_apikey: internal query failed: {e}"),
    }
}

static mut PREV_EMIT_LOG_HOOK: pg_sys::emit_log_hook_type = None;

unsafe extern "C-unwind" fn hide_statement_of_own_errors(edata: *mut pg_sys::ErrorData) {
    unsafe {
        let domain = (*edata).domain;
        if !domain.is_null() && CStr::from_ptr(domain) == DOMAIN {
            (*edata).hide_stmt = true;
        }
        if let Some(prev) = PREV_EMIT_LOG_HOOK {
            prev(edata);
        }
    }
}

pub fn init() {
    unsafe {
        PREV_EMIT_LOG_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(hide_statement_of_own_errors);
    }
}
