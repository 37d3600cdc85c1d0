//! PostgreSQL, protocol-aware.
//!
//! The client logs in with any user name and its Keyway token as the password
//! (`AuthenticationCleartextPassword`, only inside TLS or on loopback unless the
//! service allows plaintext). The gateway checks the token like any other, then logs in
//! upstream as the role the token's grant maps to, with the password stored sealed in
//! Keyway (trust, md5 or SCRAM-SHA-256, as the upstream asks; never cleartext), and
//! relays.
//! The client never learns the database password; read-only is the database role's
//! business, not SQL parsing.
//!
//! After start-up the bytes are relayed as they are, with two exceptions: the client's
//! `Q` (simple query), `P` (Parse) and `F` (function call) frames are read on the way
//! through for the audit (text capped and redacted, never `B` parameters), and the
//! upstream's `BackendKeyData` is replaced by a pair of Keyway's own, so a
//! `CancelRequest` works through the gateway only for a session whose token is still
//! valid. Revocation, expiry, a reload the session no longer fits, or the gateway
//! stopping ends the session with `FATAL 57P01` (when the cut falls between two
//! upstream messages; mid-message it just closes) and cancels the query the upstream
//! was running, if any.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use keyway_core::config::{PostgresService, Service, ServiceKind};
use keyway_core::DenyReason;
use keyway_core::EventKind;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rand::Rng;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::authz::{Admitted, Ask, Attempt, Protocol, Reached};
use crate::gateway::Gateway;
use crate::index::Entry;
use crate::sessions::SessionEnd;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
/// Protocol 3.x: the major version in the high 16 bits.
const PROTOCOL_MAJOR_3: i32 = 3;
/// A start-up packet is small; refuse anything larger before reading it.
const MAX_STARTUP: usize = 10 * 1024;
/// The largest password message (a token) and upstream start-up message accepted.
const MAX_AUTH_MESSAGE: usize = 64 * 1024;
/// Time for the whole start-up, TLS and login included.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Statement text kept in an audit event.
const MAX_STATEMENT: usize = 4096;
/// Text captured beyond the cap, so a token that straddles it is redacted whole.
const REDACT_SLACK: usize = 128;
/// Relay buffers: small, since a gateway holds thousands of idle sessions.
const RELAY_BUFFER: usize = 16 * 1024;
/// Time to tell a client why its session ends, and to close it.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

use crate::Stream as Io;

/// Keyway's cancel key → the upstream's, and whose session it is.
pub struct CancelTarget {
    pid: i32,
    key: i32,
    entry: Arc<Entry>,
}

/// The cancel keys of one service's live sessions. Shared by the proxies a reload
/// puts in each other's place, so a session that outlives its proxy can still be
/// cancelled through the new one.
pub type CancelKeys = Arc<Mutex<HashMap<(i32, i32), CancelTarget>>>;

/// The PostgreSQL listener of one service.
pub struct PgProxy {
    gw: Arc<Gateway>,
    svc: Service,
    pg: PostgresService,
    tls: Option<TlsAcceptor>,
    cancels: CancelKeys,
}

/// What a client opening a connection asked for.
enum Opening {
    /// A session: its start-up parameters, its password (the token), and whether
    /// it came over TLS, with the thumbprint of the certificate it showed.
    Login {
        params: HashMap<String, String>,
        token: String,
        tls: bool,
        cert: Option<String>,
    },
    /// A `CancelRequest`'s body.
    Cancel(Vec<u8>),
}

/// The answer to a client still logging in when the gateway stops.
fn shutting_down() -> Refused {
    Refused::Client("57P03", "the Keyway gateway is shutting down".into())
}

/// Why a start-up ended without a session.
enum Refused {
    /// Say this to the client (SQLSTATE, message), then close.
    Client(&'static str, String),
    /// Just close.
    Silent,
}

impl Refused {
    /// For the audit event: what the client was told, or that it was not.
    fn text(&self) -> &str {
        match self {
            Refused::Client(_, msg) => msg,
            Refused::Silent => "closed during start-up",
        }
    }
}

/// A cancel key handed to a client, removed from the map when dropped (the session
/// ended, or its start-up failed after `BackendKeyData`).
struct CancelKey<'a> {
    map: &'a Mutex<HashMap<(i32, i32), CancelTarget>>,
    key: (i32, i32),
}

