//! The session after start-up: bytes relayed as they are, the client's statements
//! read on the way through for the audit, the upstream's messages counted to know
//! whether a query is running, until either side ends or the session must.

use super::*;

// === impl PgProxy ===

impl PgProxy {
    /// Relays the session: upstream bytes as they are; client frames read for the
    /// audit on the way through. Ends on the upstream's close, revocation, expiry, a
    /// reload it no longer fits, or the gateway stopping; those win over bytes ready to
    /// go either way. Returns how it ended; both connections are closed by then.
    pub(super) async fn relay(
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
        let (live, ended) = self.h.sessions.open("postgres", entry.clone(), session);
        let meter = live.meter();
        tokio::pin!(ended);
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut up_r, mut up_w) = tokio::io::split(upstream);
        let audit = StatementAudit {
            sink: self.h.audit.clone(),
            service: self.svc.name.clone(),
            token_id: entry.id().to_owned(),
            principal: entry.record.principal.clone(),
            role: role.to_owned(),
            meter: meter.clone(),
        };
        let _active = self.h.metrics.session(&self.svc.name);
        let started = Instant::now();
        let mut framing = Framing::default();
        let syncs = Syncs::default();
        // Under `audit_holds = "answer"`, the commits the upstream's answers wait for.
        let holds = (self.pg.holds == PgHolds::Answer).then(Held::default);
        // Whether the session ends on an answer withheld (its statement sent), not on
        // a statement kept back.
        let mut withheld = false;
        let end = {
            let down = upstream_to_client(
                &mut up_r,
                &mut client_w,
                &mut framing,
                &meter,
                holds.as_ref(),
            );
            let up = client_to_upstream(
                &mut client_r,
                &mut up_w,
                &audit,
                &meter.bytes_in,
                &syncs,
                holds.as_ref(),
            );
            tokio::pin!(down, up);
            let mut client_done = false;
            loop {
                tokio::select! {
                    biased;
                    why = &mut ended => break why,
                    // An answer whose statement's event the store did not take is
                    // withheld, and the session ends.
                    answered = &mut down => break match answered {
                        Sent::All => SessionEnd::Closed,
                        Sent::Unaudited => {
                            withheld = true;
                            SessionEnd::Unaudited
                        }
                    },
                    // The client said Terminate or went away: the upstream, told so,
                    // closes, and that ends `down`. A statement that could not be
                    // audited was not sent: the session ends, and the client is told.
                    sent = &mut up, if !client_done => match sent {
                        Sent::Unaudited => break SessionEnd::Unaudited,
                        Sent::All => client_done = true,
                    },
                }
            }
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            if end != SessionEnd::Closed && framing.at_boundary() {
                let msg = match end {
                    SessionEnd::Revoked => "terminating connection: the Keyway token was revoked".into(),
                    SessionEnd::Expired => "terminating connection: the Keyway token expired".into(),
                    SessionEnd::Shutdown => "terminating connection: the Keyway gateway is shutting down".into(),
                    SessionEnd::Terminated => "terminating connection: a Keyway operator ended this session".into(),
                    SessionEnd::Unaudited if withheld => "terminating connection: Keyway could not write the statement's audit event (audit_unavailable), so its answer was withheld; the statement may have run (audit_holds = \"answer\")".into(),
                    SessionEnd::Unaudited => "terminating connection: Keyway could not write the statement's audit event (audit_unavailable), so it was not run; retry shortly".into(),
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
        let mut ev = self.h.audit.event(EventKind::ConnectionClose);
        ev.service = Some(self.svc.name.clone());
        ev.token_id = Some(entry.id().to_owned());
        ev.principal = Some(entry.record.principal.clone());
        ev.detail = json!({
            "end": end.as_str(),
            "role": role,
            "bytes_in": meter.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            "bytes_out": framing.bytes,
            "duration_ms": started.elapsed().as_millis() as u64,
        });
        Ended {
            why: end,
            busy: syncs.awaiting(framing.readies),
            event: ev,
        }
    }
}

/// The buffer of client frames on their way to the upstream.
const TO_UPSTREAM: usize = RELAY_BUFFER / 2;

/// How a session ended: why, whether a query was running upstream, and its
/// `connection.close` event.
pub(super) struct Ended {
    pub(super) why: SessionEnd,
    pub(super) busy: bool,
    pub(super) event: keyway_store::AuditEvent,
}

/// What the client asked of the upstream, to tell whether a query is running when
/// the session ends: the frames the upstream answers with `ReadyForQuery` (`Q`, `S`,
/// `F`), and an `Execute` not yet followed by a `Sync` (a pipeline's `Flush`
/// fetches results without one). It errs towards busy (a `Sync` inside COPY, a query
/// the upstream skips after an error): a cancel to an idle backend does nothing.
#[derive(Default)]
pub(super) struct Syncs {
    pub(super) sent: std::sync::atomic::AtomicU64,
    pub(super) execute_unsynced: std::sync::atomic::AtomicBool,
}

/// Where the upstream-to-client byte stream stands in the message framing, so a
/// closing `ErrorResponse` is never put inside another message.
#[derive(Default)]
pub(super) struct Framing {
    pub(super) header: [u8; 5],
    pub(super) have: usize,
    pub(super) left: usize,
    /// A write to the client was under way (and may have been cut part-way).
    pub(super) writing: bool,
    pub(super) bytes: u64,
    /// `ReadyForQuery` messages passed on: answers to the client's sync points.
    pub(super) readies: u64,
}

impl Syncs {
    pub(super) fn sent(&self, kind: u8) {
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
    pub(super) fn awaiting(&self, readies: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.sent.load(Relaxed) > readies || self.execute_unsynced.load(Relaxed)
    }
}

impl Framing {
    pub(super) fn advance(&mut self, mut chunk: &[u8]) {
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

    pub(super) fn at_boundary(&self) -> bool {
        !self.writing && self.have == 0 && self.left == 0
    }
}

/// The commits of the statements sent so far, under `audit_holds = "answer"`: each
/// is put here before its statement's last byte goes to the upstream, so any answer
/// to it is read after it is here. Both directions run on the session's task.
#[derive(Default)]
pub(super) struct Held(Mutex<Vec<crate::audit::Committed>>);

/// The most commits a session holds for answers not yet read (while the answers'
/// side waits on those it took, up to as many more). A client pipelining faster than
/// its answers come back then has its next statements wait for their own commits,
/// as under `audit_holds = "statement"`, instead of growing the list.
pub(super) const MAX_HELD: usize = 1024;

impl Held {
    /// Holds `c` for the answers; gives it back when the session holds too many.
    pub(super) fn hold(&self, c: crate::audit::Committed) -> Result<(), crate::audit::Committed> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if held.len() >= MAX_HELD {
            return Err(c);
        }
        held.push(c);
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits for every commit held so far; `false` if the store did not take one.
    async fn released(&self) -> bool {
        let held = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for c in held {
            if !c.wait().await {
                return false;
            }
        }
        true
    }
}

/// Upstream bytes to the client, as they are, until either side ends. With `held`,
/// bytes read go only once the statements sent before them are committed; an event
/// the store did not take ends it (`Sent::Unaudited`), the bytes withheld.
pub(super) async fn upstream_to_client<R, W>(
    r: &mut R,
    w: &mut W,
    framing: &mut Framing,
    meter: &crate::sessions::Meter,
    held: Option<&Held>,
) -> Sent
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let read = r.read(&mut buf).await;
        // At the upstream's end too: a statement it ran but whose answer never came
        // is still one the store may have refused.
        if let Some(held) = held {
            if !held.released().await {
                tracing::error!(
                    "a statement could not be audited; its answer is withheld and the session ends"
                );
                return Sent::Unaudited;
            }
        }
        let n = match read {
            Ok(0) | Err(_) => return Sent::All,
            Ok(n) => n,
        };
        framing.writing = true;
        if w.write_all(&buf[..n]).await.is_err() {
            return Sent::All;
        }
        framing.writing = false;
        framing.advance(&buf[..n]);
        meter
            .bytes_out
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How one side of a session ended.
pub(super) enum Sent {
    /// That side closed (or its connection failed): everything read was sent.
    All,
    /// A statement's audit event could not be written: the statement was not sent
    /// (or, under `audit_holds = "answer"`, its answer was not).
    Unaudited,
}

/// Client frames to the upstream, as they are, in batches: a frame is flushed when no
/// whole frame is waiting behind it. `Q`, `P` and `F` are read for the audit on the
/// way; under `fail_closed` a frame waits for its audit event's place before it goes,
/// and a whole one reaches the server only once its event is committed (`durability
/// = "commit"`), even in a pipeline larger than the buffer. With `held` (`audit_holds
/// = "answer"`) it goes at once, and its commit is held for the answer instead.
pub(super) async fn client_to_upstream<R, W>(
    r: &mut R,
    w: &mut W,
    audit: &StatementAudit,
    bytes: &std::sync::atomic::AtomicU64,
    syncs: &Syncs,
    held: Option<&Held>,
) -> Sent
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = BufReader::with_capacity(RELAY_BUFFER / 2, r);
    let mut w = BufWriter::with_capacity(TO_UPSTREAM, w);
    // Smaller than the writer's buffer, so that a frame's last piece is always held
    // in it (a write as large as the buffer would go out directly).
    let mut buf = vec![0u8; TO_UPSTREAM / 2];
    let mut pending = Vec::new();
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
            Some(audit.sink.reserve_waiting().await)
        } else {
            None
        };
        let mut capture = Capture::new(kind);
        if let Err(sent) = put(&mut w, &header, &mut pending).await {
            return sent;
        }
        let mut left = len - 4;
        while left > 0 {
            let n = left.min(buf.len());
            if r.read_exact(&mut buf[..n]).await.is_err() {
                return finish(&mut w, &mut pending).await;
            }
            if let Err(sent) = put(&mut w, &buf[..n], &mut pending).await {
                return sent;
            }
            if audited {
                capture.feed(&buf[..n]);
            }
            left -= n;
        }
        if let Some(reservation) = reservation {
            let committed = audit.record(reservation, &capture);
            // Under `audit_holds = "answer"` the answer waits for the commit; past
            // `MAX_HELD`, or otherwise, the statement does.
            let unheld = match held {
                Some(held) => held.hold(committed),
                None => Err(committed),
            };
            if let Err(committed) = unheld {
                pending.push(committed);
            }
        }
        if !pgwire::whole_frame_waiting(r.buffer()) {
            if let Err(sent) = committed(&mut pending).await {
                return sent;
            }
            if w.flush().await.is_err() {
                return Sent::All;
            }
        }
        if kind == b'X' {
            break;
        }
    }
    finish(&mut w, &mut pending).await
}

/// Puts bytes into the writer's buffer. When they do not fit, the buffer goes out to
/// make room, and the statements in it first wait for their events' commits.
async fn put<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    bytes: &[u8],
    pending: &mut Vec<crate::audit::Committed>,
) -> Result<(), Sent> {
    if w.buffer().len() + bytes.len() > TO_UPSTREAM {
        committed(pending).await?;
    }
    w.write_all(bytes).await.map_err(|_| Sent::All)
}

/// The client is done: what is buffered goes, once its statements are committed (a
/// shutdown flushes the buffer), and the upstream is told.
async fn finish<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    pending: &mut Vec<crate::audit::Committed>,
) -> Sent {
    if let Err(sent) = committed(pending).await {
        return sent;
    }
    let _ = w.shutdown().await;
    Sent::All
}

/// Waits for the commits of the statements written so far: they go to the server
/// only once their events are committed (`durability = "commit"`); one the store did
/// not take ends the session.
async fn committed(pending: &mut Vec<crate::audit::Committed>) -> Result<(), Sent> {
    for c in pending.drain(..) {
        if !c.wait().await {
            tracing::error!("a statement could not be audited; ending the session");
            return Err(Sent::Unaudited);
        }
    }
    Ok(())
}
