//! `GET /openapi.json` documents every route the router registers, with its method, and
//! every error answer as the one `ErrorBody`.
//!
//! The expected routes are not a hand list: they are read from the router's source
//! (`src/api/mod.rs`) at test time, so a route added there without an annotation fails here.

use std::collections::BTreeSet;

use serde_json::Value;
use tumbler_server::ServerConfig;

/// The router's source, as compiled into this test.
const ROUTER_SOURCE: &str = include_str!("../src/api/mod.rs");

/// The HTTP methods axum's `routing` module has a function for.
const METHODS: [&str; 9] = ["get", "post", "put", "delete", "patch", "head", "options", "trace", "connect"];

/// A route: upper-case method and path template (`{name}` segments, as axum and OpenAPI
/// both write them).
type Route = (String, String);

/// `source` without `//` comments and with string literals kept as they are.
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => in_string = !in_string,
            '\\' if in_string => {
                out.push(c);
                if let Some(escaped) = chars.next() {
                    out.push(escaped);
                }
                continue;
            }
            '/' if !in_string && chars.peek() == Some(&'/') => {
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        out.push('\n');
                        break;
                    }
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// The text between the `(` at `open` and its matching `)`, skipping string literals.
fn balanced_args(source: &str, open: usize) -> &str {
    let bytes = source.as_bytes();
    assert_eq!(bytes[open], b'(');
    let (mut depth, mut in_string, mut i) = (0usize, false, open);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'(' if !in_string => depth += 1,
            b')' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return &source[open + 1..i];
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced parentheses after byte {open} of src/api/mod.rs");
}

