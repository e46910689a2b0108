//! The HTTP API on the Unix socket (see docs/api.yaml). Every error is JSON:
//! `{"error": {"code": "...", "message": "..."}}` with a stable code; bad input is a 4xx,
//! never a panic.
//!
//! Every handler but `/healthz` asks for the role it needs ([`Caller::require`], see
//! [`auth`](super::auth)); a caller below `read` sees only their own scans, findings and
//! watches, and another's is "not found", as one that does not exist. Requests and queries
//! with fields the API does not know are refused (400), not half-understood.

use monitor_api::UploadQuery;
use monitor_watch::Validate as _;
use std::{path::Path, sync::Arc};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{
        Path as UrlPath, Query, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use crate::Shared;
use crate::auth::{self, Caller, Role};
use crate::feed::FeedItem;
use crate::store::{self, ScanRequest, StoreError};
use monitor_engine::probes::HooksState;
use monitor_scan::input::{self, OpenAs};

/// Requests larger than this are refused (a scan request is a path and a few options).
const MAX_BODY: usize = 64 * 1024;

/// Findings a stream client may have waiting; one that falls further behind is disconnected
/// (everything is in /v1/findings).
const STREAM_BUFFER: usize = 256;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/scans", get(list_scans).post(submit_scan))
        .route("/v1/scans/{id}", get(get_scan))
        .route("/v1/scans/{id}/report", get(get_report))
        .route("/v1/scans/{id}/events", get(get_events))
        .route("/v1/scans/upload", axum::routing::post(upload_scan))
        .route("/v1/watches", get(list_watches).post(add_watch))
        .route("/v1/watches/{id}", get(get_watch).delete(remove_watch))
        .route(
            "/v1/watches/{id}/policy",
            axum::routing::put(set_watch_policy),
        )
        .route("/v1/watches/{id}/learn", axum::routing::post(learn_watch))
        .route("/v1/watches/{id}/profile", get(get_watch_profile))
        .route("/v1/findings", get(list_findings))
        .route("/v1/findings/stream", get(stream_findings))
        .route("/v1/rules", get(list_rules))
        .route("/v1/rules/reload", axum::routing::post(reload_rules))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        // axum's own 405 has an empty body; every error here is JSON (the Allow header stays).
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            auth::audit,
        ))
        .with_state(shared)
}

/// Only /metrics, for the optional loopback TCP listener.
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(shared)
}

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }

    /// A failed write to the state directory: `disk_full` (507) when it is out of space.
    fn store(shared: &Shared, e: StoreError) -> Self {
        if !e.is_disk_full() {
            return ApiError::internal(e);
        }
        shared.metrics.store_errors.inc();
        ApiError::disk_full(shared, &e.to_string())
    }

    fn disk_full(shared: &Shared, why: &str) -> Self {
        tracing::error!(state_dir = %shared.config.state_dir.display(), why, "the state directory is full");
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "disk_full",
            format!(
                "the state directory {} is out of space ({why}): free space there; scans are \
                 refused until then",
                shared.config.state_dir.display()
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = monitor_api::ErrorReply::new(self.code, self.message);
        (self.status, Json(body)).into_response()
    }
}

async fn metrics(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Role::Scan)?;
    Ok(render_metrics(State(shared), headers).await)
}

/// OpenMetrics, or Prometheus' classic text format for a scraper whose `Accept` prefers it.
async fn render_metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::from_accept(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        shared.metrics.render(format),
    )
        .into_response()
}

async fn status(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> Result<Json<monitor_api::Status>, ApiError> {
    use monitor_api::status;
    caller.require(Role::Scan)?;
    let running: Vec<_> = shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, scan)| caller.may_see(scan.owner))
        .map(|(id, scan)| status::RunningScan {
            id: id.clone(),
            phase: scan.phase,
        })
        .collect();
    let python = shared.config.loader_env.join("bin/python");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let router = &shared.router;
    let (attached, missing) = router.attachments();
    let tampering = router.tampering();
    let counters = match router.counters() {
        Ok(c) => {
            status::KernelCounters::Read(c.by_key().map(|(key, n)| (key.to_owned(), n)).collect())
        }
        Err(e) => status::KernelCounters::Unreadable {
            error: e.to_string(),
        },
    };
    Ok(Json(monitor_api::Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: kernel.trim().to_owned(),
        caller: status::CallerInfo {
            uid: caller.uid(),
            role: caller.role,
        },
        probes: status::ProbesStatus {
            attached,
            syscall_hooks: hooks_status(&shared),
            missing,
            tampering: tampering.now,
            checks_that_found_tampering: tampering.checks,
            last_tampering: tampering
                .last
                .map(|(at, problems)| status::TamperingSeen { at, problems }),
            reattached: tampering.reattached,
            counters,
            malformed_records: router.malformed(),
            unrouted_records: router.unrouted(),
            subscriptions: router.subscriptions(),
        },
        queue_depth: shared.metrics.queue_depth.get(),
        max_concurrent_scans: shared.config.max_concurrent_scans,
        running,
        watches_active: shared.watches.active(),
        loader_env: status::LoaderEnv {
            present: python.is_file(),
            python,
        },
        rules: shared.rules().len(),
    }))
}

