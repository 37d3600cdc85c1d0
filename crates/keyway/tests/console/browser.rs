//! The browser side of the console's tests: chromedriver and a headless Chromium of
//! its own profile, and what a person does on a page (click, type, Tab, screenshot,
//! sign in through the provider), each failing with what the page showed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::common::KillOnDrop;

/// chromedriver on a free port, stopped when dropped.
pub fn chromedriver() -> (KillOnDrop, u16) {
    let mut child = Command::new("chromedriver")
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is not installed; apt-get install chromium chromium-driver (scripts/test does)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = lines
        .by_ref()
        .find_map(|l| {
            l.ok()?
                .split("successfully on port ")
                .nth(1)?
                .trim_end_matches('.')
                .parse()
                .ok()
        })
        .expect("chromedriver says its port");
    std::thread::spawn(move || lines.for_each(drop));
    (KillOnDrop(child), port)
}

/// Ends every browser process of the profile in its folder when dropped: a test
/// that fails before it closes its session would leave Chromium running, since
/// stopping chromedriver does not stop the browser it started.
pub struct Profile(pub tempfile::TempDir);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = Command::new("pkill").arg("-f").arg(self.0.path()).status();
    }
}

pub async fn browser(port: u16, profile: &Profile) -> Client {
    let caps = serde_json::json!({ "goog:chromeOptions": { "args": [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.0.path().display())
    ]}});
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a browser session")
}

/// Screenshots of the page at both widths, into the test's target folder; and a
/// check that every control on it has a name a screen reader says (a label, text,
/// or `aria-label`).
pub async fn shoot(c: &Client, name: &str) {
    let unnamed = c
        .execute(
            "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button, a')]
               .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label') || e.textContent.trim()))
               .map(e => e.outerHTML)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        unnamed,
        serde_json::json!([]),
        "{name}: controls without a name"
    );
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    for (w, h) in [(1280, 900), (390, 844)] {
        c.set_window_size(w, h).await.unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}-{w}.png")), png).unwrap();
    }
    c.set_window_size(1280, 900).await.unwrap();
}

/// Presses Tab until the element `css` names has the focus (40 presses at most):
/// the console can be worked from the keyboard.
pub async fn tab_to(c: &Client, css: &str) {
    let target = c.find(Locator::Css(css)).await.unwrap().element_id();
    for _ in 0..40 {
        let active = c.active_element().await.unwrap();
        if active.element_id() == target {
            return;
        }
        active.send_keys("\u{e004}").await.unwrap();
    }
    panic!("Tab never reached {css}");
}

/// Clicks the element `css` names.
pub async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Types `text` into the field `css` names.
pub async fn type_into(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

/// Waits (5 s at most) for the page's heading to start with `want`: after a click, the old
/// page may still be there for a moment.
pub async fn expect_heading(c: &Client, want: &str) {
    let started = Instant::now();
    loop {
        if let Ok(h) = c.find(Locator::Css("h1")).await {
            if h.text().await.is_ok_and(|t| t.starts_with(want)) {
                return;
            }
        }
        if started.elapsed() > Duration::from_secs(5) {
            panic!("no heading {want:?} on {:?}", c.source().await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Signs in through the identity provider as `user`: from the console's sign-in
/// page through the provider's login (and consent) forms, until the browser is back
/// at the console.
pub async fn provider_sign_in(c: &Client, ui: &str, user: &str, password: &str) {
    c.goto(&format!("{ui}/login")).await.unwrap();
    click(c, "a[href='/ui/login/sso']").await;
    let started = Instant::now();
    let mut left = false;
    loop {
        let url = c.current_url().await.unwrap();
        if url.as_str().starts_with(ui) {
            if left {
                return;
            }
        } else {
            left = true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the sign-in did not come back to the console: {url} {:?}",
            c.source().await
        );
        if !url.as_str().starts_with(ui) {
            if let Ok(login) = c.find(Locator::Css("input[name=login]")).await {
                let _ = login.send_keys(user).await;
                type_into(c, "input[name=password]", password).await;
                let _ = async {
                    c.find(Locator::Css("button[type=submit]"))
                        .await?
                        .click()
                        .await
                }
                .await;
            } else if let Ok(b) = c.find(Locator::Css("button[type=submit]")).await {
                let _ = b.click().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The text of the first element `css` names.
pub async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits (5 s at most) for the first element `css` names to have a text `want`
/// takes, and returns it: after a click, the old page may still be there, or be
/// going, for a moment.
pub async fn wait_text(c: &Client, css: &str, want: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.ok(),
            Err(_) => None,
        };
        match text {
            Some(t) if want(&t) => return t,
            last if started.elapsed() > Duration::from_secs(5) => {
                panic!("{css}: no text as wanted; the last was {last:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits (5 s at most) for the page's address to contain `part`: the answer to a
/// form that redirects there has arrived.
pub async fn wait_url(c: &Client, part: &str) {
    let started = Instant::now();
    while !c.current_url().await.unwrap().as_str().contains(part) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no page at …{part}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts `path` from the page with the session's own CSRF token: the status.
pub async fn post_with_csrf(c: &Client, path: &str) -> u64 {
    let script = format!(
        "const csrf = document.querySelector('input[name=csrf]').value; \
         return fetch('{path}', {{ method: 'POST', \
           headers: {{ 'content-type': 'application/x-www-form-urlencoded' }}, \
           body: 'csrf=' + encodeURIComponent(csrf) }}).then(r => r.status)"
    );
    c.execute(&script, vec![]).await.unwrap().as_u64().unwrap()
}
