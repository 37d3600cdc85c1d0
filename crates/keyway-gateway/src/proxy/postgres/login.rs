//! The upstream login: a connection to the database (directly or through an agent,
//! in TLS when `upstream_tls` says) as the grant's role, with its sealed password:
//! SCRAM-SHA-256 (whose server signature must check out; with channel binding,
//! `-PLUS`, over TLS when the server offers it), trust, or md5 and cleartext where
//! no one on the path can read them: over verified TLS, on loopback, or where the
//! service allows them by name (`allow_weak_upstream_auth`).

use sha2::Digest;

use super::*;

/// How the connection to the database is carried, which decides the password
/// methods it may take.
pub(super) struct Transport {
    /// TLS, verified or not.
    tls: bool,
    /// TLS with a verified certificate: the server is who it claims.
    verified: bool,
    /// `tls-server-end-point` channel binding data (RFC 5929): the hash of the
    /// server's certificate, over TLS, where its signature names the hash.
    endpoint: Option<Vec<u8>>,
    /// On this host, dialled by the gateway itself.
    local: bool,
}

// === impl PgProxy ===

impl PgProxy {
    /// Connects to the upstream and logs in as the role's user, with its stored
    /// password.
    pub(super) async fn login_upstream(
        &self,
        role: &str,
        params: &HashMap<String, String>,
    ) -> Result<(Box<dyn Io>, &'static str), Refused> {
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
        let (mut upstream, transport) = self.connect_upstream().await.map_err(|e| {
            tracing::warn!(service = %self.svc.name, reason = e.reason, why = %e.why, "database upstream unreachable");
            let shown = match e.reason {
                "upstream_unreachable" | "upstream_timeout" => "the database is unreachable".into(),
                reason => format!("Keyway could not reach the database over TLS ({reason}; see the gateway log)"),
            };
            Refused::Client("08006", shown)
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
        let method = self
            .upstream_login(
                &mut upstream,
                &transport,
                &pg_role.user,
                password.as_bytes(),
            )
            .await?;
        Ok((upstream, method))
    }

    /// A connection to the database, in TLS when `upstream_tls` says: an
    /// `SSLRequest` first, which the database must accept. Cancel requests take the
    /// same way.
    pub(super) async fn connect_upstream(
        &self,
    ) -> Result<(Box<dyn Io>, Transport), crate::upstream::DialError> {
        let dialer = &self.h.dialer;
        let timeout = self.pg.connect_timeout;
        let via = self.svc.via.as_deref();
        let mut up = dialer.plain(via, &self.pg.upstream, timeout).await?;
        let host = crate::upstream::host_of(&self.pg.upstream);
        let local = via.is_none() && keyway_core::config::is_loopback_host(host);
        let Some(t) = &self.pg.upstream_tls else {
            let transport = Transport {
                tls: false,
                verified: false,
                endpoint: None,
                local,
            };
            return Ok((up, transport));
        };
        let refused = |why: &str| crate::upstream::DialError {
            reason: "upstream_tls_refused",
            why: why.into(),
        };
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        let answer = tokio::time::timeout(timeout, async {
            up.write_all(&buf).await?;
            up.read_u8().await
        })
        .await;
        match answer {
            Ok(Ok(b'S')) => {}
            Ok(Ok(b'N')) => return Err(refused("the database does not offer TLS (ssl = off)")),
            Ok(Ok(_)) => {
                return Err(refused(
                    "the database answered SSLRequest with neither S nor N",
                ))
            }
            Ok(Err(e)) => return Err(refused(&format!("the database closed: {e}"))),
            Err(_) => return Err(refused("the database did not answer SSLRequest in time")),
        }
        let tls = dialer.wrap(&self.svc, host, up, timeout).await?;
        let endpoint = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| end_point_hash(c.as_ref()));
        if endpoint.is_none() {
            tracing::warn!(service = %self.svc.name, "the database's certificate names no hash for channel binding (Ed25519?); SCRAM goes without it");
        }
        let transport = Transport {
            tls: true,
            verified: t.verify,
            endpoint,
            local,
        };
        Ok((Box::new(tls), transport))
    }

    /// Logs in upstream as `user`, and says how (`SCRAM-SHA-256-PLUS`, `md5`, …).
    /// SCRAM's server signature must check out. md5 and cleartext go only where no
    /// one on the path can take them ([`Transport`]) or where the service allows
    /// them by name.
    pub(super) async fn upstream_login(
        &self,
        up: &mut Box<dyn Io>,
        transport: &Transport,
        user: &str,
        password: &[u8],
    ) -> Result<&'static str, Refused> {
        let fail = |why: &str| {
            tracing::warn!(service = %self.svc.name, why, "the database refused the gateway's login");
            Refused::Client(
                "08006",
                "the database refused Keyway's login for this role (see the gateway log)".into(),
            )
        };
        let weak_ok = |method: &str| transport.allows(method, &self.pg.allow_weak_upstream_auth);
        let weak_refused = |method: &str| {
            fail(&format!(
                "the database asks for `{method}`, which would cross an unverified path where it can be read or cracked; \
                 use scram-sha-256 for this role, `upstream_tls = \"verify-full\"`, or name it in `allow_weak_upstream_auth`"
            ))
        };
        let mut scram: Option<(ScramSha256, &'static str)> = None;
        let mut scram_verified = false;
        let mut method = "trust";
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
                // No password asked, over TLS nothing verified: whoever answered may
                // be anyone, and the session would be theirs.
                0 if scram.is_none() && method == "trust" && transport.tls && !weak_ok("trust") => {
                    return Err(weak_refused("trust"))
                }
                0 => return Ok(scram.map_or(method, |(_, m)| m)),
                3 if !weak_ok("password") => return Err(weak_refused("password")),
                3 => {
                    frontend::password_message(password, &mut out).map_err(|_| fail("password"))?;
                    method = "password";
                }
                // Through an agent, the upstream's answer passes a machine Keyway does
                // not fully trust; an md5 response to a salt it chose could be cracked
                // offline. SCRAM proves both sides without that.
                5 if !weak_ok("md5") => return Err(weak_refused("md5")),
                5 if body.len() >= 8 => {
                    let salt = [body[4], body[5], body[6], body[7]];
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        password,
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), &mut out)
                        .map_err(|_| fail("md5"))?;
                    method = "md5";
                }
                10 => {
                    let offered = |name: &[u8]| body[4..].split(|&b| b == 0).any(|m| m == name);
                    // Over TLS, bound to the server's certificate when it can be: a
                    // relay in the middle then cannot complete the exchange. Saying
                    // "y" (could, was not offered) lets the server catch a downgrade.
                    let (binding, mechanism) = match &transport.endpoint {
                        Some(hash) if offered(b"SCRAM-SHA-256-PLUS") => (
                            ChannelBinding::tls_server_end_point(hash.clone()),
                            "SCRAM-SHA-256-PLUS",
                        ),
                        Some(_) => (ChannelBinding::unrequested(), "SCRAM-SHA-256"),
                        // Plaintext, or a certificate whose hash binding cannot name.
                        None => (ChannelBinding::unsupported(), "SCRAM-SHA-256"),
                    };
                    if !offered(b"SCRAM-SHA-256") && mechanism == "SCRAM-SHA-256" {
                        return Err(fail("no SCRAM-SHA-256 offered"));
                    }
                    let s = ScramSha256::new(password, binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut out)
                        .map_err(|_| fail("sasl"))?;
                    scram = Some((s, mechanism));
                }
                11 => {
                    let (s, _) = scram
                        .as_mut()
                        .ok_or_else(|| fail("SASL continue without start"))?;
                    s.update(&body[4..])
                        .map_err(|_| fail("SCRAM server-first"))?;
                    frontend::sasl_response(s.message(), &mut out).map_err(|_| fail("sasl"))?;
                }
                12 => {
                    let (s, _) = scram
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

// === impl Transport ===

impl Transport {
    /// Whether a weak login `method` (`md5`, `password`, `trust`) may go this way:
    /// to a verified server, on this host, or where the service names it in
    /// `allowed`.
    fn allows(&self, method: &str, allowed: &[String]) -> bool {
        self.verified || self.local || allowed.iter().any(|m| m == method)
    }
}

/// The `tls-server-end-point` hash of a DER certificate (RFC 5929 §4.1): with the
/// hash of its signature algorithm (RSA-PSS's from its parameters), SHA-256 for MD5
/// and SHA-1; `None` where the signature names no hash (Ed25519) or the certificate
/// cannot be read.
fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::oid_registry::{
        OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512, OID_PKCS1_RSASSAPSS,
        OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
        OID_SIG_ECDSA_WITH_SHA512,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sig = &cert.signature_algorithm;
    let by_hash = |h: &x509_parser::der_parser::Oid<'_>| {
        if *h == OID_NIST_HASH_SHA384 {
            sha2::Sha384::digest(der).to_vec()
        } else if *h == OID_NIST_HASH_SHA512 {
            sha2::Sha512::digest(der).to_vec()
        } else {
            // SHA-1 and SHA-256 alike (RFC 5929: MD5 and SHA-1 become SHA-256).
            sha2::Sha256::digest(der).to_vec()
        }
    };
    let a = &sig.algorithm;
    if *a == OID_PKCS1_RSASSAPSS {
        let params = sig.parameters.as_ref()?;
        let pss = x509_parser::signature_algorithm::RsaSsaPssParams::try_from(params).ok()?;
        Some(by_hash(pss.hash_algorithm_oid()))
    } else if [
        OID_PKCS1_SHA1WITHRSA,
        OID_PKCS1_SHA256WITHRSA,
        OID_SIG_ECDSA_WITH_SHA256,
    ]
    .contains(a)
    {
        Some(by_hash(&OID_NIST_HASH_SHA256))
    } else if *a == OID_PKCS1_SHA384WITHRSA || *a == OID_SIG_ECDSA_WITH_SHA384 {
        Some(by_hash(&OID_NIST_HASH_SHA384))
    } else if *a == OID_PKCS1_SHA512WITHRSA || *a == OID_SIG_ECDSA_WITH_SHA512 {
        Some(by_hash(&OID_NIST_HASH_SHA512))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{end_point_hash, Transport};

    #[test]
    fn weak_logins_go_only_where_no_one_can_take_them() {
        let path = |tls, verified, local| Transport {
            tls,
            verified,
            endpoint: None,
            local,
        };
        let named = ["md5".to_owned()];
        for (way, allows_md5) in [
            (path(false, false, false), false), // plaintext beyond this host
            (path(true, false, false), false),  // TLS, not verified
            (path(true, true, false), true),    // verified TLS
            (path(false, false, true), true),   // this host
        ] {
            assert_eq!(way.allows("md5", &[]), allows_md5);
            assert!(way.allows("md5", &named), "named by the service");
            assert_eq!(way.allows("password", &named), allows_md5, "named md5 only");
        }
    }

    /// A self-signed certificate signed with `alg`, as DER.
    fn signed_with(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["db.test".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_end_point_hash_follows_the_signature() {
        let p256 = signed_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(end_point_hash(&p256).unwrap().len(), 32);
        let p384 = signed_with(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(end_point_hash(&p384).unwrap().len(), 48);
        // Ed25519 names no hash: no binding, said so by the caller.
        assert_eq!(end_point_hash(&signed_with(&rcgen::PKCS_ED25519)), None);
        assert_eq!(end_point_hash(b"not a certificate"), None);
    }
}
