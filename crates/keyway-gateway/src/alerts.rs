//! Alerts to a webhook: a JSON POST per detector firing, signed so the receiver can
//! tell it came from this gateway, retried with a doubling pause.
//!
//! The signature is `X-Keyway-Signature: t=<unix seconds>,v1=<hex>` where `v1` is
//! HMAC-SHA256, keyed with the secret `alerts.webhook.secret` names, over
//! `"<t>.<body>"`; the receiver recomputes it and rejects old `t` to stop replays.
//! `X-Keyway-Alert-Id` is the same on every attempt of one alert. An alert carries
//! public token ids, never a token or a credential.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{header, Request};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keyway_core::clock::format_ms;
use keyway_core::config::Webhook;
use keyway_core::Clock;
use keyway_store::AuditEvent;
use sha2::Sha256;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::secrets::Secrets;
use crate::telemetry::Metrics;

/// Alerts waiting for delivery; beyond this they stay only in the audit log.
const QUEUE: usize = 1024;
/// Deliveries under way at once.
const PARALLEL: usize = 8;
/// The pause before the first retry; it doubles after each.
const FIRST_RETRY: Duration = Duration::from_secs(1);

pub const SIGNATURE_HEADER: &str = "x-keyway-signature";
pub const ID_HEADER: &str = "x-keyway-alert-id";

/// The sending side; without a configured webhook, alerts go only to the audit log
/// and the metrics.
pub struct Alerts {
    tx: mpsc::Sender<Bytes>,
    rx: Mutex<Option<mpsc::Receiver<Bytes>>>,
    enabled: bool,
}

// === impl Alerts ===

impl Alerts {
    pub fn new(webhook: Option<&Webhook>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            enabled: webhook.is_some(),
        }
    }

    /// Queues an alert for the webhook: an audit event (`detect.alert`, `ports.audit`)
    /// with its detail's fields at the top level.
    pub fn send(&self, ev: &AuditEvent) {
        if !self.enabled {
            return;
        }
        let mut body = serde_json::Map::new();
        if let Some(detail) = ev.detail.as_object() {
            body.extend(detail.clone());
        }
        body.insert("kind".into(), ev.kind.clone().into());
        body.insert("at".into(), format_ms(ev.at).into());
        for (k, v) in [
            ("source", &ev.source),
            ("token_id", &ev.token_id),
            ("principal", &ev.principal),
            ("service", &ev.service),
        ] {
            body.insert(k.into(), v.clone().into());
        }
        let body = serde_json::Value::Object(body).to_string();
        if self.tx.try_send(Bytes::from(body)).is_err() {
            tracing::error!("the alert webhook queue is full; this alert is only in the audit log");
        }
    }
}

/// Signs `body` at `t` (unix seconds): the value of [`SIGNATURE_HEADER`].
pub fn sign(key: &[u8], t: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC takes a key of any length")
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// What a delivery uses: the webhook's signing secret, the metrics, the clock.
#[derive(Clone)]
pub struct Courier {
    pub secrets: Arc<Secrets>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
}

/// Delivers the alerts queued on `alerts` to `webhook` until `shutdown`.
pub async fn run(
    alerts: Arc<Alerts>,
    courier: Courier,
    webhook: Option<Webhook>,
    shutdown: CancellationToken,
) {
    let Some(hook) = webhook else {
        return;
    };
    let rx = alerts.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(mut rx) = rx else { return };
    let https = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
    {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => {
            tracing::error!(error = %e, "no trusted roots for the alert webhook; alerts go only to the audit log");
            return;
        }
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let slots = Arc::new(Semaphore::new(PARALLEL));
    loop {
        let body = tokio::select! {
            () = shutdown.cancelled() => return,
            b = rx.recv() => match b {
                Some(b) => b,
                None => return,
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (gw, hook, client, stop) = (
            courier.clone(),
            hook.clone(),
            client.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = deliver(&gw, &hook, &client, body) => {}
                () = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
}

async fn deliver<C>(gw: &Courier, hook: &Webhook, client: &Client<C, Full<Bytes>>, body: Bytes)
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let id = hex::encode(rand::random::<[u8; 16]>());
    let mut pause = FIRST_RETRY;
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            gw.metrics.webhook("retried");
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        // Read each time: `keyway secret set` may set it after start.
        let Some(key) = gw.secrets.header(&hook.secret) else {
            tracing::error!(secret_name = %hook.secret, "the alert webhook's secret is not set; set it with `keyway secret set`");
            continue;
        };
        let t = gw.clock.now_ms() / 1000;
        let req = Request::post(hook.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("keyway/", env!("CARGO_PKG_VERSION")),
            )
            .header(SIGNATURE_HEADER, sign(key.as_bytes(), t, &body))
            .header(ID_HEADER, &id)
            .body(Full::new(body.clone()));
        let Ok(req) = req else {
            break;
        };
        match tokio::time::timeout(hook.timeout, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                gw.metrics.webhook("delivered");
                return;
            }
            Ok(Ok(resp)) => {
                let status = resp.status();
                tracing::warn!(
                    status = status.as_u16(),
                    attempt,
                    "the alert webhook refused an alert"
                );
                // A client error other than a timeout or a rate limit will not go
                // away by asking again.
                if status.is_client_error() && status != 408 && status != 429 {
                    break;
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, attempt, "the alert webhook is unreachable"),
            Err(_) => tracing::warn!(attempt, "the alert webhook did not answer in time"),
        }
    }
    gw.metrics.webhook("failed");
    tracing::error!(alert = %id, "an alert could not be delivered to the webhook; it is in the audit log");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_time_dot_body() {
        // RFC 4231 style check against an independent computation.
        let sig = sign(b"hook-key", 1_700_000_000, b"{\"a\":1}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"hook-key").expect("key");
        mac.update(b"1700000000.{\"a\":1}");
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(sig, format!("t=1700000000,v1={want}"));
        assert_ne!(sig, sign(b"other-key", 1_700_000_000, b"{\"a\":1}"));
        assert_ne!(sig, sign(b"hook-key", 1_700_000_001, b"{\"a\":1}"));
    }
}
