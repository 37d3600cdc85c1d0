//! PostgreSQL, protocol-aware.
//!
//! The client logs in with any user name and its Keyway token as the password
//! (`AuthenticationCleartextPassword`, only inside TLS or on loopback unless the
//! service allows plaintext). The gateway checks the token like any other, then logs in
//! upstream as the role the token's grant maps to, with the password stored sealed in
//! Keyway (trust, cleartext, md5 or SCRAM-SHA-256, as the upstream asks), and relays.
//! The client never learns the database password; read-only is the database role's
//! business, not SQL parsing.
//!
//! After start-up the bytes are relayed as they are, with two exceptions: the client's
//! `Q` (simple query) and `P` (Parse) frames are read on the way through for the audit
//! (text capped, never `B` parameters), and the upstream's `BackendKeyData` is replaced
//! by a pair of Keyway's own, so a `CancelRequest` works through the gateway only for a
//! session whose token is still valid. Revocation or expiry ends the session with
//! `FATAL 57P01`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use keyway_core::config::{PostgresService, Service, ServiceKind};
use keyway_core::{DenyReason, TokenKind};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rand::Rng;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::Gateway;
use crate::index::Entry;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_3: i32 = 196_608;
/// A start-up packet is small; refuse anything larger before reading it.
const MAX_STARTUP: usize = 10 * 1024;
/// The largest password message (a token) and upstream start-up message accepted.
const MAX_AUTH_MESSAGE: usize = 64 * 1024;
/// Time for the whole start-up, TLS and login included.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Statement text kept in an audit event.
const MAX_STATEMENT: usize = 4096;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Keyway's cancel key → the upstream's, and whose session it is.
struct CancelTarget {
    pid: i32,
    key: i32,
    entry: Arc<Entry>,
}

/// The PostgreSQL listener of one service.
pub struct PgProxy {
    gw: Arc<Gateway>,
    svc: Service,
    pg: PostgresService,
    tls: Option<TlsAcceptor>,
    cancels: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

/// Why a start-up ended without a session.
enum Refused {
    /// Say this to the client (SQLSTATE, message), then close.
    Client(&'static str, String),
    /// Just close.
    Silent,
}

// === impl PgProxy ===

impl PgProxy {
    /// The proxy of `svc`, if it is a PostgreSQL service.
    pub fn new(gw: Arc<Gateway>, svc: Service, tls: Option<TlsAcceptor>) -> Option<Arc<Self>> {
        let ServiceKind::Postgres(pg) = svc.kind.clone() else {
            return None;
        };
        Some(Arc::new(Self {
            gw,
            svc,
            pg,
            tls,
            cancels: Mutex::new(HashMap::new()),
        }))
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(service = %self.svc.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            tracker.spawn(async move { this.session(stream, peer).await });
        }
        tracker.close();
    }

    async fn session(&self, stream: TcpStream, peer: SocketAddr) {
        let mut client: Box<dyn Io> = Box::new(stream);
        let started = tokio::time::timeout(STARTUP_TIMEOUT, self.start(&mut client, peer)).await;
        let (upstream, entry, role, cancel_key) = match started {
            Ok(Ok(x)) => x,
            Ok(Err(Refused::Client(code, msg))) => {
                let _ = client.write_all(&error_response("FATAL", code, &msg)).await;
                let _ = client.shutdown().await;
                return;
            }
            Ok(Err(Refused::Silent)) | Err(_) => return,
        };
        let end = self.relay(client, upstream, &entry, &role).await;
        let target = self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&cancel_key);
        // The upstream backend would finish a running query (a long export, a lock
        // held) before noticing its client is gone: stop it now.
        if end != "closed" {
            if let Some(t) = target {
                self.cancel_upstream(t.pid, t.key).await;
            }
        }
    }

