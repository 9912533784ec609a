//! The HTTP routes. Handlers check what is cheap to check (class, content type, token, queue
//! room), read the body within the size limit, and hand the work to the batcher (inspection)
//! or to a blocking thread (registration); they never decode or score on the async runtime.

use super::batcher::{Batcher, Job};
use super::config::{MAX_IMAGES_PER_REQUEST, ServeConfig};
use super::error::{ApiError, Stage};
use super::metrics::Metrics;
use super::model::{ModelSlot, RegisterError, memory_index};
use super::wire::{self, MapFormat};
use crate::detector::class_store;
use crate::detector::model_dir as md;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rayon::prelude::*;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::oneshot;

/// What every handler shares.
pub struct AppState {
    pub slot: Arc<ModelSlot>,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub config: ServeConfig,
    /// Set when shutdown starts: `/readyz` answers 503 so a balancer stops sending.
    pub draining: AtomicBool,
}

/// Every route, with request metrics recorded around each.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/classes", get(classes))
        .route("/v1/classes/{class}/inspect", post(inspect))
        .route("/v1/classes/{class}/register", post(register))
        .layer(axum::middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

/// Counts every answered request by route template and status, with its latency.
async fn record(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // The template (`/v1/classes/{class}/inspect`), not the path: label values stay few.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let t = Instant::now();
    let resp = next.run(req).await;
    s.metrics
        .request(&route, resp.status().as_u16(), t.elapsed());
    resp
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let status = if s.draining.load(Ordering::Acquire) {
        "draining"
    } else if !s.batcher.alive() {
        "scoring worker stopped"
    } else {
        return axum::Json(serde_json::json!({"status": "ready"})).into_response();
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({"status": status})),
    )
        .into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let ready = !s.draining.load(Ordering::Acquire) && s.batcher.alive();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics
            .render(s.batcher.depth(), s.batcher.capacity(), ready),
    )
}

async fn classes(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let det = s.slot.current();
    let names = class_store::list(det.dir()).map_err(|e| ApiError::from_pmad(Stage::Score, &e))?;
    Ok(axum::Json(serde_json::json!({
        "classes": names,
        "score": det.config.score.name(),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InspectQuery {
    map: Option<MapFormat>,
}

/// How the images of a request are sent.
enum BodyKind {
    /// One encoded image (`image/*` or `application/octet-stream`).
    Image,
    /// `{"images": ["<base64>", ...]}` (`application/json`).
    Json,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime.starts_with("image/") || mime == "application/octet-stream" {
        Ok(BodyKind::Image)
    } else if mime == "application/json" {
        Ok(BodyKind::Json)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type '{ct}': send an image (image/png, image/jpeg, ...) or \
                 application/json {{\"images\": [\"<base64>\", ...]}}"
            ),
        ))
    }
}

/// 404 unless `class` is registered in the model directory.
fn check_class(s: &AppState, class: &str) -> Result<(), ApiError> {
    let dir = s.slot.current().dir().to_path_buf();
    if md::check_class_name(class).is_ok() && class_store::exists(&dir, class) {
        return Ok(());
    }
    let known = class_store::list(&dir).unwrap_or_default();
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "class '{class}' is not registered (registered: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
    ))
}

fn queue_full(s: &AppState) -> ApiError {
    ApiError::unavailable(
        format!(
            "the queue is full ({} images waiting or being scored); retry later",
            s.batcher.capacity()
        ),
        1,
    )
}

/// Reads the whole body, at most `limit` bytes (413 beyond).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {limit} bytes (--max-body-mb)"),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })
}

/// Reads and drops a body we refuse, frame by frame (nothing is kept), so the client can
/// finish sending it and read our answer on a connection that stays open; HTTP/1 closes
/// a connection whose request body was left unread, and a client still writing into it
/// would get a broken pipe instead of the 503.
async fn discard_body(body: Body, limit: usize) {
    use http_body_util::BodyExt;
    let mut body = http_body_util::Limited::new(body, limit);
    while let Some(Ok(_)) = body.frame().await {}
}

fn internal(what: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, what.to_string())
}

