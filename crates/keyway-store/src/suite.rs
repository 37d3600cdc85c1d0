//! The store's suite, run against every backend (`sqlite/tests.rs`,
//! `postgres/tests.rs`): what callers rely on, whichever store they have.

use keyway_core::{Grant, IssuedToken, Pepper, TokenKind};
use secrecy::{SecretBox, SecretString};

use crate::*;

/// Every audit event in the store, oldest first.
pub(crate) async fn stored(store: &dyn Store) -> Vec<AuditEvent> {
    let got = store
        .audit_events(&AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    got.into_iter().map(|e| e.event).collect()
}

/// `n` request events, the i-th at time i with `{"n": i}` as its detail.
pub(crate) fn requests(n: i64) -> Vec<AuditEvent> {
    (0..n)
        .map(|i| AuditEvent {
            at: i,
            kind: "request".into(),
            detail: serde_json::json!({ "n": i }),
            ..Default::default()
        })
        .collect()
}

/// Asserts the chain under `key` is intact with `n` events.
pub(crate) async fn assert_intact(store: &dyn Store, key: crate::ChainKey, n: u64) {
    let verdict = store.verify_audit(&key, &[]).await.unwrap();
    assert!(
        matches!(verdict, crate::Verdict::Intact { events, .. } if events == n),
        "{verdict:?}"
    );
}

pub(crate) async fn tokens_round_trip_and_revoke_keeps_the_first_time(store: &dyn Store) {
    let pepper = Pepper::new(&SecretBox::new(Box::new([1; 32])));
    let t = IssuedToken::generate(TokenKind::Access);
    let rec = TokenRecord {
        id: t.id().into(),
        kind: TokenKind::Access,
        principal: "alice".into(),
        grant: Some(Grant::new("billing", &["GET".into()], &["/invoices/".into()]).unwrap()),
        hash: t.hash(&pepper),
        created_at: 10,
        expires_at: 20,
        revoked_at: None,
        last_used_at: None,
        parent_id: Some("parent".into()),
        scope: None,
        cert_thumbprint: Some("x5t".into()),
        origin: None,
    };
    store.insert_token(&rec, &[]).await.unwrap();
    assert_eq!(store.tokens().await.unwrap(), vec![rec.clone()]);
    // The start-up read: every column as written.
    let mut each = Vec::new();
    store.each_token(&mut |t| each.push(t)).await.unwrap();
    assert_eq!(each, vec![rec.clone()]);
    let revoked = |t: &RevokedToken| AuditEvent {
        kind: "token.revoked".into(),
        token_id: Some(t.id.clone()),
        principal: Some(t.principal.clone()),
        service: t.service.clone(),
        ..AuditEvent::default()
    };
    let ids = [t.id().to_owned(), "nope".to_owned()];
    let (r, written) = store.revoke_tokens(&ids, 15, &revoked).await.unwrap();
    assert_eq!(
        (r.len(), written.len()),
        (1, 1),
        "the unknown id is not found"
    );
    assert!(r[0].fresh);
    assert_eq!(
        (
            written[0].principal.as_deref(),
            written[0].service.as_deref()
        ),
        (
            Some(rec.principal.as_str()),
            rec.grant.as_ref().map(|g| g.service.as_str())
        ),
        "the event names the token's principal and service"
    );
    let stored = store.token(t.id()).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at, Some(15));
    let (r, written) = store.revoke_tokens(&ids, 18, &revoked).await.unwrap();
    assert_eq!((r.len(), r[0].fresh, written.len()), (1, false, 0));
    let stored = store.token(t.id()).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at, Some(15), "an earlier revocation stands");
    assert_eq!(store.token("nope").await.unwrap(), None);
    let events = store
        .audit_events(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        events.len(),
        1,
        "one event, for the call that revoked it: {events:?}"
    );
    assert_eq!(events[0].event.token_id.as_deref(), Some(t.id()));
    // A token bought with a one-use value: the value is spent with it, once.
    let spend = |key: &str, until, now| Spend {
        key: key.into(),
        until,
        now,
    };
    let bought = |id: &str| TokenRecord {
        id: id.into(),
        ..rec.clone()
    };
    store
        .insert_token_spending(&bought("b1"), &[], &spend("jwt:1", 100, 10))
        .await
        .unwrap();
    let again = store
        .insert_token_spending(&bought("b2"), &[], &spend("jwt:1", 100, 50))
        .await;
    assert!(matches!(again, Err(StoreError::Spent)), "{again:?}");
    assert!(
        !store.tokens().await.unwrap().iter().any(|t| t.id == "b2"),
        "nothing is written for a spent value"
    );
    // Past its `until`, it is forgotten.
    store
        .insert_token_spending(&bought("b3"), &[], &spend("jwt:1", 300, 101))
        .await
        .unwrap();
    store.touch_tokens(&[(t.id().into(), 17)]).await.unwrap();
    assert_eq!(
        store.token(t.id()).await.unwrap().unwrap().last_used_at,
        Some(17)
    );
    let r = store
        .shorten_expiry(t.id(), 30, &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.expires_at, 20, "never later");
    let r = store
        .shorten_expiry(t.id(), 12, &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.expires_at, 12);
}

