#![allow(clippy::unwrap_used)]

use std::time::Instant;

use keyway_core::config::AuditConfig;
use keyway_core::SystemClock;
use keyway_store::sqlite::SqliteStore;
use sqlx::Connection as _;

use super::*;

/// A request event carrying `n` bytes of detail.
fn event(sink: &AuditSink, n: usize) -> AuditEvent {
    let mut ev = sink.event(EventKind::Request);
    ev.service = Some("billing".into());
    ev.detail = serde_json::json!({ "path": "x".repeat(n) });
    ev
}

/// A store whose writes stall (another connection holds SQLite's write lock): the
/// events the writer has taken and those queued behind them stay in memory, and the
/// queue takes no more than `queue_bytes` of them, whatever their count allows. Once
/// the store takes writes again, every queued event is written and the memory is
/// given back.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_store_holds_no_more_than_the_queues_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyway.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();

    let max = 64 * 1024;
    let config = AuditConfig {
        queue: 1024,
        queue_bytes: max,
        on_full: OnFull::FailOpen,
        durability: Durability::Batched,
        retention: None,
        checkpoint_every: Duration::from_secs(3600),
        ports: None,
    };
    let stop = CancellationToken::new();
    let (sink, task) = AuditSink::start(
        store.clone(),
        &config,
        stop.clone(),
        vec![],
        Arc::new(SystemClock),
    );
    let one = event(&sink, 4096).approx_bytes();
    assert!(one > 4096, "an event counts its detail: {one}");

    // Far more than the bytes allow, far fewer than the count does.
    let mut queued = 0;
    for _ in 0..200 {
        let r = sink.reserve().unwrap();
        let fits = r.permit.is_some();
        assert!(r.send(event(&sink, 4096)).wait().await);
        queued += usize::from(fits);
        assert!(
            sink.queued_bytes() <= max + one,
            "{} bytes held",
            sink.queued_bytes()
        );
    }
    assert!(
        (max / one..=max / one + 2).contains(&queued),
        "{queued} events queued"
    );
    assert_eq!(sink.stats().snapshot().dropped, 200 - queued as u64);

    // The store takes writes again: everything queued is written, the bytes freed.
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    let started = Instant::now();
    while sink.stats().snapshot().written < queued as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the writer did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.queued_bytes(), 0);
    assert_eq!(sink.stats().snapshot().written, queued as u64);
    stop.cancel();
    drop(sink);
    task.await.unwrap();
}
