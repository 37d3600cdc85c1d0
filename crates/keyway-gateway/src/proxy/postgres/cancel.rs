//! Cancel requests: a client's `CancelRequest` with one of Keyway's keys is passed
//! on with the upstream's key, only while the session's token is valid; a session
//! that ends mid-query cancels it upstream.

use super::*;

// === impl PgProxy ===

impl PgProxy {
    /// A `CancelRequest` with one of our keys: forwarded with the upstream's, only
    /// while the session's token is valid.
    pub(super) async fn forward_cancel(&self, body: &[u8]) {
        let Some(ours) = pgwire::cancel_key(body) else {
            return;
        };
        let target = {
            let map = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&ours).map(|t| (t.pid, t.key, t.entry.clone()))
        };
        let Some((pid, key, entry)) = target else {
            tracing::debug!(service = %self.svc.name, "a cancel request with an unknown key");
            return;
        };
        if entry.check_live(self.h.now()).is_err() {
            return;
        }
        self.cancel_upstream(pid, key).await;
        let mut ev = self.h.audit.event(EventKind::DbCancel);
        ev.service = Some(self.svc.name.clone());
        ev.token_id = Some(entry.id().to_owned());
        ev.principal = Some(entry.record.principal.clone());
        // A cancel has no answer to hold back.
        let _ = self.h.audit.record(ev);
    }

    /// A `CancelRequest` to the upstream for backend `pid`, on its own connection.
    pub(super) async fn cancel_upstream(&self, pid: i32, key: i32) {
        let mut buf = BytesMut::new();
        frontend::cancel_request(pid, key, &mut buf);
        if let Ok((mut up, _)) = self.connect_upstream().await {
            let _ = up.write_all(&buf).await;
            let _ = up.shutdown().await;
        }
    }
}
