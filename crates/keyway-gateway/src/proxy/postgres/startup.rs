//! Start-up: the client's negotiation (TLS, protocol version, cancel requests), its
//! login with its Keyway token as the password, the authorizer's decision, and the
//! first `ReadyForQuery` with the cancel key swapped for one of Keyway's.

use super::*;
use keyway_core::head::Bearer;
use keyway_core::pgwire::Code;

// === impl PgProxy ===

impl PgProxy {
    /// Puts TLS on `client` (after `SSLRequest`, or directly when `direct`, which
    /// must agree on ALPN `postgresql`): the thumbprint of the client certificate it
    /// presented, if any.
    async fn accept_tls(
        &self,
        client: &mut Box<dyn Io>,
        direct: bool,
    ) -> Result<Option<String>, Refused> {
        let acceptor = self.tls.clone().ok_or(Refused::Silent)?;
        let plain = std::mem::replace(client, Box::new(tokio::io::duplex(1).0));
        let tls = acceptor.accept(plain).await.map_err(|_| Refused::Silent)?;
        let session = tls.get_ref().1;
        if direct && session.alpn_protocol() != Some(crate::tls::alpn::POSTGRES) {
            return Err(Refused::Silent);
        }
        let cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| crate::tls::thumbprint(c.as_ref()));
        *client = Box::new(tls);
        Ok(cert)
    }

    /// The client's part of start-up, up to its password: encryption, the start-up
    /// packet, protocol negotiation, the password asked for and read. The client
    /// sets its pace; [`Self::start`] races it against the gateway's stop.
    pub(super) async fn hello(
        &self,
        client: &mut Box<dyn Io>,
        source: IpAddr,
    ) -> Result<Opening, Refused> {
        let mut is_tls = false;
        let mut cert = None;
        // PostgreSQL 17's direct TLS (`sslnegotiation=direct`): a TLS ClientHello
        // where the start-up packet would be, which must agree on ALPN `postgresql`
        // (as PostgreSQL itself requires, against cross-protocol tricks).
        let mut first = [0u8; 1];
        client
            .read_exact(&mut first)
            .await
            .map_err(|_| Refused::Silent)?;
        let read = std::mem::replace(client, Box::new(tokio::io::duplex(1).0));
        *client = Box::new(crate::runtime::Rewound::new(first.to_vec(), read));
        if first[0] == TLS_HANDSHAKE {
            cert = self.accept_tls(client, true).await?;
            is_tls = true;
        }
        let (minor, params) = loop {
            let (code, body) = read_startup(client).await?;
            match pgwire::Code::of(code) {
                Code::Ssl | Code::Gssenc if is_tls => {
                    return Err(Refused::Client(
                        "08P01",
                        "encryption requested inside TLS".into(),
                    ))
                }
                Code::Ssl if self.tls.is_some() => {
                    client.write_all(b"S").await.map_err(|_| Refused::Silent)?;
                    cert = self.accept_tls(client, false).await?;
                    is_tls = true;
                }
                Code::Ssl | Code::Gssenc => {
                    client.write_all(b"N").await.map_err(|_| Refused::Silent)?
                }
                Code::Cancel => return Ok(Opening::Cancel(body)),
                Code::V3 { minor } => break (minor, pgwire::parse_params(&body)),
                Code::Other { major, minor } => {
                    return Err(Refused::Client(
                        "08P01",
                        format!("unsupported frontend protocol {major}.{minor}: Keyway speaks 3.0"),
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
        let token = pgwire::password(&body);
        Ok(Opening::Login {
            params,
            token,
            tls: is_tls,
            cert,
        })
    }

    /// Start-up up to the first `ReadyForQuery`: negotiation, the client's login with
    /// its token, the upstream login as the mapped role, key data.
    pub(super) async fn start(
        &self,
        client: &mut Box<dyn Io>,
        peer: SocketAddr,
    ) -> Result<(Box<dyn Io>, Arc<Entry>, String, Option<CancelKey<'_>>), Refused> {
        let source = peer.ip().to_canonical();
        // A session that has not got as far as its password when the gateway stops
        // is told so and not waited for.
        let (params, token, is_tls, cert) = tokio::select! {
            biased;
            () = self.h.sessions.stopping() => return Err(shutting_down()),
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
        let mut ev = self.h.audit.event(EventKind::ConnectionOpen);
        ev.service = Some(self.svc.name.clone());
        ev.source = Some(source.to_string());
        let decided = self.decide(&token, source, cert.as_deref(), &mut ev);
        drop(token);
        let (entry, role) = match decided {
            Ok(x) => x,
            Err(reason) => {
                ev.deny(reason);
                if !self.h.audit.record(ev).wait().await {
                    return Err(unrecorded());
                }
                let (code, msg) = match reason.status() {
                    401 => ("28P01", "password authentication failed: Keyway refused the token (wrong, expired or revoked)"),
                    403 => ("28000", "Keyway: this token does not grant this database"),
                    // cannot_connect_now: a retry may go through (a reload under way).
                    _ => ("57P03", "Keyway cannot open this session now"),
                };
                return Err(Refused::Client(code, msg.into()));
            }
        };
        let Ok(reservation) = self.h.audit.reserve() else {
            return Err(unrecorded());
        };
        let login = tokio::select! {
            biased;
            () = self.h.sessions.stopping() => Err(shutting_down()),
            login = self.login_upstream(&role, &params) => login,
        };
        let (mut upstream, upstream_auth) = match login {
            Ok(up) => up,
            Err(refused) => {
                ev.allow();
                ev.detail = json!({ "role": role, "error": refused.text() });
                if !reservation.send(ev).wait().await {
                    return Err(unrecorded());
                }
                return Err(refused);
            }
        };
        // Revoked while the upstream login went on: the session does not start.
        if let Err(reason) = entry.check_live(self.h.now()) {
            ev.deny(reason);
            if !reservation.send(ev).wait().await {
                return Err(unrecorded());
            }
            return Err(Refused::Client(
                "28P01",
                "password authentication failed: Keyway refused the token (wrong, expired or revoked)"
                    .into(),
            ));
        }
        let upstream_user = self.pg.roles.get(&role).map(|r| r.user.clone());
        ev.allow();
        ev.detail = json!({
            "role": role,
            "upstream_user": upstream_user,
            "tls": is_tls,
            "upstream_tls": self.pg.upstream_tls.is_some(),
            "upstream_auth": upstream_auth,
        });
        // The session opens once its event is committed (`durability = "commit"`).
        if !reservation.send(ev).wait().await {
            return Err(unrecorded());
        }
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

    /// The [`Authorizer`](crate::authz::Authorizer)'s checks, as for every protocol;
    /// the grant's role on success.
    pub(super) fn decide(
        &self,
        token: &str,
        source: std::net::IpAddr,
        cert: Option<&str>,
        ev: &mut keyway_store::AuditEvent,
    ) -> Result<(Arc<Entry>, String), DenyReason> {
        let attempt = Attempt {
            protocol: Protocol::Postgres,
            service: Reached::Served(&self.svc),
            source: Some(source),
            token: Bearer::Token(token),
            cert,
            ask: Ask::Session,
        };
        let admitted = self.h.authz.admit(&attempt).map_err(|r| {
            ev.token_id = r.token_id;
            ev.principal = r.principal;
            r.reason
        })?;
        admitted.mark_used(self.h.now());
        let Admitted { entry, role, .. } = admitted;
        ev.token_id = Some(entry.id().to_owned());
        ev.principal = Some(entry.record.principal.clone());
        Ok((entry, role.unwrap_or_default()))
    }
}

/// `NegotiateProtocolVersion`: 3.0, and the options not recognised.
pub(super) fn negotiate_protocol_version(unknown: &[&String]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&(unknown.len() as i32).to_be_bytes());
    for name in unknown {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
    }
    frame(b'v', &body)
}

/// The first packet: length (bounded) and code, then the rest. A length no start-up
/// packet has (an HTTP request, TLS without `SSLRequest`, noise) is answered with
/// `08P01`, as a client that reads PostgreSQL's errors shows it; a connection that
/// closes first just closes.
pub(super) async fn read_startup<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(i32, Vec<u8>), Refused> {
    let len = r.read_i32().await.map_err(|_| Refused::Silent)?;
    let Some(len) = pgwire::startup_len(len) else {
        return Err(Refused::Client(
            "08P01",
            "invalid length of startup packet: this Keyway port speaks the PostgreSQL \
             protocol (psql, libpq, a PostgreSQL driver)"
                .into(),
        ));
    };
    let code = r.read_i32().await.map_err(|_| Refused::Silent)?;
    let mut body = vec![0u8; len - 8];
    r.read_exact(&mut body).await.map_err(|_| Refused::Silent)?;
    Ok((code, body))
}

/// The session cannot be audited now (the audit queue is full or the store refuses
/// writes): refused, with a code a client may retry on.
fn unrecorded() -> Refused {
    Refused::Client("53300", "Keyway cannot record this session now".into())
}

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;
