//! The HTTP API on the Unix socket (see docs/api.yaml). Every error is JSON:
//! `{"error": {"code": "...", "message": "..."}}` with a stable code; bad input is a 4xx,
//! never a panic.

use std::{path::Path, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        Path as UrlPath, Query, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::json;

use crate::daemon::{
    Shared,
    store::{self, ScanRequest, StoreError},
};

/// Requests larger than this are refused (a scan request is a path and a few options).
const MAX_BODY: usize = 64 * 1024;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/scans", get(list_scans).post(submit_scan))
        .route("/v1/scans/{id}", get(get_scan))
        .route("/v1/scans/{id}/report", get(get_report))
        .route("/v1/scans/{id}/events", get(get_events))
        .route(
            "/v1/scans/upload",
            axum::routing::post(upload_scan).layer(axum::extract::DefaultBodyLimit::max(
                usize::try_from(shared.config.max_artifact_mib << 20).unwrap_or(usize::MAX),
            )),
        )
        .route("/v1/watches", get(list_watches).post(add_watch))
        .route("/v1/watches/{id}", get(get_watch).delete(remove_watch))
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
        .with_state(shared)
}

/// Only /metrics, for the optional loopback TCP listener.
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(shared)
}

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
        .into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let running: Vec<_> = shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(id, phase)| json!({ "id": id, "phase": phase }))
        .collect();
    let python = shared.config.loader_env.join("bin/python");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let router = &shared.router;
    let (attached, missing) = router.attachments();
    let tampering = router.tampering();
    let counters = match router.counters() {
        Ok(c) => json!(c),
        Err(e) => json!({ "error": e.to_string() }),
    };
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "kernel": kernel.trim(),
        "probes": {
            "attached": attached,
            "missing": missing,
            "tampering": tampering.now,
            "checks_that_found_tampering": tampering.checks,
            "last_tampering": tampering.last.map(|(at, problems)| json!({
                "at": at,
                "problems": problems,
            })),
            "reattached": tampering.reattached,
            "counters": counters,
            "malformed_records": router.malformed(),
            "unrouted_records": router.unrouted(),
            "subscriptions": router.subscriptions(),
        },
        "queue_depth": shared.metrics.queue_depth.get(),
        "max_concurrent_scans": shared.config.max_concurrent_scans,
        "running": running,
        "watches_active": shared.watches.active(),
        "loader_env": { "python": python, "present": python.is_file() },
        "rules": shared.rules().len(),
    }))
}

async fn submit_scan(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let mut request: ScanRequest = json_body(body, "a scan request")?;
    // Only the daemon itself marks its own copies of uploads for deletion.
    request.uploaded = false;
    let path = Path::new(&request.path);
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
    let exists = off_runtime(&shared, {
        let path = path.to_owned();
        move |_| Ok(path.exists())
    })
    .await?;
    if !exists {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("{} does not exist on the daemon's host", request.path),
        ));
    }
    off_runtime(&shared, move |shared| enqueue(shared, request)).await
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

/// Stores the request and queues it.
fn enqueue(
    shared: &Shared,
    request: ScanRequest,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    ensure_space(shared, 0)?;
    let id = uuid::Uuid::new_v4().to_string();
    shared
        .store
        .insert(&id, &request)
        .map_err(|e| ApiError::store(shared, e))?;
    if shared.queue.try_send((id.clone(), request)).is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            "too many scans are waiting; try again later",
        ));
    }
    shared.metrics.queue_depth.inc();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "status": "queued" })),
    ))
}

