//! A standby worker's connection to its primary, through PostgreSQL's own libpq wrapper
//! (`libpqwalreceiver`, the module the WAL receiver and logical replication workers use): no
//! library beyond the server's own, and its waits honour this process' latch and interrupts.
//!
//! From PostgreSQL 17 the connection is a plain one (as the slot sync worker's); on 15 and 16
//! libpqwalreceiver makes only replication connections, so it is a database-connected one
//! (`replication=database`, as a logical replication subscriber's), which runs plain SQL too.
//! Either way `apikey.lease_exchange` wants the REPLICATION attribute (or superuser), and the
//! role needs a `pg_hba.conf` line for the database.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::PgMemoryContexts;

pub struct Link {
    conn: *mut pg_sys::WalReceiverConn,
}

fn functions() -> *mut pg_sys::WalReceiverFunctionsType {
    // SAFETY: load_file runs the module's _PG_init, which sets WalReceiverFunctions; reading
    // the pointer afterwards is how the server's own callers do it.
    unsafe {
        if pg_sys::WalReceiverFunctions.is_null() {
            pg_sys::load_file(c"libpqwalreceiver".as_ptr(), false);
        }
        pg_sys::WalReceiverFunctions
    }
}

fn message(err: *const std::ffi::c_char) -> String {
    if err.is_null() {
        return "unknown error".into();
    }
    // SAFETY: libpqwalreceiver's error strings are NUL-terminated (palloc'd copies).
    let s = unsafe { CStr::from_ptr(err) }.to_string_lossy();
    // libpq's messages end in a newline; keep the log line one line.
    s.trim().replace('\n', " ")
}

/// libpq quotes a piece of the connection string when it cannot parse it, and that piece may be
/// part of a password: such messages are replaced by one that names no value.
fn without_conninfo_values(m: String) -> String {
    const PARSE_ERRORS: [&str; 4] = [
        "missing \"=\"",
        "unterminated quoted string",
        "invalid connection option",
        "invalid URI",
    ];
    if PARSE_ERRORS.iter().any(|p| m.contains(p)) {
        "the connection string is not valid (keyword = value pairs)".into()
    } else {
        m
    }
}

impl Link {
    /// Connect with `conninfo` (keyword = value pairs). The connection lives in
    /// TopMemoryContext, across this worker's transactions; an ERROR raised while connecting is
    /// returned as an error, with the memory context this was called in.
    pub fn connect(conninfo: &str) -> Result<Link, String> {
        let conninfo =
            CString::new(conninfo).map_err(|_| "the conninfo holds a NUL".to_string())?;
        let f = functions();
        // SAFETY: reads the current memory context, restored below however the call ends.
        let caller = unsafe { pg_sys::CurrentMemoryContext };
        let run = || {
            // SAFETY: f is the module's table of functions (non-null once loaded); the strings
            // outlive the call; the connection is allocated in TopMemoryContext so it survives
            // the transaction this may run in. Each major's signature is spelled out below.
            unsafe {
                let connect = (*f)
                    .walrcv_connect
                    .ok_or("libpqwalreceiver has no connect")?;
                let mut err: *mut std::ffi::c_char = std::ptr::null_mut();
                let err_ptr = &raw mut err;
                let app = c"pg_apikey lease".as_ptr();
                // A C function pointer: its errors cross into Rust only through pgrx's guard.
                #[allow(ffi_unwind_calls)]
                let conn = PgMemoryContexts::TopMemoryContext.switch_to(|_| {
                    pg_sys::ffi::pg_guard_ffi_boundary(|| {
                        #[cfg(feature = "pg15")]
                        {
                            connect(conninfo.as_ptr(), true, app, err_ptr)
                        }
                        #[cfg(feature = "pg16")]
                        {
                            connect(conninfo.as_ptr(), true, false, app, err_ptr)
                        }
                        #[cfg(any(feature = "pg17", feature = "pg18"))]
                        {
                            // Not a replication connection: libpqwalreceiver would replace the
                            // conninfo's `options` (the worker's session settings) with its own.
                            connect(conninfo.as_ptr(), false, false, false, app, err_ptr)
                        }
                    })
                });
                if conn.is_null() {
                    let m = message(err);
                    if !err.is_null() {
                        pg_sys::pfree(err.cast());
                    }
                    return Err(without_conninfo_values(m));
                }
                Ok(Link { conn })
            }
        };
        let out = super::caught(run)
            .map_err(without_conninfo_values)
            .and_then(|r| r);
        // SAFETY: the context this was called in, still alive (this function allocates none); an
        // ERROR while connecting leaves TopMemoryContext current.
        unsafe { pg_sys::CurrentMemoryContext = caller };
        out
    }

    /// Run `sql` (commands that return no rows, such as SET) on the primary.
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    pub fn command(&mut self, sql: &str) -> Result<(), String> {
        let sql = CString::new(sql).map_err(|_| "the command holds a NUL".to_string())?;
        let f = functions();
        // SAFETY: self.conn is a live connection made by `connect`; the result is allocated in
        // the current memory context and only its status and message are read.
        unsafe {
            let exec = (*f).walrcv_exec.ok_or("libpqwalreceiver has no exec")?;
            #[allow(ffi_unwind_calls)]
            let res = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                exec(self.conn, sql.as_ptr(), 0, std::ptr::null())
            });
            if res.is_null() {
                return Err("no result".into());
            }
            if (*res).status != pg_sys::WalRcvExecStatus::WALRCV_OK_COMMAND {
                return Err(message((*res).err));
            }
            Ok(())
        }
    }

    /// Run `sql` on the primary; the first column of its first row as text. Must run in a
    /// transaction (the result's text is read with the catalog's input function).
    pub fn query_text(&mut self, sql: &str) -> Result<Option<String>, String> {
        let sql = CString::new(sql).map_err(|_| "the query holds a NUL".to_string())?;
        let f = functions();
        let types = [pg_sys::TEXTOID];
        // SAFETY: self.conn is a live connection made by `connect`; the result and the slot are
        // allocated in the current (transaction) memory context and read before it ends; the
        // slot is made from the result's own tuple descriptor (one text column).
        unsafe {
            let exec = (*f).walrcv_exec.ok_or("libpqwalreceiver has no exec")?;
            #[allow(ffi_unwind_calls)]
            let res = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                exec(self.conn, sql.as_ptr(), 1, types.as_ptr())
            });
            if res.is_null() {
                return Err("no result".into());
            }
            if (*res).status != pg_sys::WalRcvExecStatus::WALRCV_OK_TUPLES {
                return Err(message((*res).err));
            }
            let slot = pg_sys::MakeSingleTupleTableSlot(
                (*res).tupledesc,
                &raw const pg_sys::TTSOpsMinimalTuple,
            );
            let mut out = None;
            if pg_sys::tuplestore_gettupleslot((*res).tuplestore, true, false, slot) {
                pg_sys::slot_getsomeattrs_int(slot, 1);
                if !*(*slot).tts_isnull {
                    let datum = *(*slot).tts_values;
                    let text = pg_sys::text_to_cstring(datum.cast_mut_ptr());
                    out = Some(CStr::from_ptr(text).to_string_lossy().into_owned());
                }
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            Ok(out)
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let f = functions();
        // SAFETY: closes the connection `connect` made, once (Drop runs once).
        unsafe {
            if let Some(disconnect) = (*f).walrcv_disconnect {
                #[allow(ffi_unwind_calls)]
                pg_sys::ffi::pg_guard_ffi_boundary(|| disconnect(self.conn));
            }
        }
    }
}