impl CancelKey<'_> {
    /// Removes the key now, returning whose it was.
    fn take(self) -> Option<CancelTarget> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key)
    }
}

impl Drop for CancelKey<'_> {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

// === impl PgProxy ===

impl PgProxy {
    /// The proxy of `svc`, if it is a PostgreSQL service; `cancels` holds the keys
    /// of the service's sessions (those of the proxy this one replaces).
    pub fn new(
        gw: Arc<Gateway>,
        svc: Service,
        tls: Option<TlsAcceptor>,
        cancels: CancelKeys,
    ) -> Option<Arc<Self>> {
        let ServiceKind::Postgres(pg) = svc.kind.clone() else {
            return None;
        };
        Some(Arc::new(Self {
            gw,
            svc,
            pg,
            tls,
            cancels,
        }))
    }

    /// Accepts sessions until `shutdown` (a reload's or the gateway's). The sessions
    /// are the gateway's ([`Gateway::end_sessions`]): a reload does not end them.
    pub async fn serve(self: Arc<Self>, listener: Arc<TcpListener>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(crate::MAX_CONNECTIONS));
        while let Some((stream, peer, permit)) =
            crate::listener::next_connection(&listener, &self.svc.name, &slots, &self.gw, &shutdown)
                .await
        {
            let this = self.clone();
            self.gw.sessions.spawn(async move {
                this.session(stream, peer).await;
                drop(permit);
            });
        }
    }

    async fn session(&self, stream: TcpStream, peer: SocketAddr) {
        let mut client: Box<dyn Io> = Box::new(stream);
        let started = tokio::time::timeout(STARTUP_TIMEOUT, self.start(&mut client, peer)).await;
        let (upstream, entry, role, cancel_key) = match started {
            Ok(Ok(x)) => x,
            Ok(Err(Refused::Client(code, msg))) => {
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
                    let _ = client.write_all(&error_response("FATAL", code, &msg)).await;
                    let _ = client.shutdown().await;
                })
                .await;
                return;
            }
            Ok(Err(Refused::Silent)) | Err(_) => return,
        };
        let ended = self
            .relay(client, upstream, &entry, &role, peer.ip().to_canonical())
            .await;
        let target = cancel_key.and_then(CancelKey::take);
        // The upstream backend would finish a running query (a long export, a lock
        // held) before noticing its client is gone: stop it now. An idle one notices
        // at once (and a gateway stopping must not open a connection per session).
        if ended.why != SessionEnd::Closed && ended.busy {
            if let Some(t) = target {
                self.cancel_upstream(t.pid, t.key).await;
            }
        }
        // Only then, with the sockets closed and the query stopped, its event: under
        // `fail_closed` it waits for room in the audit queue, as statements do.
        self.gw.audit.reserve_waiting().await.send(ended.event);
    }

    /// The client's part of start-up, up to its password: encryption, the start-up
    /// packet, protocol negotiation, the password asked for and read. The client
    /// sets its pace; [`Self::start`] races it against the gateway's stop.
    async fn hello(&self, client: &mut Box<dyn Io>, source: IpAddr) -> Result<Opening, Refused> {
        let mut is_tls = false;
        let mut cert = None;
        let (minor, params) = loop {
            let (code, body) = read_startup(client).await.ok_or(Refused::Silent)?;
            match code {
                SSL_REQUEST | GSSENC_REQUEST if is_tls => {
                    return Err(Refused::Client(
                        "08P01",
                        "encryption requested inside TLS".into(),
                    ))
                }
                SSL_REQUEST if self.tls.is_some() => {
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
                CANCEL_REQUEST => return Ok(Opening::Cancel(body)),
                c if c >> 16 == PROTOCOL_MAJOR_3 => break (c & 0xffff, parse_params(&body)),
                _ => {
                    return Err(Refused::Client(
                        "08P01",
                        "unsupported frontend protocol".into(),
                    ))
                }
            }
        };
        if !is_tls && !source.is_loopback() && !self.pg.allow_plaintext {
            return Err(Refused::Client(
                "28000",
                "Keyway requires TLS for this database from beyond loopback (sslmode=require)"
                    .into(),
            ));
        }

        // A newer 3.x minor version or `_pq_.` options: say what we speak (3.0, none).
        let unknown: Vec<&String> = params.keys().filter(|k| k.starts_with("_pq_.")).collect();
        if minor > 0 || !unknown.is_empty() {
            client
                .write_all(&negotiate_protocol_version(&unknown))
                .await
                .map_err(|_| Refused::Silent)?;
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
        Ok(Opening::Login {
            params,
            token,
            tls: is_tls,
            cert,
        })
    }

    /// Start-up up to the first `ReadyForQuery`: negotiation, the client's login with
    /// its token, the upstream login as the mapped role, key data.
    async fn start(
        &self,
        client: &mut Box<dyn Io>,
        peer: SocketAddr,
    ) -> Result<(Box<dyn Io>, Arc<Entry>, String, Option<CancelKey<'_>>), Refused> {
        let source = peer.ip().to_canonical();
        // A session that has not got as far as its password when the gateway stops
        // is told so and not waited for.
        let (params, token, is_tls, cert) = tokio::select! {
            biased;
            () = self.gw.sessions.stopping() => return Err(shutting_down()),
            hello = self.hello(client, source) => match hello? {
                Opening::Login { params, token, tls, cert } => (params, token, tls, cert),
                // Forwarded whole, even while the gateway stops: its `db.cancel` is
                // recorded with it.
                Opening::Cancel(body) => {
                    if self.svc.allows_source(source) {
                        self.forward_cancel(&body).await;
                    }
                    return Err(Refused::Silent);
                }
            },
        };
        let mut ev = self.gw.event(EventKind::ConnectionOpen);
        ev.service = Some(self.svc.name.clone());
        ev.source = Some(source.to_string());
        let decided = self.decide(&token, source, cert.as_deref(), &mut ev);
        drop(token);
        let (entry, role) = match decided {
            Ok(x) => x,
            Err(reason) => {
                ev.deny(reason);
                self.gw.audit.record(ev);
                let (code, msg) = match reason.status() {
                    401 => ("28P01", "password authentication failed: Keyway refused the token (wrong, expired or revoked)"),
                    403 => ("28000", "Keyway: this token does not grant this database"),
                    // cannot_connect_now: a retry may go through (a reload under way).
                    _ => ("57P03", "Keyway cannot open this session now"),
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
        let login = tokio::select! {
            biased;
            () = self.gw.sessions.stopping() => Err(shutting_down()),
            login = self.login_upstream(&role, &params) => login,
        };
        let mut upstream = match login {
            Ok(up) => up,
            Err(refused) => {
                ev.allow();
                ev.detail = json!({ "role": role, "error": refused.text() });
                reservation.send(ev);
                return Err(refused);
            }
        };
        // Revoked while the upstream login went on: the session does not start.
        if let Err(reason) = entry.check_live(self.gw.now()) {
            ev.deny(reason);
            reservation.send(ev);
            return Err(Refused::Client(
                "28P01",
                "password authentication failed: Keyway refused the token (wrong, expired or revoked)"
                    .into(),
            ));
        }
        let upstream_user = self.pg.roles.get(&role).map(|r| r.user.clone());
        ev.allow();
        ev.detail = json!({ "role": role, "upstream_user": upstream_user, "tls": is_tls });
        reservation.send(ev);
        client
            .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0])
            .await
            .map_err(|_| Refused::Silent)?;

        // Relay until ReadyForQuery, swapping the cancel key for one of ours.
        let mut cancel_key = None;
        loop {
            let (kind, body) = read_message(&mut upstream, MAX_AUTH_MESSAGE)
                .await
                .ok_or(Refused::Silent)?;
            if kind == b'K' && body.len() == 8 {
                let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let key = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                let mut rng = rand::rngs::OsRng;
                let ours = (rng.gen::<i32>() & 0x7fff_ffff, rng.gen::<i32>());
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
                cancel_key = Some(CancelKey {
                    map: &self.cancels,
                    key: ours,
                });
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
        Ok((upstream, entry, role, cancel_key))
    }

    /// Connects to the upstream and logs in as the role's user, with its stored
    /// password.
    async fn login_upstream(
        &self,
        role: &str,
        params: &HashMap<String, String>,
    ) -> Result<Box<dyn Io>, Refused> {
        let pg_role = self
            .pg
            .roles
            .get(role)
            .ok_or(Refused::Client("28000", "unknown role".into()))?;
        let Some(password) = self.gw.secrets.header(&pg_role.secret) else {
            tracing::warn!(service = %self.svc.name, secret = %pg_role.secret, "database password not set; `keyway secret set`");
            return Err(Refused::Client(
                "08006",
                "Keyway has no credential for this database role yet".into(),
            ));
        };
        let mut upstream = crate::upstream::dial(
            &self.gw.agents,
            self.svc.via.as_deref(),
            &self.pg.upstream,
            self.pg.connect_timeout,
        )
        .await
        .map_err(|why| {
            tracing::warn!(service = %self.svc.name, why, "database upstream unreachable");
            Refused::Client("08006", "the database is unreachable".into())
        })?;
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
        Ok(upstream)
    }

    /// The [`Authorizer`](crate::authz::Authorizer)'s checks, as for every protocol;
    /// the grant's role on success.
    fn decide(
        &self,
        token: &str,
        source: std::net::IpAddr,
        cert: Option<&str>,
        ev: &mut keyway_store::AuditEvent,
    ) -> Result<(Arc<Entry>, String), DenyReason> {
        let attempt = Attempt {
            protocol: Protocol::Postgres,
            service: Reached::Served(&self.svc),
            source,
            token: Some(token),
            cert,
            ask: Ask::Session,
        };
        let admitted = self.gw.authz.admit(&attempt).map_err(|r| {
            ev.token_id = r.token_id;
            ev.principal = r.principal;
            r.reason
        })?;
        let Admitted { entry, role, .. } = admitted;
        ev.token_id = Some(entry.id().to_owned());
        ev.principal = Some(entry.record.principal.clone());
        Ok((entry, role.unwrap_or_default()))
    }

    /// Logs in upstream as `user`: trust, md5 or SCRAM-SHA-256 (whose server
    /// signature must check out). A cleartext password is never sent: the upstream
    /// connection is not encrypted, and whoever answers on its address would read it.
    async fn upstream_login(
        &self,
        up: &mut Box<dyn Io>,
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
        let mut scram_verified = false;
        loop {
            let (kind, body) = read_message(up, MAX_AUTH_MESSAGE)
                .await
                .ok_or_else(|| fail("closed"))?;
            if kind == b'E' {
                return Err(fail(&error_text(&body)));
            }
            if kind == b'N' {
                continue;
            }
            if kind != b'R' || body.len() < 4 {
                return Err(fail("unexpected message during login"));
            }
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let mut out = BytesMut::new();
            match code {
                0 if scram.is_some() && !scram_verified => {
                    return Err(fail(
                        "SCRAM ended before the server proved it knows the password",
                    ))
                }
                0 => return Ok(()),
                3 => return Err(fail(
                    "the database asks for a cleartext password; configure md5 or scram-sha-256",
                )),
                // Through an agent, the upstream's answer passes a machine Keyway does
                // not fully trust; an md5 response to a salt it chose could be cracked
                // offline. SCRAM proves both sides without that.
                5 if self.svc.via.is_some() => {
                    return Err(fail(
                        "md5 through an agent; use scram-sha-256 for this role",
                    ))
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
                    scram_verified = true;
                    continue;
                }
                _ => return Err(fail("unsupported authentication method")),
            }
            up.write_all(&out).await.map_err(|_| fail("write"))?;
        }
    }

    /// Relays the session: upstream bytes as they are; client frames read for the
    /// audit on the way through. Ends on the upstream's close, revocation, expiry, a
    /// reload it no longer fits, or the gateway stopping; those win over bytes ready to
    /// go either way. Returns how it ended; both connections are closed by then.
    async fn relay(
        &self,
        client: Box<dyn Io>,
        upstream: Box<dyn Io>,
        entry: &Arc<Entry>,
        role: &str,
        source: std::net::IpAddr,
    ) -> Ended {
        let mut session = crate::sessions::Session::new(&self.svc, entry, source);
        let user = self.pg.roles.get(role).map(|r| r.user.clone());
        session.role = Some((role.to_owned(), user.unwrap_or_default()));
        let ended = self.gw.sessions.end_of(entry.clone(), session);
        tokio::pin!(ended);
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut up_r, mut up_w) = tokio::io::split(upstream);
        let audit = StatementAudit {
            gw: self.gw.clone(),
            service: self.svc.name.clone(),
            token_id: entry.id().to_owned(),
            principal: entry.record.principal.clone(),
            role: role.to_owned(),
        };
        let _active = self.gw.metrics.session(&self.svc.name);
        let started = Instant::now();
        let mut framing = Framing::default();
        let bytes_in = std::sync::atomic::AtomicU64::new(0);
        let syncs = Syncs::default();
        let end = {
            let down = upstream_to_client(&mut up_r, &mut client_w, &mut framing);
            let up = client_to_upstream(&mut client_r, &mut up_w, &audit, &bytes_in, &syncs);
            tokio::pin!(down, up);
            let mut client_done = false;
            loop {
                tokio::select! {
                    biased;
                    why = &mut ended => break why,
                    () = &mut down => break SessionEnd::Closed,
                    // The client said Terminate or went away: the upstream, told so,
                    // closes, and that ends `down`.
                    () = &mut up, if !client_done => client_done = true,
                }
            }
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            if end != SessionEnd::Closed && framing.at_boundary() {
                let msg = match end {
                    SessionEnd::Revoked => "terminating connection: the Keyway token was revoked".into(),
                    SessionEnd::Expired => "terminating connection: the Keyway token expired".into(),
                    SessionEnd::Shutdown => "terminating connection: the Keyway gateway is shutting down".into(),
                    why => format!(
                        "terminating connection: the gateway's config changed and this session no longer fits it ({})",
                        why.as_str()
                    ),
                };
                let _ = client_w
                    .write_all(&error_response("FATAL", "57P01", &msg))
                    .await;
            }
            let _ = client_w.shutdown().await;
        })
        .await;
        let mut ev = self.gw.event(EventKind::ConnectionClose);
        ev.service = Some(self.svc.name.clone());
        ev.token_id = Some(entry.id().to_owned());
        ev.principal = Some(entry.record.principal.clone());
        ev.detail = json!({
            "end": end.as_str(),
            "role": role,
            "bytes_in": bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            "bytes_out": framing.bytes,
            "duration_ms": started.elapsed().as_millis() as u64,
        });
        Ended {
            why: end,
            busy: syncs.awaiting(framing.readies),
            event: ev,
        }
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
        let mut ev = self.gw.event(EventKind::DbCancel);
        ev.service = Some(self.svc.name.clone());
        ev.token_id = Some(entry.id().to_owned());
        ev.principal = Some(entry.record.principal.clone());
        self.gw.audit.record(ev);
    }

    /// A `CancelRequest` to the upstream for backend `pid`, on its own connection.
    async fn cancel_upstream(&self, pid: i32, key: i32) {
        let mut buf = BytesMut::new();
        frontend::cancel_request(pid, key, &mut buf);
        if let Ok(mut up) = crate::upstream::dial(
            &self.gw.agents,
            self.svc.via.as_deref(),
            &self.pg.upstream,
            self.pg.connect_timeout,
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
    fn record(&self, reservation: crate::audit::Reservation, c: &Capture) {
        let detail = if c.kind == b'F' {
            let oid = (c.kept.len() == 4)
                .then(|| u32::from_be_bytes([c.kept[0], c.kept[1], c.kept[2], c.kept[3]]));
            json!({ "role": self.role, "protocol": "function_call", "function_oid": oid })
        } else {
            let text = String::from_utf8_lossy(&c.kept);
            // Redact first, then cut: a token across the cut is still found whole.
            let text = keyway_core::token::redact(&text);
            let mut cut = text.len().min(MAX_STATEMENT);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            json!({
                "role": self.role,
                "protocol": if c.kind == b'Q' { "simple" } else { "extended" },
                "statement": &text[..cut],
                "length": c.len,
                "truncated": c.len > MAX_STATEMENT,
            })
        };
        let mut ev = self.gw.event(EventKind::DbStatement);
        ev.service = Some(self.service.clone());
        ev.token_id = Some(self.token_id.clone());
        ev.principal = Some(self.principal.clone());
        ev.detail = detail;
        reservation.send(ev);
    }
}

/// What the audit keeps of a `Q`, `P` or `F` frame as it streams through: the
/// statement text (for `P`, after the statement name, whatever its length) up to a
/// cap, and its whole length; for `F`, the function's OID.
struct Capture {
    kind: u8,
    skip_name: bool,
    done: bool,
    kept: Vec<u8>,
    len: usize,
}

impl Capture {
    fn new(kind: u8) -> Self {
        Self {
            kind,
            skip_name: kind == b'P',
            done: false,
            kept: Vec::new(),
            len: 0,
        }
    }

    fn feed(&mut self, mut chunk: &[u8]) {
        if self.kind == b'F' {
            let need = 4usize.saturating_sub(self.kept.len()).min(chunk.len());
            self.kept.extend_from_slice(&chunk[..need]);
            return;
        }
        if self.done {
            return;
        }
        if self.skip_name {
            let Some(i) = chunk.iter().position(|&b| b == 0) else {
                return;
            };
            self.skip_name = false;
            chunk = &chunk[i + 1..];
        }
        let (text, end) = match chunk.iter().position(|&b| b == 0) {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        self.len += text.len();
        let room = (MAX_STATEMENT + REDACT_SLACK).saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&text[..text.len().min(room)]);
        self.done = end;
    }
}

/// How a session ended: why, whether a query was running upstream, and its
/// `connection.close` event.
struct Ended {
    why: SessionEnd,
    busy: bool,
    event: keyway_store::AuditEvent,
}

/// What the client asked of the upstream, to tell whether a query is running when
/// the session ends: the frames the upstream answers with `ReadyForQuery` (`Q`, `S`,
/// `F`), and an `Execute` not yet followed by a `Sync` (a pipeline's `Flush`
/// fetches results without one). It errs towards busy (a `Sync` inside COPY, a query
/// the upstream skips after an error): a cancel to an idle backend does nothing.
#[derive(Default)]
struct Syncs {
    sent: std::sync::atomic::AtomicU64,
    execute_unsynced: std::sync::atomic::AtomicBool,
}

impl Syncs {
    fn sent(&self, kind: u8) {
        use std::sync::atomic::Ordering::Relaxed;
        match kind {
            b'Q' | b'F' => {
                self.sent.fetch_add(1, Relaxed);
            }
            b'S' => {
                self.sent.fetch_add(1, Relaxed);
                self.execute_unsynced.store(false, Relaxed);
            }
            b'E' => self.execute_unsynced.store(true, Relaxed),
            _ => {}
        }
    }

    /// Whether the upstream still owes an answer, given the `ReadyForQuery`s it sent.
    fn awaiting(&self, readies: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.sent.load(Relaxed) > readies || self.execute_unsynced.load(Relaxed)
    }
}

/// Where the upstream-to-client byte stream stands in the message framing, so a
/// closing `ErrorResponse` is never put inside another message.
#[derive(Default)]
struct Framing {
    header: [u8; 5],
    have: usize,
    left: usize,
    /// A write to the client was under way (and may have been cut part-way).
    writing: bool,
    bytes: u64,
    /// `ReadyForQuery` messages passed on: answers to the client's sync points.
    readies: u64,
}

impl Framing {
    fn advance(&mut self, mut chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        while !chunk.is_empty() {
            if self.left > 0 {
                let k = self.left.min(chunk.len());
                self.left -= k;
                chunk = &chunk[k..];
                continue;
            }
            self.header[self.have] = chunk[0];
            self.have += 1;
            chunk = &chunk[1..];
            if self.have == 5 {
                let h = &self.header;
                if h[0] == b'Z' {
                    self.readies += 1;
                }
                self.left =
                    (u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize).saturating_sub(4);
                self.have = 0;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        !self.writing && self.have == 0 && self.left == 0
    }
}

/// Upstream bytes to the client, as they are, until either side ends.
async fn upstream_to_client<R, W>(r: &mut R, w: &mut W, framing: &mut Framing)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        framing.writing = true;
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
        framing.writing = false;
        framing.advance(&buf[..n]);
    }
}

/// Client frames to the upstream, as they are, in batches: a frame is flushed when no
/// whole frame is waiting behind it. `Q`, `P` and `F` are read for the audit on the
/// way; under `fail_closed` a frame waits for its audit event's place before it goes.
async fn client_to_upstream<R, W>(
    r: &mut R,
    w: &mut W,
    audit: &StatementAudit,
    bytes: &std::sync::atomic::AtomicU64,
    syncs: &Syncs,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = BufReader::with_capacity(RELAY_BUFFER / 2, r);
    let mut w = BufWriter::with_capacity(RELAY_BUFFER / 2, w);
    let mut buf = vec![0u8; RELAY_BUFFER / 2];
    loop {
        let mut header = [0u8; 5];
        if r.read_exact(&mut header).await.is_err() {
            break;
        }
        let kind = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len < 4 {
            break;
        }
        bytes.fetch_add(len as u64 + 1, std::sync::atomic::Ordering::Relaxed);
        syncs.sent(kind);
        let audited = matches!(kind, b'Q' | b'P' | b'F');
        let reservation = if audited {
            Some(audit.gw.audit.reserve_waiting().await)
        } else {
            None
        };
        let mut capture = Capture::new(kind);
        if w.write_all(&header).await.is_err() {
            return;
        }
        let mut left = len - 4;
        while left > 0 {
            let n = left.min(buf.len());
            if r.read_exact(&mut buf[..n]).await.is_err() || w.write_all(&buf[..n]).await.is_err() {
                let _ = w.shutdown().await;
                return;
            }
            if audited {
                capture.feed(&buf[..n]);
            }
            left -= n;
        }
        if let Some(reservation) = reservation {
            audit.record(reservation, &capture);
        }
        if !whole_frame_waiting(r.buffer()) && w.flush().await.is_err() {
            return;
        }
        if kind == b'X' {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// Whether `buffered` holds at least one whole frame (type byte, then its length,
/// which counts itself).
fn whole_frame_waiting(buffered: &[u8]) -> bool {
    buffered.len() >= 5
        && (u32::from_be_bytes([buffered[1], buffered[2], buffered[3], buffered[4]]) as usize)
            < buffered.len()
}

/// `NegotiateProtocolVersion`: 3.0, and the options not recognised.
fn negotiate_protocol_version(unknown: &[&String]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&(unknown.len() as i32).to_be_bytes());
    for name in unknown {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
    }
    frame(b'v', &body)
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

    fn capture(kind: u8, body: &[u8], chunk: usize) -> Capture {
        let mut c = Capture::new(kind);
        for part in body.chunks(chunk.max(1)) {
            c.feed(part);
        }
        c
    }

    #[test]
    fn a_parse_frame_is_captured_after_its_name_whatever_its_length() {
        let mut body = vec![b'n'; 10_000];
        body.push(0);
        body.extend_from_slice(b"select secret_things()\0\0\0");
        for chunk in [1, 7, 4096, 100_000] {
            let c = capture(b'P', &body, chunk);
            assert_eq!(c.kept, b"select secret_things()", "chunk {chunk}");
            assert_eq!(c.len, 22);
        }
    }

    #[test]
    fn a_long_statement_keeps_its_length_and_a_capped_text() {
        let mut body = b"/*".to_vec();
        body.extend(std::iter::repeat_n(b' ', 10_000));
        body.extend_from_slice(b"*/ drop table t\0");
        let c = capture(b'Q', &body, 333);
        assert_eq!(c.len, body.len() - 1);
        assert_eq!(c.kept.len(), MAX_STATEMENT + REDACT_SLACK);
    }

    #[test]
    fn a_function_call_keeps_its_oid() {
        let c = capture(b'F', &[0, 0, 0x0b, 0xb8, 0, 1, 0, 0], 3);
        assert_eq!(c.kept, [0, 0, 0x0b, 0xb8]);
    }

    #[test]
    fn frames_waiting_and_protocol_negotiation() {
        assert!(!whole_frame_waiting(b"Q\0\0"));
        assert!(!whole_frame_waiting(b"Q\0\0\0\x09abc"));
        assert!(whole_frame_waiting(b"Q\0\0\0\x08abcd"));
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

    #[test]
    fn a_token_across_the_cap_is_redacted_whole() {
        use secrecy::ExposeSecret;
        let issued = keyway_core::token::IssuedToken::generate(keyway_core::TokenKind::Access);
        let token = issued.secret().expose_secret();
        let mut body = vec![b' '; MAX_STATEMENT - 30];
        body.extend_from_slice(token.as_bytes());
        body.push(0);
        let c = capture(b'Q', &body, 1000);
        let text = String::from_utf8_lossy(&c.kept);
        let redacted = keyway_core::token::redact(&text);
        assert!(
            redacted.contains(issued.id()),
            "the token is still named by its id"
        );
        assert!(
            !redacted.contains(&token[22..40]),
            "{}",
            &redacted[redacted.len() - 80..]
        );
    }
}