#[derive(Deserialize)]
struct UploadQuery {
    /// The artifact's file name (kept for the report; the content decides the format).
    name: Option<String>,
    #[serde(default = "yes")]
    exercise: bool,
    #[serde(default = "yes")]
    audit: bool,
    linger_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

/// The artifact's bytes in the body; the daemon keeps a copy until the scan is done.
async fn upload_scan(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let body = body.map_err(unreadable_body)?;
    if body.is_empty() {
        // Nothing to scan: refused here rather than queued to fail as an unknown format.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the body is the artifact's bytes, and it is empty",
        ));
    }
    // Only the last path component, and only plain characters: the name is not trusted.
    let name: String = q
        .name
        .as_deref()
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
    let name = if name.is_empty() || name.starts_with('.') {
        format!("artifact{name}")
    } else {
        name
    };
    let dir = shared
        .config
        .state_dir
        .join("uploads")
        .join(uuid::Uuid::new_v4().to_string());
    let path = dir.join(&name);
    off_runtime(&shared, move |shared| {
        ensure_space(shared, body.len() as u64)?;
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &body)) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ApiError::store(shared, e.into()));
        }
        enqueue(
            shared,
            ScanRequest {
                path: path.display().to_string(),
                exercise: q.exercise,
                audit: q.audit,
                linger_ms: q.linger_ms,
                fail_on: None,
                timeout_secs: None,
                uploaded: true,
            },
        )
    })
    .await
}

