//! Unit tests of the PostgreSQL proxy's framing and wire helpers (what is read of
//! the client, the capture included, is tested in `keyway_core::pgwire`).

use super::relay::{client_to_upstream, upstream_to_client, Framing, Held, Sent, Syncs, MAX_HELD};
use super::startup::negotiate_protocol_version;
use super::*;
use keyway_core::pgwire::parse_params;

/// The `ReadyForQuery`s a stream of upstream messages carries, as the relay
/// counts them.
fn readies(kinds: &[u8]) -> u64 {
    let mut f = Framing::default();
    for &k in kinds {
        f.advance(&frame(k, b"x"));
    }
    f.readies
}

#[test]
fn a_query_is_running_until_its_ready_for_query() {
    let busy = |client: &[u8], upstream: &[u8]| {
        let s = Syncs::default();
        client.iter().for_each(|&k| s.sent(k));
        s.awaiting(readies(upstream))
    };
    // Simple query: running until its Z.
    assert!(busy(b"Q", b""));
    assert!(busy(b"Q", b"TD"));
    assert!(!busy(b"Q", b"TDCZ"));
    // Two pipelined: the first Z does not end the second.
    assert!(busy(b"QQ", b"CZ"));
    assert!(!busy(b"QQ", b"CZCZ"));
    // Extended: Parse, Bind, Execute, Sync.
    assert!(busy(b"PBES", b"12"));
    assert!(!busy(b"PBES", b"12DCZ"));
    // Execute and Flush without Sync: results come, no Z, still counted busy.
    assert!(busy(b"PBEH", b"12DC"));
    // A function call; COPY FROM STDIN ended by CopyDone.
    assert!(!busy(b"F", b"VZ"));
    assert!(!busy(b"Qdc", b"GCZ"));
    // Idle, and Terminate.
    assert!(!busy(b"", b""));
    assert!(!busy(b"X", b""));
}

#[test]
fn error_responses_and_params() {
    let e = error_response("FATAL", "28P01", "no");
    assert_eq!(e[0], b'E');
    assert_eq!(
        u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize,
        e.len() - 1
    );
    assert_eq!(error_text(&e[5..]), "no");
    let p = parse_params(b"user\0alice\0database\0test\0\0");
    assert_eq!(p["user"], "alice");
    assert_eq!(p["database"], "test");
    assert!(parse_params(b"").is_empty());
    assert!(parse_params(b"odd").is_empty());
}