/// Whether the syscall hooks are attached, and why, for the status.
fn hooks_status(shared: &Shared) -> monitor_api::status::SyscallHooks {
    let hooks = shared.router.hooks();
    let why = match hooks.state {
        HooksState::Attached if shared.config.discovery.enabled => {
            "attached: discovery is on, which keeps them attached".to_string()
        }
        HooksState::Attached if hooks.held_by > 0 => format!(
            "attached: {} scans, runs and watches are using them",
            hooks.held_by
        ),
        HooksState::Attached => format!(
            "attached: nothing uses them; detached {} ms after the last use",
            shared.config.hooks_linger_ms
        ),
        HooksState::Detaching => "being detached: nothing is watched".to_string(),
        HooksState::Detached => {
            "detached: nothing is watched (every syscall of the host runs at full speed); \
             the next scan, run or watch attaches them before it starts"
                .to_string()
        }
    };
    monitor_api::status::SyscallHooks {
        state: hooks.state,
        held_by: hooks.held_by,
        detach_after_idle_ms: hooks.detach_after_idle_ms,
        why,
    }
}

async fn submit_scan(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<monitor_api::ScanAccepted>), ApiError> {
    caller.require(Role::Scan)?;
    let body: monitor_api::ScanRequest = json_body(body, "a scan request")?;
    let path = Path::new(&body.path);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "path must be absolute, without `..`",
        ));
    }
    let request = ScanRequest {
        asked: body,
        uploaded: false,
        owner: Some(caller.creds.clone()),
    };
    // Opened now as the caller, and again so when the scan starts: what they may not read
    // is refused here, in the same words as what does not exist.
    let who = OpenAs::User(caller.creds.clone());
    off_runtime(&shared, move |shared| {
        input::check(Path::new(&request.asked.path), &who)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string()))?;
        ensure_space(shared, 0)?;
        enqueue(shared, request, None)
    })
    .await
}

/// Refuses a scan while the state directory has less than `min_free_mib` (plus `extra`
/// bytes) free: it could not keep the report.
fn ensure_space(shared: &Shared, extra: u64) -> Result<(), ApiError> {
    let dir = &shared.config.state_dir;
    let free = store::free_bytes(dir).map_err(|e| ApiError::store(shared, e))?;
    let needed = (shared.config.min_free_mib << 20).saturating_add(extra);
    if free < needed {
        shared.metrics.store_errors.inc();
        return Err(ApiError::disk_full(
            shared,
            &format!(
                "{} MiB free, monitord keeps {} MiB (min_free_mib) for reports",
                free >> 20,
                needed >> 20
            ),
        ));
    }
    Ok(())
}

/// A place in the scan queue, taken before anything is stored: a request the queue has no
/// room for leaves nothing behind.
type QueueSlot = tokio::sync::mpsc::OwnedPermit<(String, ScanRequest)>;

fn queue_slot(shared: &Shared) -> Result<QueueSlot, ApiError> {
    shared.queue.clone().try_reserve_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            "too many scans are waiting; try again later",
        )
    })
}

/// Stores the request and queues it in `slot` (taken now if none was).
fn enqueue(
    shared: &Shared,
    request: ScanRequest,
    slot: Option<QueueSlot>,
) -> Result<(StatusCode, Json<monitor_api::ScanAccepted>), ApiError> {
    let slot = match slot {
        Some(slot) => slot,
        None => queue_slot(shared)?,
    };
    let id = uuid::Uuid::new_v4().to_string();
    shared
        .store
        .insert(&id, &request)
        .map_err(|e| ApiError::store(shared, e))?;
    slot.send((id.clone(), request));
    shared.metrics.queue_depth.inc();
    Ok((
        StatusCode::ACCEPTED,
        Json(monitor_api::ScanAccepted {
            id,
            status: monitor_api::ScanStatus::Queued,
        }),
    ))
}