    /// Start-up up to the first `ReadyForQuery`: negotiation, the client's login with
    /// its token, the upstream login as the mapped role, key data.
    async fn start(
        &self,
        client: &mut Box<dyn Io>,
        peer: SocketAddr,
    ) -> Result<(TcpStream, Arc<Entry>, String, (i32, i32)), Refused> {
        let mut is_tls = false;
        let mut cert = None;
        let params = loop {
            let (code, body) = read_startup(client).await.ok_or(Refused::Silent)?;
            match code {
                SSL_REQUEST if self.tls.is_some() && !is_tls => {
                    client.write_all(b"S").await.map_err(|_| Refused::Silent)?;
                    let acceptor = self.tls.clone().ok_or(Refused::Silent)?;
                    let plain = std::mem::replace(client, Box::new(tokio::io::duplex(1).0));
                    let tls = acceptor.accept(plain).await.map_err(|_| Refused::Silent)?;
                    cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| crate::tls::thumbprint(c.as_ref()));
                    *client = Box::new(tls);
                    is_tls = true;
                }
                SSL_REQUEST | GSSENC_REQUEST => {
                    client.write_all(b"N").await.map_err(|_| Refused::Silent)?
                }
                CANCEL_REQUEST => {
                    self.forward_cancel(&body).await;
                    return Err(Refused::Silent);
                }
                PROTOCOL_3 => break parse_params(&body),
                _ => {
                    return Err(Refused::Client(
                        "08P01",
                        "unsupported frontend protocol".into(),
                    ))
                }
            }
        };
        let source = peer.ip().to_canonical();
        if !is_tls && !source.is_loopback() && !self.pg.allow_plaintext {
            return Err(Refused::Client(
                "28000",
                "Keyway requires TLS for this database from beyond loopback (sslmode=require)"
                    .into(),
            ));
        }

