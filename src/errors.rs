//! Raising the catalogue's errors, and keeping the statement that caused them out of the log.
//!
//! Postgres logs the text of a failing statement (`log_min_error_statement = error` by default). For
//! `SELECT apikey.verify('cfk_…')` that statement *is* the secret, so every error we raise carries
//! the text domain `pg_apikey`, and an `emit_log_hook` marks those errors before the server logs
//! them: no statement, no CONTEXT lines (a PL/pgSQL `PERFORM` or a DO block quotes the call, key
//! included) and no internal query. Errors raised by Postgres inside our own statements are
//! marked the same way by the error-context callback of `privilege::Elevated`. pgrx's
//! `ErrorReport` has no `errhidestmt`, which is why this is a hook.

use std::ffi::CStr;

use pg_apikey_core::errors::{ApiError, Sqlstate};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
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
        Sqlstate::UniqueViolation => ERRCODE_UNIQUE_VIOLATION,
        Sqlstate::CannotConnectNow => ERRCODE_CANNOT_CONNECT_NOW,
        Sqlstate::Internal => ERRCODE_INTERNAL_ERROR,
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
        Err(_) => raise(ApiError::Internal("an internal query failed")),
    }
}

/// A line in the server log only (LOG level is not sent to clients by default), outside any
/// transaction's fate: it stays even if the caller rolls back. Never give it a key.
pub fn log_line(message: String) {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        message,
        "pg_apikey",
    )
    .set_domain(DOMAIN.to_str().expect("ASCII"))
    .report(PgLogLevel::LOG);
}

thread_local! {
    /// A message was raised inside a privileged section (`privilege::Elevated`) since the last
    /// error was reported. Over-hiding is the safe direction: an error caught inside (a refused
    /// import row) leaves the mark for the next reported error, whose statement is hidden too.
    static HIDE_NEXT_ERROR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Mark that the error being raised passed through a privileged section: pgrx re-raises a copy
/// without the marks that section set, so the log hook hides the reported error's statement.
pub fn hide_next_error() {
    HIDE_NEXT_ERROR.set(true);
}

static mut PREV_EMIT_LOG_HOOK: pg_sys::emit_log_hook_type = None;

#[pg_guard]
unsafe extern "C-unwind" fn hide_statement_of_own_errors(edata: *mut pg_sys::ErrorData) {
    // SAFETY: Postgres passes the ErrorData being emitted, valid for the duration of the call;
    // we only set flags and clear a pointer it owns (the string stays in ErrorContext memory,
    // reset after the report). PREV_EMIT_LOG_HOOK is written once, in _PG_init, before any
    // error can be emitted through this hook.
    unsafe {
        let domain = (*edata).domain;
        let own = !domain.is_null() && CStr::from_ptr(domain) == DOMAIN;
        // An error raised inside one of our privileged sections and re-raised by pgrx lost the
        // marks set there (privilege::take_hidden_error).
        let passed_through =
            (*edata).elevel >= PgLogLevel::ERROR as i32 && HIDE_NEXT_ERROR.replace(false);
        if own || passed_through {
            (*edata).hide_stmt = true;
            (*edata).hide_ctx = true;
            (*edata).internalquery = std::ptr::null_mut();
        }
        if let Some(prev) = PREV_EMIT_LOG_HOOK {
            // The previous hook is another module's `#[pg_guard]`ed or C function: Postgres
            // errors unwind through it exactly as they would without us.
            #[allow(ffi_unwind_calls)]
            prev(edata);
        }
    }
}

pub fn init() {
    // SAFETY: _PG_init runs once per process before any query; chaining the previous hook is the
    // documented protocol for emit_log_hook.
    unsafe {
        PREV_EMIT_LOG_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(hide_statement_of_own_errors);
    }
}