#[test]
fn protocol_negotiation() {
    let name = "_pq_.x".to_owned();
    let v = negotiate_protocol_version(&[&name]);
    assert_eq!(v[0], b'v');
    assert_eq!(&v[5..13], &[0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(&v[13..], b"_pq_.x\0");
}

proptest::proptest! {
    /// Whatever sizes the upstream's messages have and however the bytes are cut
    /// into reads, the framing is at a boundary exactly between messages.
    #[test]
    fn framing_finds_the_boundaries(
        sizes in proptest::collection::vec(0usize..300, 1..20),
        cut in 1usize..64,
    ) {
        let mut stream = Vec::new();
        let mut ends = std::collections::BTreeSet::new();
        for n in &sizes {
            stream.push(b'D');
            stream.extend_from_slice(&((n + 4) as u32).to_be_bytes());
            stream.extend(std::iter::repeat_n(7u8, *n));
            ends.insert(stream.len());
        }
        let mut f = Framing::default();
        let mut at = 0;
        for part in stream.chunks(cut) {
            f.advance(part);
            at += part.len();
            proptest::prop_assert_eq!(f.at_boundary(), ends.contains(&at), "at {}", at);
        }
        proptest::prop_assert_eq!(f.bytes, stream.len() as u64);
    }
}

/// A session's statement audit on a store that refuses every audit row (as a full
/// disk would): the first batch's waiters are told at once. (The writer then retries
/// that batch until the store comes back; what is queued behind it waits.)
async fn refused(dir: &std::path::Path) -> (StatementAudit, CancellationToken) {
    statement_audit(dir, true).await
}

/// A session's statement audit on a SQLite store in `dir`, committing each event
/// before its waiter is told (`durability = "commit"`); `refusing`: the store refuses
/// every audit row.
async fn statement_audit(
    dir: &std::path::Path,
    refusing: bool,
) -> (StatementAudit, CancellationToken) {
    use keyway_core::config::{AuditConfig, Durability, OnFull};
    use sqlx::Connection as _;

    let path = dir.join("keyway.db");
    let store = keyway_store::sqlite::SqliteStore::open(&path)
        .await
        .unwrap();
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    if refusing {
        sqlx::query(
            "CREATE TRIGGER no_room BEFORE INSERT ON audit_events \
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
        )
        .execute(&mut db)
        .await
        .unwrap();
    }
    let config = AuditConfig {
        queue: 8192,
        queue_bytes: 64 << 20,
        on_full: OnFull::FailClosed,
        durability: Durability::Commit,
        retention: None,
        checkpoint_every: Duration::from_secs(3600),
        ports: None,
    };
    let stop = CancellationToken::new();
    let (sink, _writer) = AuditSink::start(
        Arc::new(store),
        &config,
        stop.clone(),
        vec![],
        Arc::new(keyway_core::SystemClock),
    );
    let audit = StatementAudit {
        sink,
        service: "db".into(),
        token_id: "t".into(),
        principal: "p".into(),
        role: "r".into(),
        meter: Default::default(),
    };
    (audit, stop)
}

/// Statements whose events the store refuses reach the server never whole, however
/// they are sized: one as long as the relay's buffer (its pieces once went out
/// directly, ahead of the commit), one twice as long, and a pipeline of thousands
/// sent at once. Each session ends as unaudited.
#[tokio::test(flavor = "multi_thread")]
async fn an_unaudited_statement_never_reaches_the_server_whole() {
    // A simple query whose frame body is `body` bytes long.
    let sized = |body: usize| {
        let mut text = b"select '".to_vec();
        text.resize(body - 3, b'x');
        text.extend_from_slice(b"';\0");
        frame(b'Q', &text)
    };
    let mut pipeline = Vec::new();
    for i in 0..4000 {
        pipeline.extend_from_slice(&frame(b'Q', format!("select {i};\0").as_bytes()));
    }
    for (what, sent_by_client) in [
        (
            "one statement of the buffer's size",
            sized(RELAY_BUFFER / 2),
        ),
        ("one statement of twice its size", sized(RELAY_BUFFER)),
        ("a pipeline of 4,000", pipeline),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (audit, stop) = refused(dir.path()).await;
        let (sent, got) = sent_to_server(&audit, None, &sent_by_client, Duration::from_secs(10))
            .await
            .unwrap_or_else(|_| panic!("{what}: still relaying after 10 s"));
        assert!(matches!(sent, Sent::Unaudited), "{what}");
        assert!(
            !keyway_core::pgwire::whole_frame_waiting(&got),
            "{what}: a whole statement reached the server unaudited"
        );
        stop.cancel();
    }
}

/// One statement, as the client sends it, and the answer a server sends back.
fn select_one() -> (Vec<u8>, Vec<u8>) {
    let statement = frame(b'Q', b"select 1;\0");
    let answer = [
        frame(b'D', b"\0\x01\0\0\0\x011"),
        frame(b'C', b"SELECT 1\0"),
        frame(b'Z', b"I"),
    ]
    .concat();
    (statement, answer)
}

/// `sent_by_client` from a client that then closes, relayed to the server with
/// `held`: how the client's side ended, and what the server got; an error if the
/// relay had not ended within `within`.
async fn sent_to_server(
    audit: &StatementAudit,
    held: Option<&Held>,
    sent_by_client: &[u8],
    within: Duration,
) -> Result<(Sent, Vec<u8>), tokio::time::error::Elapsed> {
    let (mut client, mut from_client) = tokio::io::duplex(1 << 20);
    let (mut to_upstream, mut upstream) = tokio::io::duplex(1 << 20);
    client.write_all(sent_by_client).await.unwrap();
    drop(client);
    let sent = tokio::time::timeout(
        within,
        client_to_upstream(
            &mut from_client,
            &mut to_upstream,
            audit,
            &std::sync::atomic::AtomicU64::new(0),
            &Syncs::default(),
            held,
        ),
    )
    .await?;
    drop(to_upstream);
    let mut got = Vec::new();
    upstream.read_to_end(&mut got).await.unwrap();
    Ok((sent, got))
}

/// Relays `statement` from a client that then closes, and `answer` from a server that
/// then closes, under `audit_holds = "answer"` on `audit`: how each side ended, what
/// the server was sent and what the client was.
async fn relayed_holding_answers(
    audit: &StatementAudit,
    statement: &[u8],
    answer: &[u8],
) -> (Sent, Vec<u8>, Sent, Vec<u8>) {
    let held = Held::default();
    let (up, server_got) = sent_to_server(audit, Some(&held), statement, Duration::from_secs(10))
        .await
        .expect("the statement is sent without waiting for its commit");

    let (mut server, mut from_upstream) = tokio::io::duplex(1 << 16);
    let (mut to_client, mut client_reads) = tokio::io::duplex(1 << 16);
    server.write_all(answer).await.unwrap();
    drop(server);
    let down = tokio::time::timeout(
        Duration::from_secs(10),
        upstream_to_client(
            &mut from_upstream,
            &mut to_client,
            &mut Framing::default(),
            &crate::sessions::Meter::default(),
            Some(&held),
        ),
    )
    .await
    .expect("the answer waits only for the commit");
    drop(to_client);
    let mut client_got = Vec::new();
    client_reads.read_to_end(&mut client_got).await.unwrap();
    (up, server_got, down, client_got)
}

/// `audit_holds = "answer"` on a store that takes the event: the statement reaches
/// the server, its whole answer the client, and by then its event is in the store.
#[tokio::test(flavor = "multi_thread")]
async fn holding_answers_a_statement_and_its_answer_pass_once_committed() {
    use sqlx::Connection as _;

    let dir = tempfile::tempdir().unwrap();
    let (audit, stop) = statement_audit(dir.path(), false).await;
    let (statement, answer) = select_one();
    let (up, server_got, down, client_got) =
        relayed_holding_answers(&audit, &statement, &answer).await;
    assert!(matches!(up, Sent::All));
    assert_eq!(server_got, statement);
    assert!(matches!(down, Sent::All));
    assert_eq!(client_got, answer);
    let path = dir.path().join("keyway.db");
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let (stored,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM audit_events WHERE kind = 'db.statement'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(stored, 1, "the answer went before its event was stored");
    stop.cancel();
}

/// `audit_holds = "answer"`: the server's answer, read at once, reaches the client
/// only when the commit held for it resolves; until then not one byte does. A commit
/// held after the answer was read counts too: the upstream's end waits for it.
#[tokio::test]
async fn holding_answers_nothing_passes_before_the_commit() {
    let (_, answer) = select_one();
    for refused in [false, true] {
        let held = Held::default();
        let (commit, c) = crate::audit::Committed::waiting();
        assert!(held.hold(c).is_ok());
        let (mut server, mut from_upstream) = tokio::io::duplex(1 << 16);
        let (mut to_client, mut client_reads) = tokio::io::duplex(1 << 16);
        server.write_all(&answer).await.unwrap();
        drop(server);
        let meter = crate::sessions::Meter::default();
        let mut framing = Framing::default();
        let sent = {
            let down = upstream_to_client(
                &mut from_upstream,
                &mut to_client,
                &mut framing,
                &meter,
                Some(&held),
            );
            tokio::pin!(down);
            assert!(
                tokio::time::timeout(Duration::from_millis(200), &mut down)
                    .await
                    .is_err(),
                "the relay ended before the commit"
            );
            let mut byte = [0u8; 1];
            assert!(
                tokio::time::timeout(Duration::from_millis(50), client_reads.read(&mut byte))
                    .await
                    .is_err(),
                "the client got a byte before the commit"
            );
            commit.send(!refused).unwrap();
            tokio::time::timeout(Duration::from_secs(10), down)
                .await
                .unwrap()
        };
        drop(to_client);
        let mut got = Vec::new();
        client_reads.read_to_end(&mut got).await.unwrap();
        if refused {
            assert!(matches!(sent, Sent::Unaudited));
            assert!(got.is_empty());
        } else {
            assert!(matches!(sent, Sent::All));
            assert_eq!(got, answer);
        }
    }
}

/// `audit_holds = "answer"` on a store that refuses the event: the statement reached
/// the server (it may have run), and none of its answer reaches the client; the
/// session ends as unaudited.
#[tokio::test(flavor = "multi_thread")]
async fn holding_answers_an_unaudited_statements_answer_is_withheld() {
    let dir = tempfile::tempdir().unwrap();
    let (audit, stop) = refused(dir.path()).await;
    let (statement, answer) = select_one();
    let (up, server_got, down, client_got) =
        relayed_holding_answers(&audit, &statement, &answer).await;
    assert!(matches!(up, Sent::All));
    assert_eq!(server_got, statement);
    assert!(matches!(down, Sent::Unaudited));
    assert!(
        client_got.is_empty(),
        "{} bytes of the answer reached the client",
        client_got.len()
    );
    stop.cancel();
}

/// `audit_holds = "answer"` with a client that pipelines more statements than its
/// answers are read: the session holds at most `MAX_HELD` commits, and the
/// statements past them wait for their own, so every statement still goes.
#[tokio::test(flavor = "multi_thread")]
async fn holding_answers_holds_a_bounded_number_of_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (audit, stop) = statement_audit(dir.path(), false).await;
    let mut pipeline = Vec::new();
    for i in 0..MAX_HELD + 100 {
        pipeline.extend_from_slice(&frame(b'Q', format!("select {i};\0").as_bytes()));
    }
    let held = Held::default();
    let (sent, got) = sent_to_server(&audit, Some(&held), &pipeline, Duration::from_secs(30))
        .await
        .expect("the statements past the held ones wait only for their commits");
    assert!(matches!(sent, Sent::All));
    assert_eq!(held.len(), MAX_HELD);
    assert_eq!(got, pipeline);
    stop.cancel();
}
