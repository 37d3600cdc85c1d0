//! The console in a real browser (Debian's headless Chromium through chromedriver)
//! against a real gateway: sign in with the admin token; a live `psql` session
//! appears on its own; terminated from the page, `psql` says an operator ended it;
//! a token revoked from the list is refused by the next `curl`; the audit log is
//! searched and exported; a change without the session's CSRF token is refused;
//! signed out, the pages send the browser back to sign in. Each page is
//! screenshotted at 1280 and 390 px into the test's target folder (not committed).
//!
//! Through the identity provider (a real OpenID provider): a person the console
//! names nowhere is refused; one `console_viewers` names sees no action, and every
//! route that changes something refuses them even with the session's CSRF token;
//! an approver `console_admins` names approves an access request from the inbox
//! and issues a token from the form, whose secret is shown once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "console/browser.rs"]
mod browser;
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::Locator;

use browser::*;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn viewers_look_and_approvers_act_through_the_provider() {
    let (w, _hook) = sso::world(
        "\n[identity]\nconsole_admins = [\"group:db-owners\"]\n\
         console_viewers = [\"user:dave@example.com\"]\n",
    )
    .await;
    let ui = format!("http://127.0.0.1:{}/ui", w.admin_port);
    // Bob files a request the policy makes wait for an approver.
    let out = w.login("bob", "pw-bob");
    assert!(out.status.success(), "{}", sso::stderr(&out));
    let out = w.run("bob", &["access", "orders-db", "--reason", "INC-7 fix"]);
    let request = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!request.is_empty(), "{}", sso::stderr(&out));
    // Something for a viewer to look at: a live psql session and a token.
    let pg = ok_stdout(issue_as(
        &w.dir,
        "erin",
        "orders-db",
        Some("readwrite"),
        &[],
    ));
    let _psql = sleeping_psql(w.pg_port, &pg);
    let token = issue(&w.dir, "erin", "billing");
    let billing = format!("http://127.0.0.1:{}/invoices", w.svc_port);

    let (_driver, driver_port) = chromedriver();
    let profile = Profile(tempfile::tempdir().unwrap());
    let c = browser(driver_port, &profile).await;
    c.set_window_size(1280, 900).await.unwrap();

    // Alice is known to the provider, but the console names her nowhere.
    provider_sign_in(&c, &ui, "alice", "pw-alice").await;
    expect_heading(&c, "Sign in").await;
    let alert = wait_text(&c, "[role=alert]", |t| t.contains("named in neither")).await;
    assert!(
        alert.contains("user:alice@example.com is named in neither"),
        "{alert}"
    );
    let refused = w.audit("console.signin");
    assert!(
        refused.iter().any(|e| e["reason"] == "not_console_user"),
        "{refused:?}"
    );
    c.delete_all_cookies().await.unwrap();

    // Dave is named as a viewer.
    provider_sign_in(&c, &ui, "dave", "pw-dave").await;
    expect_heading(&c, "Overview").await;
    let who = text_of(&c, ".signout span").await;
    assert_eq!(who, "user:dave@example.com (viewer)");
    c.goto(&format!("{ui}/sessions")).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::XPath(
            "//tbody[@id='session-rows']/tr[td[text()='erin']]",
        ))
        .await
        .expect("the viewer sees the live session");
    shoot(&c, "sessions-viewer").await;
    let buttons = c.find_all(Locator::Css("main button")).await.unwrap();
    assert!(buttons.is_empty(), "a viewer is offered an action");
    c.goto(&format!("{ui}/tokens")).await.unwrap();
    assert!(text_of(&c, "tbody").await.contains("erin"));
    assert!(c
        .find_all(Locator::Css("main button[class=danger]"))
        .await
        .unwrap()
        .is_empty());
    c.goto(&format!("{ui}/requests")).await.unwrap();
    let inbox = text_of(&c, "tbody").await;
    assert!(
        inbox.contains("user:bob@example.com") && inbox.contains("pending"),
        "{inbox}"
    );
    assert!(c
        .find_all(Locator::Css("main form"))
        .await
        .unwrap()
        .is_empty());
    // Even with the session's own CSRF token, a viewer's change is refused, on
    // every route that changes something.
    let id = &token[5..21];
    for route in [
        format!("/ui/tokens/{id}/revoke"),
        "/ui/tokens/revoke".to_owned(),
        "/ui/tokens/new".to_owned(),
        format!("/ui/requests/{request}/approve"),
        format!("/ui/requests/{request}/reject"),
        "/ui/sessions/1/terminate".to_owned(),
        "/ui/agents/edge/revoke".to_owned(),
        "/ui/config/apply".to_owned(),
    ] {
        assert_eq!(post_with_csrf(&c, &route).await, 403, "{route}");
    }
    assert_eq!(curl(&billing, Some(&token), "GET"), 200);
    click(&c, ".signout button").await;
    expect_heading(&c, "Sign in").await;
    // The provider's session too, so the next person signs in as themselves.
    c.delete_all_cookies().await.unwrap();

    // Carol is in `db-owners`: she acts, and approves Bob's request.
    provider_sign_in(&c, &ui, "carol", "pw-carol").await;
    expect_heading(&c, "Overview").await;
    assert_eq!(text_of(&c, ".signout span").await, "user:carol@example.com");
    c.goto(&format!("{ui}/requests")).await.unwrap();
    shoot(&c, "requests").await;
    type_into(&c, "input[name=reason]", "ok for INC-7").await;
    click(
        &c,
        &format!("button[aria-label='Approve request {request}']"),
    )
    .await;
    expect_heading(&c, "Access requests").await;
    wait_text(&c, "tbody", |t| t.contains("approved")).await;
    let out = w.run("bob", &["requests", "collect", &request]);
    assert!(out.status.success(), "{}", sso::stderr(&out));
    let approved = w.audit("access.approved");
    assert!(
        approved
            .iter()
            .any(|e| e["principal"] == "user:carol@example.com"),
        "{approved:?}"
    );

    // She issues a token from the form: its secret is shown once, and works.
    c.goto(&format!("{ui}/tokens/new")).await.unwrap();
    expect_heading(&c, "Issue a token").await;
    shoot(&c, "issue").await;
    type_into(&c, "#principal", "frank").await;
    type_into(&c, "#ttl", "10m").await;
    type_into(&c, "#methods", "GET").await;
    click(&c, "form.stacked button").await;
    expect_heading(&c, "Token issued").await;
    let secret = c
        .find(Locator::Css("#secret"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(curl(&billing, Some(&secret), "GET"), 200);
    assert_eq!(curl(&billing, Some(&secret), "POST"), 403);
    c.goto(&format!("{ui}/tokens?principal=frank"))
        .await
        .unwrap();
    let listed = c.source().await.unwrap();
    assert!(listed.contains(&secret[5..21]) && !listed.contains(&secret));

    // Each sign-in is in the audit log with its way in and role; one event's page.
    c.goto(&format!(
        "{ui}/audit?kind=console.signin&decision=allow&principal=user:dave@example.com"
    ))
    .await
    .unwrap();
    click(&c, "tbody a").await;
    expect_heading(&c, "Event").await;
    shoot(&c, "event").await;
    let detail = text_of(&c, "main").await;
    assert!(
        detail.contains("\"via\": \"sso\"") && detail.contains("\"role\": \"viewer\""),
        "{detail}"
    );
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_browser() {
    let world = billing_and_orders_db().await;
    let (dir, admin, svc, pg) = (world.dir.as_path(), world.admin, world.svc, world.pg);
    let ui = format!("http://127.0.0.1:{admin}/ui");

    let (_driver, driver_port) = chromedriver();
    let profile = Profile(tempfile::tempdir().unwrap());
    let c = browser(driver_port, &profile).await;
    c.set_window_size(1280, 900).await.unwrap();

    // Not signed in: sent to the sign-in page; a wrong token is refused there.
    c.goto(&format!("{ui}/sessions")).await.unwrap();
    expect_heading(&c, "Sign in").await;
    shoot(&c, "sign-in").await;
    type_into(&c, "#token", "kwad_nope").await;
    click(&c, "form button").await;
    let alert = wait_text(&c, "[role=alert]", |t| t.contains("refused")).await;
    assert!(alert.contains("refused"), "{alert}");
    // From the keyboard: the token field has the focus; Enter signs in.
    let admin_token = std::fs::read_to_string(dir.join("data/admin.token")).unwrap();
    let field = c.active_element().await.unwrap();
    assert_eq!(field.attr("id").await.unwrap().as_deref(), Some("token"));
    field
        .send_keys(&format!("{}\u{e007}", admin_token.trim()))
        .await
        .unwrap();
    expect_heading(&c, "Overview").await;
    // The hash chain, walked from the page.
    click(&c, "form[action='/ui/audit/verify'] button").await;
    wait_text(&c, "main", |t| t.contains("Hash chain intact at")).await;
    shoot(&c, "overview").await;

    // A live psql session appears on the sessions page by itself.
    c.goto(&format!("{ui}/sessions")).await.unwrap();
    let pg_token = ok_stdout(issue_as(dir, "alice", "orders-db", Some("readonly"), &[]));
    let mut session = sleeping_psql(pg, &pg_token);
    let appeared = Instant::now();
    let row = c
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::XPath(
            "//tbody[@id='session-rows']/tr[td[text()='alice']]",
        ))
        .await
        .expect("the psql session is listed");
    eprintln!(
        "the psql session appeared after {} ms",
        appeared.elapsed().as_millis()
    );
    assert!(appeared.elapsed() < Duration::from_secs(3));
    // With what it has carried and, for PostgreSQL, its statement now.
    let text = row.text().await.unwrap();
    assert!(text.contains("SELECT pg_sleep(60)"), "{text}");
    assert!(!text.contains("0 B / 0 B"), "bytes counted: {text}");
    shoot(&c, "sessions").await;
    drop(row);
    // The rows are replaced every second: the button is found again to be clicked.
    let button = "tbody#session-rows button[aria-label^='Terminate']";
    let started = Instant::now();
    while let Err(e) = async { c.find(Locator::Css(button)).await?.click().await }.await {
        assert!(started.elapsed() < Duration::from_secs(5), "{e}");
    }
    let ended = Instant::now();
    while session.0.try_wait().unwrap().is_none() {
        assert!(ended.elapsed() < Duration::from_secs(5), "psql still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut said = String::new();
    std::io::Read::read_to_string(&mut session.0.stderr.take().unwrap(), &mut said).unwrap();
    assert!(
        said.contains("a Keyway operator ended this session"),
        "{said}"
    );

    // A token revoked from the list: the next curl is refused.
    let token = issue(dir, "bob", "billing");
    let url = format!("http://127.0.0.1:{svc}/invoices");
    assert_eq!(curl(&url, Some(&token), "GET"), 200);
    c.goto(&format!("{ui}/tokens?principal=bob")).await.unwrap();
    shoot(&c, "tokens").await;
    let id = &token[5..21];
    // From the keyboard: Tab to the row's button, Enter.
    let button = format!("button[aria-label='Revoke token {id}']");
    tab_to(&c, &button).await;
    c.active_element()
        .await
        .unwrap()
        .send_keys("\u{e007}")
        .await
        .unwrap();
    expect_heading(&c, "Tokens").await;
    let started = Instant::now();
    while curl(&url, Some(&token), "GET") != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the revoked token still works"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Every live token of a principal at once, as `token revoke --principal` does.
    let dans = [issue(dir, "dan", "billing"), issue(dir, "dan", "billing")];
    c.goto(&format!("{ui}/tokens?principal=dan")).await.unwrap();
    click(&c, "form[action='/ui/tokens/revoke'] button").await;
    // Revoked once the answer is here (a request still in flight at the revocation
    // is cut, unanswered).
    wait_url(&c, "state=revoked").await;
    for t in &dans {
        assert_eq!(curl(&url, Some(t), "GET"), 401);
    }
    c.goto(&format!("{ui}/tokens?principal=dan&state=revoked"))
        .await
        .unwrap();
    let listed = text_of(&c, "tbody").await;
    assert_eq!(listed.matches("revoked").count(), 2, "{listed}");

    // The overview draws each service's last hour: the requests above are in it.
    c.goto(&format!("{ui}/")).await.unwrap();
    expect_heading(&c, "Overview").await;
    shoot(&c, "overview-traffic").await;
    let chart = c
        .find(Locator::Css("svg[aria-label^='billing:']"))
        .await
        .unwrap()
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap();
    let count = |what: &str| -> u64 {
        let before = chart.split(what).next().unwrap();
        before.trim().rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        count(" let through") >= 1 && count(" refused") >= 1,
        "{chart}"
    );

    // The audit log, searched and exported.
    c.goto(&format!("{ui}/audit?kind=session.terminated"))
        .await
        .unwrap();
    shoot(&c, "audit").await;
    let table = c
        .find(Locator::Css("tbody"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(table.contains("session.terminated"), "{table}");
    assert!(
        !table.contains("token.revoked"),
        "only what was searched: {table}"
    );
    let export = c
        .execute(
            "return fetch('/ui/audit/export?kind=token.revoked').then(r => r.text())",
            vec![],
        )
        .await
        .unwrap();
    let lines: Vec<serde_json::Value> = export
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|e| e["token_id"] == id), "{lines:?}");
    // Searched by why it was refused, within a time range (UTC).
    let utc = |ago: &str| {
        let out = Command::new("date")
            .args(["-u", "-d", ago, "+%Y-%m-%dT%H:%M:%S"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (hour_ago, hour_on) = (utc("1 hour ago"), utc("1 hour"));
    c.goto(&format!("{ui}/audit?reason=revoked&from={hour_ago}"))
        .await
        .unwrap();
    let refused = text_of(&c, "tbody").await;
    assert!(refused.contains("deny revoked"), "{refused}");
    c.goto(&format!("{ui}/audit?reason=revoked&from={hour_on}"))
        .await
        .unwrap();
    assert_eq!(text_of(&c, "tbody").await, "No event matches.");
    assert_eq!(
        curl_status(
            &format!("{ui}/audit?from=yesterday"),
            &[
                "-H",
                &format!(
                    "Cookie: keyway_console={}",
                    c.get_named_cookie("keyway_console").await.unwrap().value()
                )
            ]
        ),
        400
    );
    // The export itself is in the log: who took which events.
    c.goto(&format!("{ui}/audit?kind=audit.exported"))
        .await
        .unwrap();
    let exported = text_of(&c, "tbody").await;
    assert!(
        exported.contains("admin") && exported.contains("token.revoked"),
        "{exported}"
    );

    // The config in force, with its hash and how it got there; the agents.
    c.goto(&format!("{ui}/config")).await.unwrap();
    expect_heading(&c, "Config").await;
    shoot(&c, "config").await;
    let text = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("orders-db"), "{text}");
    // A change planned from the page, then applied: billing's tokens now live 30
    // minutes at most.
    let proposed = std::fs::read_to_string(dir.join("keyway.toml"))
        .unwrap()
        .replacen("max_ttl = \"1h\"", "max_ttl = \"30m\"", 1);
    c.execute(
        "document.querySelector('#proposed').value = arguments[0]",
        vec![proposed.into()],
    )
    .await
    .unwrap();
    click(&c, "form[action='/ui/config/plan'] button").await;
    expect_heading(&c, "Plan").await;
    shoot(&c, "plan").await;
    let planned = text_of(&c, "main").await;
    assert!(
        planned.contains("~ service billing") && planned.contains("max_ttl"),
        "{planned}"
    );
    click(&c, "form[action='/ui/config/apply'] button").await;
    expect_heading(&c, "Config").await;
    let out = keyway(
        dir,
        &[
            "token",
            "issue",
            "--service",
            "billing",
            "--principal",
            "x",
            "--ttl",
            "45m",
            "--config",
            "keyway.toml",
        ],
        None,
    );
    assert!(!out.status.success(), "a 45m token under a 30m max_ttl");
    let history = text_of(&c, "tbody").await;
    assert!(history.contains("admin"), "{history}");
    c.goto(&format!("{ui}/agents")).await.unwrap();
    expect_heading(&c, "Agents").await;
    shoot(&c, "agents").await;

    // A change without the session's CSRF token is refused, even with its cookie.
    let cookie = c.get_named_cookie("keyway_console").await.unwrap();
    let other = issue(dir, "carol", "billing");
    for form in ["", "csrf=forged"] {
        let status = curl_status(
            &format!("{ui}/tokens/{}/revoke", &other[5..21]),
            &[
                "-X",
                "POST",
                "-H",
                &format!("Cookie: keyway_console={}", cookie.value()),
                "--data",
                form,
            ],
        );
        assert_eq!(status, 403, "form {form:?}");
    }
    assert_eq!(curl(&url, Some(&other), "GET"), 200);

    // A mistyped console path is the console's 404, not a failed admin call.
    assert_eq!(curl_status(&format!("{ui}/nope"), &[]), 404);
    assert_eq!(
        curl_status(&format!("http://127.0.0.1:{admin}/favicon.ico"), &[]),
        204
    );

    // Signed out: back to sign-in, and the old cookie opens nothing.
    c.goto(&format!("{ui}/")).await.unwrap();
    click(&c, ".signout button").await;
    expect_heading(&c, "Sign in").await;
    let status = curl_status(
        &format!("{ui}/sessions"),
        &["-H", &format!("Cookie: keyway_console={}", cookie.value())],
    );
    assert_eq!(status, 303);
    c.close().await.unwrap();
}
