//! The PostgreSQL store against the machine's server, a fresh database per test: the
//! store's suite, then what only a shared store has (replicas, their chains).

use sqlx::Connection;

use super::*;
use crate::suite::{assert_intact, requests, stored};

/// The server the tests use: `KEYWAY_TEST_POSTGRES`, else the machine's, as
/// `postgres` (trust auth on loopback).
fn server() -> String {
    std::env::var("KEYWAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A database of a test's own, dropped at its end.
struct Fresh {
    name: String,
}

impl Fresh {
    async fn new() -> Self {
        let admin = format!("{}/postgres", server());
        let mut c = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable at {admin} ({e}); start it with: \
                 pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start \
                 (scripts/test does)"
                )
            });
        let name = format!("keyway_test_{}", hex::encode(rand::random::<[u8; 6]>()));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .unwrap();
        Self { name }
    }

    fn url(&self) -> String {
        format!("{}/{}", server(), self.name)
    }

    async fn store(&self, replica: &str) -> PgStore {
        PgStore::connect(&self.url(), replica).await.unwrap()
    }

    async fn drop(self) {
        let admin = format!("{}/postgres", server());
        if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut c)
            .await;
        }
    }
}

#[tokio::test]
async fn tokens_round_trip_and_revoke_keeps_the_first_time() {
    let db = Fresh::new().await;
    crate::suite::tokens_round_trip_and_revoke_keeps_the_first_time(&db.store("r1").await).await;
    db.drop().await;
}

#[tokio::test]
async fn secrets_and_audit() {
    let db = Fresh::new().await;
    crate::suite::secrets_and_audit(&db.store("r1").await).await;
    db.drop().await;
}

#[tokio::test]
async fn a_large_batch_is_stored_in_order_on_an_intact_chain() {
    let db = Fresh::new().await;
    crate::suite::a_large_batch_is_stored_in_order_on_an_intact_chain(&db.store("r1").await).await;
    db.drop().await;
}

#[tokio::test]
async fn awkward_text_is_stored_exactly() {
    let db = Fresh::new().await;
    crate::suite::awkward_text_is_stored_exactly(&db.store("r1").await).await;
    db.drop().await;
}

#[tokio::test]
async fn a_change_that_fails_leaves_neither_its_row_nor_its_event() {
    let db = Fresh::new().await;
    crate::suite::a_change_that_fails_leaves_neither_its_row_nor_its_event(&db.store("r1").await)
        .await;
    db.drop().await;
}

#[tokio::test]
async fn an_access_request_changes_only_over_the_version_it_read() {
    let db = Fresh::new().await;
    crate::suite::an_access_request_changes_only_over_the_version_it_read(&db.store("r1").await)
        .await;
    db.drop().await;
}

