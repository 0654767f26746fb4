//! The JSON bodies of the API, exactly as DESIGN.md §4 names their fields.

use serde::{Deserialize, Serialize};
use tumbler_core::EventKind;
use utoipa::ToSchema;

/// `POST /v1/sessions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenSession {
    /// The lease: the session ends this long after its last keep-alive.
    pub ttl_ms: u64,
    /// A label for people (shown in listings and logs).
    pub label: Option<String>,
}

/// `POST /v1/sessions/{id}/keepalive`: no fields (the lease keeps the TTL it was opened
/// with); an empty body is fine, anything else is refused rather than silently ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {}

/// A session's lease.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionAnswer {
    /// The session id (an opaque string).
    pub id: String,
    /// The lease.
    pub ttl_ms: u64,
    /// When it ends unless kept alive, in Unix milliseconds.
    pub expires_at_ms: u64,
    /// Its label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// The fields of an acquire, for one key or several.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireFields {
    /// Who acquires; generated when absent (and returned).
    pub owner: Option<String>,
    /// The session the hold belongs to.
    pub session: Option<String>,
    /// A TTL for the hold, in ms.
    pub ttl_ms: Option<u64>,
    /// `exclusive` (default), `shared` or `semaphore`.
    pub mode: Option<String>,
    /// The semaphore's limit (with `mode: semaphore` only).
    pub limit: Option<u32>,
    /// 0 (default): a try; otherwise wait up to this long.
    pub wait_ms: Option<u64>,
    /// Makes a retried acquire count once.
    pub request_id: Option<String>,
}

/// `POST /v1/namespaces/{ns}/acquire`: the fields of an acquire, and the keys.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireAll {
    /// The keys, all or none.
    pub keys: Vec<String>,
    /// As [`AcquireFields`].
    pub owner: Option<String>,
    /// As [`AcquireFields`].
    pub session: Option<String>,
    /// As [`AcquireFields`].
    pub ttl_ms: Option<u64>,
    /// As [`AcquireFields`].
    pub mode: Option<String>,
    /// As [`AcquireFields`].
    pub limit: Option<u32>,
    /// As [`AcquireFields`].
    pub wait_ms: Option<u64>,
    /// As [`AcquireFields`].
    pub request_id: Option<String>,
}

impl AcquireAll {
    /// Splits the keys from the other fields.
    pub fn split(self) -> (Vec<String>, AcquireFields) {
        let fields = AcquireFields {
            owner: self.owner,
            session: self.session,
            ttl_ms: self.ttl_ms,
            mode: self.mode,
            limit: self.limit,
            wait_ms: self.wait_ms,
            request_id: self.request_id,
        };
        (self.keys, fields)
    }
}

/// The answer to an acquire, per key.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HoldAnswer {
    /// The namespace.
    pub namespace: String,
    /// The key.
    pub key: String,
    /// The owner (generated when the request named none).
    pub owner: String,
    /// The mode.
    pub mode: String,
    /// The semaphore limit, for semaphores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The hold's re-entry count.
    pub count: u32,
    /// The fencing token.
    pub fencing_token: u64,
    /// The session, if any.
    pub session: Option<String>,
    /// When the hold expires, in Unix ms, if it has a TTL.
    pub expires_at_ms: Option<u64>,
}

/// `{holds: [...]}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HoldsAnswer {
    /// One answer per key, in the order asked.
    pub holds: Vec<HoldAnswer>,
}

/// `POST .../release`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Whose hold.
    pub owner: String,
    /// Which of the owner's holds (needed only when it holds the key in several modes).
    pub mode: Option<String>,
    /// Accepted with `mode: semaphore` (the hold's own limit is used).
    pub limit: Option<u32>,
    /// Releases only the hold carrying this token (404 `not_held` when it is gone), so a
    /// stale client never releases a newer hold of the same owner.
    pub fencing_token: Option<u64>,
}

/// `{count}` left after a release.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CountAnswer {
    /// Levels the owner still holds.
    pub count: u32,
}

/// `POST .../refresh`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    /// Whose hold.
    pub owner: String,
    /// The new TTL from now.
    pub ttl_ms: u64,
    /// As for [`Release`].
    pub mode: Option<String>,
    /// As for [`Release`].
    pub limit: Option<u32>,
}

/// The new expiry.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefreshAnswer {
    /// Unix ms.
    pub expires_at_ms: u64,
}

