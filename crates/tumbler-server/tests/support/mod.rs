//! Shared helpers for the HTTP tests: a server on a free loopback port with a client, replies
//! as `(status, JSON)`, the one error shape, snapshots of a hold, polling with a deadline,
//! and a small Server-Sent Events reader.
//!
//! Every helper bounds its waiting: requests time out, polls have deadlines, stream reads
//! have timeouts. Nothing asserts tight timing.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tumbler_server::{RunningServer, ServerConfig, ServerLimits};

/// How long any single request may take before the test fails (long-polls in these tests
/// ask for at most 30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a poll for something the server does in the background may take: generous,
/// for a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A running server and a client for it.
pub struct Harness {
    server: RunningServer,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// A client with [`REQUEST_TIMEOUT`].
    pub client: reqwest::Client,
}

/// A reply: the status and the body as JSON (`Value::Null` when the body was empty,
/// `Value::String` of the raw text when it was not JSON).
#[derive(Clone, Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl Harness {
    /// A server with [`ServerConfig::for_tests`].
    pub async fn start() -> Self {
        Harness::with_config(ServerConfig::for_tests()).await
    }

    /// A server with the default test config, its limits changed by `change`.
    pub async fn with_limits(change: impl FnOnce(&mut ServerLimits)) -> Self {
        let mut config = ServerConfig::for_tests();
        change(&mut config.limits);
        Harness::with_config(config).await
    }

    /// A server with `config`.
    pub async fn with_config(config: ServerConfig) -> Self {
        let server = tumbler_server::spawn(config).await.expect("the server starts");
        let url = server.url();
        let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("a client");
        Harness { server, url, client }
    }

    /// Stops the server (bounded: a hang fails the test).
    pub async fn stop(self) {
        tokio::time::timeout(DEADLINE, self.server.shutdown()).await.expect("the server shuts down in time");
    }

    /// Gives the server back, for tests of shutdown itself.
    pub fn into_server(self) -> RunningServer {
        self.server
    }

    /// `METHOD url+path` with a JSON body.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        reply(request.send().await.expect("the request is answered")).await
    }

    /// `POST url+path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// `POST url+path` with a raw body (for malformed JSON and oversized bodies).
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let request = self
            .client
            .post(format!("{}{path}", self.url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        reply(request.send().await.expect("the request is answered")).await
    }

    /// `GET url+path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// `DELETE url+path`.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// `POST /v1/namespaces/{ns}/locks/{key}/acquire`.
    pub async fn acquire(&self, ns: &str, key: &str, body: Value) -> Reply {
        self.post(&format!("/v1/namespaces/{ns}/locks/{key}/acquire"), body).await
    }

    /// Acquires with a TTL of a minute, as `owner`, and expects the grant.
    pub async fn hold(&self, ns: &str, key: &str, owner: &str) -> Value {
        self.acquire(ns, key, json!({ "owner": owner, "ttl_ms": 60_000 })).await.ok().clone()
    }

    /// Sends `POST url+path` with `body` from a task of its own (a long-poll), so the test
    /// can act while it waits; abort the task to disconnect the client.
    pub fn spawn_post(&self, path: &str, body: Value) -> tokio::task::JoinHandle<Reply> {
        let request = self.client.post(format!("{}{path}", self.url)).json(&body);
        tokio::spawn(async move { reply(request.send().await.expect("the request is answered")).await })
    }

    /// [`Harness::spawn_post`] of an acquire.
    pub fn spawn_acquire(&self, ns: &str, key: &str, body: Value) -> tokio::task::JoinHandle<Reply> {
        self.spawn_post(&format!("/v1/namespaces/{ns}/locks/{key}/acquire"), body)
    }

    /// `POST /v1/namespaces/{ns}/locks/{key}/release`.
    pub async fn release(&self, ns: &str, key: &str, owner: &str) -> Reply {
        self.post(&format!("/v1/namespaces/{ns}/locks/{key}/release"), json!({ "owner": owner })).await
    }

    /// `GET /v1/namespaces/{ns}/locks/{key}`.
    pub async fn status(&self, ns: &str, key: &str) -> Reply {
        self.get(&format!("/v1/namespaces/{ns}/locks/{key}")).await
    }

    /// The key's holders as `(owner, count, fencing_token)`, or `None` when it is free.
    pub async fn holders(&self, ns: &str, key: &str) -> Option<Vec<(String, u64, u64)>> {
        let reply = self.status(ns, key).await;
        if reply.status == 404 {
            reply.error("not_held");
            return None;
        }
        Some(holders_of(reply.ok()))
    }

    /// How many requests wait on the key (0 when it is free).
    pub async fn waiters(&self, ns: &str, key: &str) -> u64 {
        let reply = self.status(ns, key).await;
        if reply.status == 404 {
            return 0;
        }
        reply.ok()["waiters"].as_u64().expect("waiters is a number")
    }

    /// Polls until the key has `n` waiters.
    pub async fn until_waiters(&self, ns: &str, key: &str, n: u64) {
        let what = format!("{ns}/{key} to have {n} waiters");
        until(&what, || async { self.waiters(ns, key).await == n }).await;
    }

    /// Polls until the key is free.
    pub async fn until_free(&self, ns: &str, key: &str) {
        until(&format!("{ns}/{key} to be free"), || async { self.holders(ns, key).await.is_none() }).await;
    }

    /// `POST /v1/sessions` with `ttl_ms`; the session id.
    pub async fn open_session(&self, ttl_ms: u64) -> String {
        let reply = self.post("/v1/sessions", json!({ "ttl_ms": ttl_ms })).await;
        reply.ok()["id"].as_str().expect("a session id").to_owned()
    }

    /// A session that has been opened and closed.
    pub async fn ended_session(&self) -> String {
        let id = self.open_session(60_000).await;
        self.delete(&format!("/v1/sessions/{id}")).await.ok();
        id
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(format!("{}/metrics", self.url)).send().await.expect("metrics");
        assert_eq!(response.status().as_u16(), 200);
        response.text().await.expect("metrics text")
    }

    /// Opens `GET /v1/namespaces/{ns}/events` (with `?query` when not empty and a
    /// `Last-Event-ID` when given): the stream, or the error reply.
    pub async fn events(&self, ns: &str, query: &str, last_event_id: Option<&str>) -> Result<Events, Reply> {
        let mut url = format!("{}/v1/namespaces/{ns}/events", self.url);
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        // No overall timeout on a stream: every read is bounded instead.
        let client = reqwest::Client::new();
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response =
            tokio::time::timeout(DEADLINE, request.send()).await.expect("the stream opens in time").expect("stream");
        if response.status().as_u16() != 200 {
            return Err(reply(response).await);
        }
        let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).cloned();
        assert!(
            content_type.as_ref().and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream")),
            "an event stream's content type, got {content_type:?}"
        );
        Ok(Events { bytes: Box::pin(response.bytes_stream()), buffer: Vec::new() })
    }
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Reply { status, body }
}

