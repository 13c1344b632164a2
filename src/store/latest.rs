//! Reads under the latest snapshot.

use super::*;

/// One row of [`latest`], read by column number (from 1).
pub struct LatestRow {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl LatestRow {
    pub fn get<V: FromDatum>(&self, column: i32) -> Option<V> {
        // SAFETY: the tuple and descriptor belong to the SPI result that `latest` holds while
        // it calls the row closure; FromDatum copies what it returns out of SPI memory; the
        // column's own type OID is passed, as FromDatum expects.
        unsafe {
            let mut isnull = false;
            let d = pg_sys::SPI_getbinval(self.tuple, self.desc, column, &mut isnull);
            let typoid = pg_sys::SPI_gettypeid(self.desc, column);
            V::from_polymorphic_datum(d, isnull, typoid)
        }
    }
}

/// The rows of a read-only query under the *latest* snapshot, not the transaction's. What
/// decides authority or money now (a balance, the administrators, owner limits, waiting
/// imports; several are then cached per backend) must not be read as a REPEATABLE READ
/// transaction saw it when it began: a transaction kept open would otherwise keep spending a
/// balance already spent, or keep rights already taken away. Read-only: no transaction id.
/// `args` are (type OID, by-value datum) pairs.
pub fn latest<T>(
    query: &std::ffi::CStr,
    args: &[(pg_sys::Oid, pg_sys::Datum)],
    mut row: impl FnMut(&LatestRow) -> T,
) -> Vec<T> {
    spi(Spi::connect(|_| {
        // SAFETY: runs inside the SPI connection Spi::connect opened. The plan's parameter
        // types and datums come from `args` (by-value datums, all not null); the snapshot is
        // registered for the execution and unregistered after; the result's tuples are read
        // (and copied out by `row`) before the plan is freed. An error raised inside releases
        // the plan, snapshot and tuple table with the SPI context and resource owner.
        unsafe {
            let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
            let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.1).collect();
            let nulls: Vec<std::ffi::c_char> = vec![b' ' as std::ffi::c_char; args.len() + 1];
            let plan = pg_sys::SPI_prepare(query.as_ptr(), args.len() as i32, types.as_mut_ptr());
            if plan.is_null() {
                internal("a read under the latest snapshot did not plan");
            }
            let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
            let rc = pg_sys::SPI_execute_snapshot(
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                snapshot,
                std::ptr::null_mut(),
                true,
                false,
                0,
            );
            pg_sys::UnregisterSnapshot(snapshot);
            let table = pg_sys::SPI_tuptable;
            let mut out = Vec::new();
            if rc == pg_sys::SPI_OK_SELECT as i32 && !table.is_null() {
                for i in 0..pg_sys::SPI_processed as usize {
                    out.push(row(&LatestRow {
                        tuple: *(*table).vals.add(i),
                        desc: (*table).tupdesc,
                    }));
                }
            }
            pg_sys::SPI_freeplan(plan);
            Ok::<_, pgrx::spi::SpiError>(out)
        }
    }))
}
