//! Signed webhook delivery. Fire-and-forget on purpose: a real PSP's webhook can arrive late,
//! twice or never, and the gateway must cope; the simulator just makes the honest attempt.

use crate::domain::Event;
use crate::signature;
use std::sync::Arc;
use std::time::Duration;

/// Short, so a dead receiver cannot pile up tasks behind a busy simulator.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct WebhookSender {
    client: reqwest::Client,
    url: Arc<str>,
    secret: Arc<str>,
}

impl WebhookSender {
    pub(crate) fn new(url: &str, secret: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .build()?;
        Ok(Self {
            client,
            url: url.into(),
            secret: secret.into(),
        })
    }

    /// Sends the events of one operation in order, off the request path, so the API answer is
    /// never delayed or changed by the receiver.
    pub(crate) fn dispatch(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let sender = self.clone();
        tokio::spawn(async move {
            for event in &events {
                sender.deliver(event).await;
            }
        });
    }

    async fn deliver(&self, event: &Event) {
        let body = match serde_json::to_vec(event) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(event_id = %event.id, %error, "webhook not serialisable");
                return;
            }
        };
        let header = signature::sign(&self.secret, chrono::Utc::now().timestamp(), &body);
        let result = self
            .client
            .post(&*self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("PSP-Signature", header)
            .body(body)
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_success() => {
                tracing::debug!(event_id = %event.id, kind = ?event.kind, "webhook delivered");
            }
            Ok(response) => tracing::warn!(
                event_id = %event.id,
                status = %response.status(),
                "webhook refused by receiver"
            ),
            Err(error) => tracing::warn!(event_id = %event.id, %error, "webhook delivery failed"),
        }
    }
}