/// Whether `text` calls the function `name`: `name(` not part of a longer identifier.
fn calls(text: &str, name: &str) -> usize {
    let call = format!("{name}(");
    text.match_indices(&call)
        .filter(|(at, _)| {
            let before = at.checked_sub(1).map(|i| text.as_bytes()[i]);
            !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .count()
}

/// The methods a route's method router names: `get(..)`, `axum::routing::delete(..)`,
/// `.post(..)` chained, …: a method name called, not part of a longer identifier.
fn methods_in(method_router: &str) -> Vec<String> {
    for unsupported in ["any", "on", "any_service", "on_service", "get_service", "post_service"] {
        assert_eq!(
            calls(method_router, unsupported),
            0,
            "a route uses `{unsupported}(..)`: teach this test to read it: {method_router}"
        );
    }
    let mut found = Vec::new();
    for method in METHODS {
        found.extend(std::iter::repeat_n(method.to_ascii_uppercase(), calls(method_router, method)));
    }
    found
}

/// Every `(METHOD, path)` the router registers, read from its `.route("PATH", …)` calls.
fn registered_routes() -> BTreeSet<Route> {
    let source = strip_comments(ROUTER_SOURCE);
    for unsupported in [".nest(", ".merge(", ".route_service(", ".nest_service("] {
        assert!(
            !source.contains(unsupported),
            "src/api/mod.rs now uses `{unsupported}..)`: teach this test to read those routes too"
        );
    }
    let mut routes = BTreeSet::new();
    for (at, call) in source.match_indices(".route(") {
        let args = balanced_args(&source, at + call.len() - 1);
        let rest = args.trim_start();
        let rest = rest.strip_prefix('"').unwrap_or_else(|| panic!("a route whose path is not a literal: {args}"));
        let end = rest.find('"').expect("the path literal ends");
        let path = rest[..end].to_owned();
        let methods = methods_in(&rest[end + 1..]);
        assert!(!methods.is_empty(), "no method found for route {path:?} in: {args}");
        for method in methods {
            assert!(routes.insert((method.clone(), path.clone())), "{method} {path} is registered twice");
        }
    }
    assert!(routes.len() >= 10, "read only {} routes from src/api/mod.rs: the parser is broken", routes.len());
    routes
}

/// Every `(METHOD, path)` the document describes.
fn documented_routes(doc: &Value) -> BTreeSet<Route> {
    let paths = doc["paths"].as_object().expect("`paths` is an object");
    let mut routes = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("a path item is an object").keys() {
            if METHODS.contains(&method.as_str()) {
                routes.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// Each `(METHOD path, operation)` of the document.
fn operations(doc: &Value) -> Vec<(String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("`paths` is an object") {
        for (method, op) in item.as_object().expect("a path item is an object") {
            if METHODS.contains(&method.as_str()) {
                ops.push((format!("{} {path}", method.to_ascii_uppercase()), op));
            }
        }
    }
    ops
}

async fn fetch_document() -> Value {
    let server = tumbler_server::spawn(ServerConfig::for_tests()).await.expect("server starts");
    let response = reqwest::get(format!("{}/openapi.json", server.url())).await.expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert!(
        content_type.as_deref().is_some_and(|t| t.starts_with("application/json")),
        "content type {content_type:?}"
    );
    let text = response.text().await.expect("body");
    server.shutdown().await;
    serde_json::from_str(&text).expect("the document is JSON")
}

#[test]
fn the_router_source_parser_reads_methods_and_paths() {
    assert_eq!(methods_in(" get(locks::status).delete(locks::force_release)"), ["GET", "DELETE"]);
    assert_eq!(methods_in(" axum::routing::delete(sessions::close)"), ["DELETE"]);
    assert_eq!(methods_in(" get(gs2::get)"), ["GET"], "a handler named like a method is not a method");
    assert_eq!(methods_in(" post(ops::budget_post)"), ["POST"]);
    assert_eq!(strip_comments("a // .route(\"/x\", get(h))\nb \"//\""), "a \nb \"//\"");
    let routes = registered_routes();
    assert!(routes.contains(&("GET".into(), "/v1/namespaces/{ns}/locks/{key}".into())));
    assert!(routes.contains(&("DELETE".into(), "/v1/namespaces/{ns}/locks/{key}".into())));
    assert!(routes.contains(&("GET".into(), "/openapi.json".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_documents_every_route_of_the_router() {
    let doc = fetch_document().await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "an OpenAPI 3.1 document, not {}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Tumbler lock server");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let registered = registered_routes();
    let documented = documented_routes(&doc);
    let missing: Vec<String> = registered.difference(&documented).map(|(m, p)| format!("{m} {p}")).collect();
    let stale: Vec<String> = documented.difference(&registered).map(|(m, p)| format!("{m} {p}")).collect();
    assert!(missing.is_empty(), "routes of the router missing from /openapi.json: {missing:#?}");
    assert!(stale.is_empty(), "routes in /openapi.json the router does not register: {stale:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_declares_its_path_parameters_and_a_success() {
    let doc = fetch_document().await;
    let mut ids = BTreeSet::new();
    for (route, op) in operations(&doc) {
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{route} has no operationId"));
        assert!(ids.insert(id.to_owned()), "operationId {id:?} is used twice ({route})");

        let path = route.split_once(' ').expect("METHOD path").1;
        let segments: BTreeSet<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .map(|params| params.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(declared, segments, "{route}: the path parameters declared differ from the template's");

        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{route} has no responses"));
        assert!(responses.contains_key("200"), "{route} documents no 200 answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_the_error_body() {
    let doc = fetch_document().await;
    let error_body = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error_body["required"], serde_json::json!(["error"]), "ErrorBody: {error_body}");
    let inner = &error_body["properties"]["error"];
    for field in ["code", "message", "details"] {
        assert!(inner["properties"].get(field).is_some(), "ErrorBody.error has no `{field}`: {inner}");
    }

    let mut errors = 0;
    for (route, op) in operations(&doc) {
        for (status, response) in op["responses"].as_object().expect("responses") {
            let code: u16 = status.parse().unwrap_or_else(|_| panic!("{route}: status {status:?}"));
            if code < 400 {
                continue;
            }
            // The liveness probe answers 503 `{"status": "stopping"}` by design, not an error.
            if route == "GET /healthz" && code == 503 {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(
                schema, "#/components/schemas/ErrorBody",
                "{route} {status} does not answer the ErrorBody: {response}"
            );
            errors += 1;
        }
    }
    assert!(errors > 20, "only {errors} error answers documented");

    let events = &doc["paths"]["/v1/namespaces/{ns}/events"]["get"];
    assert!(events["responses"]["200"]["content"].get("text/event-stream").is_some(), "SSE answer: {events}");
    let last_event_id = events["parameters"]
        .as_array()
        .and_then(|params| params.iter().find(|p| p["name"] == "Last-Event-ID"))
        .expect("the events route documents Last-Event-ID");
    assert_eq!(last_event_id["in"], "header");
}