impl Reply {
    /// The body of a 200, or a panic naming what came instead.
    #[track_caller]
    pub fn ok(&self) -> &Value {
        assert_eq!(self.status, 200, "expected 200, got {} {}", self.status, self.body);
        &self.body
    }

    /// Checks that this is the one error shape, `{"error": {"code", "message", "details"}}`
    /// and nothing else, with `code`; returns the `details`.
    #[track_caller]
    pub fn error(&self, code: &str) -> &Value {
        if let Err(problem) = self.shape(code) {
            panic!("{problem}");
        }
        &self.body["error"]["details"]
    }

    /// Checks the status, the error shape and code; returns the `details`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> &Value {
        if let Err(problem) = self.check(status, code) {
            panic!("{problem}");
        }
        &self.body["error"]["details"]
    }

    /// What is wrong with this reply as a `status` `code` error, if anything.
    pub fn check(&self, status: u16, code: &str) -> Result<(), String> {
        if self.status != status {
            return Err(format!("expected {status} {code}, got {} {}", self.status, self.body));
        }
        self.shape(code)
    }

    /// What is wrong with this reply as the one error shape with `code`, if anything.
    pub fn shape(&self, code: &str) -> Result<(), String> {
        let body = &self.body;
        let error = body.as_object().filter(|o| o.len() == 1).and_then(|o| o.get("error")).and_then(Value::as_object);
        let Some(error) = error else {
            return Err(format!("status {}: not {{\"error\": {{...}}}}: {body}", self.status));
        };
        let well_formed = error.len() == 3
            && error.get("code").is_some_and(Value::is_string)
            && error.get("message").and_then(Value::as_str).is_some_and(|m| !m.is_empty())
            && error.get("details").is_some_and(Value::is_object);
        if !well_formed {
            return Err(format!("status {}: not {{code, message, details}}: {body}", self.status));
        }
        if error["code"] != code {
            return Err(format!("status {}: expected code {code}: {body}", self.status));
        }
        Ok(())
    }

    /// `details.field` of an error, if any.
    pub fn field(&self) -> Option<&str> {
        self.body["error"]["details"]["field"].as_str()
    }
}

