//! One load-generating client: a single HTTP/1.1 keep-alive connection, driven one request
//! at a time.

use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::{bail, Context as _};
use bytes::BytesMut;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Which HTTP library a [`Conn`] uses.
///
/// All keep one HTTP/1.1 connection per client. `raw` writes each request and parses each
/// answer in the client's own task, the way `wrk` or pgbench drive their servers; `hyper`
/// is the bare library connection (`hyper::client::conn::http1`), whose connection runs as
/// a task of its own that the client's task hands each request to; `reqwest` adds its
/// pool, redirect and header machinery, which is what a typical Rust client of the server
/// would pay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpClient {
    /// The request written and the answer parsed (`httparse`) in the client's own task.
    Raw,
    /// `hyper::client::conn::http1`: one connection, no pool.
    Hyper,
    /// A `reqwest::Client` of its own per client (its pool then holds one connection).
    Reqwest,
}

impl FromStr for HttpClient {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "raw" => Ok(HttpClient::Raw),
            "hyper" => Ok(HttpClient::Hyper),
            "reqwest" => Ok(HttpClient::Reqwest),
            _ => bail!("unknown HTTP client {s:?}: expected `raw`, `hyper` or `reqwest`"),
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
    Raw(RawConn),
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
            HttpClient::Raw => {
                let stream = TcpStream::connect(target.addr)
                    .await
                    .with_context(|| format!("cannot connect to {}", target.base))?;
                stream.set_nodelay(true)?;
                Inner::Raw(RawConn { stream, buffer: BytesMut::with_capacity(4096), request: Vec::new() })
            }
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
            Inner::Raw(conn) => {
                conn.send(method.as_str(), path, &self.target.authority, body).await.with_context(failed)
            }
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

/// A connection driven by hand: requests are written whole, answers read until their
/// `Content-Length` is in. Enough HTTP/1.1 for a server that answers every request with a
/// length (chunked answers are refused, not misread).
struct RawConn {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buffer: BytesMut,
    /// The request being written (kept to reuse its allocation).
    request: Vec<u8>,
}

/// The most headers an answer may have.
const MAX_HEADERS: usize = 32;

impl RawConn {
    async fn send(&mut self, method: &str, path: &str, host: &str, body: Option<Bytes>) -> anyhow::Result<Reply> {
        use std::io::Write as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        self.request.clear();
        write!(self.request, "{method} {path} HTTP/1.1\r\nhost: {host}\r\n")?;
        if let Some(body) = &body {
            write!(self.request, "content-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len())?;
            self.request.extend_from_slice(body);
        } else {
            self.request.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&self.request).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buffer)? {
                let status = response.code.context("an answer without a status")?;
                let mut length = None;
                for header in response.headers.iter() {
                    if header.name.eq_ignore_ascii_case("content-length") {
                        length = Some(std::str::from_utf8(header.value)?.trim().parse::<usize>()?);
                    } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                        bail!("a chunked answer: this client reads only answers with a length");
                    }
                }
                let length = length.context("an answer without a content-length")?;
                while self.buffer.len() < head + length {
                    if self.stream.read_buf(&mut self.buffer).await? == 0 {
                        bail!("the server closed the connection in the middle of an answer");
                    }
                }
                let mut answer = self.buffer.split_to(head + length);
                return Ok(Reply { status, body: answer.split_off(head).freeze() });
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("the server closed the connection");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// A server on 127.0.0.1:0 that, for each request it reads, writes the next of
    /// `answers`, each in the pieces given (so an answer can arrive split anywhere).
    async fn canned(answers: Vec<Vec<&'static [u8]>>) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            for pieces in answers {
                let mut request = [0u8; 1024];
                if socket.read(&mut request).await.unwrap_or(0) == 0 {
                    return;
                }
                for piece in pieces {
                    socket.write_all(piece).await.unwrap();
                    socket.flush().await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        });
        Target::resolve(&format!("http://{addr}")).await.unwrap()
    }

    #[tokio::test]
    async fn raw_reads_answers_split_anywhere_one_after_the_other() {
        let target = canned(vec![
            vec![b"HTTP/1.1 200 OK\r\ncontent-le", b"ngth: 11\r\n\r\n{\"cou", b"nt\":0}"],
            vec![b"HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\n\r\n{}"],
        ])
        .await;
        let mut conn = Conn::connect(&target, HttpClient::Raw).await.unwrap();
        let first = conn.post("/a", Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!((first.status, &first.body[..]), (200, &b"{\"count\":0}"[..]));
        let second = conn.get("/b").await.unwrap();
        assert_eq!((second.status, &second.body[..]), (409, &b"{}"[..]));
    }

    #[tokio::test]
    async fn raw_refuses_what_it_cannot_read_rather_than_misread_it() {
        let chunked =
            canned(vec![vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"]]).await;
        let err = Conn::connect(&chunked, HttpClient::Raw).await.unwrap().get("/").await.unwrap_err();
        assert!(format!("{err:#}").contains("chunked"), "{err:#}");

        let cut = canned(vec![vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}"]]).await;
        let err = Conn::connect(&cut, HttpClient::Raw).await.unwrap().get("/").await.unwrap_err();
        assert!(format!("{err:#}").contains("closed"), "{err:#}");

        let no_length = canned(vec![vec![b"HTTP/1.1 200 OK\r\n\r\n"]]).await;
        let err = Conn::connect(&no_length, HttpClient::Raw).await.unwrap().get("/").await.unwrap_err();
        assert!(format!("{err:#}").contains("content-length"), "{err:#}");
    }
}
