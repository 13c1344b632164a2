//! Who is calling, and running our table access as the extension's owner.
//!
//! The management functions are not `SECURITY DEFINER`: inside a definer function `current_user`
//! is the definer, so the function could neither tell an `apikey_admin` member from anyone else nor
//! record the real caller in the audit log. Instead each function notes the caller, then switches
//! to the extension owner for its own queries exactly as a definer function would
//! (`SetUserIdAndSecContext` plus a pinned `search_path = pg_catalog, pg_temp`). Transaction and
//! subtransaction abort restore both, so an error inside cannot leave the session elevated.

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::spi;

thread_local! {
    static OWNER: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

const ADMIN_ROLE: &CStr = c"apikey_admin";

fn extension_owner() -> pg_sys::Oid {
    let cached = OWNER.get();
    if cached != pg_sys::InvalidOid {
        return cached;
    }
    let owner = spi(Spi::connect(|c| {
        c.select(
            "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'pg_apikey'",
            Some(1),
            &[],
        )?
        .first()
        .get_one::<pg_sys::Oid>()
    }))
    .unwrap_or_else(|| pgrx::error!("pg_apikey: extension is not installed in this database"));
    OWNER.set(owner);
    owner
}

/// Forget cached catalog facts (the extension may have been dropped and created again).
pub fn invalidate() {
    OWNER.set(pg_sys::InvalidOid);
}

/// The role calling us (what `current_user` says outside our functions).
pub fn caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetUserId() }
}

pub fn caller_name() -> String {
    unsafe {
        CStr::from_ptr(pg_sys::GetUserNameFromId(caller(), false))
            .to_string_lossy()
            .into_owned()
    }
}

/// Refuse a change on a hot standby with 25006 and a hint, before anything tries to assign a
/// transaction id (which would fail with an internal error instead).
pub fn require_primary(what: &'static str) {
    if unsafe { pg_sys::RecoveryInProgress() } {
        crate::errors::raise(pg_apikey_core::errors::ApiError::OnStandby(what));
    }
}

/// Superusers and members of `apikey_admin` (with its privileges) manage every key.
pub fn caller_is_admin() -> bool {
    unsafe {
        let admin = pg_sys::get_role_oid(ADMIN_ROLE.as_ptr(), true);
        if admin == pg_sys::InvalidOid {
            return pg_sys::superuser();
        }
        pg_sys::has_privs_of_role(caller(), admin)
    }
}

/// Run `f` with `search_path = pg_catalog, pg_temp`, so no object a caller created can capture an
/// unqualified operator or function in our queries.
pub fn with_pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    unsafe {
        let nest_level = pg_sys::NewGUCNestLevel();
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
        let result = f();
        pg_sys::AtEOXact_GUC(true, nest_level);
        result
    }
}

/// Run `f` as the extension owner, with the pinned `search_path`.
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = extension_owner();
    unsafe {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context = 0;
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
        let result = with_pinned_search_path(f);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
        result
    }
}