/// The artifact's bytes in the body, written to the state directory as they arrive (never
/// held whole in memory) and refused the moment they pass `max_artifact_mib`; the daemon
/// keeps its copy (0600, root's) until the scan is done. A refused upload leaves nothing.
async fn upload_scan(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<monitor_api::ScanAccepted>), ApiError> {
    caller.require(Role::Scan)?;
    let Query(q) = query.map_err(bad_query)?;
    let limit = shared.config.max_artifact_mib.saturating_mul(1 << 20);
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced == Some(0) {
        return Err(empty_upload());
    }
    if announced.is_some_and(|n| n > limit) {
        return Err(upload_too_large(&shared));
    }
    let slot = queue_slot(&shared)?;
    let dir = shared
        .config
        .state_dir
        .join("uploads")
        .join(uuid::Uuid::new_v4().to_string());
    let path = dir.join(upload_name(q.name.as_deref()));
    let file = off_runtime(&shared, {
        let (dir, path) = (dir.clone(), path.clone());
        move |shared| {
            ensure_space(shared, announced.unwrap_or(0))?;
            create_upload(&dir, &path).map_err(|e| ApiError::store(shared, e.into()))
        }
    })
    .await?;
    let received = receive(&shared, body, file, limit).await;
    let request = ScanRequest {
        asked: monitor_api::ScanRequest {
            exercise: q.exercise,
            audit: q.audit,
            linger_ms: q.linger_ms,
            ..monitor_api::ScanRequest::new(path.display().to_string())
        },
        uploaded: true,
        owner: Some(caller.creds.clone()),
    };
    off_runtime(&shared, move |shared| {
        let queued = received.and_then(|()| enqueue(shared, request, Some(slot)));
        if queued.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        queued
    })
    .await
}

/// Only the last path component, and only plain characters: the name is not trusted.
fn upload_name(given: Option<&str>) -> String {
    let name: String = given
        .and_then(|n| n.rsplit('/').next())
        .unwrap_or("artifact")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("artifact{name}")
    } else {
        name
    }
}

/// The upload's directory (0700) and file (0600), both root's.
fn create_upload(dir: &Path, path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)?;
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Writes the body to `file` as it arrives; at most `limit` bytes, and at least one.
async fn receive(
    shared: &Shared,
    body: Body,
    file: std::fs::File,
    limit: u64,
) -> Result<(), ApiError> {
    use tokio_stream::StreamExt as _;
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(unreadable_stream)?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(upload_too_large(shared));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::store(shared, e.into()))?;
    }
    if total == 0 {
        return Err(empty_upload());
    }
    file.flush()
        .await
        .map_err(|e| ApiError::store(shared, e.into()))
}

fn empty_upload() -> ApiError {
    // Nothing to scan: refused here rather than queued to fail as an unknown format.
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "empty_body",
        "the body is the artifact's bytes, and it is empty",
    )
}

fn upload_too_large(shared: &Shared) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "the artifact is larger than the daemon's limit of {} MiB (max_artifact_mib)",
            shared.config.max_artifact_mib
        ),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    verdict: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn list_scans(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<monitor_api::ScanPage>, ApiError> {
    caller.require(Role::Scan)?;
    let Query(q) = query.map_err(bad_query)?;
    if let Some(v) = &q.verdict
        && !monitor_scan::Verdict::ALL
            .iter()
            .any(|known| known.name() == v)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_query",
            "verdict is one of clean, suspicious, malicious, error",
        ));
    }
    let limit = q.limit.unwrap_or(50).min(500);
    let offset = q.offset.unwrap_or(0);
    let owner = caller.only_own();
    let scans = off_runtime(&shared, move |shared| {
        shared
            .store
            .list(q.verdict.as_deref(), owner, limit, offset)
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(monitor_api::ScanPage {
        scans,
        limit,
        offset,
    }))
}

/// Scan `id` as the store has it, if the caller may see it.
fn visible_scan(shared: &Shared, caller: &Caller, id: &str) -> Result<store::ScanRecord, ApiError> {
    shared
        .store
        .get(id)
        .map_err(ApiError::internal)?
        .filter(|record| caller.may_see(record.owner_uid()))
        .ok_or_else(|| not_found(id))
}

