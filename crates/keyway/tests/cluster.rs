//! Three gateways on one PostgreSQL database (the machine's server, a fresh database)
//! behind HAProxy, checked on `/healthz`, as a team would run them:
//!
//! - a config applied through one replica runs on all three (each on its own ports)
//!   and `cluster status` says so; `plan` on another compares with it;
//! - a token issued through replica 1 works through 2 and 3; revoked through 2, it is
//!   refused on all three, and a live `psql` session and a streamed download through
//!   3 end (the time it took is printed);
//! - a source a detector blocks on replica 1 is refused by all three;
//! - an agent keeps a tunnel to all three; killing the replica a request came
//!   through does not stop the next requests to its service; revoked through one,
//!   it is cut on all;
//! - `kill -9` of a replica under steady load: requests keep succeeding once the
//!   health check notices, and every answer has its audit event (`audit verify`);
//! - a rolling restart of all three under the same load fails no request.
//!
//! A replica cut off from the store is `postgres_store.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

const NAMES: [&str; 3] = ["r1", "r2", "r3"];
/// How long the test waits for what should take well under a second (the times
/// are printed; `bench/run --only cluster` measures them properly).
const LIMIT: Duration = Duration::from_secs(5);
const SERVICES: [&str; 3] = ["billing", "orders-db", "ledger"];

/// What every replica runs: the services, the agent, and each replica's ports for
/// them (`[replicas.NAME.listen]`; r1 takes the services' own `listen`).
fn shared_config(replicas: &[Replica], upstream: SocketAddr, extra: &str) -> String {
    let r1 = &replicas[0];
    let mut text = format!(
        "max_ttl = \"24h\"\ndrain_grace = \"2s\"\n\n\
         [services.billing]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{}\"\n\
         upstream = \"http://{upstream}\"\nmax_ttl = \"1h\"\n\n\
         [services.orders-db]\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:{}\"\n\
         upstream = \"127.0.0.1:5432\"\ndatabase = \"test\"\nmax_ttl = \"1h\"\n\
         roles.readonly = {{ user = \"kw_ro\", secret = \"kw-ro\" }}\n\n\
         [services.ledger]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{}\"\n\
         upstream = \"http://{upstream}\"\nvia = \"edge\"\nmax_ttl = \"1h\"\n\n\
         [agents.edge]\nservices = [\"ledger\"]\n\n\
         [detect]\nblock_for = \"60s\"\nnever_block = [\"127.0.0.1/32\"]\n\n\
         [detect.brute_force]\nthreshold = 5\nwindow = \"60s\"\naction = \"block\"\n{extra}",
        r1.port("billing"),
        r1.port("orders-db"),
        r1.port("ledger"),
    );
    for r in &replicas[1..] {
        text += &format!("\n[replicas.{}.listen]\n", r.name);
        for (service, port) in &r.ports {
            text += &format!("{service} = \"127.0.0.1:{port}\"\n");
        }
    }
    text
}

/// Polls `f` every 5 ms until it holds, for at most `limit`: how long it took.
fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

