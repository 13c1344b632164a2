//! `#[pg_test]` tests: run inside a real backend (`cargo pgrx test pg15 --runas postgres`). Each
//! runs in a transaction the harness rolls back, so commit-time behaviour is tested in pg_regress
//! and the client tests instead.

use pgrx::prelude::*;

#[pg_test]
fn a_created_key_verifies_and_its_owner_is_reported() {
    let key: String = Spi::get_one("SELECT api_key::text FROM apikey.create('alice', 'ci')")
        .unwrap()
        .unwrap();
    assert!(key.starts_with("cfk_") && key.len() == 68);
    let owner: String = Spi::get_one_with_args(
        "SELECT owner FROM apikey.verify($1::text::apikey.api_key)",
        &[key.into()],
    )
    .unwrap()
    .unwrap();
    assert_eq!(owner, "alice");
}
