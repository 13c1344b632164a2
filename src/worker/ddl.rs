//! Statements that need a database free of connections (`DROP DATABASE`, `CREATE DATABASE …
//! TEMPLATE`, `ALTER DATABASE … RENAME` or `SET TABLESPACE`) would find that database's worker
//! connected and fail ("being accessed by other users"). A utility hook holds the worker off
//! and waits for it to leave before the statement runs, and lets it come back afterwards,
//! whether the statement succeeded or not. `CREATE EXTENSION pg_apikey` claims the database's
//! region, so its worker starts within moments.

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;

use crate::shmem::regions;

static mut PREV: pg_sys::ProcessUtility_hook_type = None;

/// The longest a statement waits for a worker to leave; after that it runs anyway (and fails
/// as it would without us if the worker is still there).
const WAIT_MS: u64 = 5_000;
/// The longest a worker is held off, should the statement's backend die before lifting it.
const HOLD_S: i64 = 60;

pub fn init() {
    // SAFETY: from _PG_init while preloading, single-threaded: chain the utility hook, keeping
    // the previous one, which ours calls.
    unsafe {
        PREV = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(utility);
    }
}

fn database_oid(name: *const std::ffi::c_char) -> Option<u32> {
    if name.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated name from the parse tree; missing_ok = true.
    let oid = unsafe { pg_sys::get_database_oid(name, true) };
    (oid != pg_sys::InvalidOid).then(|| u32::from(oid))
}

/// The value of option `name` in a statement's DefElem list, if given.
fn option(options: *mut pg_sys::List, name: &CStr) -> Option<*mut pg_sys::DefElem> {
    // SAFETY: a parse tree's list of DefElem nodes.
    let list = unsafe { PgList::<pg_sys::DefElem>::from_pg(options) };
    let found = list.iter_ptr().find(|d| {
        // SAFETY: each element is a DefElem with a NUL-terminated defname.
        unsafe { !(**d).defname.is_null() && CStr::from_ptr((**d).defname) == name }
    });
    found
}

/// Would Postgres let this user run the statement on database `db` (so holding its worker off is
/// theirs to ask)? Anyone else's statement passes through untouched and fails as it would
/// without pg_apikey.
fn may_take(db: u32, kind: Kind) -> bool {
    // SAFETY: superuser(), GetUserId() and has_privs_of_role() read the current role; the
    // syscache tuples are released before returning and read only while held.
    unsafe {
        if pg_sys::superuser() {
            return true;
        }
        let me = pg_sys::GetUserId();
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::DATABASEOID as i32,
            pg_sys::Datum::from(pg_sys::Oid::from(db)),
        );
        if tuple.is_null() {
            return false;
        }
        let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
        let owner = pg_sys::has_privs_of_role(me, form.datdba);
        let template = form.datistemplate;
        pg_sys::ReleaseSysCache(tuple);
        // DROP and SET TABLESPACE need ownership; RENAME ownership and CREATEDB; a copy
        // CREATEDB and a template (or ownership).
        let needs_createdb = matches!(kind, Kind::Copy | Kind::Rename);
        if !needs_createdb {
            return owner;
        }
        let role = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::AUTHOID as i32,
            pg_sys::Datum::from(me),
        );
        if role.is_null() {
            return false;
        }
        let createdb =
            (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_authid>(role)).rolcreatedb;
        pg_sys::ReleaseSysCache(role);
        createdb && (owner || (kind == Kind::Copy && template))
    }
}

/// The databases statement `node` needs free of connections, that this user may ask for.
fn databases_to_free(node: *mut pg_sys::Node) -> Vec<u32> {
    let (db, kind) = target(node);
    db.filter(|&d| may_take(d, kind) && alone(d, kind))
        .into_iter()
        .collect()
}

/// Would the statement find the database free but for its worker? With another session
/// connected Postgres refuses it anyway (unless `DROP … WITH (FORCE)` ends those sessions), so
/// holding the worker off would only stop its flushes.
fn alone(db: u32, kind: Kind) -> bool {
    // SAFETY: counts the backends (background workers excluded) connected to `db`.
    kind == Kind::DropForce || unsafe { pg_sys::CountDBConnections(pg_sys::Oid::from(db)) } == 0
}