/// `/v1/cluster` through `r`'s admin API.
fn cluster(r: &Replica) -> serde_json::Value {
    let (status, body) = admin_api(&r.dir, r.admin, "GET", "/v1/cluster", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Runs a paced load of 300 requests a second on `addr` while `during` runs (on
/// this thread, given when the load started): the answers.
async fn load_while(addr: SocketAddr, token: &str, during: impl FnOnce(Instant)) -> Answers {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let load = tokio::spawn(paced_load(
        addr,
        "/invoices",
        token.to_owned(),
        6,
        50,
        stop.clone(),
    ));
    // The test's runtime is multi-threaded: the load runs on the other worker.
    #[allow(clippy::disallowed_methods)]
    tokio::task::block_in_place(|| during(started));
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap()
}

/// The answers of a load that ran while `what` happened that were not 200, after
/// checking it sent at least `sent` requests; says how many.
fn failures(what: &str, answers: &Answers, sent: usize) -> Answers {
    let failed: Answers = answers.iter().filter(|(_, s)| *s != 200).copied().collect();
    eprintln!(
        "{what} under load: {} requests, {} failed {failed:?}",
        answers.len(),
        failed.len()
    );
    assert!(answers.len() > sent, "the load ran: {}", answers.len());
    failed
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_behind_haproxy() {
    let db = FreshDb::new("cluster");
    psql_admin(
        "DO $$ BEGIN CREATE ROLE kw_ro LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         GRANT EXECUTE ON FUNCTION pg_sleep(double precision) TO kw_ro;",
    );
    let upstream = streaming_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut replicas: Vec<Replica> = NAMES
        .iter()
        .map(|name| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            Replica {
                name: (*name).to_owned(),
                dir,
                admin: free_port(),
                tunnel: free_port(),
                ports: SERVICES
                    .iter()
                    .map(|s| ((*s).to_owned(), free_port()))
                    .collect(),
                process: None,
            }
        })
        .collect();
    let shared = shared_config(&replicas, upstream, "");
    for r in &replicas {
        r.write_config(&db.url(), &shared);
    }
    // The first replica makes the keys; the others are given the same ones.
    replicas[0].start();
    for r in &mut replicas[1..] {
        share_keys(&tmp.path().join("r1"), &r.dir);
        r.start();
    }
    let out = replicas[0].cli(&["secret", "set", "kw-ro"], Some("ro-password-canary-31"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Config as code across replicas: a service added through r1 listens on every
    // replica's own port for it, and every replica runs the text applied.
    let notes: Vec<u16> = replicas.iter().map(|_| free_port()).collect();
    let extra = format!(
        "\n[services.notes]\nprotocol = \"http\"\nlisten = \"127.0.0.1:{}\"\n\
         upstream = \"http://{upstream}\"\nmax_ttl = \"1h\"\n",
        notes[0]
    );
    let mut applied = shared_config(&replicas, upstream, &extra);
    for (r, port) in replicas[1..].iter().zip(&notes[1..]) {
        applied = applied.replace(
            &format!("[replicas.{}.listen]\n", r.name),
            &format!(
                "[replicas.{}.listen]\nnotes = \"127.0.0.1:{port}\"\n",
                r.name
            ),
        );
    }
    replicas[0].write_config(&db.url(), &applied);
    let out = replicas[0].cli(&["apply"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = until("every replica serves the applied service", LIMIT, || {
        notes
            .iter()
            .all(|p| curl(&format!("http://127.0.0.1:{p}/"), None, "GET") == 401)
    });
    eprintln!(
        "a config applied through r1 ran on all three in {} ms",
        took.as_millis()
    );
    until(
        "every replica reports the applied hash",
        Duration::from_secs(3),
        || {
            let c = cluster(&replicas[2]);
            let want = c["config"]["sha256"].as_str().unwrap_or("none").to_owned();
            let beats = c["replicas"].as_array().unwrap();
            beats.len() == 3 && beats.iter().all(|b| b["config_sha256"] == want.as_str())
        },
    );
    let status = replicas[1].cli(&["cluster", "status"], None);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("The cluster's config: sha256:"), "{text}");
    // `plan` through r3 of the file applied through r1: nothing to change.
    let file = replicas[0].dir.join("keyway.toml");
    let plan = replicas[2].cli(&["plan", file.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{text}");
    assert!(text.contains("No changes"), "{text}");
    // SIGHUP on r2, whose file predates the apply, re-applies the cluster's config
    // and publishes nothing: the service stays on every replica.
    let before = cluster(&replicas[0])["config"]["sha256"].clone();
    let pid = replicas[1].process.as_ref().unwrap().0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster(&replicas[0])["config"]["sha256"], before);
    for p in &notes {
        assert_eq!(curl(&format!("http://127.0.0.1:{p}/"), None, "GET"), 401);
    }

    let lb_billing = free_port();
    let lb_ledger = free_port();
    let replica_refs: Vec<&Replica> = replicas.iter().collect();
    let _haproxy = haproxy(
        tmp.path(),
        &[(lb_billing, "billing"), (lb_ledger, "ledger")],
        &replica_refs,
    );

    // Issued through r1: in force on r2 and r3 and through the load balancer.
    let token = issue(&replicas[0].dir, "alice", "billing");
    for r in &replicas {
        let url = format!("http://127.0.0.1:{}/invoices", r.port("billing"));
        until("a token issued through r1 works everywhere", LIMIT, || {
            curl(&url, Some(&token), "GET") == 200
        });
    }
    assert_eq!(
        curl(
            &format!("http://127.0.0.1:{lb_billing}/invoices"),
            Some(&token),
            "GET"
        ),
        200
    );

    // The console on r1 lists a psql session running through r3 (from r3's
    // heartbeat) and ends it there; psql is told why.
    let erin = ok_stdout(issue_as(
        &replicas[0].dir,
        "erin",
        "orders-db",
        Some("readonly"),
        &[],
    ));
    let mut far = sleeping_psql(replicas[2].port("orders-db"), &erin);
    let ui = ConsoleClient::sign_in(&replicas[0], tmp.path());
    let mut page = String::new();
    let listed = until(
        "r3's session on r1's console",
        Duration::from_secs(5),
        || {
            page = ui.get("/ui/sessions");
            page.contains(">erin<") && page.contains(" on r3\"")
        },
    );
    eprintln!("r3's psql session was listed on r1's console after {listed:?}");
    let id: String = page
        .split("Terminate session ")
        .filter_map(|rest| rest.split_once(" on r3\""))
        .map(|(id, _)| id.to_owned())
        .next()
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let asked = Instant::now();
    let status = ui.post(
        &format!("/ui/sessions/{id}/terminate"),
        &[("csrf", &csrf), ("replica", "r3")],
    );
    assert_eq!(status, 303);
    until("psql through r3 ends", Duration::from_secs(5), || {
        far.0.try_wait().unwrap().is_some()
    });
    let ended = asked.elapsed();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut far.0.stderr.take().unwrap(), &mut said).unwrap();
    assert!(
        said.contains("a Keyway operator ended this session"),
        "{said}"
    );
    eprintln!("from the terminate on r1's console to psql's end through r3: {ended:?}");

    // Revoked through r2: refused on all three, and the live sessions through r3 end.
    let pg_token = ok_stdout(issue_as(
        &replicas[0].dir,
        "alice",
        "orders-db",
        Some("readonly"),
        &[],
    ));
    let mut session = sleeping_psql(replicas[2].port("orders-db"), &pg_token);
    let mut download = Command::new("curl")
        .args([
            "-sSN",
            "-o",
            "/dev/null",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .arg(format!(
            "http://127.0.0.1:{}/stream",
            replicas[2].port("billing")
        ))
        .stderr(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        session.0.try_wait().unwrap().is_none(),
        "the psql session is live"
    );
    assert!(
        download.0.try_wait().unwrap().is_none(),
        "the download is live"
    );
    for t in [&token, &pg_token] {
        let out = replicas[1].cli(&["token", "revoke", &t[5..21]], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let revoked = Instant::now();
    let mut last = Duration::ZERO;
    for r in &replicas {
        let url = format!("http://127.0.0.1:{}/invoices", r.port("billing"));
        until("refused on every replica", LIMIT, || {
            curl(&url, Some(&token), "GET") == 401
        });
        last = last.max(revoked.elapsed());
    }
    until("the psql session through r3 ends", LIMIT, || {
        session.0.try_wait().unwrap().is_some()
    });
    last = last.max(revoked.elapsed());
    until("the download through r3 ends", LIMIT, || {
        download.0.try_wait().unwrap().is_some()
    });
    last = last.max(revoked.elapsed());
    eprintln!(
        "from the revoke command's return to the last refusal or ended session: {} ms",
        last.as_millis()
    );

    // A source a detector blocks on r1 is refused by every replica. (HAProxy, in
    // front, is 127.0.0.1: `never_block`, or it would block everyone behind it.)
    for i in 0..5 {
        let auth = format!("Authorization: Bearer password{i}");
        let url = format!("http://127.0.0.1:{}/", replicas[0].port("billing"));
        assert_eq!(
            curl_status(&url, &["--interface", "127.0.0.2", "-H", &auth]),
            401
        );
    }
    let took = until("127.0.0.2 is refused on every replica", LIMIT, || {
        replicas.iter().all(|r| {
            let url = format!("http://127.0.0.1:{}/", r.port("billing"));
            curl_status(&url, &["--interface", "127.0.0.2", "--max-time", "2"]) == 0
        })
    });
    eprintln!(
        "a block made on r1 held on all three in {} ms",
        took.as_millis()
    );
    assert_eq!(
        curl(
            &format!("http://127.0.0.1:{lb_billing}/invoices"),
            None,
            "GET"
        ),
        401
    );

    // An agent with a tunnel to every replica.
    let enrollment = ok_stdout(replicas[0].cli(&["agent", "enroll", "edge"], None));
    std::fs::write(tmp.path().join("edge.token"), &enrollment).unwrap();
    let gateways: Vec<String> = replicas
        .iter()
        .map(|r| format!("127.0.0.1:{}", r.tunnel))
        .collect();
    let agent_log = std::fs::File::create(tmp.path().join("agent.log")).unwrap();
    let _agent = Command::new(BIN)
        .args(["agent", "run", "--gateway", &gateways.join(",")])
        .args(["--enroll-token-file", "edge.token", "--data-dir", "edge"])
        .args(["--allow-upstream", &upstream.to_string()])
        .current_dir(tmp.path())
        .stdout(agent_log.try_clone().unwrap())
        .stderr(agent_log)
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    until(
        "the agent is connected to all three",
        Duration::from_secs(15),
        || {
            let c = cluster(&replicas[0]);
            c["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| {
                    b["agents"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|n| n == "edge"))
                })
                .count()
                == 3
        },
    );
    let ledger = issue(&replicas[0].dir, "alice", "ledger");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-H",
            &format!("Authorization: Bearer {ledger}"),
        ])
        .arg(format!("http://127.0.0.1:{lb_ledger}/entries"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let served_by = head
        .lines()
        .find_map(|l| l.strip_prefix("x-served-by: "))
        .unwrap()
        .trim()
        .to_owned();
    let victim = replicas.iter().position(|r| r.name == served_by).unwrap();
    replicas[victim].kill();
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..20 {
        assert_eq!(
            curl(
                &format!("http://127.0.0.1:{lb_ledger}/entries"),
                Some(&ledger),
                "GET"
            ),
            200,
            "the agent's service through the replicas left"
        );
    }
    replicas[victim].start();
    std::thread::sleep(Duration::from_secs(1));

    // `kill -9` of r2 under steady load: once the health check notices (two checks
    // 200 ms apart), every request succeeds; every answer has its event.
    let load_token = issue(&replicas[0].dir, "load", "billing");
    let lb: SocketAddr = format!("127.0.0.1:{lb_billing}").parse().unwrap();
    let mut killed_at = Duration::ZERO;
    let answers = load_while(lb, &load_token, |started| {
        std::thread::sleep(Duration::from_secs(5));
        replicas[1].kill();
        killed_at = started.elapsed();
        std::thread::sleep(Duration::from_secs(15));
    })
    .await;
    let what = format!("kill -9 of r2 at {} ms", killed_at.as_millis());
    let failed = failures(&what, &answers, 4000);
    let noticed = killed_at + Duration::from_secs(2);
    assert!(
        failed.iter().all(|(at, _)| *at < noticed),
        "a request failed after the health check noticed: {failed:?}"
    );
    let ok = answers.len() - failed.len();
    let events: usize = db
        .query(&format!(
            "SELECT count(*) FROM audit_events WHERE kind = 'request' AND decision = 'allow' \
             AND token_id = '{}'",
            &load_token[5..21]
        ))
        .parse()
        .unwrap();
    assert!(events >= ok, "{ok} answers but {events} events");
    replicas[1].start();
    std::thread::sleep(Duration::from_secs(1));

    // A rolling restart of all three under the same load: SIGTERM turns /healthz to
    // 503 and the replica serves on for `drain_grace`, so HAProxy moves away first.
    let answers = load_while(lb, &load_token, |_| {
        for r in replicas.iter_mut() {
            r.stop();
            r.start();
            // HAProxy takes it back after two good checks.
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .await;
    let failed = failures("rolling restart", &answers, 2000);
    assert!(failed.is_empty(), "{failed:?}");

    // The restarted replicas run the cluster's config: the service applied through
    // r1 serves on each one's own port.
    for port in &notes {
        assert_eq!(curl(&format!("http://127.0.0.1:{port}/"), None, "GET"), 401);
    }
    let status = replicas[2].cli(&["cluster", "status"], None);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    // A config written into the database directly (no gateway's MAC) is not run:
    // a replica started on it keeps its file's, and says why.
    let evil = free_port();
    db.query(&format!(
        "UPDATE applied_config SET text = text || E'\\n[services.evil]\\nprotocol = \"http\"\\n\
         listen = \"127.0.0.1:{evil}\"\\nupstream = \"http://{upstream}\"\\nmax_ttl = \"1h\"\\n'"
    ));
    replicas[2].stop();
    replicas[2].start();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(curl(&format!("http://127.0.0.1:{evil}/"), None, "GET"), 0);
    let log = std::fs::read_to_string(replicas[2].dir.join("gateway.log")).unwrap();
    assert!(log.contains("its MAC does not verify"), "{log}");

    // An agent revoked through r2 is cut on every replica.
    let out = replicas[1].cli(&["agent", "revoke", "edge"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = until("the agent is cut on every replica", LIMIT, || {
        let c = cluster(&replicas[0]);
        c["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["agents"].as_array().is_some_and(|a| a.is_empty()))
    });
    eprintln!(
        "an agent revoked through r2 was off all three within {} ms (heartbeats)",
        took.as_millis()
    );
    let url = format!("http://127.0.0.1:{lb_ledger}/entries");
    assert_ne!(curl(&url, Some(&ledger), "GET"), 200);

    // Every replica's chain is intact, the killed one's included.
    let verify = replicas[0].cli(&["audit", "verify"], None);
    let text = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{text}");
    assert!(text.contains("intact"), "{text}");
}
