//! `#[pg_test]` tests: run inside a real backend (`cargo pgrx test pg15 --runas postgres`). Each
//! runs in a transaction the harness rolls back, so commit-time behaviour is tested in pg_regress
//! and the client tests instead.

// The harness calls its functions as "tests".<name>, so the schema must be called tests.
#[pgrx::pg_schema]
#[allow(clippy::module_inception)]
mod tests {
    use pgrx::prelude::*;
    use pgrx::PgSqlErrorCode;

    fn new_key(owner: &str, format: &str) -> String {
        Spi::get_one_with_args(
            "SELECT api_key::text FROM apikey.create($1, 'test key', format => $2)",
            &[owner.into(), format.into()],
        )
        .unwrap()
        .unwrap()
    }

    /// The SQLSTATE a statement fails with, or None if it succeeds.
    fn sqlstate_of(sql: &str, key: &str) -> Option<PgSqlErrorCode> {
        let sql = sql.to_owned();
        let key = key.to_owned();
        PgTryBuilder::new(move || {
            Spi::run_with_args(&sql, &[key.clone().into()]).unwrap();
            None
        })
        .catch_others(|e| match e {
            pg_sys::panic::CaughtError::PostgresError(r)
            | pg_sys::panic::CaughtError::ErrorReport(r)
            | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => Some(r.sql_error_code()),
        })
        .execute()
    }

    fn texts(sql: &str) -> Vec<String> {
        Spi::connect(|c| {
            c.select(sql, None, &[])
                .unwrap()
                .map(|r| r.get::<String>(1).unwrap().unwrap())
                .collect()
        })
    }

    /// The keys table has exactly the declared columns, the update trigger lists exactly the
    /// cached ones, and every policy column is read into the rights a key is judged by.
    #[pg_test]
    fn key_columns_are_declared_once() {
        use crate::key_columns::{Role, KEY_COLUMNS};
        let declared: Vec<&str> = KEY_COLUMNS.iter().map(|c| c.name).collect();
        let table = texts(
            "SELECT attname::text FROM pg_catalog.pg_attribute
              WHERE attrelid = 'apikey.keys'::regclass AND attnum > 0 AND NOT attisdropped
              ORDER BY attnum",
        );
        assert_eq!(table, declared);
        let cached: Vec<&str> = KEY_COLUMNS
            .iter()
            .filter(|c| c.cached)
            .map(|c| c.name)
            .collect();
        let trigger = texts(
            "SELECT a.attname::text FROM pg_catalog.pg_trigger t
               CROSS JOIN LATERAL unnest(t.tgattr::int2[]) AS u(n)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = u.n
              WHERE t.tgname = 'keys_invalidate_key_on_update' ORDER BY a.attnum",
        );
        assert_eq!(trigger, cached);
        for c in KEY_COLUMNS.iter().filter(|c| c.role == Role::Policy) {
            assert!(
                crate::store::TARGET_COLUMNS.contains(c.name),
                "policy column {} is not read into Rights",
                c.name
            );
        }
    }

    #[pg_test]
    fn a_created_key_verifies_and_reports_its_owner() {
        let key = new_key("alice", "cfk");
        assert!(key.starts_with("cfk_") && key.len() == 68);
        let owner: String =
            Spi::get_one_with_args("SELECT owner FROM apikey.verify($1)", &[key.into()])
                .unwrap()
                .unwrap();
        assert_eq!(owner, "alice");
    }

    #[pg_test]
    fn every_preset_format_generates_keys_its_own_input_function_accepts() {
        for format in ["cfk", "ct_live", "ct_test", "cft", "pak"] {
            let key = new_key("formats", format);
            let back: String =
                Spi::get_one_with_args("SELECT $1::apikey.api_key::text", &[key.clone().into()])
                    .unwrap()
                    .unwrap();
            assert_eq!(back, key);
        }
    }

    #[pg_test]
    fn failures_carry_their_documented_sqlstates() {
        use PgSqlErrorCode::*;
        let key = new_key("bob", "cfk");
        assert_eq!(
            sqlstate_of("SELECT $1::apikey.api_key", "cfk_short"),
            Some(ERRCODE_INVALID_TEXT_REPRESENTATION)
        );
        assert_eq!(
            sqlstate_of(
                "SELECT apikey.verify($1)",
                &format!("cfk_{}", "0".repeat(64))
            ),
            Some(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION)
        );
        assert_eq!(sqlstate_of("SELECT apikey.verify($1)", &key), None);
        assert_eq!(
            sqlstate_of("SELECT apikey.create($1, '')", "bob"),
            Some(ERRCODE_INVALID_PARAMETER_VALUE)
        );
        assert_eq!(
            sqlstate_of("SELECT apikey.revoke($1::bigint)", "987654"),
            Some(ERRCODE_NO_DATA_FOUND)
        );
    }

    #[pg_test]
    fn only_the_digest_is_stored() {
        let key = new_key("carol", "ct_live");
        let stored: bool = Spi::get_one_with_args(
            "SELECT digest = sha256(convert_to($1, 'UTF8')) AND strpos(k::text, substr($1, 9)) = 0
               FROM apikey.keys k WHERE owner = 'carol'",
            &[key.into()],
        )
        .unwrap()
        .unwrap();
        assert!(stored);
    }

    #[pg_test]
    fn authenticate_sets_the_identity_for_this_transaction() {
        let key = new_key("dave", "pak");
        assert_eq!(
            Spi::get_one::<String>("SELECT apikey.current_owner()").unwrap(),
            None
        );
        Spi::run_with_args("SELECT apikey.authenticate($1)", &[key.into()]).unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT apikey.current_owner()").unwrap(),
            Some("dave".to_owned())
        );
    }
}
