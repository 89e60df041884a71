//! Operations: health, readiness, Prometheus metrics, and the event log as NDJSON.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tidings_log::{FSYNC_BUCKETS_MICROS, Log, LogError, Record, Tail};
use tidings_projections::Envelope;

use super::ApiQuery;
use crate::cli::json::event_line;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult};
use crate::server::metrics::render_histogram;
use crate::server::state::AppState;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive")))]
pub(crate) async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness: the projections have caught up with the log, the log takes writes, and the
/// server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "Ready"), (status = 503, body = super::openapi::ErrorBody)))]
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> ApiResult<impl IntoResponse> {
    // A log stopped by a write error refuses every write until a restart (fail-stop): the
    // server is up, and not ready (it said ready, and every send failed `storage_failed`).
    if let Some(e) = state.log.poisoned() {
        return Err(ApiError::unavailable(
            "storage_failed",
            format!("the log stopped taking writes (restart the server): {e}"),
        ));
    }
    // Nor one whose object store is no longer its to write (it refuses every write).
    if let Some(tier) = state.log.tier()
        && (tier.other_history() || tier.fenced())
    {
        let e = tidings_log::LogError::NotTheStoresHistory {
            diverged: tier.other_history(),
        };
        return Err(e.into());
    }
    if state.is_ready() && !state.sessions_stop.is_cancelled() {
        Ok(axum::Json(
            json!({"status": "ready", "applied": *state.applied.borrow()}),
        ))
    } else {
        Err(ApiError::unavailable(
            "not_ready",
            "starting up or shutting down",
        ))
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let log = state.log.metrics();
    let next = state.log.next_offset() as f64;
    let applied = *state.applied.borrow() as f64;
    let (hits, misses) = state.conv_cache.stats();
    let extra = [
        (
            "tidings_log_next_offset",
            "One past the last durable offset.",
            next,
        ),
        (
            "tidings_applied_offset",
            "One past the last offset applied to the projections.",
            applied,
        ),
        (
            "tidings_applier_lag",
            "Durable events not yet applied.",
            next - applied,
        ),
        (
            "tidings_log_records_written_total",
            "Records written since start.",
            log.records as f64,
        ),
        (
            "tidings_log_bytes_written_total",
            "Bytes written to segments since start.",
            log.bytes as f64,
        ),
        (
            "tidings_log_fsyncs_total",
            "fdatasync calls since start.",
            log.fsyncs as f64,
        ),
        (
            "tidings_log_fsync_seconds_total",
            "Time spent in fdatasync since start.",
            log.fsync_nanos as f64 / 1e9,
        ),
        (
            "tidings_online_users",
            "Users with an open WebSocket.",
            state.delivery.online_users() as f64,
        ),
        (
            "tidings_connections_budget",
            "Client connections (HTTP and WebSocket) the open-file limit leaves room for.",
            state.socket_budget as f64,
        ),
        (
            "tidings_connections_free",
            "Of the connection budget, what no connection or WebSocket session holds.",
            state.sockets.available_permits() as f64,
        ),
        (
            "tidings_connections_http_headroom",
            "Of the connection budget, what WebSocket sessions leave to plain HTTP.",
            state.http_headroom as f64,
        ),
        (
            "tidings_conversation_cache_hits_total",
            "Conversation lists served from the cache.",
            hits as f64,
        ),
        (
            "tidings_conversation_cache_misses_total",
            "Conversation lists computed.",
            misses as f64,
        ),
    ];
    let tier = state.log.tier().map(|t| t.status()).unwrap_or_default();
    let extra: Vec<(&str, &str, f64)> = extra
        .into_iter()
        .chain([
            (
                "tidings_tier_lag_segments",
                "Sealed segments not yet in the object store.",
                tier.lag_segments as f64,
            ),
            (
                "tidings_tier_lag_bytes",
                "Bytes of sealed segments not yet in the object store.",
                tier.lag_bytes as f64,
            ),
            (
                "tidings_tier_remote_segments",
                "Segments in the object store.",
                tier.remote_segments as f64,
            ),
            (
                "tidings_tier_upload_failures_total",
                "Failed tiering passes since start.",
                tier.upload_failures as f64,
            ),
            (
                "tidings_tier_gets_total",
                "Ranged GETs of cold blocks since start.",
                tier.gets as f64,
            ),
            (
                "tidings_tier_cache_hits_total",
                "Cold blocks served from the cache since start.",
                tier.cache_hits as f64,
            ),
            (
                "tidings_tier_damaged_reads_total",
                "Reads of a segment in the object store whose batches failed their checks since start (its cached blocks dropped and read again from the store).",
                tier.damaged_reads as f64,
            ),
            (
                "tidings_tier_fenced",
                "1 when another server took the prefix over.",
                if tier.fenced { 1.0 } else { 0.0 },
            ),
            (
                "tidings_tier_diverged",
                "1 when the object store holds another history of the log than the local segments, or lacks offsets they no longer hold (tiering stopped).",
                if tier.diverged { 1.0 } else { 0.0 },
            ),
        ])
        .collect();
    let mut text = state.metrics.render(&extra);
    // etcd's `wal_fsync_duration_seconds`, for the same reason: a disk that stalls shows here
    // first (every acknowledged send waits for one of these).
    render_histogram(
        &mut text,
        "tidings_log_fsync_duration_seconds",
        "fdatasync latency of the log's segments.",
        FSYNC_BUCKETS_MICROS
            .iter()
            .zip(log.fsync_le)
            .map(|(us, n)| (*us as f64 / 1e6, n)),
        log.fsyncs,
        log.fsync_nanos as f64 / 1e9,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn tier_of(state: &AppState) -> ApiResult<&tidings_log::tier::Tier> {
    state.log.tier().ok_or_else(|| {
        ApiError::not_found(
            "tier_not_configured",
            "no object store is configured (tier.url)",
        )
    })
}

/// What is local, what is in the object store, and the upload lag (admin).
#[utoipa::path(get, path = "/v1/tier", tag = "ops",
    responses((status = 200, description = "Tier status (JSON)", content_type = "application/json"), (status = 404, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn tier_status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let status = tier_of(&state)?.status();
    let segs = state.log.segments()?;
    Ok(axum::Json(json!({
        "status": status,
        "local_segments": segs.iter().filter(|s| !s.remote).count(),
        "local_bytes": segs.iter().filter(|s| !s.remote).map(|s| s.bytes).sum::<u64>(),
    }))
    .into_response())
}

/// Uploads every sealed segment now (admin).
#[utoipa::path(post, path = "/v1/tier/upload", tag = "ops",
    responses((status = 200, description = "Tier status after the upload (JSON)", content_type = "application/json"), (status = 403, description = "Not the admin (`admin_only`)", body = super::openapi::ErrorBody), (status = 404, description = "No `tier.url` is set (`tier_not_configured`)", body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn tier_upload(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Response> {
    caller.require_admin()?;
    tier_of(&state)?;
    let status = state.log.upload_now().await?;
    Ok(axum::Json(json!({"status": status})).into_response())
}

/// Query of `GET /v1/log`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogQuery {
    /// First offset (default: the oldest held).
    pub(crate) from: Option<u64>,
    /// Keep streaming new events (until the server shuts down).
    #[serde(default)]
    pub(crate) follow: bool,
}

/// A tail from `from` with its first batch. A retention removal that lands between the
/// request's start check and this read moves the log's start past `from`: the stream begins at
/// the new start, as the same request a moment later would (a `from` below the start is read
/// from the start). Without this the request failed 503 `history_unavailable` once in a while
/// on a server whose retention runs. A removal that overtakes a stream later ends it with an
/// error line: a gap is never skipped silently once records went out.
async fn first_batch(log: &Log, mut from: u64) -> Result<(Tail, Vec<Record>), LogError> {
    loop {
        let mut tail = log.tail(from);
        match tail.next_batch(1 << 20).await {
            // The start only rises, so this ends.
            Err(LogError::OffsetOutOfRange { start, .. }) if start > from => from = start,
            read => return read.map(|batch| (tail, batch)),
        }
    }
}

/// The events as NDJSON, one per line, from an offset (admin).
#[utoipa::path(get, path = "/v1/log", tag = "ops", params(LogQuery),
    responses((status = 200, description = "NDJSON: one event per line", content_type = "application/x-ndjson"), (status = 400, description = "`from` past the log's end (`offset_out_of_range`)", body = super::openapi::ErrorBody), (status = 403, description = "Not the admin (`admin_only`)", body = super::openapi::ErrorBody), (status = 503, description = "The log cannot be read at `from` (`history_unavailable`, `storage_failed`)", body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn log_stream(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let from = q.from.unwrap_or(0).max(state.log.start_offset());
    if from > state.log.next_offset() {
        return Err(ApiError::bad_request(
            "offset_out_of_range",
            format!("the log ends at {}", state.log.next_offset()),
        ));
    }
    let end = (!q.follow).then(|| state.log.next_offset());
    // The first batch is read before answering: a log that cannot be read at `from` (damage,
    // a gap, the object store out of reach) is an error status, not an empty 200 that looks
    // like the end of the log.
    let (tail, first) = if end.is_none_or(|e| from < e) && from < state.log.next_offset() {
        let (tail, batch) = first_batch(&state.log, from).await?;
        (tail, Some(batch))
    } else {
        (state.log.tail(from), None)
    };
    let stop = state.sessions_stop.clone();
    let stream = futures_util::stream::unfold(
        (tail, end, stop, first, false),
        |(mut tail, end, stop, first, failed)| async move {
            if failed || (first.is_none() && end.is_some_and(|e| tail.position() >= e)) {
                return None;
            }
            let (batch, failed) = match first {
                Some(b) => (b, false),
                None => {
                    let read = tokio::select! {
                        () = stop.cancelled() => Err(tidings_log::LogError::Closed),
                        b = tail.next_batch(1 << 20) => b,
                    };
                    match read {
                        Ok(b) => (b, false),
                        // A read that fails mid-stream, or a shutdown before the end, ends it
                        // with a line that says why (the status went out with the first
                        // batch): an export cut short must not look whole.
                        Err(e) => {
                            let err = ApiError::from(e);
                            let line = json!({
                                "offset": tail.position(),
                                "error": err.message,
                                "code": err.code,
                            });
                            let bytes = Bytes::from(format!("{line}\n"));
                            return Some((Ok(bytes), (tail, end, stop, None, true)));
                        }
                    }
                }
            };
            let mut buf = String::new();
            for r in batch {
                if end.is_some_and(|e| r.offset >= e) {
                    break;
                }
                let line = match Envelope::decode(r.offset, &r.payload) {
                    Ok(env) => event_line(r.offset, r.timestamp_ms, &env),
                    Err(e) => json!({"offset": r.offset, "error": e.to_string()}).to_string(),
                };
                buf.push_str(&line);
                buf.push('\n');
            }
            Some((
                Ok::<_, Infallible>(Bytes::from(buf)),
                (tail, end, stop, None, failed),
            ))
        },
    );
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tidings_log::{Log, LogError, LogOptions};

    use super::first_batch;

    /// A removal that lands between the start check and the first read (the old start read
    /// after it): the stream begins at the new start instead of failing. Before, the read
    /// failed `OffsetOutOfRange` (503 `history_unavailable`).
    #[tokio::test]
    async fn a_removal_before_the_first_read_starts_the_stream_at_the_new_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), LogOptions::default()).await.unwrap();
        for round in 0..3u64 {
            for i in 0..5u64 {
                log.append_one(Bytes::from(format!("r{round}-{i}")))
                    .await
                    .unwrap();
            }
            log.roll().await.unwrap();
        }
        let old_start = log.start_offset();
        assert_eq!(old_start, 0);
        log.remove_segments_before(10).await.unwrap();
        assert_eq!(log.start_offset(), 10);
        assert!(matches!(
            log.read(old_start, 1 << 20).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        let (mut tail, batch) = first_batch(&log, old_start).await.unwrap();
        assert_eq!(batch.first().map(|r| r.offset), Some(10));
        assert_eq!(batch[0].payload, Bytes::from("r2-0"));
        assert_eq!(tail.position(), batch.last().unwrap().offset + 1);
        // A later read carries on from there.
        log.append_one(Bytes::from("after")).await.unwrap();
        let next = tail.next_batch(1 << 20).await.unwrap();
        assert_eq!(next.last().unwrap().payload, Bytes::from("after"));
        log.close().await.unwrap();
    }
}
