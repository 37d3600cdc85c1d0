//! The upstream login: a connection to the database (directly or through an agent)
//! as the grant's role, with its sealed password: trust, md5 or SCRAM-SHA-256 (whose
//! server signature must check out); never cleartext.

use super::*;

// === impl PgProxy ===

impl PgProxy {
    /// Connects to the upstream and logs in as the role's user, with its stored
    /// password.
    pub(super) async fn login_upstream(
        &self,
        role: &str,
        params: &HashMap<String, String>,
    ) -> Result<Box<dyn Io>, Refused> {
        let pg_role = self
            .pg
            .roles
            .get(role)
            .ok_or(Refused::Client("28000", "unknown role".into()))?;
        let Some(password) = self.h.secrets.header(&pg_role.secret) else {
            tracing::warn!(service = %self.svc.name, secret = %pg_role.secret, "database password not set; `keyway secret set`");
            return Err(Refused::Client(
                "08006",
                "Keyway has no credential for this database role yet".into(),
            ));
        };
        let mut upstream = crate::upstream::dial(
            &self.h.agents,
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

    /// Logs in upstream as `user`: trust, md5 or SCRAM-SHA-256 (whose server
    /// signature must check out). A cleartext password is never sent: the upstream
    /// connection is not encrypted, and whoever answers on its address would read it.
    pub(super) async fn upstream_login(
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
}