#[derive(Deserialize)]
struct ListQuery {
    verdict: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn list_scans(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    if let Some(v) = &q.verdict
        && !crate::scan::Verdict::ALL
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
    let scans = off_runtime(&shared, move |shared| {
        shared
            .store
            .list(q.verdict.as_deref(), limit, offset)
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(
        json!({ "scans": scans, "limit": limit, "offset": offset }),
    ))
}

async fn get_scan(
    State(shared): State<Arc<Shared>>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let UrlPath(id) = id.map_err(bad_path)?;
    let mut value = off_runtime(&shared, {
        let id = id.clone();
        move |shared| {
            let mut record = shared
                .store
                .get(&id)
                .map_err(ApiError::internal)?
                .ok_or_else(|| not_found(&id))?;
            // The stored report holds three renderings; this shows the JSON one.
            if let Some(stored) = record.report.take() {
                record.report = stored.get("json").cloned();
            }
            serde_json::to_value(&record).map_err(ApiError::internal)
        }
    })
    .await?;
    if let Some(phase) = shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
    {
        value["phase"] = json!(phase);
    }
    Ok(Json(value))
}

#[derive(Deserialize)]
struct ReportQuery {
    format: Option<String>,
}

async fn get_report(
    State(shared): State<Arc<Shared>>,
    id: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let UrlPath(id) = id.map_err(bad_path)?;
    let Query(q) = query.map_err(bad_query)?;
    let record = off_runtime(&shared, {
        let id = id.clone();
        move |shared| {
            shared
                .store
                .get(&id)
                .map_err(ApiError::internal)?
                .ok_or_else(|| not_found(&id))
        }
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

async fn list_rules(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let rules = shared.rules();
    let list: Vec<_> = rules.rules().map(|r| &r.spec).collect();
    Json(json!({ "rules": list }))
}

async fn reload_rules(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let count = shared
        .reload_rules()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_rules", e.to_string()))?;
    Ok(Json(json!({ "rules": count })))
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<u32>,
    offset: Option<u32>,
    severity: Option<String>,
    rule: Option<String>,
    source: Option<crate::daemon::store::Source>,
}

async fn get_events(
    State(shared): State<Arc<Shared>>,
    id: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let UrlPath(id) = id.map_err(bad_path)?;
    let Query(q) = query.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(1000).min(20_000);
    let offset = q.offset.unwrap_or(0);
    let events = off_runtime(&shared, move |shared| {
        if !shared.store.exists(&id).map_err(ApiError::internal)? {
            return Err(not_found(&id));
        }
        shared
            .store
            .events(&id, limit, offset)
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(
        json!({ "events": events, "limit": limit, "offset": offset }),
    ))
}

async fn list_findings(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(50).min(500);
    let offset = q.offset.unwrap_or(0);
    let findings = off_runtime(&shared, move |shared| {
        shared
            .store
            .findings(
                q.source,
                q.severity.as_deref(),
                q.rule.as_deref(),
                limit,
                offset,
            )
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(
        json!({ "findings": findings, "limit": limit, "offset": offset }),
    ))
}

/// Findings as they happen, as server-sent events (`event: finding`).
async fn stream_findings(
    State(shared): State<Arc<Shared>>,
) -> axum::response::sse::Sse<
    impl tokio_stream::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use tokio_stream::StreamExt as _;
    let mut feed = shared.findings_feed.subscribe();
    let mut stopping = shared.stopping.subscribe();
    // Forwarded until the daemon stops: the stream then ends, or the graceful shutdown
    // would wait for it. A listener too slow for the feed misses findings (they are all in
    // /v1/findings).
    let (tx, rx) = tokio::sync::mpsc::channel::<serde_json::Value>(256);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = stopping.changed() => {
                    if changed.is_err() || *stopping.borrow() {
                        break;
                    }
                }
                item = feed.recv() => match item {
                    Ok(finding) => {
                        if tx.send(finding).await.is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(|finding| {
        Ok(axum::response::sse::Event::default()
            .event("finding")
            .data(finding.to_string()))
    });
    axum::response::sse::Sse::new(events).keep_alive(axum::response::sse::KeepAlive::default())
}

async fn list_watches(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(json!({ "watches": shared.watches.list() }))
}

async fn add_watch(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let request: crate::watch::WatchRequest = json_body(body, "a watch request")?;
    // Checking the target reads /proc and the cgroup tree; starting it may scan /proc.
    off_runtime(&shared, move |shared| {
        let root = crate::cgroup::cgroup2_mount().map_err(ApiError::internal)?;
        let spec = request
            .validate(&root)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_watch", e.to_string()))?;
        let id = uuid::Uuid::new_v4().to_string();
        shared
            .store
            .insert_watch(&id, &spec)
            .map_err(ApiError::internal)?;
        let record = shared
            .store
            .watches()
            .map_err(ApiError::internal)?
            .into_iter()
            .find(|w| w.id == id)
            .ok_or_else(|| ApiError::internal("the stored watch vanished"))?;
        if let Err(e) = shared.watches.start(shared, record, false) {
            // Nothing half-made stays behind: the kernel refused it, so the store forgets it.
            let _ = shared.store.remove_watch(&id);
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "watch_failed",
                format!("{e:#}"),
            ));
        }
        let status = shared.watches.get(&id);
        Ok((StatusCode::CREATED, Json(json!(status))))
    })
    .await
}

async fn get_watch(
    State(shared): State<Arc<Shared>>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let UrlPath(id) = id.map_err(bad_path)?;
    let status = shared.watches.get(&id).ok_or_else(|| no_watch(&id))?;
    let kills = off_runtime(&shared, move |shared| {
        shared
            .store
            .watch_kills(&id, 20)
            .map_err(ApiError::internal)
    })
    .await?;
    let mut value = json!(status);
    value["recent_kills"] = json!(kills);
    Ok(Json(value))
}

async fn remove_watch(
    State(shared): State<Arc<Shared>>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let UrlPath(id) = id.map_err(bad_path)?;
    let status = shared.watches.get(&id).ok_or_else(|| no_watch(&id))?;
    if status.builtin {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "builtin_watch",
            format!("watch {id} comes from monitord's configuration; change it there"),
        ));
    }
    shared.watches.stop(&id);
    off_runtime(&shared, move |shared| {
        shared.store.remove_watch(&id).map_err(ApiError::internal)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
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

/// A body that could not be read: over its limit, or stalled past the read timeout (see
/// `serve`).
fn unreadable_body(e: BytesRejection) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body stalled: no byte of it came within the read timeout",
            );
        }
        cause = c.source();
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        e.body_text(),
    )
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