/// What a statement does to the database it needs free.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Drop,
    DropForce,
    Copy,
    Rename,
    Move,
}

/// The database statement `node` needs free of connections, and what it does to it.
fn target(node: *mut pg_sys::Node) -> (Option<u32>, Kind) {
    // SAFETY: `node` is the utility statement of a PlannedStmt; its tag says which struct it is.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => {
                let s = &*(node as *mut pg_sys::DropdbStmt);
                let kind = if option(s.options, c"force").is_some() {
                    Kind::DropForce
                } else {
                    Kind::Drop
                };
                (database_oid(s.dbname), kind)
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                let s = &*(node as *mut pg_sys::CreatedbStmt);
                let template = match option(s.options, c"template") {
                    Some(d) if !(*d).arg.is_null() => pg_sys::defGetString(d) as *const _,
                    _ => c"template1".as_ptr(),
                };
                (database_oid(template), Kind::Copy)
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let s = &*(node as *mut pg_sys::RenameStmt);
                if s.renameType == pg_sys::ObjectType::OBJECT_DATABASE {
                    (database_oid(s.subname), Kind::Rename)
                } else {
                    (None, Kind::Rename)
                }
            }
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let s = &*(node as *mut pg_sys::AlterDatabaseStmt);
                if option(s.options, c"tablespace").is_some() {
                    (database_oid(s.dbname), Kind::Move)
                } else {
                    (None, Kind::Move)
                }
            }
            _ => (None, Kind::Move),
        }
    }
}

fn creates_this_extension(node: *mut pg_sys::Node) -> bool {
    // SAFETY: as in databases_to_free.
    unsafe {
        (*node).type_ == pg_sys::NodeTag::T_CreateExtensionStmt && {
            let s = &*(node as *mut pg_sys::CreateExtensionStmt);
            !s.extname.is_null() && CStr::from_ptr(s.extname) == c"pg_apikey"
        }
    }
}

/// Hold database `db`'s worker off and wait (cancellably) until it has left.
fn hold_off(db: u32) {
    if !regions::pause(db, HOLD_S) {
        return;
    }
    let Some(region) = regions::of_database(db) else {
        return;
    };
    region.wake_worker();
    let mut waited = 0;
    while region.worker_pid().is_some() && waited < WAIT_MS {
        // SAFETY: sleeps 10 ms; then lets a cancel or termination in.
        unsafe { pg_sys::pg_usleep(10_000) };
        pg_sys::check_for_interrupts!();
        waited += 10;
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: Postgres passes a valid PlannedStmt whose utilityStmt is a node.
    let node = unsafe { (*pstmt).utilityStmt };
    let held = if node.is_null() {
        Vec::new()
    } else {
        databases_to_free(node)
    };
    let creates = !node.is_null() && creates_this_extension(node);
    let run = || {
        // SAFETY: the arguments Postgres gave us, passed on unchanged to the previous hook or
        // the standard implementation; its errors unwind through us as they would without us.
        unsafe {
            #[allow(ffi_unwind_calls)]
            match PREV {
                // Another extension's hook, a C function pointer: its errors cross into Rust
                // only through pgrx's guard, as every Postgres function's do.
                Some(prev) => pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    prev(pstmt, query, read_only_tree, context, params, env, dest, qc)
                }),
                None => pg_sys::standard_ProcessUtility(
                    pstmt,
                    query,
                    read_only_tree,
                    context,
                    params,
                    env,
                    dest,
                    qc,
                ),
            }
        }
    };
    if held.is_empty() {
        run();
    } else {
        // The wait is inside: a cancel while waiting lifts the pause as any error does.
        PgTryBuilder::new(|| {
            held.iter().for_each(|&db| hold_off(db));
            run()
        })
        .finally(|| {
            held.iter().for_each(|&db| regions::unpause(db));
            regions::wake_launcher();
        })
        .execute();
    }
    if creates {
        // The region (and so the worker) now rather than at the first verify.
        let _ = regions::mine();
    }
}
