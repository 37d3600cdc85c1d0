//! A real OpenID Connect provider for the SSO tests (`tests/oidc/provider.mjs`, the
//! `oidc-provider` package on Node.js), and a person's browser played with `curl`.
//!
//! The provider has one client, `keyway` (client_secret_basic, PKCE S256 required,
//! native, redirect `http://127.0.0.1/callback` on any port), scopes
//! `openid email groups` (and `offline_access`), the code and device flows. A login
//! with an unknown user or a wrong password ends the flow with `access_denied`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The folder of `provider.mjs` and its `package.json`.
pub fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc")
}

/// A running provider; dropping it ends the process.
pub struct Provider {
    /// `http://127.0.0.1:PORT`, as in its discovery document.
    pub issuer: String,
    /// The accounts file it re-reads at every login (see [`Provider::set_accounts`]).
    pub accounts: PathBuf,
    /// The control file it re-reads at every request (see [`Provider::set_control`]).
    pub control: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
    child: Child,
}

/// Starts the provider with files in `dir`. `accounts` is
/// `{"alice": {"password": "pw-a", "email": "alice@example.com", "groups": ["finance"]}}`.
pub fn start(dir: &Path, client_secret: &str, accounts: serde_json::Value) -> Provider {
    let pdir = provider_dir();
    assert!(
        pdir.join("node_modules/oidc-provider").is_dir(),
        "the test OpenID provider's packages are missing in {}: \
         run `npm ci --prefix tests/oidc` (scripts/test does)",
        pdir.display()
    );
    let accounts_path = dir.join("oidc-accounts.json");
    let control_path = dir.join("oidc-control.json");
    let log = dir.join("oidc-provider.log");
    write_json(&accounts_path, &accounts);
    write_json(&control_path, &serde_json::json!({}));
    let mut child = Command::new("node")
        .arg("provider.mjs")
        .current_dir(&pdir)
        .env("PORT", "0")
        .env("CLIENT_SECRET", client_secret)
        .env("ACCOUNTS_FILE", &accounts_path)
        .env("CONTROL_FILE", &control_path)
        .env("ISSUED_FILE", dir.join("oidc-issued.txt"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("create the provider's log"))
        .spawn()
        .expect("node must be installed (Node.js 20 or later) to run the test OpenID provider");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let issuer = serde_json::from_str::<serde_json::Value>(line.trim())
        .ok()
        .and_then(|v| v["issuer"].as_str().map(str::to_owned));
    let Some(issuer) = issuer else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the test OpenID provider did not start (first line {line:?}); its stderr:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    Provider {
        issuer,
        accounts: accounts_path,
        control: control_path,
        log,
        child,
    }
}

impl Provider {
    /// Replaces the accounts; takes effect at the next login (and the next token).
    pub fn set_accounts(&self, v: serde_json::Value) {
        write_json(&self.accounts, &v);
    }

    /// Replaces the control: `{"clock_offset_s": N}` mints ID tokens N seconds off,
    /// `{"tamper_id_token": true}` breaks the ID token's signature (its email becomes
    /// `mallory@evil.example`), `{"device_interval": N}` adds `interval` to the device
    /// authorization response. Takes effect at the next request.
    pub fn set_control(&self, v: serde_json::Value) {
        write_json(&self.control, &v);
    }

    /// Every token the provider handed out so far (ID, access, refresh tokens).
    pub fn issued(&self) -> Vec<String> {
        let path = self.log.with_file_name("oidc-issued.txt");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The provider's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Written whole, then renamed in, so the provider never reads half a file.
fn write_json(path: &Path, v: &serde_json::Value) {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).expect("json")).expect("write json");
    std::fs::rename(&tmp, path).expect("rename json");
}

/// Plays a person's browser for the code flow: opens `auth_url`, signs in as `user`
/// with `password` on the provider's login form, accepts the consent form, and follows
/// the redirect to the client's loopback `redirect_uri` (the request to
/// `http://127.0.0.1:PORT/callback?code=…&state=…&iss=…` is made). Returns the body of
/// the page that ended the flow: the callback's answer, which after a refused login
/// is to `…/callback?error=access_denied&error_description=invalid+user+name+or+password&state=…`.
pub fn browser_sign_in(auth_url: &str, user: &str, password: &str) -> String {
    Browser::new().run(auth_url, user, password, "")
}

/// Plays a person's browser for the device flow: opens `verification_uri`, enters
/// `user_code`, confirms, signs in as `user`, accepts the consent form. Returns the last
/// page's text: "Sign-in Success … Your sign-in was successful" when it worked, "The
/// Sign-in request was interrupted" after a refused login (the device code is then
/// denied: polling gets `access_denied`).
pub fn device_confirm(
    verification_uri: &str,
    user_code: &str,
    user: &str,
    password: &str,
) -> String {
    Browser::new().run(verification_uri, user, password, user_code)
}

struct Browser {
    jar: tempfile::NamedTempFile,
    body: tempfile::NamedTempFile,
}

/// One answer: the final URL after redirects, its status, its body.
struct Page {
    url: String,
    status: u16,
    body: String,
}

impl Browser {
    fn new() -> Self {
        Self {
            jar: tempfile::NamedTempFile::new().expect("cookie jar"),
            body: tempfile::NamedTempFile::new().expect("body file"),
        }
    }

    /// Opens `start`, then submits the provider's forms (user code, confirmation,
    /// login, consent) until a page without one — or a page off the provider — ends it.
    fn run(&self, start: &str, user: &str, password: &str, user_code: &str) -> String {
        let home = origin(start).to_owned();
        let mut page = self.request(start, None);
        // A form seen again (the login form after a refusal, the code form after an
        // error) ends the flow instead of looping.
        let mut seen = Vec::new();
        for _ in 0..10 {
            if origin(&page.url) != home {
                return page.body;
            }
            let Some(form) = post_form(&page.body) else {
                return page.body;
            };
            let mut fields = form.fields;
            for (name, value) in &mut fields {
                match name.as_str() {
                    "login" => *value = user.to_owned(),
                    "password" => *value = password.to_owned(),
                    "user_code" if value.is_empty() => *value = user_code.to_owned(),
                    _ => {}
                }
            }
            let kind: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
            if seen.contains(&kind) {
                return page.body;
            }
            seen.push(kind);
            let action = resolve(&page.url, &form.action);
            page = self.request(&action, Some(&fields));
        }
        panic!(
            "the browser went through 10 forms without the flow ending; last page {} ({}):\n{}",
            page.url, page.status, page.body
        );
    }

    /// GET `url`, or POST `form` to it, following redirects, with the cookie jar.
    fn request(&self, url: &str, form: Option<&[(String, String)]>) -> Page {
        let jar = self.jar.path().to_str().expect("utf-8 temp path");
        let body = self.body.path().to_str().expect("utf-8 temp path");
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-L", "--max-redirs", "20", "--max-time", "30"])
            .args(["-b", jar, "-c", jar, "-o", body])
            .args(["-w", "%{http_code} %{url_effective}"]);
        match form {
            Some([]) => {
                curl.args(["--data", ""]);
            }
            Some(fields) => {
                for (name, value) in fields {
                    curl.arg("--data-urlencode").arg(format!("{name}={value}"));
                }
            }
            None => {}
        }
        let out = curl
            .arg(url)
            .output()
            .expect("curl must be installed (apt-get install curl)");
        assert!(
            out.status.success(),
            "curl {url}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, effective) = stdout.split_once(' ').unwrap_or((&stdout, url));
        Page {
            url: effective.to_owned(),
            status: status.parse().unwrap_or(0),
            body: std::fs::read_to_string(self.body.path()).unwrap_or_default(),
        }
    }
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    let end = url[after..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after + i);
    &url[..end]
}

/// An action as the browser would resolve it against the page's URL.
fn resolve(page: &str, action: &str) -> String {
    if action.contains("://") {
        action.to_owned()
    } else if action.starts_with('/') {
        format!("{}{action}", origin(page))
    } else if action.is_empty() {
        page.to_owned()
    } else {
        let base = page.split(['?', '#']).next().unwrap_or(page);
        let dir = base.rfind('/').map_or(base, |i| &base[..=i]);
        format!("{dir}{action}")
    }
}

struct Form {
    action: String,
    fields: Vec<(String, String)>,
}

/// The first `method="post"` form of a page, with its named inputs.
fn post_form(html: &str) -> Option<Form> {
    let mut rest = html;
    while let Some(start) = find_ci(rest, "<form") {
        let tag_end = start + rest[start..].find('>')?;
        let tag = &rest[start..=tag_end];
        let close = find_ci(&rest[tag_end..], "</form").map_or(rest.len(), |i| tag_end + i);
        let inner = &rest[tag_end..close];
        rest = &rest[close..];
        if !attr(tag, "method").is_some_and(|m| m.eq_ignore_ascii_case("post")) {
            continue;
        }
        let mut fields = Vec::new();
        let mut ins = inner;
        while let Some(i) = find_ci(ins, "<input") {
            let end = i + ins[i..].find('>').unwrap_or(ins.len() - i);
            let input = &ins[i..end];
            if let Some(name) = attr(input, "name") {
                fields.push((name, attr(input, "value").unwrap_or_default()));
            }
            ins = &ins[end..];
        }
        return Some(Form {
            action: attr(tag, "action").unwrap_or_default(),
            fields,
        });
    }
    None
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    hay.to_ascii_lowercase().find(needle)
}

/// The value of `name="…"` (or `'…'`) in a tag, entities decoded.
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name).map(|i| from + i) {
        from = i + name.len();
        let before = lower[..i].chars().last();
        if !before.is_some_and(char::is_whitespace) {
            continue;
        }
        let after = tag[from..].trim_start();
        let Some(after) = after.strip_prefix('=') else {
            continue;
        };
        let after = after.trim_start();
        let quote = after.chars().next()?;
        let value = if quote == '"' || quote == '\'' {
            let v = &after[1..];
            &v[..v.find(quote)?]
        } else {
            let end = after.find(|c: char| c.is_whitespace() || c == '>' || c == '/');
            &after[..end.unwrap_or(after.len())]
        };
        return Some(unescape(value));
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#x2F;", "/")
        .replace("&#47;", "/")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Runs `keyway login` (`cmd`, stderr piped) and plays the person's browser as `user`
/// on the URL it prints. Its output, with all its stderr.
pub fn login_in_browser(cmd: Command, user: &str, password: &str) -> Output {
    login_with(cmd, |lines| {
        let url = lines
            .iter()
            .find_map(|l| l.trim().strip_prefix("http").map(|r| format!("http{r}")))?;
        browser_sign_in(&url, user, password);
        Some(())
    })
}

/// Runs `keyway login --device` (`cmd`, stderr piped) and confirms the code it prints
/// in a browser as `user`.
pub fn login_on_device(cmd: Command, user: &str, password: &str) -> Output {
    login_with(cmd, |lines| {
        let code = lines
            .iter()
            .find_map(|l| l.trim().strip_prefix("and enter the code "))?
            .to_owned();
        let uri = lines
            .iter()
            .find_map(|l| l.trim().strip_prefix("http").map(|r| format!("http{r}")))?;
        device_confirm(&uri, &code, user, password);
        Some(())
    })
}

/// Runs `cmd`, handing its stderr lines so far to `browse` until it acts.
fn login_with(mut cmd: Command, mut browse: impl FnMut(&[String]) -> Option<()>) -> Output {
    use std::io::Read;
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        lines.push(line);
        if browse(&lines).is_some() {
            break;
        }
    }
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let mut out = child.wait_with_output().unwrap();
    out.stderr = format!("{}{rest}", lines.concat()).into_bytes();
    out
}