        // The client's login: its token as the password.
        client
            .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])
            .await
            .map_err(|_| Refused::Silent)?;
        let (kind, body) = read_message(client, MAX_AUTH_MESSAGE)
            .await
            .ok_or(Refused::Silent)?;
        if kind != b'p' {
            return Err(Refused::Client(
                "08P01",
                "expected a password message".into(),
            ));
        }
        let token = String::from_utf8_lossy(body.split(|&b| b == 0).next().unwrap_or_default())
            .into_owned();
        let mut ev = self.gw.event("connection.open");
        ev.service = Some(self.svc.name.clone());
        ev.source = Some(source.to_string());
        let decided = self.decide(&token, source, cert.as_deref(), &mut ev);
        drop(token);
        let (entry, role) = match decided {
            Ok(x) => x,
            Err(reason) => {
                ev.decision = Some("deny".into());
                ev.reason = Some(reason.as_str().into());
                self.gw.audit.record(ev);
                let msg = match reason.status() {
                    401 => "password authentication failed: Keyway refused the token (wrong, expired or revoked)",
                    403 => "Keyway: this token does not grant this database",
                    _ => "Keyway cannot open this session now",
                };
                let code = if reason.status() == 401 {
                    "28P01"
                } else {
                    "28000"
                };
                return Err(Refused::Client(code, msg.into()));
            }
        };
        let Ok(reservation) = self.gw.audit.reserve() else {
            return Err(Refused::Client(
                "53300",
                "Keyway cannot record this session now".into(),
            ));
        };
        let pg_role = self
            .pg
            .roles
            .get(&role)
            .cloned()
            .ok_or(Refused::Client("28000", "unknown role".into()))?;
        let Some(password) = self.gw.secret_header(&pg_role.secret) else {
            tracing::warn!(service = %self.svc.name, secret = %pg_role.secret, "database password not set; `keyway secret set`");
            return Err(Refused::Client(
                "08006",
                "Keyway has no credential for this database role yet".into(),
            ));
        };

        // The upstream login, as the mapped role.
        let mut upstream = tokio::time::timeout(
            self.pg.connect_timeout,
            TcpStream::connect(&self.pg.upstream),
        )
        .await
        .map_err(|_| Refused::Client("08006", "the database did not answer".into()))?
        .map_err(|_| Refused::Client("08006", "the database is unreachable".into()))?;
        let _ = upstream.set_nodelay(true);
        let mut buf = BytesMut::new();
        let mut startup: Vec<(&str, &str)> =
            vec![("user", &pg_role.user), ("database", &self.pg.database)];
        for k in [
            "application_name",
            "client_encoding",
            "DateStyle",
            "TimeZone",
            "extra_float_digits",
        ] {
            if let Some(v) = params.get(k) {
                startup.push((k, v));
            }
        }
        frontend::startup_message(startup.iter().copied(), &mut buf)
            .map_err(|_| Refused::Silent)?;
        upstream
            .write_all(&buf)
            .await
            .map_err(|_| Refused::Silent)?;
        self.upstream_login(&mut upstream, &pg_role.user, password.as_bytes())
            .await?;

        ev.decision = Some("allow".into());
        ev.detail = json!({ "role": role, "upstream_user": pg_role.user, "tls": is_tls });
        reservation.send(ev);
        client
            .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0])
            .await
            .map_err(|_| Refused::Silent)?;

        // Relay until ReadyForQuery, swapping the cancel key for one of ours.
        let mut ours = (0, 0);
        loop {
            let (kind, body) = read_message(&mut upstream, MAX_AUTH_MESSAGE)
                .await
                .ok_or(Refused::Silent)?;
            if kind == b'K' && body.len() == 8 {
                let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let key = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                let mut rng = rand::rngs::OsRng;
                ours = (rng.gen::<i32>() & 0x7fff_ffff, rng.gen::<i32>());
                self.cancels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        ours,
                        CancelTarget {
                            pid,
                            key,
                            entry: entry.clone(),
                        },
                    );
                let mut k = vec![b'K', 0, 0, 0, 12];
                k.extend_from_slice(&ours.0.to_be_bytes());
                k.extend_from_slice(&ours.1.to_be_bytes());
                client.write_all(&k).await.map_err(|_| Refused::Silent)?;
                continue;
            }
            client
                .write_all(&frame(kind, &body))
                .await
                .map_err(|_| Refused::Silent)?;
            if kind == b'Z' {
                break;
            }
        }
        Ok((upstream, entry, role, ours))
    }

    fn decide(
        &self,
        token: &str,
        source: std::net::IpAddr,
        cert: Option<&str>,
        ev: &mut keyway_store::AuditEvent,
    ) -> Result<(Arc<Entry>, String), DenyReason> {
        let gw = &self.gw;
        let entry = gw
            .index
            .authenticate(token, &gw.pepper, TokenKind::Access, gw.now())
            .map_err(|r| {
                ev.token_id = r.token_id.clone();
                r.reason
            })?;
        ev.token_id = Some(entry.id().to_owned());
        ev.principal = Some(entry.record.principal.clone());
        let grant = entry
            .grant()
            .filter(|g| g.service == self.svc.name)
            .ok_or(DenyReason::WrongService)?;
        let role = grant.role.clone().ok_or(DenyReason::WrongService)?;
        if !self.svc.allow_cidrs.is_empty()
            && !self.svc.allow_cidrs.iter().any(|n| n.contains(&source))
        {
            return Err(DenyReason::SourceNotAllowed);
        }
        gw.check_lineage(&entry, source)?;
        if let Some(bound) = &entry.record.cert_thumbprint {
            if !cert.is_some_and(|c| crate::tls::same_thumbprint(c, bound)) {
                return Err(DenyReason::CertificateMismatch);
            }
        }
        entry.mark_used(gw.now());
        Ok((entry, role))
    }

    /// Logs in upstream as `user`: trust, cleartext, md5 or SCRAM-SHA-256.
    async fn upstream_login(
        &self,
        up: &mut TcpStream,
        user: &str,
        password: &[u8],
    ) -> Result<(), Refused> {
        let fail = |why: &str| {
            tracing::warn!(service = %self.svc.name, why, "the database refused the gateway's login");
            Refused::Client(
                "08006",
                "the database refused Keyway's login for this role (see the gateway log)".into(),
            )
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (kind, body) = read_message(up, MAX_AUTH_MESSAGE)
                .await
                .ok_or_else(|| fail("closed"))?;
            if kind == b'E' {
                return Err(fail(&error_text(&body)));
            }
            if kind != b'R' || body.len() < 4 {
                return Err(fail("unexpected message during login"));
            }
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let mut out = BytesMut::new();
            match code {
                0 => return Ok(()),
                3 => {
                    frontend::password_message(password, &mut out).map_err(|_| fail("password"))?
                }
                5 if body.len() >= 8 => {
                    let salt = [body[4], body[5], body[6], body[7]];
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        password,
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), &mut out)
                        .map_err(|_| fail("md5"))?;
                }
                10 => {
                    let offers_scram = body[4..].split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                    if !offers_scram {
                        return Err(fail("no SCRAM-SHA-256 offered"));
                    }
                    let s = ScramSha256::new(password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)
                        .map_err(|_| fail("sasl"))?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| fail("SASL continue without start"))?;
                    s.update(&body[4..])
                        .map_err(|_| fail("SCRAM server-first"))?;
                    frontend::sasl_response(s.message(), &mut out).map_err(|_| fail("sasl"))?;
                }
                12 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| fail("SASL final without start"))?;
                    s.finish(&body[4..])
                        .map_err(|_| fail("SCRAM server signature"))?;
                    continue;
                }
                _ => return Err(fail("unsupported authentication method")),
            }
            up.write_all(&out).await.map_err(|_| fail("write"))?;
        }
    }

    /// Relays the session: upstream bytes as they are; client frames read for the
    /// audit on the way through. Ends on either side's close, revocation or expiry.
    async fn relay(
        &self,
        client: Box<dyn Io>,
        upstream: TcpStream,
        entry: &Arc<Entry>,
        role: &str,
    ) -> &'static str {
        let (client_r, mut client_w) = tokio::io::split(client);
        let (mut up_r, up_w) = upstream.into_split();
        let audit = StatementAudit {
            gw: self.gw.clone(),
            service: self.svc.name.clone(),
            token_id: entry.id().to_owned(),
            principal: entry.record.principal.clone(),
            role: role.to_owned(),
        };
        let to_upstream = tokio::spawn(client_to_upstream(client_r, up_w, audit));
        let left = entry.expires_at().saturating_sub(self.gw.now()).max(0);
        let expiry = tokio::time::sleep(Duration::from_millis(left as u64));
        tokio::pin!(expiry);
        let started = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        let end = loop {
            tokio::select! {
                r = up_r.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break "closed",
                    Ok(n) => if client_w.write_all(&buf[..n]).await.is_err() { break "closed" },
                },
                () = entry.cancel.cancelled() => break "revoked",
                () = &mut expiry => break "expired",
            }
        };
        to_upstream.abort();
        if end != "closed" {
            let msg = if end == "revoked" {
                "terminating connection: the Keyway token was revoked"
            } else {
                "terminating connection: the Keyway token expired"
            };
            let _ = client_w
                .write_all(&error_response("FATAL", "57P01", msg))
                .await;
        }
        let _ = client_w.shutdown().await;
        let mut ev = self.gw.event("connection.close");
        ev.service = Some(self.svc.name.clone());
        ev.token_id = Some(entry.id().to_owned());
        ev.principal = Some(entry.record.principal.clone());
        ev.detail = json!({ "end": end, "role": role, "duration_ms": started.elapsed().as_millis() as u64 });
        self.gw.audit.record(ev);
        end
    }

    /// A `CancelRequest` with one of our keys: forwarded with the upstream's, only
    /// while the session's token is valid.
    async fn forward_cancel(&self, body: &[u8]) {
        if body.len() != 8 {
            return;
        }
        let ours = (
            i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        );
        let target = {
            let map = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&ours).map(|t| (t.pid, t.key, t.entry.clone()))
        };
        let Some((pid, key, entry)) = target else {
            tracing::debug!(service = %self.svc.name, "a cancel request with an unknown key");
            return;
        };
        if entry.check_live(self.gw.now()).is_err() {
            return;
        }
        self.cancel_upstream(pid, key).await;
        let mut ev = self.gw.event("db.cancel");
        ev.service = Some(self.svc.name.clone());
        ev.token_id = Some(entry.id().to_owned());
        ev.principal = Some(entry.record.principal.clone());
        self.gw.audit.record(ev);
    }

    /// A `CancelRequest` to the upstream for backend `pid`, on its own connection.
    async fn cancel_upstream(&self, pid: i32, key: i32) {
        let mut buf = BytesMut::new();
        frontend::cancel_request(pid, key, &mut buf);
        if let Ok(Ok(mut up)) = tokio::time::timeout(
            self.pg.connect_timeout,
            TcpStream::connect(&self.pg.upstream),
        )
        .await
        {
            let _ = up.write_all(&buf).await;
            let _ = up.shutdown().await;
        }
    }
}

