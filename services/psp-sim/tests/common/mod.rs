#![allow(dead_code)] // each test binary uses a different subset

use psp_sim::{SimConfig, SimHandle};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const API_KEY: &str = "sk_test_alpha";

pub struct TestSim {
    pub base_url: String,
    pub handle: SimHandle,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn(config: SimConfig) -> TestSim {
    let app = psp_sim::build(config, "127.0.0.1:0").await.unwrap();
    let base_url = app.base_url();
    let handle = app.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestSim {
        base_url,
        handle,
        client: reqwest::Client::new(),
        stop: Some(stop),
        task: Some(task),
    }
}

pub async fn spawn_default() -> TestSim {
    spawn(SimConfig::default()).await
}

pub fn charge_body(reference: &str) -> Value {
    json!({
        "amount": 1250,
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "capture": true,
        "reference": reference,
    })
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Answer {
    async fn from(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            text,
            json,
        }
    }

    pub fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }
}

impl TestSim {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Answer {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        Answer::from(response).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        Answer::from(response).await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        Answer::from(request.send().await.unwrap()).await
    }

    /// Stops the server and checks that it shut down cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}
