//! The SQLite store against a real database file: tokens, secrets, agents, the audit
//! chain and its checkpoints.

use super::*;
use crate::suite::{assert_intact, requests, stored};

#[tokio::test]
async fn tokens_round_trip_and_revoke_keeps_the_first_time() {
    crate::suite::tokens_round_trip_and_revoke_keeps_the_first_time(
        &SqliteStore::in_memory().await.unwrap(),
    )
    .await;
}

/// The start-up read pages through the tokens: every one comes once, whatever the
/// page size, with all it was written with.
#[tokio::test]
async fn every_token_is_read_once_page_by_page() {
    let store = SqliteStore::in_memory().await.unwrap();
    let mut written = Vec::new();
    for i in 0..7 {
        let t = keyway_core::IssuedToken::generate(keyway_core::TokenKind::Access);
        let rec = TokenRecord {
            id: t.id().into(),
            kind: keyway_core::TokenKind::Access,
            principal: format!("p{i}"),
            grant: Some(keyway_core::Grant::new("billing", &[], &[]).unwrap()),
            hash: keyway_core::TokenHash::from_slice(&[i as u8; 32]).unwrap(),
            created_at: i,
            expires_at: 100 + i,
            revoked_at: (i % 2 == 0).then_some(50),
            last_used_at: Some(i),
            parent_id: None,
            scope: None,
            cert_thumbprint: None,
            origin: None,
        };
        store.insert_token(&rec, &[]).await.unwrap();
        written.push(rec);
    }
    for page in [1, 2, 3, 7, 100] {
        let mut read = Vec::new();
        tokens::each_paged(&store.pool, page, &mut |t| read.push(t))
            .await
            .unwrap();
        read.sort_by_key(|t| t.created_at);
        assert_eq!(read, written, "pages of {page}");
    }
}

#[tokio::test]
async fn secrets_and_audit() {
    crate::suite::secrets_and_audit(&SqliteStore::in_memory().await.unwrap()).await;
}

#[tokio::test]
async fn a_large_batch_is_stored_in_order_on_an_intact_chain() {
    crate::suite::a_large_batch_is_stored_in_order_on_an_intact_chain(
        &SqliteStore::in_memory().await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn awkward_text_is_stored_exactly() {
    crate::suite::awkward_text_is_stored_exactly(&SqliteStore::in_memory().await.unwrap()).await;
}

#[tokio::test]
async fn a_failed_batch_leaves_the_chain_as_it_was_and_its_retry_fits() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("k.db")).await.unwrap();
    let key = [9; 32];
    store.set_audit_key(key).await.unwrap();
    let events = requests(300);
    store.append_audit(&events[..10]).await.unwrap();
    // The second statement of the next batch fails: the first was written in
    // the same transaction, and must go with it.
    sqlx::query(
        "CREATE TRIGGER fail BEFORE INSERT ON audit_events WHEN NEW.at = 290 \
         BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    .execute(&store.pool)
    .await
    .unwrap();
    assert!(store.append_audit(&events[10..]).await.is_err());
    assert_eq!(stored(&store).await, events[..10]);
    sqlx::query("DROP TRIGGER fail")
        .execute(&store.pool)
        .await
        .unwrap();
    // The writer retries the same events: they chain on from the last written.
    store.append_audit(&events[10..]).await.unwrap();
    assert_eq!(stored(&store).await, events);
    assert_intact(&store, key, 300).await;
}

#[tokio::test]
async fn a_change_that_fails_leaves_neither_its_row_nor_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("k.db")).await.unwrap();
    crate::suite::a_change_that_fails_leaves_neither_its_row_nor_its_event(&store).await;
}

#[tokio::test]
async fn an_access_request_changes_only_over_the_version_it_read() {
    crate::suite::an_access_request_changes_only_over_the_version_it_read(
        &SqliteStore::in_memory().await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn the_first_key_fingerprint_stands() {
    crate::suite::the_first_key_fingerprint_stands(&SqliteStore::in_memory().await.unwrap()).await;
}

#[tokio::test]
async fn the_last_applied_config_stands() {
    crate::suite::the_last_applied_config_stands(&SqliteStore::in_memory().await.unwrap()).await;
}

#[tokio::test]
async fn a_block_keeps_its_latest_end() {
    crate::suite::a_block_keeps_its_latest_end(&SqliteStore::in_memory().await.unwrap()).await;
}

#[tokio::test]
async fn a_tool_pin_is_replaced_whole_with_its_event() {
    crate::suite::a_tool_pin_is_replaced_whole_with_its_event(
        &SqliteStore::in_memory().await.unwrap(),
    )
    .await;
}