/// Who the statements of a session belong to.
struct StatementAudit {
    gw: Arc<Gateway>,
    service: String,
    token_id: String,
    principal: String,
    role: String,
}

impl StatementAudit {
    fn record(&self, kind: u8, head: &[u8]) {
        // `Q`: the query text. `P`: the statement name, then the query text.
        let text = match kind {
            b'Q' => head.split(|&b| b == 0).next(),
            _ => head.split(|&b| b == 0).nth(1),
        };
        let Some(text) = text else { return };
        let text = String::from_utf8_lossy(&text[..text.len().min(MAX_STATEMENT)]);
        let mut ev = self.gw.event("db.statement");
        ev.service = Some(self.service.clone());
        ev.token_id = Some(self.token_id.clone());
        ev.principal = Some(self.principal.clone());
        ev.detail = json!({
            "role": self.role,
            "protocol": if kind == b'Q' { "simple" } else { "extended" },
            "statement": keyway_core::token::redact(&text),
        });
        self.gw.audit.record(ev);
    }
}

/// Client frames to the upstream, as they are; `Q` and `P` are read for the audit on
/// the way (the first [`MAX_STATEMENT`] bytes). Bodies of any size stream through.
async fn client_to_upstream<R, W>(mut r: R, mut w: W, audit: StatementAudit)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut header = [0u8; 5];
        if r.read_exact(&mut header).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len < 4 {
            break;
        }
        if w.write_all(&header).await.is_err() {
            break;
        }
        let mut left = len - 4;
        let mut head = Vec::new();
        while left > 0 {
            let n = left.min(buf.len());
            if r.read_exact(&mut buf[..n]).await.is_err() || w.write_all(&buf[..n]).await.is_err() {
                let _ = w.shutdown().await;
                return;
            }
            if matches!(header[0], b'Q' | b'P') && head.len() < MAX_STATEMENT + 256 {
                head.extend_from_slice(&buf[..n.min(MAX_STATEMENT + 256 - head.len())]);
            }
            left -= n;
        }
        if matches!(header[0], b'Q' | b'P') {
            audit.record(header[0], &head);
        }
        if header[0] == b'X' {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// The first packet: length (bounded) and code, then the rest.
async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Option<(i32, Vec<u8>)> {
    let len = r.read_i32().await.ok()?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| (8..=MAX_STARTUP).contains(&l))?;
    let code = r.read_i32().await.ok()?;
    let mut body = vec![0u8; len - 8];
    r.read_exact(&mut body).await.ok()?;
    Some((code, body))
}

/// A typed message: type byte, length (bounded), body.
async fn read_message<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Option<(u8, Vec<u8>)> {
    let kind = r.read_u8().await.ok()?;
    let len = r.read_i32().await.ok()?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| (4..=max).contains(&l))?;
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body).await.ok()?;
    Some((kind, body))
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(kind);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Start-up parameters: NUL-terminated key, value pairs.
fn parse_params(body: &[u8]) -> HashMap<String, String> {
    let mut parts = body.split(|&b| b == 0);
    let mut out = HashMap::new();
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        if k.is_empty() {
            break;
        }
        out.insert(
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        );
    }
    out
}

/// An `ErrorResponse` a client shows: severity, SQLSTATE, message.
fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    frame(b'E', &body)
}

/// The `M` field of an upstream `ErrorResponse`.
fn error_text(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&b'M'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
