//! One load-generating client: a single HTTP/1.1 keep-alive connection, driven one request
//! at a time.

use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::{bail, Context as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Which HTTP library a [`Conn`] uses.
///
/// Both keep one HTTP/1.1 connection per client. `hyper` is the bare connection
/// (`hyper::client::conn::http1`), with nothing between the bench and the socket;
/// `reqwest` adds its pool, redirect and header machinery, which is what a typical Rust
/// client of the server would pay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpClient {
    /// `hyper::client::conn::http1`: one connection, no pool.
    Hyper,
    /// A `reqwest::Client` of its own per client (its pool then holds one connection).
    Reqwest,
}

impl FromStr for HttpClient {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "hyper" => Ok(HttpClient::Hyper),
            "reqwest" => Ok(HttpClient::Reqwest),
            _ => bail!("unknown HTTP client {s:?}: expected `hyper` or `reqwest`"),
        }
    }
}

/// Where the clients send their requests: a plain `http://HOST:PORT` base URL.
#[derive(Clone, Debug)]
pub struct Target {
    /// The base URL, without a trailing `/`.
    base: String,
    /// `HOST:PORT`, for the `Host` header.
    authority: String,
    /// The address connected to.
    addr: SocketAddr,
}

impl Target {
    /// Resolves `url` (`http://HOST[:PORT]`, any path ignored).
    ///
    /// # Errors
    /// When the URL does not parse, is not `http`, or its host does not resolve.
    pub async fn resolve(url: &str) -> anyhow::Result<Target> {
        let parsed =
            reqwest::Url::parse(url).with_context(|| format!("{url:?} is not a URL like http://127.0.0.1:7878"))?;
        if parsed.scheme() != "http" {
            bail!("{url:?}: only plain http:// servers can be benchmarked");
        }
        let host = parsed.host_str().with_context(|| format!("{url:?} names no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let authority = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let addr = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} resolves to no address"))?;
        Ok(Target { base: format!("http://{authority}"), authority, addr })
    }

    /// The base URL, `http://HOST:PORT`.
    pub fn url(&self) -> &str {
        &self.base
    }
}

/// An answer: its status and its whole body.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// `Ok(self)` when the status is 200, otherwise an error quoting the request and the
    /// answer.
    ///
    /// # Errors
    /// When the status is not 200.
    pub fn ok(self, what: &str) -> anyhow::Result<Reply> {
        if self.status == 200 {
            return Ok(self);
        }
        bail!("{what}: HTTP {}: {}", self.status, String::from_utf8_lossy(&self.body));
    }
}

/// One client: a single keep-alive connection, one request in flight at a time.
pub struct Conn {
    target: Target,
    inner: Inner,
}

enum Inner {
    Hyper(SendRequest<Full<Bytes>>),
    Reqwest(reqwest::Client),
}

impl Conn {
    /// Opens the connection (with `reqwest`, on the first request).
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub async fn connect(target: &Target, kind: HttpClient) -> anyhow::Result<Conn> {
        let inner = match kind {
            HttpClient::Hyper => {
                let stream = TcpStream::connect(target.addr)
                    .await
                    .with_context(|| format!("cannot connect to {}", target.base))?;
                stream.set_nodelay(true)?;
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .with_context(|| format!("HTTP handshake with {}", target.base))?;
                // Ends when the sender is dropped or the server closes the connection.
                tokio::spawn(connection);
                Inner::Hyper(sender)
            }
            HttpClient::Reqwest => Inner::Reqwest(
                reqwest::Client::builder()
                    .http1_only()
                    .no_proxy()
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(1)
                    .build()
                    .context("building a reqwest client")?,
            ),
        };
        Ok(Conn { target: target.clone(), inner })
    }

    /// `POST path` with a JSON `body`.
    ///
    /// # Errors
    /// When the request cannot be sent or the answer read (not on an error status).
    pub async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<Reply> {
        self.send(Method::POST, path, Some(body)).await
    }

    /// `GET path`.
    ///
    /// # Errors
    /// When the request cannot be sent or the answer read (not on an error status).
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, path, None).await
    }

    async fn send(&mut self, method: Method, path: &str, body: Option<Bytes>) -> anyhow::Result<Reply> {
        let failed = || format!("{method} {}{path}", self.target.base);
        match &mut self.inner {
            Inner::Hyper(sender) => {
                let mut request =
                    Request::builder().method(method.clone()).uri(path).header(HOST, &self.target.authority);
                if body.is_some() {
                    request = request.header(CONTENT_TYPE, "application/json");
                }
                let request = request.body(Full::new(body.unwrap_or_default())).with_context(failed)?;
                sender.ready().await.with_context(failed)?;
                let response = sender.send_request(request).await.with_context(failed)?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.with_context(failed)?.to_bytes();
                Ok(Reply { status, body })
            }
            Inner::Reqwest(client) => {
                let mut request = client.request(method.clone(), format!("{}{path}", self.target.base));
                if let Some(body) = body {
                    request = request.header(CONTENT_TYPE, "application/json").body(body);
                }
                let response = request.send().await.with_context(failed)?;
                let status = response.status().as_u16();
                let body = response.bytes().await.with_context(failed)?;
                Ok(Reply { status, body })
            }
        }
    }
}
