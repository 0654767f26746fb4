//! Every route of DESIGN.md §4 rejects bad input with the one error shape, the status and
//! code §4 gives, `details.field` naming the field — and changes nothing: holds taken
//! before the bad request keep their owner, count and fencing token.
//!
//! Each test is a table of bad requests aimed, where they can be, at keys and sessions
//! that are held, so that a request wrongly half-processed would show in the holds.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use support::{long, Harness, Reply};

/// A session id no server gives out before it has opened 2^64 - 1 sessions.
const NEVER_ISSUED: &str = "18446744073709551615";

const NS: &str = "bad";

/// A bad request and what it must answer.
struct Case {
    name: String,
    method: Method,
    path: String,
    body: Body,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

enum Body {
    None,
    Json(Value),
    Raw(String),
}

fn post(name: impl Into<String>, path: impl Into<String>, body: Value) -> Case {
    Case::new(name, Method::POST, path, Body::Json(body))
}

fn raw(name: impl Into<String>, path: impl Into<String>, text: impl Into<String>) -> Case {
    Case::new(name, Method::POST, path, Body::Raw(text.into()))
}

fn get(name: impl Into<String>, path: impl Into<String>) -> Case {
    Case::new(name, Method::GET, path, Body::None)
}

fn delete(name: impl Into<String>, path: impl Into<String>) -> Case {
    Case::new(name, Method::DELETE, path, Body::None)
}

impl Case {
    fn new(name: impl Into<String>, method: Method, path: impl Into<String>, body: Body) -> Self {
        Case { name: name.into(), method, path: path.into(), body, status: 0, code: "", field: None }
    }

    /// 400 `invalid_argument` naming `field`.
    fn invalid(self, field: &'static str) -> Self {
        self.fails(400, "invalid_argument", Some(field))
    }

    fn fails(mut self, status: u16, code: &'static str, field: Option<&'static str>) -> Self {
        self.status = status;
        self.code = code;
        self.field = field;
        self
    }

    async fn run(&self, h: &Harness) -> Reply {
        match &self.body {
            Body::None => h.send(self.method.clone(), &self.path, None).await,
            Body::Json(value) => h.send(self.method.clone(), &self.path, Some(value.clone())).await,
            Body::Raw(text) => h.post_raw(&self.path, text.clone()).await,
        }
    }
}

/// Holds taken before the bad requests, and their state then.
struct Guarded {
    /// `bad/held`, held by `keeper` with a TTL, count 2.
    plain: Vec<(String, u64, u64)>,
    /// `bad/in-session`, held by `keeper` in `session`.
    in_session: Vec<(String, u64, u64)>,
    /// The GS2 mutex `bad/users/u1/mutexes/held`, held by transaction `keeper`.
    mutex: Value,
    session: String,
}

impl Guarded {
    async fn take(h: &Harness) -> Self {
        h.hold(NS, "held", "keeper").await;
        h.hold(NS, "held", "keeper").await;
        let session = h.open_session(600_000).await;
        h.acquire(NS, "in-session", json!({ "owner": "keeper", "session": session })).await.ok();
        h.post(
            &format!("/v1/namespaces/{NS}/users/u1/mutexes/held/lock"),
            json!({ "transactionId": "keeper", "ttl": 600 }),
        )
        .await
        .ok();
        let mut guarded = Guarded { plain: Vec::new(), in_session: Vec::new(), mutex: Value::Null, session };
        (guarded.plain, guarded.in_session, guarded.mutex) = Guarded::read(h).await;
        assert_eq!(guarded.plain, [("keeper".to_owned(), 2, guarded.plain[0].2)]);
        guarded
    }

    async fn read(h: &Harness) -> (Vec<(String, u64, u64)>, Vec<(String, u64, u64)>, Value) {
        let plain = h.holders(NS, "held").await.unwrap_or_default();
        let in_session = h.holders(NS, "in-session").await.unwrap_or_default();
        let mutex = h.get(&format!("/v1/namespaces/{NS}/users/u1/mutexes/held")).await.body;
        (plain, in_session, mutex)
    }