pub(crate) async fn secrets_and_audit(store: &dyn Store) {
    let sealer = Sealer::new(&SecretBox::new(Box::new([2; 32])));
    let sealed = sealer.seal("k", &SecretString::from("v"));
    store.put_secret("k", &sealed, 1, &[]).await.unwrap();
    store.put_secret("k", &sealed, 2, &[]).await.unwrap();
    assert_eq!(
        store.secrets().await.unwrap(),
        vec![("k".to_owned(), sealed)]
    );

    let ev = AuditEvent {
        at: 5,
        kind: "request".into(),
        decision: Some("deny".into()),
        reason: Some("no_token".into()),
        detail: serde_json::json!({"path": "/x"}),
        ..Default::default()
    };
    store.append_audit(&[ev.clone(), ev.clone()]).await.unwrap();
    let got = store
        .audit_events(&AuditQuery {
            after_seq: 1,
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].seq, &got[0].event), (2, &ev));
    // Searched by why it was refused.
    for (reason, n) in [("no_token", 2), ("revoked", 0)] {
        let got = store
            .audit_events(&AuditQuery {
                reason: Some(reason.into()),
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(got.len(), n, "{reason}");
    }
}

pub(crate) async fn a_large_batch_is_stored_in_order_on_an_intact_chain(store: &dyn Store) {
    let key = [7; 32];
    store.set_audit_key(key).await.unwrap();
    let events = requests(301);
    store.append_audit(&events[..1]).await.unwrap();
    store.append_audit(&events[1..]).await.unwrap();
    assert_eq!(stored(store).await, events);
    assert_intact(store, key, 301).await;
}

pub(crate) async fn awkward_text_is_stored_exactly(store: &dyn Store) {
    store.set_audit_key([3; 32]).await.unwrap();
    let ev = AuditEvent {
        at: i64::MAX,
        kind: "request".into(),
        decision: None,
        reason: Some("quote \" backslash \\ tab \t".into()),
        principal: Some("nul \0 inside, é, 雪, 🦀".into()),
        service: Some("123".into()),
        token_id: Some(String::new()),
        source: Some("::1".into()),
        detail: serde_json::json!({ "path": "/a\u{0}b", "n": 1.5, "list": [null, true] }),
        http: None,
        statement: None,
    };
    store.append_audit(std::slice::from_ref(&ev)).await.unwrap();
    assert_eq!(stored(store).await, [ev]);
    assert_intact(store, [3; 32], 1).await;
}

pub(crate) async fn a_change_that_fails_leaves_neither_its_row_nor_its_event(store: &dyn Store) {
    let key = [7; 32];
    store.set_audit_key(key).await.unwrap();
    let pepper = Pepper::new(&SecretBox::new(Box::new([1; 32])));
    let t = IssuedToken::generate(TokenKind::Admin);
    let rec = TokenRecord {
        id: t.id().into(),
        kind: TokenKind::Admin,
        principal: "admin".into(),
        grant: None,
        hash: t.hash(&pepper),
        created_at: 1,
        expires_at: 2,
        revoked_at: None,
        last_used_at: None,
        parent_id: None,
        scope: None,
        cert_thumbprint: None,
        origin: None,
    };
    let issued = AuditEvent {
        kind: "token.issued".into(),
        token_id: Some(rec.id.clone()),
        ..AuditEvent::default()
    };
    store
        .insert_token(&rec, std::slice::from_ref(&issued))
        .await
        .unwrap();
    // The same id again: the insert fails, and its event goes with it.
    assert!(store.insert_token(&rec, &[issued]).await.is_err());
    let events = store
        .audit_events(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(store.tokens().await.unwrap().len(), 1);
    // The chain moved only for what was committed, and goes on from there.
    store.append_audit(&[AuditEvent::default()]).await.unwrap();
    assert_intact(store, key, 2).await;
}

pub(crate) async fn an_access_request_changes_only_over_the_version_it_read(store: &dyn Store) {
    let mut r = crate::AccessRequest {
        id: "req1".into(),
        version: 0,
        origin: crate::Origin {
            policy: "orders-db-write".into(),
            subject: "user:bob@example.com".into(),
            groups: vec!["sre".into()],
            ..Default::default()
        },
        grant: Grant::new("orders-db", &[], &[]).unwrap(),
        ttl_ms: 60_000,
        reason: Some("incident 42".into()),
        created_at: 10,
        expires_at: 1_000,
        approvals: vec![],
        rejected: None,
    };
    store.put_request(&r, &requests(1)).await.unwrap();
    // The same id again is not a second request.
    assert!(matches!(
        store.put_request(&r, &[]).await,
        Err(StoreError::Conflict)
    ));
    let mut approved = r.clone();
    approved.version = 1;
    approved.approvals.push(crate::RequestDecision {
        by: "user:carol@example.com".into(),
        via: Some("group:db-owners".into()),
        at: 20,
        reason: None,
    });
    store.put_request(&approved, &[]).await.unwrap();
    // A second approver who read version 0 comes too late, and writes nothing.
    r.version = 1;
    r.rejected = approved.approvals.first().cloned();
    assert!(matches!(
        store.put_request(&r, &requests(1)).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.request("req1").await.unwrap(), Some(approved.clone()));
    assert_eq!(
        stored(store).await.len(),
        1,
        "the refused write left no event"
    );
    assert_eq!(store.requests(999, 10).await.unwrap(), vec![approved]);
    assert!(store.requests(1_000, 10).await.unwrap().is_empty());
}

pub(crate) async fn the_first_key_fingerprint_stands(store: &dyn Store) {
    assert_eq!(
        store.meta_put_if_absent("fp", b"one").await.unwrap(),
        b"one"
    );
    assert_eq!(
        store.meta_put_if_absent("fp", b"two").await.unwrap(),
        b"one",
        "a second process's fingerprint does not replace the first"
    );
    assert_eq!(
        store.meta_get("fp").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
}

pub(crate) async fn the_last_applied_config_stands(store: &dyn Store) {
    assert_eq!(store.applied_config().await.unwrap(), None);
    let config = |sha: &str, text: &str, at| crate::AppliedConfig {
        sha256: sha.into(),
        text: text.into(),
        at,
        mac: vec![at as u8; 32],
    };
    let first = config("aa", "max_ttl = \"1h\"\n", 1);
    let second = config("bb", "max_ttl = \"2h\"\n# 'quoted' — text\n", 2);
    let applied = requests(1);
    store.put_config(&first, None, &applied).await.unwrap();
    store
        .put_config(&second, Some("aa"), &applied)
        .await
        .unwrap();
    assert_eq!(store.applied_config().await.unwrap(), Some(second.clone()));
    // Planned over "aa", which is no longer the one applied: refused, not written.
    let late = config("cc", "max_ttl = \"3h\"\n", 3);
    for over in [Some("aa"), None] {
        assert!(matches!(
            store.put_config(&late, over, &applied).await,
            Err(StoreError::Conflict)
        ));
    }
    assert_eq!(store.applied_config().await.unwrap(), Some(second));
    // Each config written was written with its event, and only those.
    assert_eq!(stored(store).await.len(), 2);
}

pub(crate) async fn a_block_keeps_its_latest_end(store: &dyn Store) {
    store
        .put_block("192.0.2.7", 100, &requests(1))
        .await
        .unwrap();
    store.put_block("192.0.2.7", 50, &[]).await.unwrap();
    store.put_block("2001:db8::", 300, &[]).await.unwrap();
    assert_eq!(
        store.blocks(60).await.unwrap(),
        [
            ("192.0.2.7".to_owned(), 100),
            ("2001:db8::".to_owned(), 300)
        ]
    );
    assert_eq!(
        store.blocks(100).await.unwrap(),
        [("2001:db8::".to_owned(), 300)]
    );
    assert_eq!(stored(store).await.len(), 1);
}

pub(crate) async fn a_tool_pin_is_replaced_whole_with_its_event(store: &dyn Store) {
    let mut pin = crate::ToolPin {
        service: "tickets-mcp".into(),
        tool: "get_ticket".into(),
        pinned: "aa".into(),
        seen: "aa".into(),
        definition: "{\"name\":\"get_ticket\"}".into(),
        first_seen: 10,
        changed_at: None,
    };
    store.put_tool_pin(&pin, &requests(1)).await.unwrap();
    assert_eq!(store.tool_pins().await.unwrap(), [pin.clone()]);
    assert_eq!(pin.state(), "pinned");
    pin.seen = "bb".into();
    pin.changed_at = Some(20);
    store.put_tool_pin(&pin, &requests(1)).await.unwrap();
    let stored_pin = store.tool_pins().await.unwrap();
    assert_eq!(stored_pin, [pin.clone()]);
    assert_eq!(stored_pin[0].state(), "changed");
    assert_eq!(stored_pin[0].first_seen, 10, "first seen stays");
    assert_eq!(stored(store).await.len(), 2);
}
