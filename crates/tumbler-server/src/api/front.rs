//! What every request goes through before its handler: the check for malformed
//! percent-encoding (path and query), and the latency histogram of its route.
//!
//! A hand-written tower layer rather than `axum::middleware::from_fn`: per request,
//! `from_fn` clones the inner service, boxes the middleware's future and boxes the inner
//! service again as `Next`, which in a profile of the lock server cost about as much as
//! the lock work itself. Here the inner service is called in place, the future is a plain
//! struct, and each route resolves its histograms once instead of looking them up by label
//! on every request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::histogram::Histogram;
use tower::{Layer, Service};

use super::error::ApiError;
use crate::metrics::RouteLabels;
use crate::state::AppState;

/// The layer: one [`Front`] per route (axum applies a router's layer to each route).
#[derive(Clone)]
pub struct FrontLayer {
    state: AppState,
}

impl FrontLayer {
    /// A layer recording into `state`'s metrics.
    pub fn new(state: AppState) -> Self {
        FrontLayer { state }
    }
}

impl<S> Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, inner: S) -> Front<S> {
        Front { inner, state: self.state.clone(), histograms: Arc::default() }
    }
}

/// Where one route's requests with one method are recorded.
struct Timing {
    labels: RouteLabels,
    histogram: Histogram,
}

/// The timings of one route, by method, each created on the route's first request with
/// that method (the route's template is only known once a request has matched it).
type RouteHistograms = [OnceLock<Arc<Timing>>; METHOD_SLOTS];

const METHOD_SLOTS: usize = 4;

fn method_slot(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::DELETE => 2,
        _ => 3,
    }
}

/// The service of [`FrontLayer`] around one route.
#[derive(Clone)]
pub struct Front<S> {
    inner: S,
    state: AppState,
    histograms: Arc<RouteHistograms>,
}

impl<S> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let slot = &self.histograms[method_slot(req.method())];
        let timing = slot
            .get_or_init(|| {
                let labels =
                    RouteLabels::new(req.method(), req.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
                let histogram = self.state.metrics.latency.get_or_create(&labels).clone();
                Arc::new(Timing { labels, histogram })
            })
            .clone();
        let started = Instant::now();
        let bad = if bad_percent_encoding(req.uri().path()) {
            Some("path")
        } else if req.uri().query().is_some_and(bad_percent_encoding) {
            Some("query")
        } else {
            None
        };
        let inner = match bad {
            Some(field) => Inner::Answered {
                response: Some(ApiError::invalid(field, "malformed percent-encoding").into_response()),
            },
            None => Inner::Running { future: self.inner.call(req) },
        };
        Timed { inner, started, timing }
    }
}

pin_project_lite::pin_project! {
    /// The route's answer, timed into its histogram when it is ready.
    pub struct Timed<F> {
        #[pin]
        inner: Inner<F>,
        started: Instant,
        timing: Arc<Timing>,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner<F> {
        Running { #[pin] future: F },
        Answered { response: Option<Response> },
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Timed<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.project() {
            InnerProj::Running { future } => match future.poll(cx) {
                Poll::Ready(Ok(response)) => response,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            InnerProj::Answered { response } => response.take().expect("BUG: polled after it answered"),
        };
        let elapsed = this.started.elapsed();
        this.timing.histogram.observe(elapsed.as_secs_f64());
        tracing::debug!(
            method = this.timing.labels.method,
            route = %this.timing.labels.route,
            status = response.status().as_u16(),
            micros = elapsed.as_micros() as u64,
            "request"
        );
        Poll::Ready(Ok(response))
    }
}

/// Whether `text` (a path or a query string) has a `%` not followed by two hex digits: the
/// router and the query parser would take it literally, so it is answered 400
/// `invalid_argument` instead.
fn bad_percent_encoding(text: &str) -> bool {
    let text = text.as_bytes();
    text.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && !(text.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && text.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}