/// The holders of a status answer as `(owner, count, fencing_token)`.
#[track_caller]
pub fn holders_of(status: &Value) -> Vec<(String, u64, u64)> {
    status["holders"]
        .as_array()
        .unwrap_or_else(|| panic!("holders is an array: {status}"))
        .iter()
        .map(|h| {
            (
                h["owner"].as_str().expect("owner").to_owned(),
                h["count"].as_u64().expect("count"),
                h["fencing_token"].as_u64().expect("fencing_token"),
            )
        })
        .collect()
}

/// Polls `check` every 25 ms until it is true; fails after [`DEADLINE`].
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Awaits a spawned request, failing the test if it does not finish within [`DEADLINE`].
pub async fn finish<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(DEADLINE, task).await.expect("the request finishes in time").expect("the task does not panic")
}

/// `n` copies of `c`.
pub fn long(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

/// One Server-Sent Event.
#[derive(Clone, Debug)]
pub struct SseEvent {
    /// `event:` (`message` when absent).
    pub event: String,
    /// `id:`, as a revision.
    pub id: Option<u64>,
    /// `data:` parsed as JSON.
    pub data: Value,
}

/// A reader of an event stream: splits the bytes into events, skipping comments
/// (keep-alives).
pub struct Events {
    bytes: Pin<Box<dyn Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buffer: Vec<u8>,
}

/// What a bounded read of an event stream found.
#[derive(Debug)]
pub enum Read {
    /// An event.
    Event(SseEvent),
    /// Nothing within the time.
    Quiet,
    /// The server ended the stream.
    Ended,
}

impl Events {
    /// The next event within `within`.
    pub async fn read(&mut self, within: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_block(&String::from_utf8(block).expect("events are UTF-8")) {
                    return Read::Event(event);
                }
            }
            match tokio::time::timeout_at(deadline, self.bytes.next()).await {
                Err(_) => return Read::Quiet,
                Ok(None) => return Read::Ended,
                Ok(Some(Err(_))) => return Read::Ended,
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
            }
        }
    }

    /// The next event; fails the test after [`DEADLINE`] or when the stream ends.
    #[track_caller]
    pub fn next(&mut self) -> impl Future<Output = SseEvent> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            match self.read(DEADLINE).await {
                Read::Event(event) => event,
                other => panic!("expected an event at {caller}, got {other:?}"),
            }
        }
    }

    /// Asserts that no event comes within `within`.
    pub async fn expect_quiet(&mut self, within: Duration) {
        match self.read(within).await {
            Read::Quiet => {}
            other => panic!("expected no event, got {other:?}"),
        }
    }
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = None;
    let mut id = None;
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "event" => event = Some(value.to_owned()),
            "id" => id = Some(value.parse().expect("an event id is a revision")),
            "data" => data.push(value),
            _ => {}
        }
    }
    if event.is_none() && id.is_none() && data.is_empty() {
        return None;
    }
    let data = data.join("\n");
    let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event data is JSON ({e}): {data}"));
    Some(SseEvent { event: event.unwrap_or_else(|| "message".to_owned()), id, data })
}