async fn get_scan(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<monitor_api::ScanRecord>, ApiError> {
    caller.require(Role::Scan)?;
    let UrlPath(id) = id.map_err(bad_path)?;
    let mut record = off_runtime(&shared, {
        let id = id.clone();
        move |shared| {
            let mut record = visible_scan(shared, &caller, &id)?;
            // The stored report holds three renderings; this shows the JSON one.
            if let Some(stored) = record.report.take() {
                record.report = stored.get("json").cloned();
            }
            Ok(record)
        }
    })
    .await?;
    record.phase = shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .map(|scan| scan.phase);
    Ok(Json(record))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    format: Option<String>,
}

async fn get_report(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    id: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Scan)?;
    let UrlPath(id) = id.map_err(bad_path)?;
    let Query(q) = query.map_err(bad_query)?;
    let record = off_runtime(&shared, {
        let id = id.clone();
        move |shared| visible_scan(shared, &caller, &id)
    })
    .await?;
    let Some(stored) = record.report else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_finished",
            format!("scan {id} is {}", record.status.name()),
        ));
    };
    let format = q.format.as_deref().unwrap_or("json");
    match format {
        "text" => Ok(stored["text"]
            .as_str()
            .unwrap_or_default()
            .to_string()
            .into_response()),
        "json" | "sarif" => Ok(Json(stored[format].clone()).into_response()),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_query",
            "format is one of text, json, sarif",
        )),
    }
}