/// One holder in a status.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HolderAnswer {
    /// Owner.
    pub owner: String,
    /// The mode of this hold: an owner that converted a shared hold to exclusive is listed
    /// once per mode it holds.
    pub mode: String,
    /// Re-entry count.
    pub count: u32,
    /// Fencing token.
    pub fencing_token: u64,
    /// Session, if any.
    pub session: Option<String>,
    /// Expiry in Unix ms, if any.
    pub expires_at_ms: Option<u64>,
}

/// `GET .../locks/{key}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusAnswer {
    /// The namespace.
    pub namespace: String,
    /// The key.
    pub key: String,
    /// The mode it is held in.
    pub mode: String,
    /// The semaphore limit, for semaphores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Its holders.
    pub holders: Vec<HolderAnswer>,
    /// How many requests wait.
    pub waiters: usize,
}

/// `GET .../locks?prefix=&limit=&after=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Page size (default 100, at most the configured page bound).
    pub limit: Option<usize>,
    /// Only keys after this one (the previous page's `next_after`).
    pub after: Option<String>,
}

/// A page of held locks.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListAnswer {
    /// Statuses in key order.
    pub items: Vec<StatusAnswer>,
    /// The key to pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<String>,
}

/// `DELETE .../locks/{key}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForceAnswer {
    /// How many holds were ended.
    pub released: usize,
}

/// `GET .../events?prefix=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only keys starting with this.
    pub prefix: Option<String>,
}

/// GS2 `lock`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gs2Lock {
    /// Re-enters when the same, conflicts (409 `busy`) when another.
    pub transaction_id: String,
    /// TTL in seconds.
    pub ttl: u64,
}

/// GS2 `unlock`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gs2Unlock {
    /// The holder.
    pub transaction_id: String,
}

/// GS2's view of one mutex.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gs2Mutex {
    /// A stable id of the mutex.
    pub mutex_id: String,
    /// The property id.
    pub property_id: String,
    /// The holder.
    pub transaction_id: String,
    /// Expiry in Unix ms.
    pub ttl_at: Option<u64>,
}

/// `{"item": ...}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Gs2Item {
    /// The mutex.
    pub item: Gs2Mutex,
}

/// `{"items": [...]}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Gs2Items {
    /// The user's held mutexes, by property id.
    pub items: Vec<Gs2Mutex>,
}

/// The `data` of an `acquired`, `released`, `expired` or `cancelled` event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LockEvent {
    /// The revision; also the event's `id`, to resume from with `Last-Event-ID`.
    pub revision: u64,
    /// Also the event's `event` name.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The namespace.
    pub namespace: String,
    /// The key (plain locks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The user (GS2 mutexes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The property id (GS2 mutexes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub property_id: Option<String>,
    /// The owner (for GS2 mutexes, the `transactionId`).
    pub owner: String,
    /// `exclusive`, `shared` or `semaphore`.
    pub mode: String,
    /// The semaphore's limit (semaphores only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The owner's re-entry count after the change.
    pub count: u32,
    /// The hold's fencing token.
    pub fencing_token: u64,
}

/// The kinds of [`LockEvent`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A hold was granted (or re-entered).
    Acquired,
    /// A hold was released (one level).
    Released,
    /// A hold's TTL or session ran out.
    Expired,
    /// A wait was cancelled.
    Cancelled,
}

impl From<EventKind> for EventType {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Acquired => EventType::Acquired,
            EventKind::Released => EventType::Released,
            EventKind::Expired => EventType::Expired,
            EventKind::Cancelled => EventType::Cancelled,
        }
    }
}

/// The `data` of a `reset` event: changes were missed, so the client must re-read the
/// state it cares about.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResetEvent {
    /// `too_old` (the `Last-Event-ID` is older than the replay buffer) or `lagged` (the
    /// client fell behind and live events were dropped).
    pub reason: String,
    /// The oldest revision still in the buffer (`too_old` only).
    pub oldest: Option<u64>,
}

/// The liveness answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthAnswer {
    /// `ok`, or `stopping` once the server is shutting down.
    pub status: String,
}

/// The table's gauges.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsAnswer {
    /// Holds in the table.
    pub held_locks: u64,
    /// Requests waiting.
    pub waiters: u64,
    /// Open sessions.
    pub sessions: u64,
}