#[tokio::test]
async fn replicas_keep_a_chain_each_and_one_name_runs_once() {
    let db = Fresh::new().await;
    let (a, b) = (db.store("gw-1").await, db.store("gw-2").await);
    let key = [5; 32];
    a.set_audit_key(key).await.unwrap();
    b.set_audit_key(key).await.unwrap();
    let events = requests(40);
    // Interleaved appends, each replica on its own chain.
    for pair in events.chunks(2) {
        a.append_audit(&pair[..1]).await.unwrap();
        b.append_audit(&pair[1..]).await.unwrap();
    }
    assert_eq!(stored(&a).await, events, "read back merged, in order");
    // Each chain is its own, numbered 1.. without a gap.
    let chains: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT replica, MIN(rseq), MAX(rseq), COUNT(*) FROM audit_events GROUP BY replica ORDER BY replica",
    )
    .fetch_all(&a.pool)
    .await
    .unwrap();
    assert_eq!(
        chains,
        vec![("gw-1".into(), 1, 20, 20), ("gw-2".into(), 1, 20, 20)]
    );
    assert_intact(&a, key, 40).await;
    assert_intact(&b, key, 40).await;
    // A second process under a taken name is refused: it would fork the chain.
    let again = PgStore::connect(&db.url(), "gw-1").await;
    assert!(
        matches!(&again, Err(StoreError::Damaged(m)) if m.contains("already running")),
        "{again:?}"
    );
    // Checkpoints are per replica; a restarted replica goes on from its head.
    assert!(b.checkpoint_audit(100).await.unwrap().is_some());
    b.close().await.unwrap();
    let b = db.store("gw-2").await;
    b.set_audit_key(key).await.unwrap();
    b.append_audit(&requests(1)).await.unwrap();
    assert_intact(&a, key, 41).await;
    // An edit in one replica's chain is found, and named.
    sqlx::query("UPDATE audit_events SET reason = 'edited' WHERE replica = 'gw-2' AND rseq = 3")
        .execute(&a.pool)
        .await
        .unwrap();
    let verdict = a.verify_audit(&key, &[]).await.unwrap();
    assert!(
        matches!(&verdict, crate::Verdict::Broken { seq: 3, what, .. } if what == "altered (replica gw-2)"),
        "{verdict:?}"
    );
    // A row added by hand, without a hash, is not taken for one from before the
    // chain: every event on a shared store is chained.
    sqlx::query("UPDATE audit_events SET reason = NULL WHERE replica = 'gw-2' AND rseq = 3")
        .execute(&a.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO audit_events (replica, rseq, at, kind) VALUES ('gw-3', 1, 1, 'token.issued')",
    )
    .execute(&a.pool)
    .await
    .unwrap();
    let verdict = a.verify_audit(&key, &[]).await.unwrap();
    assert!(
        matches!(&verdict, crate::Verdict::Broken { seq: 1, what, .. } if what == "altered (replica gw-3)"),
        "{verdict:?}"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn revocations_and_one_use_values_hold_across_replicas() {
    let db = Fresh::new().await;
    let (a, b) = (db.store("gw-1").await, db.store("gw-2").await);
    let pepper = keyway_core::Pepper::new(&secrecy::SecretBox::new(Box::new([1; 32])));
    let t = keyway_core::IssuedToken::generate(keyway_core::TokenKind::Access);
    let rec = TokenRecord {
        id: t.id().into(),
        kind: keyway_core::TokenKind::Access,
        principal: "alice".into(),
        grant: Some(keyway_core::Grant::new("billing", &[], &[]).unwrap()),
        hash: t.hash(&pepper),
        created_at: 1,
        expires_at: 100,
        revoked_at: None,
        last_used_at: None,
        parent_id: None,
        scope: None,
        cert_thumbprint: None,
        origin: None,
    };
    let spend = Spend {
        key: "jwt:x".into(),
        until: 1_000,
        now: 1,
    };
    a.insert_token_spending(&rec, &[], &spend).await.unwrap();
    let other = TokenRecord {
        id: "other".into(),
        ..rec.clone()
    };
    assert!(matches!(
        b.insert_token_spending(&other, &[], &spend).await,
        Err(StoreError::Spent)
    ));
    let event = |t: &RevokedToken| AuditEvent {
        kind: "token.revoked".into(),
        token_id: Some(t.id.clone()),
        ..AuditEvent::default()
    };
    let ids = [rec.id.clone()];
    let (first, made) = b.revoke_tokens(&ids, 10, &event).await.unwrap();
    assert!(first[0].fresh && made.len() == 1);
    let (second, made) = a.revoke_tokens(&ids, 20, &event).await.unwrap();
    assert!(
        !second[0].fresh && made.is_empty(),
        "revoked once, by one replica"
    );
    assert_eq!(
        a.token(&rec.id).await.unwrap().unwrap().revoked_at,
        Some(10)
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn the_first_key_fingerprint_stands() {
    let db = Fresh::new().await;
    crate::suite::the_first_key_fingerprint_stands(&db.store("r1").await).await;
    db.drop().await;
}

#[tokio::test]
async fn the_last_applied_config_stands_and_reaches_the_other_replicas() {
    let db = Fresh::new().await;
    let (a, b) = (db.store("gw-1").await, db.store("gw-2").await);
    let head = b.change_head().await.unwrap();
    crate::suite::the_last_applied_config_stands(&a).await;
    let changes = b.changes_since(head, 10).await.unwrap();
    let configs: Vec<_> = changes
        .iter()
        .map(|c| (c.replica.as_str(), c.kind, c.key.as_str()))
        .collect();
    assert_eq!(
        configs,
        [
            ("gw-1", ChangeKind::Config, "aa"),
            ("gw-1", ChangeKind::Config, "bb")
        ]
    );
    assert_eq!(b.applied_config().await.unwrap().unwrap().sha256, "bb");
    db.drop().await;
}

#[tokio::test]
async fn a_block_keeps_its_latest_end_and_reaches_the_other_replicas() {
    let db = Fresh::new().await;
    let (a, b) = (db.store("gw-1").await, db.store("gw-2").await);
    let head = b.change_head().await.unwrap();
    crate::suite::a_block_keeps_its_latest_end(&a).await;
    let blocked: Vec<_> = b
        .changes_since(head, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.kind == ChangeKind::Block)
        .map(|c| c.key)
        .collect();
    assert_eq!(blocked, ["192.0.2.7", "192.0.2.7", "2001:db8::"]);
    db.drop().await;
}

#[tokio::test]
async fn a_tool_pin_reaches_the_other_replicas() {
    let db = Fresh::new().await;
    let (a, b) = (db.store("gw-1").await, db.store("gw-2").await);
    let head = b.change_head().await.unwrap();
    crate::suite::a_tool_pin_is_replaced_whole_with_its_event(&a).await;
    let pinned: Vec<_> = b
        .changes_since(head, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.kind == ChangeKind::ToolPin)
        .map(|c| c.key)
        .collect();
    assert_eq!(pinned, ["tickets-mcp/get_ticket", "tickets-mcp/get_ticket"]);
    assert_eq!(b.tool_pins().await.unwrap().len(), 1);
    db.drop().await;
}

#[tokio::test]
async fn a_session_to_end_reaches_the_other_replicas_with_its_event() {
    let db = Fresh::new().await;
    let (a, b) = (db.store("gw-1").await, db.store("gw-2").await);
    let head = b.change_head().await.unwrap();
    let ev = AuditEvent {
        at: 7,
        kind: "session.terminated".into(),
        detail: serde_json::json!({ "session": 3, "replica": "gw-2" }),
        ..Default::default()
    };
    a.end_session("gw-2:3", std::slice::from_ref(&ev))
        .await
        .unwrap();
    let changes: Vec<_> = b
        .changes_since(head, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.replica, c.kind, c.key))
        .collect();
    assert_eq!(
        changes,
        [("gw-1".to_owned(), ChangeKind::Session, "gw-2:3".to_owned())]
    );
    let logged = b
        .audit_events(&crate::AuditQuery {
            kind: Some("session.terminated".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].event, ev);
    db.drop().await;
}