async fn list_rules(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> Result<Json<monitor_api::RuleList>, ApiError> {
    caller.require(Role::Scan)?;
    let rules = shared.rules();
    Ok(Json(monitor_api::RuleList {
        rules: rules.rules().map(|r| r.spec.clone()).collect(),
    }))
}

async fn reload_rules(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> Result<Json<monitor_api::RulesReloaded>, ApiError> {
    caller.require(Role::Admin)?;
    let count = off_runtime(&shared, |shared| {
        shared
            .reload_rules()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_rules", e.to_string()))
    })
    .await?;
    Ok(Json(monitor_api::RulesReloaded { rules: count }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<u32>,
    offset: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FindingsQuery {
    limit: Option<u32>,
    offset: Option<u32>,
    severity: Option<String>,
    rule: Option<String>,
    source: Option<crate::store::Source>,
}

async fn get_events(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    id: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<monitor_api::EventPage>, ApiError> {
    caller.require(Role::Scan)?;
    let UrlPath(id) = id.map_err(bad_path)?;
    let Query(q) = query.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(1000).min(20_000);
    let offset = q.offset.unwrap_or(0);
    let events = off_runtime(&shared, move |shared| {
        let owner = shared
            .store
            .owner_of(&id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| not_found(&id))?;
        if !caller.may_see(owner) {
            return Err(not_found(&id));
        }
        shared
            .store
            .events(&id, limit, offset)
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(monitor_api::EventPage {
        events,
        limit,
        offset,
    }))
}

async fn list_findings(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    query: Result<Query<FindingsQuery>, QueryRejection>,
) -> Result<Json<monitor_api::FindingPage>, ApiError> {
    caller.require(Role::Scan)?;
    let Query(q) = query.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(50).min(500);
    let offset = q.offset.unwrap_or(0);
    let owner = caller.only_own();
    let findings = off_runtime(&shared, move |shared| {
        shared
            .store
            .findings(
                &store::FindingsFilter {
                    source: q.source,
                    severity: q.severity.as_deref(),
                    rule: q.rule.as_deref(),
                    owner,
                },
                limit,
                offset,
            )
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(monitor_api::FindingPage {
        findings,
        limit,
        offset,
    }))
}

/// Findings as they happen, as server-sent events (`event: finding`): the caller's own, or
/// everyone's for `read` and above.
async fn stream_findings(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<
    axum::response::sse::Sse<
        impl tokio_stream::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    use tokio_stream::StreamExt as _;
    caller.require(Role::Scan)?;
    let only = caller.only_own();
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (backlog, mut feed) = shared.findings_feed.subscribe(last_event_id.as_deref());
    let mut stopping = shared.stopping.subscribe();
    // Forwarded until the daemon stops: the stream then ends, or the graceful shutdown
    // would wait for it. A listener too slow for the feed misses findings (they are all in
    // /v1/findings, and a reconnect with Last-Event-ID gets the last ones again); one that
    // has STREAM_BUFFER of them waiting is disconnected, so that a client that never reads
    // holds neither memory nor the daemon.
    let (tx, rx) = tokio::sync::mpsc::channel::<FeedItem>(STREAM_BUFFER);
    let mine = move |item: &FeedItem| only.is_none_or(|uid| item.owner == Some(uid));
    tokio::spawn(async move {
        for item in backlog.into_iter().filter(&mine) {
            if tx.send(item).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                changed = stopping.changed() => {
                    if changed.is_err() || *stopping.borrow() {
                        break;
                    }
                }
                () = tx.closed() => break,
                item = feed.recv() => match item {
                    Ok(item) => {
                        if !mine(&item) {
                            continue;
                        }
                        if tx.try_send(item).is_err() {
                            tracing::info!(uid = caller.uid(), "a findings stream fell behind; disconnected");
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    });
    let ids = shared.clone();
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
        Ok(axum::response::sse::Event::default()
            .event("finding")
            .id(ids.findings_feed.id(item.seq))
            .data(item.value.to_string()))
    });
    Ok(axum::response::sse::Sse::new(events).keep_alive(axum::response::sse::KeepAlive::default()))
}

async fn list_watches(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
) -> Result<Json<monitor_api::WatchList>, ApiError> {
    caller.require(Role::Scan)?;
    let watches: Vec<_> = shared
        .watches
        .list()
        .into_iter()
        .filter(|w| caller.may_see(w.owner_uid))
        .collect();
    Ok(Json(monitor_api::WatchList { watches }))
}

async fn add_watch(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<monitor_api::Watch>), ApiError> {
    caller.require(Role::Scan)?;
    let request: monitor_watch::WatchRequest = json_body(body, "a watch request")?;
    // Checking the target reads /proc and the cgroup tree; starting it may scan /proc.
    off_runtime(&shared, move |shared| {
        let root = monitor_engine::cgroup::cgroup2_mount().map_err(ApiError::internal)?;
        let spec = request
            .validate_with(&root, &shared.rules())
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_watch", e.to_string()))?;
        auth::check_watch(&caller, &spec, &root)?;
        let id = uuid::Uuid::new_v4().to_string();
        let owner = Some(caller.uid());
        shared
            .store
            .insert_watch(&id, &spec, owner)
            .map_err(ApiError::internal)?;
        let record = store::WatchRecord {
            id: id.clone(),
            spec,
            created_at: store::now_ms(),
            owner,
        };
        if let Err(e) = shared.watches.start(shared, record, false) {
            // Nothing half-made stays behind: the kernel refused it, so the store forgets it.
            let _ = shared.store.remove_watch(&id);
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "watch_failed",
                format!("{e:#}"),
            ));
        }
        let watch = shared.watches.get(&id).ok_or_else(|| no_watch(&id))?;
        Ok((StatusCode::CREATED, Json(watch)))
    })
    .await
}

/// Watch `id`, if the caller may see it.
fn visible_watch(
    shared: &Shared,
    caller: &Caller,
    id: &str,
) -> Result<crate::watches::WatchStatus, ApiError> {
    shared
        .watches
        .get(id)
        .filter(|w| caller.may_see(w.owner_uid))
        .ok_or_else(|| no_watch(id))
}

async fn get_watch(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<monitor_api::Watch>, ApiError> {
    caller.require(Role::Scan)?;
    let UrlPath(id) = id.map_err(bad_path)?;
    let status = visible_watch(&shared, &caller, &id)?;
    let kills = off_runtime(&shared, move |shared| {
        shared
            .store
            .watch_kills(&id, 20)
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(monitor_api::Watch {
        recent_kills: Some(kills),
        ..status
    }))
}

async fn remove_watch(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Scan)?;
    let UrlPath(id) = id.map_err(bad_path)?;
    let status = visible_watch(&shared, &caller, &id)?;
    if status.builtin {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "builtin_watch",
            format!("watch {id} comes from monitord's configuration; change it there"),
        ));
    }
    auth::check_watch_owner(&caller, &status)?;
    shared.watches.stop(&id);
    off_runtime(&shared, move |shared| {
        shared.store.remove_watch(&id).map_err(ApiError::internal)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces a watch's policy with the YAML document in the body: kill settings, lists, rules
/// and exceptions (a profile `GET .../profile` printed, reviewed and edited). The watch keeps
/// running; the kernel's kill policy changes with it.
async fn set_watch_policy(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    id: Result<UrlPath<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<monitor_api::Watch>, ApiError> {
    caller.require(Role::Scan)?;
    let UrlPath(id) = id.map_err(bad_path)?;
    let body = body.map_err(unreadable_body)?;
    let status = visible_watch(&shared, &caller, &id)?;
    auth::check_watch_owner(&caller, &status)?;
    if status.builtin {
        return Err(builtin(&id));
    }
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_policy",
            "the body is a policy document (YAML, UTF-8)",
        )
    })?;
    let policy = monitor_watch::Policy::from_document(text, None, None, &shared.rules())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_policy", e.to_string()))?;
    auth::check_policy(&caller, &policy)?;
    let mut spec = status.spec.clone();
    spec.policy = policy.clone();
    let stored = spec.clone();
    let key = id.clone();
    off_runtime(&shared, move |shared| {
        shared
            .store
            .update_watch(&key, &stored)
            .map_err(ApiError::internal)
    })
    .await?;
    shared.watches.set_spec(&id, spec);
    shared
        .watches
        .command(&id, monitor_watch::Command::SetPolicy(policy));
    Ok(Json(visible_watch(&shared, &caller, &id)?))
}

/// Starts a learning window on a watch (in place of one running): for `seconds` it learns
/// its service's profile, then enforces it.
async fn learn_watch(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    id: Result<UrlPath<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<monitor_api::Watch>), ApiError> {
    caller.require(Role::Scan)?;
    let UrlPath(id) = id.map_err(bad_path)?;
    let request: monitor_api::LearnRequest = json_body(body, "a learn request ({\"seconds\": N})")?;
    let status = visible_watch(&shared, &caller, &id)?;
    auth::check_watch_owner(&caller, &status)?;
    if status.builtin {
        return Err(builtin(&id));
    }
    if !(1..=monitor_watch::spec::MAX_LEARN_SECS).contains(&request.seconds) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_watch",
            monitor_watch::spec::SpecError::LearnSecs.to_string(),
        ));
    }
    let learning = monitor_watch::spec::Learning::starting_now(request.seconds);
    let mut spec = status.spec.clone();
    spec.learning = Some(learning.clone());
    shared.watches.set_spec(&id, spec);
    shared
        .watches
        .command(&id, monitor_watch::Command::Learn(learning));
    Ok((
        StatusCode::ACCEPTED,
        Json(visible_watch(&shared, &caller, &id)?),
    ))
}

/// A watch's policy as a YAML document, its learned profile included.
async fn get_watch_profile(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Scan)?;
    let UrlPath(id) = id.map_err(bad_path)?;
    let status = visible_watch(&shared, &caller, &id)?;
    Ok((
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        status.spec.policy.to_yaml(),
    )
        .into_response())
}

fn builtin(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "builtin_watch",
        format!("watch {id} comes from monitord's configuration; change it there"),
    )
}

/// A JSON request body as a `T` (`what` names it in the error), or the 4xx that says why not.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(unreadable_body)?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            format!("the body is not {what}: {e}"),
        )
    })
}

