//! The HTTP plumbing: URLs with percent-encoded keys, JSON requests, and answers sorted
//! into "the server said no" and "no usable answer".

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Method, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tumbler_core::Mode;

use super::wire::error_from_answer;
use super::RemoteConfig;
use crate::error::{Error, Result};

/// Everything outside RFC 3986's unreserved characters is percent-encoded, so a key is
/// always exactly one path segment whatever it holds (`/`, `?`, `#`, `%`, spaces, UTF-8).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The shortest long-poll bound the client falls back to when the server refuses longer ones.
const MIN_WAIT_MS: u64 = 100;

/// The backend name in errors.
pub(super) const BACKEND: &str = "remote";

/// Why a request brought no answer to act on.
#[derive(Debug)]
pub(super) enum Failure {
    /// The server answered, with this error.
    Answer(Error),
    /// No usable answer: the connection failed, timed out, or the answer could not be read.
    /// Whether the server acted on the request is unknown.
    Transport(String),
}

impl Failure {
    /// Whether trying again may succeed: no answer, or the server said it is unavailable.
    pub(super) fn is_transient(&self) -> bool {
        matches!(self, Failure::Transport(_) | Failure::Answer(Error::Unavailable(_)))
    }
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Answer(e) => e,
            Failure::Transport(message) => Error::Backend { backend: BACKEND, source: message.into() },
        }
    }
}

/// One server and namespace, and the connection pool every owner of them shares.
#[derive(Debug)]
pub(super) struct Http {
    client: Client,
    base: String,
    namespace: String,
    pub(super) config: RemoteConfig,
    /// The longest long-poll the server accepted so far (it refuses longer ones with
    /// `invalid_argument` on `wait_ms`; a refusal halves this).
    max_wait_ms: AtomicU64,
}

impl Http {
    pub(super) fn new(base: &str, namespace: &str, config: RemoteConfig) -> Result<Self> {
        let url = reqwest::Url::parse(base)
            .map_err(|e| Error::InvalidArgument { field: "base_url", reason: format!("{base:?} is not a URL: {e}") })?;
        if url.scheme() != "http" {
            return Err(Error::InvalidArgument {
                field: "base_url",
                reason: format!("{base:?}: only plain http:// URLs are supported (this build has no TLS)"),
            });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::InvalidArgument {
                field: "base_url",
                reason: format!("{base:?} has a query or fragment"),
            });
        }
        tumbler_core::validate_namespace(namespace)?;
        let client = Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Backend { backend: BACKEND, source: Box::new(e) })?;
        let max_wait_ms = u64::try_from(config.max_wait.as_millis()).unwrap_or(u64::MAX).max(1);
        Ok(Http {
            client,
            base: url.as_str().trim_end_matches('/').to_owned(),
            namespace: namespace.to_owned(),
            config,
            max_wait_ms: AtomicU64::new(max_wait_ms),
        })
    }

    pub(super) fn base(&self) -> &str {
        &self.base
    }

    pub(super) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The longest long-poll to ask for.
    pub(super) fn max_wait_ms(&self) -> u64 {
        self.max_wait_ms.load(Ordering::Relaxed)
    }

    /// The server refused a long-poll of `asked` ms as too long: ask for at most half of
    /// it from now on (but not below [`MIN_WAIT_MS`]). Returns false when `asked` was
    /// already that short, which no server should refuse: the refusal is then a real error.
    pub(super) fn shrink_max_wait(&self, asked: u64) -> bool {
        if asked <= MIN_WAIT_MS {
            return false;
        }
        self.max_wait_ms.fetch_min((asked / 2).max(MIN_WAIT_MS), Ordering::Relaxed);
        true
    }

    pub(super) fn sessions_url(&self) -> String {
        format!("{}/v1/sessions", self.base)
    }

    pub(super) fn session_url(&self, id: &str) -> String {
        format!("{}/v1/sessions/{}", self.base, utf8_percent_encode(id, SEGMENT))
    }

    pub(super) fn keepalive_url(&self, id: &str) -> String {
        format!("{}/keepalive", self.session_url(id))
    }

    /// `.../locks/{key}` and, with `action`, `.../locks/{key}/{action}`.
    pub(super) fn lock_url(&self, key: &str, action: Option<&str>) -> String {
        let mut url = format!(
            "{}/v1/namespaces/{}/locks/{}",
            self.base,
            utf8_percent_encode(&self.namespace, SEGMENT),
            utf8_percent_encode(key, SEGMENT)
        );
        if let Some(action) = action {
            url.push('/');
            url.push_str(action);
        }
        url
    }

    pub(super) fn acquire_all_url(&self) -> String {
        format!("{}/v1/namespaces/{}/acquire", self.base, utf8_percent_encode(&self.namespace, SEGMENT))
    }

    /// Starts a request with a JSON body (none for `GET`/`DELETE` without one), bounded by
    /// `timeout`.
    pub(super) fn request<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<reqwest::RequestBuilder> {
        let body = body.map(encode).transpose()?;
        Ok(self.request_encoded(method, url, body, timeout))
    }

    /// As [`Http::request`], with a body already encoded by [`encode`].
    pub(super) fn request_encoded(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let req = self.client.request(method, url).timeout(timeout);
        match body {
            Some(bytes) => req.header(CONTENT_TYPE, "application/json").body(bytes),
            None => req,
        }
    }

    /// Sends a request that does not wait, bounded by the configured request timeout, and
    /// reads its answer as `T`.
    pub(super) async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        body: Option<&B>,
    ) -> Result<T, Failure> {
        let req = self.request(method, url, body, self.config.request_timeout).map_err(Failure::Answer)?;
        let response = req.send().await.map_err(transport)?;
        read(response, None).await
    }
}

