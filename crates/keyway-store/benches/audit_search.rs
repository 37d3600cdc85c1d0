//! The console's audit search on a log of 1,000,000 events (the embedded SQLite
//! store): the first page (100 events, as the console asks) for each filter it
//! offers, common and rare. Target: under 200 ms for a filtered first page.
//!
//! The log is built once per run in a temporary folder (through `append_audit`, so
//! with its hash chain), which takes a minute or so: 1,000 principals, 20
//! services, 5 % refusals, and a few needles (a principal with 10 events, a kind
//! with 10) so the rare filters are measured as well as the common ones.
//!
//! `cargo bench -p keyway-store --bench audit_search` (`bench/run --only audit`)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use keyway_store::{AuditEvent, AuditQuery, SqliteStore, Store};

const EVENTS: i64 = 1_000_000;
const BATCH: i64 = 5_000;
/// The log's events span the last 30 days.
const SPAN_MS: i64 = 30 * 86_400_000;

fn event(i: i64, now: i64) -> AuditEvent {
    let rare = i % (EVENTS / 10) == 77_777;
    let mut ev = AuditEvent::new(
        keyway_core::EventKind::Request,
        now - SPAN_MS + i * (SPAN_MS / EVENTS),
    );
    if rare {
        ev.kind = "session.terminated".into();
        ev.principal = Some("user:needle@example.com".into());
    } else {
        ev.principal = Some(format!("user:p{}@example.com", i % 1_000));
    }
    ev.service = Some(format!("svc-{}", i % 20));
    ev.token_id = Some(format!("{:016x}", i % 5_000));
    ev.source = Some(format!("10.0.{}.{}", (i / 256) % 256, i % 256));
    if i % 20 == 0 {
        ev.deny(keyway_core::DenyReason::MethodNotGranted);
    } else {
        ev.allow();
    }
    ev.detail =
        serde_json::json!({ "method": "GET", "path": format!("/invoices/{i}"), "status": 200 });
    ev
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let now = 1_800_000_000_000;
    let store = rt.block_on(async {
        let store = SqliteStore::open_with(&dir.path().join("keyway.db"), false)
            .await
            .unwrap();
        let started = Instant::now();
        let mut i = 0;
        while i < EVENTS {
            let batch: Vec<_> = (i..i + BATCH).map(|n| event(n, now)).collect();
            store.append_audit(&batch).await.unwrap();
            i += BATCH;
        }
        eprintln!(
            "built a log of {EVENTS} events in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        store
    });
    let q = |f: &dyn Fn(&mut AuditQuery)| {
        let mut q = AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        };
        f(&mut q);
        q
    };
    let cases: Vec<(&str, AuditQuery, usize)> = vec![
        ("no filter", q(&|_| {}), 100),
        (
            "principal (1 in 1,000)",
            q(&|q| q.principal = Some("user:p42@example.com".into())),
            100,
        ),
        (
            "principal, 10 events",
            q(&|q| q.principal = Some("user:needle@example.com".into())),
            10,
        ),
        ("service", q(&|q| q.service = Some("svc-7".into())), 100),
        (
            "decision deny",
            q(&|q| q.decision = Some("deny".into())),
            100,
        ),
        (
            "kind, 10 events",
            q(&|q| q.kind = Some("session.terminated".into())),
            10,
        ),
        (
            "service + last day",
            q(&|q| {
                q.service = Some("svc-3".into());
                q.since = Some(now - 86_400_000);
            }),
            100,
        ),
        (
            "deny + principal, none",
            q(&|q| {
                q.decision = Some("deny".into());
                q.principal = Some("user:p1@example.com".into());
            }),
            0,
        ),
    ];
    let mut g = c.benchmark_group("audit search, 1M events, first page");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for (name, query, want) in &cases {
        let got = rt.block_on(store.audit_events(query)).unwrap().len();
        assert_eq!(
            got, *want,
            "{name}: the benchmark's log is not what it should be"
        );
        g.bench_function(*name, |b| {
            b.iter(|| rt.block_on(store.audit_events(query)).unwrap())
        });
    }
    g.finish();
    // Closed on the runtime: a connection the store keeps goes back to its pool
    // through a task.
    rt.block_on(store.disconnect());
}

criterion_group!(benches, bench);
criterion_main!(benches);