/// Runs `work` with the daemon's state on the blocking pool: the store's reads and writes and
/// file work wait on the disk (and a big report takes a while to read), never on one of the
/// runtime's workers, which answer everyone else meanwhile.
async fn off_runtime<T: Send + 'static>(
    shared: &Arc<Shared>,
    work: impl FnOnce(&Arc<Shared>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || work(&shared))
        .await
        .map_err(ApiError::internal)?
}

/// Whether `e` (or its cause) is the request body's read timeout (see `serve`).
fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn request_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body stalled: no byte of it came within the read timeout",
    )
}

/// A body that could not be read: over its limit, or stalled past the read timeout.
fn unreadable_body(e: BytesRejection) -> ApiError {
    if is_body_timeout(&e) {
        return request_timeout();
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        e.body_text(),
    )
}

/// A streamed body that broke off: stalled, or the client went away.
fn unreadable_stream(e: axum::Error) -> ApiError {
    if is_body_timeout(&e) {
        return request_timeout();
    }
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_request",
        format!("the body could not be read: {e}"),
    )
}

fn no_watch(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no watch {id}"))
}

/// A path segment that is not an id (not UTF-8, say): axum's own answer is plain text.
fn bad_path(e: PathRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "malformed_path", e.body_text())
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "malformed_query", e.body_text())
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no scan {id}"))
}