/// `POST /v1/classes/{class}/inspect[?map=png|f32]`.
async fn inspect(
    State(s): State<Arc<AppState>>,
    Path(class): Path<String>,
    query: Result<Query<InspectQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let map = query
        .map_err(|e| ApiError::bad_request(format!("{e} (expected ?map=png or ?map=f32)")))?
        .0
        .map;
    check_class(&s, &class)?;
    let kind = body_kind(&headers)?;
    // A slot before the body is read: under overload, bodies are not buffered.
    let Some(mut permit) = s.batcher.admit(1) else {
        discard_body(body, s.config.max_body).await;
        return Err(queue_full(&s));
    };
    let bytes = read_body(body, s.config.max_body).await?;
    let (images, single) = match kind {
        BodyKind::Image => (vec![bytes], true),
        BodyKind::Json => {
            let max = MAX_IMAGES_PER_REQUEST.min(s.batcher.capacity());
            let list = tokio::task::spawn_blocking(move || wire::parse_image_list(&bytes, max))
                .await
                .map_err(|_| internal("parsing the request failed"))?
                .map_err(|e| ApiError::from_pmad(Stage::Decode, &e))?;
            if !permit.grow(list.len() - 1) {
                return Err(queue_full(&s));
            }
            (list.into_iter().map(Bytes::from).collect(), false)
        }
    };
    let (tx, rx) = oneshot::channel();
    s.batcher.submit(Job {
        class,
        images,
        map,
        single,
        reply: tx,
        permit,
        queued: Instant::now(),
    })?;
    let body = rx
        .await
        .map_err(|_| internal("the scoring worker stopped before answering"))??;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Constant-time comparison, so the time of a refusal does not tell how much of a guessed
/// token was right.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 403 when the server has no token (registration disabled), 401 for a missing or wrong one.
fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &s.config.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "registration is disabled: start `pmad serve` with --token-file FILE or \
             $PMAD_SERVE_TOKEN",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same_token(g.trim().as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "registration needs 'Authorization: Bearer <token>' with the server's token",
        )),
    }
}

/// `POST /v1/classes/{class}/register` with `{"images": ["<base64>", ...]}` (normal images).
async fn register(
    State(s): State<Arc<AppState>>,
    Path(class): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&s, &headers)?;
    md::check_class_name(&class).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !matches!(body_kind(&headers)?, BodyKind::Json) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "registration takes application/json {\"images\": [\"<base64>\", ...]}",
        ));
    }
    let bytes = read_body(body, s.config.max_body).await?;
    let st = s.clone();
    let value = tokio::task::spawn_blocking(move || register_blocking(&st, &class, &bytes))
        .await
        .map_err(|_| internal("the registration failed unexpectedly"))??;
    Ok(axum::Json(value).into_response())
}

fn register_blocking(
    s: &AppState,
    class: &str,
    body: &[u8],
) -> Result<serde_json::Value, ApiError> {
    let decode_err = |e: crate::Error| ApiError::from_pmad(Stage::Decode, &e);
    let images = wire::parse_image_list(body, usize::MAX).map_err(decode_err)?;
    if images.len() < 2 {
        return Err(ApiError::bad_request(format!(
            "registration needs at least 2 normal images, got {}",
            images.len()
        )));
    }
    // Every image must decode before anything is registered; the detector registers the
    // decoded images from memory (nothing is written but the class itself).
    let decoded: Vec<crate::data::image::RgbImage> = images
        .par_iter()
        .enumerate()
        .map(|(i, b)| wire::decode(b, i))
        .collect::<crate::Result<_>>()
        .map_err(decode_err)?;
    drop(images);
    let info = match s.slot.register(class, &decoded) {
        Ok(info) => info,
        Err(RegisterError::Busy) => {
            return Err(ApiError::unavailable(
                "another registration is running; retry when it is done",
                5,
            ));
        }
        Err(RegisterError::Failed(e)) => return Err(ApiError::from_pmad(Stage::Register, &e)),
    };
    let det = s.slot.current();
    let kind = det.config.score;
    let outliers: Vec<serde_json::Value> = info
        .outliers
        .iter()
        .map(|o| serde_json::json!({"image": memory_index(&o.path), "z": o.z}))
        .collect();
    Ok(serde_json::json!({
        "class": info.name,
        "n_train_images": info.n_train_images,
        "n_prototypes": info.n_prototypes,
        "score": kind.name(),
        "threshold": info.thresholds.get(kind.name()),
        "outliers": outliers,
    }))
}
