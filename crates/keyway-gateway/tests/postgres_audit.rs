//! A PostgreSQL statement whose audit event cannot be written is not run (under
//! `audit_holds = "answer"`: its answer is withheld), and the client is told why
//! before the session ends (not a bare closed connection). The
//! store is made to refuse audit rows with a trigger, as a full disk would.
//!
//! The machine's PostgreSQL (127.0.0.1:5432) is the database upstream; `scripts/test`
//! starts it when it is down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use support::protocols::{config, echo, psql, tokens};
use support::{TestGateway, Upstream};

fn sqlite(db: &std::path::Path, sql: &str) {
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 must be installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A psql session through the `orders-db` service (with `extra` in its config, the
/// last section): a first statement answered, then the store made to refuse audit
/// rows and a second statement sent. What psql printed after the first answer, and
/// on stderr.
async fn second_statement_unauditable(extra: &str) -> (String, String) {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!("{}{extra}\n", config(&up.url(), echo().await, ""))).await;
    gw.set_secret("kw-ro", "unused with trust authentication")
        .await;
    let t = tokens(&gw).await;
    let mut psql = psql(
        gw.addr("orders-db").port(),
        &t.pg,
        &["-XAtq", "-v", "ON_ERROR_STOP=1"],
    )
    .stdin(Stdio::piped())
    .spawn()
    .expect("psql must be installed (apt-get install postgresql-client)");
    let mut stdin = psql.stdin.take().unwrap();
    let mut stdout = BufReader::new(psql.stdout.take().unwrap());
    writeln!(stdin, "select 41 + 1;").unwrap();
    let mut line = String::new();
    let read = tokio::task::spawn_blocking(move || {
        stdout.read_line(&mut line).unwrap();
        (stdout, line)
    })
    .await
    .unwrap();
    let (mut stdout, line) = read;
    assert_eq!(line.trim(), "42");

    // The store now refuses every audit row.
    let db = gw.data_dir().join("keyway.db");
    sqlite(
        &db,
        "CREATE TRIGGER no_room BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    );
    writeln!(stdin, "select 'ran anyway';").unwrap();
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
        let status = psql.wait().unwrap();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut psql.stderr.take().unwrap(), &mut err);
        (status, rest, err)
    })
    .await
    .unwrap();
    let (status, rest, err) = out;
    assert!(!status.success(), "psql succeeded: {rest} / {err}");
    sqlite(&db, "DROP TRIGGER no_room;");
    gw.stop().await;
    (rest, err)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauditable_statement_is_not_run_and_psql_is_told_why() {
    let (rest, err) = second_statement_unauditable("").await;
    assert!(!rest.contains("ran anyway"), "the statement ran: {rest}");
    assert!(
        err.contains(
            "could not write the statement's audit event (audit_unavailable), so it was not run"
        ),
        "psql was not told why: {err}"
    );
}

/// `audit_holds = "answer"`: statements go at once (the first is answered), and the
/// answer to one whose event cannot be written never reaches psql, which is told.
#[tokio::test(flavor = "multi_thread")]
async fn holding_answers_an_unauditable_statements_answer_is_withheld_and_psql_is_told_why() {
    let (rest, err) = second_statement_unauditable("audit_holds = \"answer\"").await;
    assert!(
        !rest.contains("ran anyway"),
        "the answer reached psql: {rest}"
    );
    assert!(
        err.contains("could not write the statement's audit event (audit_unavailable), so its answer was withheld"),
        "psql was not told why: {err}"
    );
}
