//! `[store]`: the URL, the password reference and the lease, each problem at its key path.

use std::time::Duration;

use baton_core::SecretRef;

use super::{env, fixture, load_in, message_at, no_env, pairs, set};
use crate::*;

fn store_problems(store: &str) -> Diagnostics {
    let dir = fixture(&[("baton.toml", &format!("workflows = []\n[store]\n{store}"))]);
    load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err()
}

#[test]
fn a_postgres_store_reads_its_password_reference_and_lease() {
    let dir = fixture(&[(
        "baton.toml",
        r#"
[store]
url = "postgres://baton@db.example.com:5433/baton?sslmode=verify-full"
password = { env = "PGPASS" }
lease = "1m"
"#,
    )]);
    let loaded = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap();
    let store = &loaded.gateway.store;
    assert!(store.is_postgres());
    assert_eq!(store.password, Some(SecretRef::Env("PGPASS".into())));
    assert_eq!(store.lease(), Duration::from_secs(60));
    assert_eq!(
        loaded.gateway.store_url(),
        "postgres://baton@db.example.com:5433/baton?sslmode=verify-full"
    );
    // The password's variable is a secret: commands never see it.
    assert!(loaded.secret_env_names().contains("PGPASS"));
}

#[test]
fn the_lease_defaults_to_thirty_seconds() {
    let store = StoreConfig::default();
    assert!(!store.is_postgres());
    assert_eq!(store.lease(), Duration::from_secs(30));
}

#[test]
fn a_password_in_the_url_and_as_a_reference_is_refused() {
    let err = store_problems(
        "url = \"postgres://baton:hunter2@db/baton\"\npassword = { env = \"PGPASS\" }\n",
    );
    assert_eq!(
        pairs(std::path::Path::new("/"), &err)
            .into_iter()
            .map(|(_, path)| path)
            .collect::<Vec<_>>(),
        ["store.password"]
    );
    let message = message_at(&err, "store.password");
    assert!(message.contains("one place only"), "{message}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_literal_password_is_refused() {
    let err = store_problems("url = \"postgres://baton@db/baton\"\npassword = \"hunter2\"\n");
    assert!(
        message_at(&err, "store.password").contains("literal secret"),
        "{err}"
    );
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn bad_urls_leases_and_modes_are_reported_at_their_keys() {
    let err = store_problems("url = \"mysql://root:hunter2@db/baton\"\nlease = \"2s\"\n");
    let dir = std::path::Path::new("/");
    assert_eq!(
        pairs(dir, &err)
            .into_iter()
            .map(|(_, path)| path)
            .collect::<Vec<_>>(),
        ["store.lease", "store.url"]
    );
    assert!(message_at(&err, "store.url").contains("a `mysql://` URL is not a store URL"));
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert_eq!(
        message_at(&err, "store.lease"),
        "`2s` is out of range: expected 5s to 1h"
    );

    let err = store_problems("url = \"postgres://baton@db/baton?sslmode=allow\"\nlease = \"2h\"\n");
    assert!(message_at(&err, "store.url").contains("`sslmode=allow` is not a TLS mode"));
    assert!(message_at(&err, "store.lease").contains("`2h` is out of range"));

    let err = store_problems("url = \"postgres:///baton\"\n");
    assert!(message_at(&err, "store.url").contains("names no host"));

    let err = store_problems("url = \"sqlite://baton.db\"\npassword = { env = \"P\" }\n");
    assert!(message_at(&err, "store.password").contains("SQLite store has no password"));

    let err = store_problems("url = \"sqlite://baton.db\"\npool = 3\n");
    assert!(
        message_at(&err, "store.pool").contains("unknown key"),
        "{err}"
    );
}

#[test]
fn the_store_can_come_from_the_environment() {
    let dir = fixture(&[("baton.toml", "workflows = []\n")]);
    let vars = env(&[
        ("BATON_STORE__URL", "postgres://baton@db/baton"),
        ("BATON_STORE__LEASE", "1s"),
    ]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], vars).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[("baton.toml", "store.lease")])
    );
    assert!(message_at(&err, "store.lease").ends_with("(set by BATON_STORE__LEASE)"));
}