    /// What differs from when the holds were taken, if anything.
    async fn changes(&self, h: &Harness) -> Option<String> {
        let (plain, in_session, mutex) = Guarded::read(h).await;
        let live = h.post(&format!("/v1/sessions/{}/keepalive", self.session), json!({})).await;
        let mut changes = Vec::new();
        if plain != self.plain {
            changes.push(format!("bad/held was {:?}, now {plain:?}", self.plain));
        }
        if in_session != self.in_session {
            changes.push(format!("bad/in-session was {:?}, now {in_session:?}", self.in_session));
        }
        if mutex != self.mutex {
            changes.push(format!("the mutex was {}, now {mutex}", self.mutex));
        }
        if live.status != 200 {
            changes.push(format!("the session ended: {} {}", live.status, live.body));
        }
        (!changes.is_empty()).then(|| changes.join("; "))
    }
}

/// Runs every case against a server holding [`Guarded`] holds; fails listing every case
/// that answered wrongly or changed a hold.
async fn check(h: &Harness, guarded: &Guarded, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in &cases {
        let reply = case.run(h).await;
        if let Err(problem) = reply.check(case.status, case.code) {
            failures.push(format!("{}: {problem}", case.name));
        } else if reply.field() != case.field {
            failures.push(format!("{}: expected details.field {:?}, got {}", case.name, case.field, reply.body));
        }
        if let Some(changed) = guarded.changes(h).await {
            failures.push(format!("{}: changed the holds: {changed}", case.name));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Runs `cases` on a fresh server with the guarded holds, then stops it.
async fn check_on_fresh_server(cases: impl FnOnce(&Guarded) -> Vec<Case>) {
    let h = Harness::start().await;
    let guarded = Guarded::take(&h).await;
    let cases = cases(&guarded);
    check(&h, &guarded, cases).await;
    h.stop().await;
}

/// Cases every body-taking route shares: malformed JSON and bodies of the wrong shape.
/// `valid` is a correct body for the route, spoiled by trailing garbage.
fn malformed_bodies(path: &str, valid: Value) -> Vec<Case> {
    let text = valid.to_string();
    let fields = &text[1..text.len() - 1];
    vec![
        raw("JSON truncated inside a name", path, r#"{"own"#).invalid("body"),
        raw("JSON truncated after a brace", path, "{").invalid("body"),
        raw("single-quoted JSON", path, "{'owner': 'keeper'}").invalid("body"),
        raw("not JSON", path, "owner=keeper").invalid("body"),
        raw("a valid body and trailing garbage", path, format!("{valid} x")).invalid("body"),
        raw("two bodies", path, format!("{valid}{valid}")).invalid("body"),
        raw("every field twice", path, format!("{{{fields},{fields}}}")).invalid("body"),
        raw("an array instead of an object", path, "[]").invalid("body"),
        raw("a string instead of an object", path, r#""keeper""#).invalid("body"),
        raw("null instead of an object", path, "null").invalid("body"),
    ]
}

/// Bad namespaces and keys in `/v1/namespaces/{ns}/locks/{key}{rest}`.
fn bad_lock_paths(method: Method, rest: &str, body: Option<Value>) -> Vec<Case> {
    let body = || body.clone().map_or(Body::None, Body::Json);
    let at = |ns: &str, key: &str| format!("/v1/namespaces/{ns}/locks/{key}{rest}");
    let case = |name: &str, path: String| Case::new(name, method.clone(), path, body());
    vec![
        case("a key over 1024 bytes", at(NS, &long('k', 1025))).invalid("key"),
        case("a key over 1024 bytes of 2-byte chars", at(NS, &long('é', 513))).invalid("key"),
        case("a key with a control character", at(NS, "a%01b")).invalid("key"),
        case("a namespace over 128 chars", at(&long('n', 129), "held")).invalid("namespace"),
        case("a namespace with a bad char", at("ba!d", "held")).invalid("namespace"),
        case("a namespace with a space", at("ba%20d", "held")).invalid("namespace"),
        case("a namespace with a colon", at("bad:x", "held")).invalid("namespace"),
        case("bad percent-encoding in the key", at(NS, "a%ZZ")).invalid("path"),
        case("a truncated percent-escape in the key", at(NS, "held%2")).invalid("path"),
        case("bad percent-encoding in the namespace", at("b%G1d", "held")).invalid("path"),
        case("percent-encoded invalid UTF-8 in the key", at(NS, "%FF%FE")).invalid("path"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_session_rejects_bad_input() {
    check_on_fresh_server(|_| {
        let path = "/v1/sessions";
        let mut cases = vec![
            post("no ttl_ms", path, json!({})).invalid("ttl_ms"),
            post("ttl_ms as a string", path, json!({ "ttl_ms": "1000" })).invalid("ttl_ms"),
            post("ttl_ms negative", path, json!({ "ttl_ms": -1 })).invalid("ttl_ms"),
            post("ttl_ms fractional", path, json!({ "ttl_ms": 1.5 })).invalid("ttl_ms"),
            post("ttl_ms zero", path, json!({ "ttl_ms": 0 })).invalid("ttl_ms"),
            post("ttl_ms over the bound", path, json!({ "ttl_ms": 24 * 3600 * 1000 + 1 })).invalid("ttl_ms"),
            post("ttl_ms over u64", path, json!({ "ttl_ms": 1e30 })).invalid("ttl_ms"),
            post("label as a number", path, json!({ "ttl_ms": 1000, "label": 5 })).invalid("label"),
            post("label over 256 bytes", path, json!({ "ttl_ms": 1000, "label": long('l', 257) })).invalid("label"),
            post("an unknown field", path, json!({ "ttl_ms": 1000, "ttl": 5 })).invalid("ttl"),
        ];
        cases.extend(malformed_bodies(path, json!({ "ttl_ms": 1000 })));
        cases
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_and_close_reject_unknown_ended_and_malformed_sessions() {
    let h = Harness::start().await;
    let guarded = Guarded::take(&h).await;
    let ended = h.ended_session().await;
    let mut cases = Vec::new();
    for (route, method) in [("/keepalive", Method::POST), ("", Method::DELETE)] {
        let at = |id: &str| format!("/v1/sessions/{id}{route}");
        let case = |name: &str, id: &str| Case::new(format!("{method} {name}"), method.clone(), at(id), Body::None);
        cases.extend([
            // Ids are opaque: any string the server did not give out is an unknown session.
            case("a session id that is not a number", "abc").fails(404, "session_expired", None),
            case("a negative session id", "-1").fails(404, "session_expired", None),
            case("a session id over u64", "99999999999999999999999").fails(404, "session_expired", None),
            case("an open session's id with a leading zero", &format!("0{}", guarded.session)).fails(
                404,
                "session_expired",
                None,
            ),
            case("an open session's id with a plus sign", &format!("+{}", guarded.session)).fails(
                404,
                "session_expired",
                None,
            ),
            case("bad percent-encoding in the id", "1%ZZ").invalid("path"),
            case("session 0, never issued", "0").fails(404, "session_expired", None),
            case("a session id never issued", NEVER_ISSUED).fails(404, "session_expired", None),
            case("an ended session", &ended).fails(410, "session_expired", None),
        ]);
    }
    check(&h, &guarded, cases).await;
    h.stop().await;
}

/// A keep-alive takes no fields: anything in its body is refused, not silently ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_rejects_a_body_with_anything_in_it() {
    let h = Harness::with_limits(|l| l.max_body_bytes = 1024).await;
    let guarded = Guarded::take(&h).await;
    let path = format!("/v1/sessions/{}/keepalive", guarded.session);
    let cases = vec![
        post("a ttl_ms it would not apply", path.clone(), json!({ "ttl_ms": 3000 })).invalid("ttl_ms"),
        post("an unknown field", path.clone(), json!({ "foo": 1 })).invalid("foo"),
        raw("malformed JSON", path.clone(), "garbage{").invalid("body"),
        post("a body over the bound", path.clone(), json!({ "x": long('x', 4096) })).fails(413, "limit_exceeded", None),
    ];
    check(&h, &guarded, cases).await;
    h.post(&path, json!({})).await.ok();
    h.post_raw(&path, "").await.ok();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_rejects_bad_input() {
    let h = Harness::start().await;
    let guarded = Guarded::take(&h).await;
    let ended = h.ended_session().await;
    let path = format!("/v1/namespaces/{NS}/locks/held/acquire");
    let with = |extra: Value| {
        let mut body = json!({ "owner": "keeper", "ttl_ms": 60_000 });
        for (k, v) in extra.as_object().expect("an object") {
            body[k] = v.clone();
        }
        body
    };
    let p = path.as_str();
    let mut cases = vec![
        post("neither session nor ttl_ms", p, json!({ "owner": "keeper" })).invalid("session"),
        post("an empty body: neither session nor ttl_ms", p, json!({})).invalid("session"),
        post("owner as a number", p, with(json!({ "owner": 7 }))).invalid("owner"),
        post("owner empty", p, with(json!({ "owner": "" }))).invalid("owner"),
        post("owner over 256 chars", p, with(json!({ "owner": long('o', 257) }))).invalid("owner"),
        post("owner over 256 2-byte chars", p, with(json!({ "owner": long('ö', 257) }))).invalid("owner"),
        post("owner with a control character", p, with(json!({ "owner": "kee\nper" }))).invalid("owner"),
        post("ttl_ms as a string", p, with(json!({ "ttl_ms": "60000" }))).invalid("ttl_ms"),
        post("ttl_ms negative", p, with(json!({ "ttl_ms": -5 }))).invalid("ttl_ms"),
        post("ttl_ms zero", p, with(json!({ "ttl_ms": 0 }))).invalid("ttl_ms"),
        post("ttl_ms over the bound", p, with(json!({ "ttl_ms": 24 * 3600 * 1000 + 1 }))).invalid("ttl_ms"),
        post("wait_ms as a bool", p, with(json!({ "wait_ms": true }))).invalid("wait_ms"),
        post("wait_ms over the bound", p, with(json!({ "wait_ms": 600_001 }))).invalid("wait_ms"),
        post("mode unknown", p, with(json!({ "mode": "bogus" }))).invalid("mode"),
        post("mode as a list", p, with(json!({ "mode": ["shared"] }))).invalid("mode"),
        post("mode upper case", p, with(json!({ "mode": "Exclusive" }))).invalid("mode"),
        post("a semaphore without a limit", p, with(json!({ "mode": "semaphore" }))).invalid("limit"),
        post("a semaphore of limit 0", p, with(json!({ "mode": "semaphore", "limit": 0 }))).invalid("limit"),
        post("a limit over u32", p, with(json!({ "mode": "semaphore", "limit": 1u64 << 33 }))).invalid("limit"),
        post("a limit on an exclusive lock", p, with(json!({ "limit": 2 }))).invalid("limit"),
        post("a limit on a shared lock", p, with(json!({ "mode": "shared", "limit": 2 }))).invalid("limit"),
        post("request_id empty", p, with(json!({ "request_id": "" }))).invalid("request_id"),
        post("request_id over 256 bytes", p, with(json!({ "request_id": long('r', 257) }))).invalid("request_id"),
        post("request_id as a number", p, with(json!({ "request_id": 1 }))).invalid("request_id"),
        post("session as a number", p, json!({ "owner": "keeper", "session": 1 })).invalid("session"),
        post("session not an id", p, json!({ "owner": "keeper", "session": "s-1" })).fails(
            404,
            "session_expired",
            None,
        ),
        post("a session never issued", p, json!({ "owner": "keeper", "session": NEVER_ISSUED })).fails(
            404,
            "session_expired",
            None,
        ),
        post("an ended session", p, json!({ "owner": "keeper", "session": ended.clone() })).fails(
            410,
            "session_expired",
            None,
        ),
        post("an unknown field", p, with(json!({ "wait": 1000 }))).invalid("wait"),
        post("a camelCase field", p, with(json!({ "ttlMs": 1000 }))).invalid("ttlMs"),
        post("another owner: busy", p, json!({ "owner": "other", "ttl_ms": 1000 })).fails(409, "busy", None),
    ];
    cases.extend(malformed_bodies(p, json!({ "owner": "keeper", "ttl_ms": 60_000 })));
    cases.extend(bad_lock_paths(Method::POST, "/acquire", Some(json!({ "owner": "keeper", "ttl_ms": 60_000 }))));
    check(&h, &guarded, cases).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_rejects_bad_input() {
    check_on_fresh_server(|_| {
        let path = format!("/v1/namespaces/{NS}/locks/held/release");
        let p = path.as_str();
        let mut cases = vec![
            post("no owner", p, json!({})).invalid("owner"),
            post("owner as a number", p, json!({ "owner": 1 })).invalid("owner"),
            post("owner null", p, json!({ "owner": null })).invalid("owner"),
            post("owner empty", p, json!({ "owner": "" })).invalid("owner"),
            post("owner over 256 chars", p, json!({ "owner": long('o', 257) })).invalid("owner"),
            post("mode unknown", p, json!({ "owner": "keeper", "mode": "bogus" })).invalid("mode"),
            post("a limit without a mode", p, json!({ "owner": "keeper", "limit": 2 })).invalid("limit"),
            post("fencing_token as a string", p, json!({ "owner": "keeper", "fencing_token": "1" }))
                .invalid("fencing_token"),
            post("an unknown field", p, json!({ "owner": "keeper", "count": 1 })).invalid("count"),
            post("another owner: not_owner", p, json!({ "owner": "other" })).fails(409, "not_owner", None),
            // The key is held, by this owner but not in this mode: the server answers not_owner.
            post("the owner in another mode", p, json!({ "owner": "keeper", "mode": "shared" })).fails(
                409,
                "not_owner",
                None,
            ),
            post("a stale fencing token: not_held", p, json!({ "owner": "keeper", "fencing_token": 999_999 }))
                .fails(404, "not_held", None),
            post(
                "a free key: not_held",
                format!("/v1/namespaces/{NS}/locks/free/release"),
                json!({ "owner": "keeper" }),
            )
            .fails(404, "not_held", None),
        ];
        cases.extend(malformed_bodies(p, json!({ "owner": "keeper" })));
        cases.extend(bad_lock_paths(Method::POST, "/release", Some(json!({ "owner": "keeper" }))));
        cases
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rejects_bad_input() {
    check_on_fresh_server(|_| {
        let path = format!("/v1/namespaces/{NS}/locks/held/refresh");
        let p = path.as_str();
        let mut cases = vec![
            post("no owner", p, json!({ "ttl_ms": 1000 })).invalid("owner"),
            post("no ttl_ms", p, json!({ "owner": "keeper" })).invalid("ttl_ms"),
            post("ttl_ms as a string", p, json!({ "owner": "keeper", "ttl_ms": "1000" })).invalid("ttl_ms"),
            post("ttl_ms zero", p, json!({ "owner": "keeper", "ttl_ms": 0 })).invalid("ttl_ms"),
            post("ttl_ms over the bound", p, json!({ "owner": "keeper", "ttl_ms": 24 * 3600 * 1000 + 1 }))
                .invalid("ttl_ms"),
            post("owner over 256 chars", p, json!({ "owner": long('o', 257), "ttl_ms": 1000 })).invalid("owner"),
            post("mode unknown", p, json!({ "owner": "keeper", "ttl_ms": 1000, "mode": "x" })).invalid("mode"),
            post("an unknown field", p, json!({ "owner": "keeper", "ttl_ms": 1000, "session": "1" }))
                .invalid("session"),
            post("another owner: not_owner", p, json!({ "owner": "other", "ttl_ms": 1000 })).fails(
                409,
                "not_owner",
                None,
            ),
            post(
                "a free key: not_held",
                format!("/v1/namespaces/{NS}/locks/free/refresh"),
                json!({ "owner": "keeper", "ttl_ms": 1000 }),
            )
            .fails(404, "not_held", None),
        ];
        cases.extend(malformed_bodies(p, json!({ "owner": "keeper", "ttl_ms": 60_000 })));
        cases.extend(bad_lock_paths(Method::POST, "/refresh", Some(json!({ "owner": "keeper", "ttl_ms": 1000 }))));
        cases
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_force_release_reject_bad_paths() {
    check_on_fresh_server(|_| {
        let mut cases = vec![
            get("the status of a free key", format!("/v1/namespaces/{NS}/locks/free")).fails(404, "not_held", None),
            delete("force-releasing a free key", format!("/v1/namespaces/{NS}/locks/free"))
                .fails(404, "not_held", None),
        ];
        cases.extend(bad_lock_paths(Method::GET, "", None));
        cases.extend(bad_lock_paths(Method::DELETE, "", None));
        cases
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_rejects_bad_queries() {
    check_on_fresh_server(|_| {
        let list = |query: &str| format!("/v1/namespaces/{NS}/locks?{query}");
        vec![
            get("limit zero", list("limit=0")).invalid("limit"),
            get("limit over the page bound", list("limit=1001")).invalid("limit"),
            get("limit not a number", list("limit=ten")).invalid("query"),
            get("limit negative", list("limit=-1")).invalid("query"),
            get("an unknown parameter", list("prefix=a&bogus=1")).invalid("query"),
            get("bad percent-encoding in the query", list("prefix=%ZZ")).invalid("query"),
            get("a lone percent sign in the query", list("prefix=a%")).invalid("query"),
            get("a namespace over 128 chars", format!("/v1/namespaces/{}/locks", long('n', 129))).invalid("namespace"),
            get("a namespace with a bad char", "/v1/namespaces/b@d/locks").invalid("namespace"),
            get("bad percent-encoding in the namespace", "/v1/namespaces/b%ZZ/locks").invalid("path"),
        ]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_acquire_rejects_bad_input() {
    let h = Harness::start().await;
    let guarded = Guarded::take(&h).await;
    let ended = h.ended_session().await;
    let path = format!("/v1/namespaces/{NS}/acquire");
    let p = path.as_str();
    // Every case names the held key with its owner: a wrongly processed request would
    // re-enter it and raise its count.
    let keys = |extra: &[&str]| {
        let mut keys = vec![json!("held"), json!("fresh")];
        keys.extend(extra.iter().map(|k| json!(k)));
        keys
    };
    let mut cases = vec![
        post("no keys", p, json!({ "owner": "keeper", "ttl_ms": 1000 })).invalid("keys"),
        post("keys empty", p, json!({ "keys": [], "owner": "keeper", "ttl_ms": 1000 })).invalid("keys"),
        post("keys as a string", p, json!({ "keys": "held", "owner": "keeper", "ttl_ms": 1000 })).invalid("keys"),
        post("a key as a number", p, json!({ "keys": ["held", 5], "owner": "keeper", "ttl_ms": 1000 }))
            .invalid("keys[1]"),
        post(
            "a key over 1024 bytes",
            p,
            json!({ "keys": keys(&[&long('k', 1025)]), "owner": "keeper", "ttl_ms": 1000 }),
        )
        .invalid("key"),
        post("an empty key", p, json!({ "keys": keys(&[""]), "owner": "keeper", "ttl_ms": 1000 })).invalid("key"),
        post("neither session nor ttl_ms", p, json!({ "keys": keys(&[]), "owner": "keeper" })).invalid("session"),
        post("owner over 256 chars", p, json!({ "keys": keys(&[]), "owner": long('o', 257), "ttl_ms": 1000 }))
            .invalid("owner"),
        post("ttl_ms over the bound", p, json!({ "keys": keys(&[]), "owner": "keeper", "ttl_ms": 86_400_001 }))
            .invalid("ttl_ms"),
        post(
            "wait_ms over the bound",
            p,
            json!({ "keys": keys(&[]), "owner": "keeper", "ttl_ms": 1000, "wait_ms": 600_001 }),
        )
        .invalid("wait_ms"),
        post("mode unknown", p, json!({ "keys": keys(&[]), "owner": "keeper", "ttl_ms": 1000, "mode": "x" }))
            .invalid("mode"),
        post("an unknown field", p, json!({ "keys": keys(&[]), "owner": "keeper", "ttl_ms": 1000, "key": "x" }))
            .invalid("key"),
        post("a session never issued", p, json!({ "keys": keys(&[]), "owner": "keeper", "session": NEVER_ISSUED }))
            .fails(404, "session_expired", None),
        post("an ended session", p, json!({ "keys": keys(&[]), "owner": "keeper", "session": ended.clone() })).fails(
            410,
            "session_expired",
            None,
        ),
        post("another owner: busy", p, json!({ "keys": ["fresh", "held"], "owner": "other", "ttl_ms": 1000 }))
            .fails(409, "busy", None),
        post(
            "a namespace over 128 chars",
            format!("/v1/namespaces/{}/acquire", long('n', 129)),
            json!({ "keys": ["held"], "ttl_ms": 1000 }),
        )
        .invalid("namespace"),
        post("a namespace with a bad char", "/v1/namespaces/b!d/acquire", json!({ "keys": ["held"], "ttl_ms": 1000 }))
            .invalid("namespace"),
        post(
            "bad percent-encoding in the namespace",
            "/v1/namespaces/b%Z/acquire",
            json!({ "keys": ["held"], "ttl_ms": 1000 }),
        )
        .invalid("path"),
    ];
    cases.extend(malformed_bodies(p, json!({ "keys": ["held", "fresh"], "owner": "keeper", "ttl_ms": 1000 })));
    check(&h, &guarded, cases).await;
    // The all-or-nothing rule held through the failures: `fresh` was never taken.
    assert_eq!(h.holders(NS, "fresh").await, None);
    h.stop().await;
}

/// DESIGN.md §2: "request sizes are bounded by configuration; exceeding one fails with
/// `limit_exceeded`". A multi-key acquire naming more keys than `max_keys_per_request`
/// is such a request size: like an oversized body, 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_keys_in_one_request_is_limit_exceeded() {
    let h = Harness::with_limits(|l| l.max_keys_per_request = 4).await;
    let guarded = Guarded::take(&h).await;
    let keys: Vec<String> = ["held", "a", "b", "c", "d"].iter().map(|k| k.to_string()).collect();
    let reply = h
        .post(&format!("/v1/namespaces/{NS}/acquire"), json!({ "keys": keys, "owner": "keeper", "ttl_ms": 1000 }))
        .await;
    let details = reply.expect_error(413, "limit_exceeded");
    assert_eq!(details["max"], 4, "{}", reply.body);
    assert_eq!(details["limit"], "keys_per_request", "{}", reply.body);
    assert_eq!(guarded.changes(&h).await, None);
    h.stop().await;
}

/// The bound is exact: `max_keys_per_request` keys are fine, one more takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_keys_in_one_request_takes_nothing() {
    let h = Harness::with_limits(|l| l.max_keys_per_request = 4).await;
    let guarded = Guarded::take(&h).await;
    let path = format!("/v1/namespaces/{NS}/acquire");
    let four = h.post(&path, json!({ "keys": ["a", "b", "c", "d"], "owner": "x", "ttl_ms": 60_000 })).await;
    assert_eq!(four.ok()["holds"].as_array().map(Vec::len), Some(4));
    let five = h.post(&path, json!({ "keys": ["held", "e", "f", "g", "h"], "owner": "keeper", "ttl_ms": 1000 })).await;
    five.expect_error(413, "limit_exceeded");
    assert_eq!(h.holders(NS, "e").await, None);
    assert_eq!(guarded.changes(&h).await, None);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_reject_bad_input() {
    let h = Harness::start().await;
    let guarded = Guarded::take(&h).await;
    let cases: [(&str, String, &str, Option<&str>, &str); 6] = [
        ("an unknown query parameter", NS.to_owned(), "bogus=1", None, "query"),
        ("a namespace over 128 chars", long('n', 129), "", None, "namespace"),
        ("a namespace with a bad char", "b!d".to_owned(), "", None, "namespace"),
        ("bad percent-encoding in the namespace", "b%ZZ".to_owned(), "", None, "path"),
        ("a Last-Event-ID that is not a number", NS.to_owned(), "", Some("abc"), "Last-Event-ID"),
        ("a negative Last-Event-ID", NS.to_owned(), "", Some("-1"), "Last-Event-ID"),
    ];
    for (name, ns, query, last, field) in cases {
        let Err(reply) = h.events(&ns, query, last).await else { panic!("{name}: the stream opened") };
        reply.expect_error(400, "invalid_argument");
        assert_eq!(reply.field(), Some(field), "{name}: {}", reply.body);
        assert_eq!(guarded.changes(&h).await, None, "{name}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gs2_routes_reject_bad_input() {
    check_on_fresh_server(|_| {
        let mutex = |user: &str, property: &str| format!("/v1/namespaces/{NS}/users/{user}/mutexes/{property}");
        let lock = format!("{}/lock", mutex("u1", "held"));
        let unlock = format!("{}/unlock", mutex("u1", "held"));
        let (l, u) = (lock.as_str(), unlock.as_str());
        let mut cases = vec![
            // lock
            post("lock: no transactionId", l, json!({ "ttl": 60 })).invalid("transactionId"),
            post("lock: no ttl", l, json!({ "transactionId": "keeper" })).invalid("ttl"),
            post("lock: ttl as a string", l, json!({ "transactionId": "keeper", "ttl": "60" })).invalid("ttl"),
            post("lock: ttl negative", l, json!({ "transactionId": "keeper", "ttl": -1 })).invalid("ttl"),
            post("lock: ttl zero", l, json!({ "transactionId": "keeper", "ttl": 0 })).invalid("ttl"),
            post("lock: ttl over the bound", l, json!({ "transactionId": "keeper", "ttl": 86_401 })).invalid("ttl"),
            post("lock: ttl overflowing ms", l, json!({ "transactionId": "keeper", "ttl": u64::MAX })).invalid("ttl"),
            post("lock: transactionId as a number", l, json!({ "transactionId": 5, "ttl": 60 }))
                .invalid("transactionId"),
            post("lock: snake_case transaction_id", l, json!({ "transaction_id": "keeper", "ttl": 60 }))
                .invalid("transaction_id"),
            post("lock: an unknown field", l, json!({ "transactionId": "keeper", "ttl": 60, "wait": 1 }))
                .invalid("wait"),
            post("lock: another transaction: busy", l, json!({ "transactionId": "other", "ttl": 60 }))
                .fails(409, "busy", None),
            post(
                "lock: a user over 1024 bytes",
                format!("{}/lock", mutex(&long('u', 1025), "p")),
                json!({ "transactionId": "t", "ttl": 60 }),
            )
            .invalid("user"),
            post(
                "lock: a property over 1024 bytes",
                format!("{}/lock", mutex("u1", &long('p', 1025))),
                json!({ "transactionId": "t", "ttl": 60 }),
            )
            .invalid("property_id"),
            post(
                "lock: bad percent-encoding",
                format!("{}/lock", mutex("u1", "he%ZZld")),
                json!({ "transactionId": "keeper", "ttl": 60 }),
            )
            .invalid("path"),
            post(
                "lock: a namespace over 128 chars",
                format!("/v1/namespaces/{}/users/u1/mutexes/held/lock", long('n', 129)),
                json!({ "transactionId": "keeper", "ttl": 60 }),
            )
            .invalid("namespace"),
            // unlock
            post("unlock: no transactionId", u, json!({})).invalid("transactionId"),
            post("unlock: transactionId as a number", u, json!({ "transactionId": 1 })).invalid("transactionId"),
            post("unlock: an unknown field", u, json!({ "transactionId": "keeper", "ttl": 60 })).invalid("ttl"),
            post("unlock: another transaction: not_owner", u, json!({ "transactionId": "other" })).fails(
                409,
                "not_owner",
                None,
            ),
            post(
                "unlock: an unlocked mutex: not_held",
                format!("{}/unlock", mutex("u1", "free")),
                json!({ "transactionId": "keeper" }),
            )
            .fails(404, "not_held", None),
            post(
                "unlock: bad percent-encoding",
                format!("{}/unlock", mutex("u%Z1", "held")),
                json!({ "transactionId": "keeper" }),
            )
            .invalid("path"),
            // get
            get("get: an unlocked mutex", mutex("u1", "free")).fails(404, "not_held", None),
            get("get: a user over 1024 bytes", mutex(&long('u', 1025), "held")).invalid("user"),
            get("get: a property with a control char", mutex("u1", "he%7Fld")).invalid("property_id"),
            get("get: a namespace with a bad char", "/v1/namespaces/b!d/users/u1/mutexes/held").invalid("namespace"),
            get("get: bad percent-encoding", mutex("u1", "%ZZ")).invalid("path"),
            // list
            get("list: a namespace over 128 chars", format!("/v1/namespaces/{}/users/u1/mutexes", long('n', 129)))
                .invalid("namespace"),
            get("list: bad percent-encoding", "/v1/namespaces/bad/users/u%ZZ/mutexes").invalid("path"),
        ];
        cases.extend(
            malformed_bodies(l, json!({ "transactionId": "keeper", "ttl": 600 }))
                .into_iter()
                .map(|c| Case { name: format!("lock: {}", c.name), ..c }),
        );
        cases.extend(
            malformed_bodies(u, json!({ "transactionId": "keeper" }))
                .into_iter()
                .map(|c| Case { name: format!("unlock: {}", c.name), ..c }),
        );
        cases
    })
    .await;
}

/// GS2's `ttl` is in seconds, and so is the bound a too-long one is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gs2_ttl_over_the_bound_is_told_the_bound_in_seconds() {
    let h = Harness::with_limits(|l| l.max_ttl_ms = 3_600_000).await;
    let path = format!("/v1/namespaces/{NS}/users/u1/mutexes/p/lock");
    let reply = h.post(&path, json!({ "transactionId": "t", "ttl": 3601 })).await;
    let details = reply.expect_error(400, "invalid_argument");
    assert_eq!((&details["field"], &details["max"]), (&json!("ttl"), &json!(3600)), "{}", reply.body);
    h.post(&path, json!({ "transactionId": "t", "ttl": 3600 })).await.ok();
    h.stop().await;
}

/// DESIGN.md §2: the owner (GS2's `transactionId`) is 1–256 chars; anything else is
/// `invalid_argument` *naming the field*. On the GS2 routes that field is `transactionId`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gs2_bad_transaction_ids_name_the_transaction_id_field() {
    check_on_fresh_server(|_| {
        let lock = format!("/v1/namespaces/{NS}/users/u1/mutexes/held/lock");
        let unlock = format!("/v1/namespaces/{NS}/users/u1/mutexes/held/unlock");
        vec![
            post("lock: transactionId empty", &lock, json!({ "transactionId": "", "ttl": 60 }))
                .invalid("transactionId"),
            post("lock: transactionId over 256 chars", &lock, json!({ "transactionId": long('t', 257), "ttl": 60 }))
                .invalid("transactionId"),
            post("unlock: transactionId empty", &unlock, json!({ "transactionId": "" })).invalid("transactionId"),
            post("unlock: transactionId over 256 chars", &unlock, json!({ "transactionId": long('t', 257) }))
                .invalid("transactionId"),
        ]
    })
    .await;
}

/// The same bad transaction ids are at least rejected with 400 and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gs2_bad_transaction_ids_are_rejected_and_change_nothing() {
    let h = Harness::start().await;
    let guarded = Guarded::take(&h).await;
    let lock = format!("/v1/namespaces/{NS}/users/u1/mutexes/held/lock");
    let unlock = format!("/v1/namespaces/{NS}/users/u1/mutexes/held/unlock");
    for (path, body) in [
        (&lock, json!({ "transactionId": "", "ttl": 60 })),
        (&lock, json!({ "transactionId": long('t', 257), "ttl": 60 })),
        (&unlock, json!({ "transactionId": "" })),
        (&unlock, json!({ "transactionId": long('t', 257) })),
    ] {
        h.post(path, body.clone()).await.expect_error(400, "invalid_argument");
        assert_eq!(guarded.changes(&h).await, None, "{body}");
    }
    h.stop().await;
}

/// DESIGN.md §2: names (and GS2 users, validated as names) are 1–1024 bytes without
/// control characters; anything else is `invalid_argument` naming the field. The GS2
/// list route takes a user too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gs2_list_rejects_a_bad_user() {
    check_on_fresh_server(|_| {
        vec![
            get("list: a user over 1024 bytes", format!("/v1/namespaces/{NS}/users/{}/mutexes", long('u', 1025)))
                .invalid("user"),
            get("list: a user with a control char", format!("/v1/namespaces/{NS}/users/u%01/mutexes")).invalid("user"),
        ]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_bytes_are_413_on_every_body_route() {
    let h = Harness::with_limits(|l| l.max_body_bytes = 1024).await;
    let guarded = Guarded::take(&h).await;
    let session = guarded.session.clone();
    let padding = long('x', 4096);
    let routes = [
        ("/v1/sessions".to_owned(), json!({ "ttl_ms": 1000, "label": padding })),
        (
            format!("/v1/namespaces/{NS}/locks/held/acquire"),
            json!({ "owner": "keeper", "ttl_ms": 1000, "request_id": padding }),
        ),
        (
            format!("/v1/namespaces/{NS}/locks/in-session/acquire"),
            json!({ "owner": "keeper", "session": session, "request_id": padding }),
        ),
        (format!("/v1/namespaces/{NS}/locks/held/release"), json!({ "owner": "keeper", "mode": padding })),
        (
            format!("/v1/namespaces/{NS}/locks/held/refresh"),
            json!({ "owner": "keeper", "ttl_ms": 1000, "mode": padding }),
        ),
        (
            format!("/v1/namespaces/{NS}/acquire"),
            json!({ "keys": ["held", padding], "owner": "keeper", "ttl_ms": 1000 }),
        ),
        (format!("/v1/namespaces/{NS}/users/u1/mutexes/held/lock"), json!({ "transactionId": padding, "ttl": 60 })),
        (format!("/v1/namespaces/{NS}/users/u1/mutexes/held/unlock"), json!({ "transactionId": padding })),
    ];
    let mut cases: Vec<Case> = routes
        .into_iter()
        .map(|(path, body)| post(format!("4 KiB to {path}"), path, body).fails(413, "limit_exceeded", None))
        .collect();
    // Just within the bound is read (and fails for its content, not its size).
    let within = format!(r#"{{"owner": "keeper", "ttl_ms": 0, "request_id": "{}"}}"#, long('r', 900));
    assert!(within.len() <= 1024);
    cases
        .push(raw("just under the bound", format!("/v1/namespaces/{NS}/locks/held/acquire"), within).invalid("ttl_ms"));
    check(&h, &guarded, cases).await;
    // The client is told the bound it crossed.
    let reply = h.post("/v1/sessions", json!({ "ttl_ms": 1000, "label": padding })).await;
    let details = reply.expect_error(413, "limit_exceeded");
    assert_eq!((&details["limit"], &details["max"]), (&json!("body_bytes"), &json!(1024)), "{}", reply.body);
    // A body sent in chunks, with no length announced, is bounded as it is read.
    let chunks = (0..8).map(|_| Ok::<_, std::io::Error>(format!("{{\"label\": \"{}\"}}", long('x', 200))));
    let streamed = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    h.post_raw("/v1/sessions", streamed).await.expect_error(413, "limit_exceeded");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bounds_themselves_are_accepted() {
    let h = Harness::start().await;
    let ns = long('n', 128);
    let key = long('é', 512); // 1024 bytes
    let owner = long('ö', 256); // 256 chars, 512 bytes
    let path = format!("/v1/namespaces/{ns}/locks/{key}/acquire");
    let body = json!({
        "owner": owner,
        "ttl_ms": 24 * 3600 * 1000,
        "wait_ms": 600_000,
        "request_id": long('r', 256),
    });
    let granted = h.post(&path, body).await;
    let granted = granted.ok();
    assert_eq!(granted["key"], key.as_str());
    assert_eq!(granted["namespace"], ns.as_str());
    assert_eq!(granted["owner"], owner.as_str());
    let status = h.status(&ns, &key).await;
    assert_eq!(status.ok()["holders"][0]["owner"], owner.as_str());
    h.post("/v1/sessions", json!({ "ttl_ms": 24 * 3600 * 1000, "label": long('l', 256) })).await.ok();
    let lock = format!("/v1/namespaces/{ns}/users/{}/mutexes/{key}/lock", long('u', 1024));
    h.post(&lock, json!({ "transactionId": owner, "ttl": 86_400 })).await.ok();
    h.stop().await;
}
