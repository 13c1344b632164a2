//! Who is calling, and running our table access as the extension's owner.
//!
//! The management functions are not `SECURITY DEFINER`: inside a definer function `current_user`
//! is the definer, so the function could neither tell an administrator from anyone else nor
//! record the real caller in the audit log. Instead each function notes the caller, then switches
//! to the extension owner for its own statements through one guard type, [`Elevated`].
//!
//! ## The invariant of `Elevated`
//! While an `Elevated` lives, the user id is the extension owner (with
//! `SECURITY_LOCAL_USERID_CHANGE`, as a definer function has), `search_path` is
//! `pg_catalog, pg_temp` at a GUC nest level of its own, and an error-context callback marks every
//! error raised inside as "hide statement, context and internal query" in the server log. When it
//! drops, on return or while a Rust panic (a Postgres error caught at a pgrx boundary) unwinds,
//! the user id, security context, GUC nest level and error-context stack are restored, in that
//! order. If Postgres itself aborts the (sub)transaction, `AbortTransaction` /
//! `AbortSubTransaction` restore the user id and GUCs saved at (sub)transaction start as well, so
//! no error path leaves the session elevated. `tests/test_privilege.py` checks both paths.

use std::ffi::CStr;

use pg_apikey_core::errors::ApiError;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::raise;

/// The role calling us (what `current_user` says outside our functions).
pub fn caller() -> pg_sys::Oid {
    // SAFETY: reads a backend global; no preconditions.
    unsafe { pg_sys::GetUserId() }
}

pub fn caller_name() -> String {
    // SAFETY: GetUserNameFromId(noerr = false) returns a palloc'd, NUL-terminated name or raises;
    // the role is the current user, which exists.
    unsafe {
        CStr::from_ptr(pg_sys::GetUserNameFromId(caller(), false))
            .to_string_lossy()
            .into_owned()
    }
}

/// Refuse a change on a hot standby with 25006 and a hint, before anything tries to assign a
/// transaction id (which would fail with an internal error instead).
pub fn require_primary(what: &'static str) {
    if crate::shmem::on_standby() {
        raise(ApiError::OnStandby(what));
    }
}

/// Does the current user have superuser rights?
pub fn caller_is_superuser() -> bool {
    // SAFETY: as in caller_is_admin.
    unsafe { pg_sys::superuser() }
}

/// The switch described in the module comment. Create it with [`Elevated::to_owner`] or
/// [`Elevated::pinned`]; dropping it restores everything.
pub struct Elevated {
    saved_user: pg_sys::Oid,
    saved_context: i32,
    switched_user: bool,
    nest_level: i32,
    callback: Box<pg_sys::ErrorContextCallback>,
}

/// Marks an error raised inside an `Elevated` section so the server log gets neither the
/// statement, nor its CONTEXT lines, nor the internal query: a key may be any of them.
#[pg_guard]
unsafe extern "C-unwind" fn hide_in_log(_arg: *mut std::ffi::c_void) {
    // pgrx catches a Postgres error at its FFI boundary and raises a copy that keeps code,
    // message, detail and hint but not the marks below: remember that a message passed through
    // here, so the log hook (errors.rs) hides the statement of the error finally reported.
    crate::errors::hide_next_error();
    // SAFETY: error-context callbacks run inside errfinish/errcontext handling, where these
    // functions act on the error being built; they only set fields of it.
    unsafe {
        pg_sys::errhidestmt(true);
        pg_sys::errhidecontext(true);
        pg_sys::internalerrquery(std::ptr::null());
        // A constraint of our own tables that refuses a row names the row's values in DETAIL
        // ("Failing row contains (…)", "Key (digest)=(…)"): a digest or a sealed key may be
        // among them. Class 23 (integrity constraint violation) gets a DETAIL without values.
        if pg_sys::geterrcode() & 0xFFF == CLASS_23 {
            replace_detail();
        }
    }
}

/// Set the DETAIL of the error being reported to a text without values.
#[allow(ffi_unwind_calls)]
fn replace_detail() {
    // SAFETY: a variadic C function, so pgrx cannot wrap it: called directly, with a constant
    // format that has no conversion. It only copies the string into the error being built; the
    // one way it can raise (out of memory) longjmps to the #[pg_guard] frame of `hide_in_log`,
    // and no Rust value with a destructor is alive in between.
    unsafe {
        pg_sys::errdetail_internal(
            c"a row was refused by a constraint of pg_apikey's tables".as_ptr(),
        );
    }
}

/// The SQLSTATE class 23 as Postgres packs it (ERRCODE_TO_CATEGORY of MAKE_SQLSTATE('2','3',…)).
const CLASS_23: i32 = (b'2' - b'0') as i32 | (((b'3' - b'0') as i32) << 6);

impl Elevated {
    /// Pin `search_path` (and mark errors hidden) without changing the user.
    pub fn pinned() -> Self {
        Self::enter(None)
    }

    /// Become `role` (the extension owner: see `store::as_owner`), with the pinned
    /// `search_path`.
    pub fn to_role(role: pg_sys::Oid) -> Self {
        Self::enter(Some(role))
    }

    fn enter(role: Option<pg_sys::Oid>) -> Self {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context = 0;
        // SAFETY: out-parameters are valid locals.
        unsafe { pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context) };
        let mut callback = Box::new(pg_sys::ErrorContextCallback {
            // SAFETY: reading the global error-context stack head.
            previous: unsafe { pg_sys::error_context_stack },
            callback: Some(hide_in_log),
            arg: std::ptr::null_mut(),
        });
        // SAFETY: the callback lives in a Box owned by the guard, so its address is stable until
        // Drop pops it (restoring `previous`) before freeing it.
        unsafe { pg_sys::error_context_stack = &mut *callback };
        if let Some(role) = role {
            // SAFETY: switching the current user id exactly as fmgr_security_definer does; the
            // previous values are restored in Drop or by transaction abort.
            unsafe {
                pg_sys::SetUserIdAndSecContext(
                    role,
                    saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
                )
            };
        }
        // SAFETY: NewGUCNestLevel opens a GUC nest level that AtEOXact_GUC(true, level) closes in
        // Drop; set_config_option with GUC_ACTION_SAVE ties the value to that level. The value
        // is a valid, NUL-terminated constant.
        let nest_level = unsafe {
            let level = pg_sys::NewGUCNestLevel();
            pg_sys::set_config_option(
                c"search_path".as_ptr(),
                c"pg_catalog, pg_temp".as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
            level
        };
        Elevated {
            saved_user,
            saved_context,
            switched_user: role.is_some(),
            nest_level,
            callback,
        }
    }
}

impl Drop for Elevated {
    fn drop(&mut self) {
        // SAFETY: undoes `enter` in reverse order. AtEOXact_GUC only pops values saved at our
        // level (it raises no error for search_path); SetUserIdAndSecContext just stores two
        // globals; the error-context stack gets back the head it had before we pushed.
        unsafe {
            pg_sys::AtEOXact_GUC(true, self.nest_level);
            if self.switched_user {
                pg_sys::SetUserIdAndSecContext(self.saved_user, self.saved_context);
            }
            // Unconditionally, as PG_CATCH does: anything pushed above us is gone with our frame.
            pg_sys::error_context_stack = self.callback.previous;
        }
    }
}

/// Run `f` with `search_path = pg_catalog, pg_temp`, so no object a caller created can capture an
/// unqualified operator or function in our queries.
pub fn with_pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    let _guard = Elevated::pinned();
    f()
}
