//! The panic button at scale: revoking 100,000 tokens by principal holds at once, in
//! memory, before anything is written, and the command returns within seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use keyway_core::api::IssueRequest;
use keyway_gateway::tokens::RevokeFilter;
use secrecy::ExposeSecret;
use support::*;

const TOKENS: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_revocation_of_100k_tokens_holds_in_memory_before_the_store_is_written() {
    let up = Upstream::start().await;
    // Batched durability only to make the 100,000 issues quick to set up; the
    // revocation itself is one transaction either way. The sampling's 401s must not
    // get this client blocked as a token guesser.
    let gw = TestGateway::start(&format!(
        "{}\n[audit]\ndurability = \"batched\"\nqueue = 200000\n[detect]\nnever_block = [\"127.0.0.0/8\"]\n",
        config(&[("billing", &svc(&up, ""))])
    ))
    .await;
    let req = IssueRequest {
        service: "billing".into(),
        principal: "mallory".into(),
        ttl: Some("1h".into()),
        methods: vec![],
        paths: vec![],
        cert_thumbprint: None,
        role: None,
        ..Default::default()
    };
    let mut sample = Vec::new();
    for i in 0..TOKENS {
        let (t, _) = gw.gw.issue(&req, "test").await.unwrap();
        if i % (TOKENS / 40) == 0 {
            sample.push(t.secret().expose_secret().to_owned());
        }
    }
    let bystander = gw.issue("billing", &[], &[], "1h").await.0;
    let addr = gw.addr("billing");
    for t in &sample {
        assert_eq!(send(addr, "GET", "/x", Some(t)).await.status, 200);
    }

    let started = Instant::now();
    let filter = RevokeFilter {
        principal: Some("mallory".into()),
        ..RevokeFilter::default()
    };
    let g = gw.gw.clone();
    let revoking = tokio::spawn(async move { g.tokens.revoke_where(&filter, "test").await });
    // Every sampled token is refused while the store is still being written: the
    // revocation holds in memory first. (How fast, in a release build, is measured
    // by bench/run's revoke section, not here.)
    let mut refused_at = None;
    while refused_at.is_none() && !revoking.is_finished() {
        // One kept-alive connection a pass: a connection per request would churn
        // thousands while the store write keeps this 2-core runtime busy.
        let mut conn = Conn::open(addr).await;
        let mut refused = 0;
        for t in &sample {
            let got = conn
                .send("GET", "/x", Some(t), &[], Default::default())
                .await;
            if got.status == 401 {
                refused += 1;
            }
        }
        if refused == sample.len() {
            refused_at = Some(started.elapsed());
        }
    }
    let revoked = revoking.await.unwrap().unwrap();
    let took = started.elapsed();
    eprintln!(
        "revoked {} tokens in {took:?}; every sampled token refused by {refused_at:?}",
        revoked.len()
    );
    assert!(
        refused_at.is_some(),
        "the sampled tokens were refused only once the store was written"
    );
    assert_eq!(revoked.len(), TOKENS);
    assert_eq!(send(addr, "GET", "/x", Some(&bystander)).await.status, 200);

    // Durable, each with its event.
    let stored = gw.gw.store.tokens().await.unwrap();
    let revoked_rows = stored.iter().filter(|t| t.revoked_at.is_some()).count();
    assert_eq!(revoked_rows, TOKENS);
    // Read in pages (the store answers at most 10,000 events a query).
    let (mut after_seq, mut events) = (0, Vec::new());
    loop {
        let page = gw
            .gw
            .store
            .audit_events(&keyway_store::AuditQuery {
                kind: Some("token.revoked".into()),
                after_seq,
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after_seq = last.seq;
        events.extend(page);
    }
    assert_eq!(events.len(), TOKENS);
    assert!(events.iter().all(|e| {
        let e = &e.event;
        (
            e.reason.as_deref(),
            e.principal.as_deref(),
            e.service.as_deref(),
        ) == (Some("bulk"), Some("mallory"), Some("billing"))
    }));
    let ids: std::collections::HashSet<_> = events
        .iter()
        .filter_map(|e| e.event.token_id.clone())
        .collect();
    assert_eq!(ids.len(), TOKENS, "one event for each token");
    gw.stop().await;
}
