//! The relay queue's plans on SQLite: its hot queries follow their indexes. What every
//! backend does is in the store contract (`contract/relay.rs`).

use rusqlite::Connection;
use rusqlite::types::ToSql;

use super::relay::*;
use super::schema::migrate;
use crate::*;

/// A message key whose order follows `n`, as a UUIDv7's follows time.
fn key(n: u32) -> String {
    format!("msg_{n:032x}")
}

/// The plan SQLite picks for `sql`, one step a line; every parameter is bound to `args`
/// by name, or to 1 when it is positional.
fn plan(conn: &Connection, sql: &str, args: &[(&str, &dyn ToSql)]) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let steps = if args.is_empty() {
        let ones = vec![1; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(ones), |row| {
            row.get::<_, String>(3)
        })
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
    } else {
        stmt.query_map(args, |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
    };
    steps.unwrap().join("\n")
}

/// The queries that run as often as messages arrive, or over a table that only grows, read
/// the index made for them in the order they need: no scan of the table, and no sort but
/// of a page.
#[test]
fn the_relay_queries_follow_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("plan.db")).unwrap();
    migrate(&mut conn).unwrap();
    let pending = "INDEX relay_messages_pending";
    let cases: [(String, &str, &str, bool); 7] = [
        (claim_sql(false), "SEARCH m USING", pending, false),
        // A target in order reads its pending range in key (= delivery) order.
        (
            claim_sql(true),
            "SEARCH m USING",
            "INDEX relay_messages_by_target (relay=? AND target=? AND status=?)",
            false,
        ),
        (
            NEXT_DUE_SQL.into(),
            "SEARCH relay_messages USING",
            pending,
            false,
        ),
        (
            RELEASE_SQL.into(),
            "SCAN relay_messages USING",
            pending,
            false,
        ),
        (
            OLDEST_PENDING_SQL.into(),
            "SCAN relay_messages USING",
            "COVERING INDEX relay_messages_pending",
            false,
        ),
        (
            COUNTS_SQL.into(),
            "SCAN relay_messages USING",
            "COVERING INDEX relay_messages_by_target",
            false,
        ),
        (
            KILL_PENDING_SQL.into(),
            "SEARCH relay_messages USING",
            "INDEX relay_messages_by_target (relay=? AND target=? AND status=?)",
            false,
        ),
    ];
    for (sql, access, index, sorts) in cases {
        let steps = plan(&conn, &sql, &[]);
        assert!(
            steps.starts_with(&format!("{access} {index}")),
            "{sql}\n{steps}"
        );
        assert_eq!(steps.contains("TEMP B-TREE"), sorts, "{sql}\n{steps}");
    }
    let limit = 50;
    let listings = [
        (
            Some("r"),
            Some("a"),
            Some(RelayStatus::Dead),
            "relay_messages_by_target",
        ),
        (Some("r"), Some("a"), None, "relay_messages_by_target"),
        (
            Some("r"),
            None,
            Some(RelayStatus::Dead),
            "relay_messages_by_relay",
        ),
        (Some("r"), None, None, "relay_messages_by_relay"),
    ];
    for (relay, target, status, index) in listings {
        let filter = RelayMessageFilter {
            relay: relay.map(Into::into),
            target: target.map(Into::into),
            status,
            before: Some(key(9)),
            limit,
        };
        let (sql, args) = list_query(&filter, &limit);
        let steps = plan(&conn, &sql, &args);
        let searches: Vec<_> = steps.lines().filter(|s| s.starts_with("SEARCH")).collect();
        assert_eq!(
            searches.len(),
            if status.is_some() { 1 } else { 3 },
            "{filter:?}:\n{steps}"
        );
        for search in searches {
            assert!(
                search.contains(index) && search.contains("status=? AND key<?"),
                "{filter:?}:\n{steps}"
            );
        }
        assert!(
            !steps.contains("SCAN relay_messages"),
            "{filter:?}:\n{steps}"
        );
        // One status is read in order; the pages of three are sorted for their merge (each
        // at most a page long).
        let sorts = steps.matches("TEMP B-TREE").count();
        assert_eq!(
            sorts,
            if status.is_some() { 0 } else { 3 },
            "{filter:?}:\n{steps}"
        );
    }
}