/// A request body as JSON.
pub(super) fn encode<B: Serialize + ?Sized>(body: &B) -> Result<Vec<u8>> {
    serde_json::to_vec(body).map_err(|e| Error::Internal(format!("encoding a request: {e}")))
}

/// A transport failure, described.
pub(super) fn transport(e: reqwest::Error) -> Failure {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    Failure::Transport(format!("{what}: {e}"))
}

/// Reads an answer to its end: `T` on success, the server's error otherwise.
/// `requested` is the mode asked for, if any (see [`error_from_answer`]).
pub(super) async fn read<T: DeserializeOwned>(response: Response, requested: Option<Mode>) -> Result<T, Failure> {
    let status = response.status();
    let body = response.bytes().await.map_err(transport)?;
    if status.is_success() {
        serde_json::from_slice(&body).map_err(|e| {
            let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            Failure::Transport(format!("unreadable answer from the lock server ({e}): {text}"))
        })
    } else {
        Err(Failure::Answer(error_from_answer(status.as_u16(), &body, requested)))
    }
}

/// Checks a key name: what the server accepts (see [`tumbler_core::validate_name`]), and not
/// `.` or `..`, which URL parsers resolve as relative path segments whatever their encoding.
pub(super) fn validate_key(name: &str) -> Result<()> {
    tumbler_core::validate_name(name)?;
    if name == "." || name == ".." {
        return Err(Error::InvalidArgument {
            field: "key",
            reason: format!("{name:?} cannot travel as a URL path segment; the remote backend cannot lock it"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> Http {
        Http::new("http://127.0.0.1:7878/", "ns-1", RemoteConfig::default()).expect("valid")
    }

    #[test]
    fn keys_are_single_percent_encoded_segments() {
        let http = http();
        assert_eq!(
            http.lock_url("a/b?c#d e%", None),
            "http://127.0.0.1:7878/v1/namespaces/ns-1/locks/a%2Fb%3Fc%23d%20e%25"
        );
        assert_eq!(
            http.lock_url("k.1_~-", Some("acquire")),
            "http://127.0.0.1:7878/v1/namespaces/ns-1/locks/k.1_~-/acquire"
        );
        assert_eq!(
            http.lock_url("ключ", None),
            "http://127.0.0.1:7878/v1/namespaces/ns-1/locks/%D0%BA%D0%BB%D1%8E%D1%87"
        );
        assert_eq!(http.acquire_all_url(), "http://127.0.0.1:7878/v1/namespaces/ns-1/acquire");
        assert_eq!(http.keepalive_url("12"), "http://127.0.0.1:7878/v1/sessions/12/keepalive");
    }

    #[test]
    fn bad_base_urls_and_namespaces_are_refused() {
        for base in ["not a url", "https://example.com", "http://h/?q=1"] {
            let e = Http::new(base, "ns", RemoteConfig::default()).expect_err(base);
            assert!(matches!(e, Error::InvalidArgument { field: "base_url", .. }), "{base}: {e:?}");
        }
        let e = Http::new("http://h", "bad/ns", RemoteConfig::default()).expect_err("namespace");
        assert!(matches!(e, Error::InvalidArgument { field: "namespace", .. }), "{e:?}");
        assert_eq!(
            Http::new("http://h:1/base/", "ns", RemoteConfig::default()).expect("valid").base(),
            "http://h:1/base"
        );
    }

    #[test]
    fn dot_segments_and_invalid_names_are_refused() {
        for name in [".", "..", "", "a\nb"] {
            assert!(matches!(validate_key(name), Err(Error::InvalidArgument { field: "key", .. })), "{name:?}");
        }
        for name in ["...", ".a", "a..b", "a/b"] {
            assert!(validate_key(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn a_refused_long_poll_halves_the_bound_down_to_a_floor() {
        let http = http();
        assert_eq!(http.max_wait_ms(), 600_000);
        assert!(http.shrink_max_wait(600_000));
        assert_eq!(http.max_wait_ms(), 300_000);
        assert!(http.shrink_max_wait(150));
        assert_eq!(http.max_wait_ms(), MIN_WAIT_MS);
        assert!(!http.shrink_max_wait(MIN_WAIT_MS));
    }
}
