//! `pmad serve`: a model directory behind HTTP/1.1 + JSON.
//!
//! Routes ([`routes`]):
//! - `POST /v1/classes/{class}/inspect[?map=png|f32]`: one image as the body (`image/png`,
//!   `image/jpeg`, ...) -> `{"score", "threshold", "verdict", "width", "height"[, "map"]}`;
//!   or `application/json` `{"images": ["<base64>", ...]}` -> `{"results": [...]}`.
//! - `GET /v1/classes`, `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text).
//! - `POST /v1/classes/{class}/register` with `{"images": [...]}` of normal images, with
//!   `Authorization: Bearer <token>`; without a token configured it answers 403.
//!
//! How it works:
//! - **Batching** ([`batcher`]): inspection requests are admitted into a bounded queue (503 +
//!   `Retry-After` when full) and gathered per class by one worker thread into one
//!   `inspect_batch` call of up to `--max-batch` images, waiting at most `--max-wait-ms` for
//!   company. Decoding, scoring and encoding run on that thread and the rayon pool, never
//!   on the async runtime's two threads.
//! - **Registering while serving** ([`model`]): a registration builds a new detector on the
//!   side and swaps it in atomically (`RwLock<Arc<Detector>>`); running batches finish on
//!   the detector they started with.
//! - **Errors** ([`error`]): 400 bad image or request (with the reason), 404 unknown class,
//!   401/403 registration refused, 413 body too large, 415 wrong content type, 503 queue
//!   full or shutting down, 500 anything the server's side broke, including a non-finite
//!   value (named; never a verdict). [`error::status_for`] is the one mapping of library
//!   errors to statuses.
//! - **Shutdown**: on SIGTERM or ctrl-c the server stops accepting connections, `/readyz`
//!   turns 503, every request already received is answered (the queue drains), and then
//!   the process exits; a drain longer than [`DRAIN_TIMEOUT`] is cut short.

pub mod batcher;
pub mod config;
pub mod error;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod wire;

pub use config::ServeConfig;

use crate::error::{Error, Result};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Longest a shutdown waits for requests in flight before exiting anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Threads of the async runtime: they only move bytes (the work runs on the batcher's
/// thread and the rayon pool), so two are plenty and leave the cores to scoring.
const HTTP_THREADS: usize = 2;

/// Loads the model, listens on `config.addr`, and serves until SIGTERM or ctrl-c, then
/// drains. Prints `pmad serve: listening on http://ADDR` on stdout once ready (with the
/// real port when `addr` asked for port 0).
pub fn run(config: ServeConfig) -> Result<()> {
    config.check()?;
    let t = std::time::Instant::now();
    let (slot, failed) =
        model::ModelSlot::open(&config.model, config.weights.as_deref(), config.device)?;
    for (class, e) in &failed {
        eprintln!("warning: class '{class}' failed to load; its requests will get 500: {e}");
    }
    let slot = Arc::new(slot);
    eprintln!(
        "pmad serve: model {} loaded in {:.1}s ({} device)",
        config.model.display(),
        t.elapsed().as_secs_f64(),
        config.device.name()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(HTTP_THREADS)
        .thread_name("pmad-http")
        .enable_all()
        .build()
        .map_err(|e| Error::invalid(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(serve(slot, config, shutdown_signal()))
}

/// Serves `slot` on `config.addr` until `shutdown` completes, then drains (see the module
/// docs). Runs inside a tokio runtime.
pub async fn serve(
    slot: Arc<model::ModelSlot>,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| Error::invalid(format!("--addr {}: cannot listen: {e}", config.addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::invalid(format!("--addr {}: {e}", config.addr)))?;
    let metrics = Arc::new(metrics::Metrics::default());
    let batcher = batcher::Batcher::start(
        slot.clone(),
        metrics.clone(),
        config.max_batch,
        config.max_wait,
        config.queue,
    );
    let state = Arc::new(routes::AppState {
        slot,
        batcher,
        metrics,
        config,
        draining: Default::default(),
    });
    let app = routes::router(state.clone());
    // The line scripts and tests wait for: the model is loaded and the port is open.
    println!("pmad serve: listening on http://{addr}");
    let _ = std::io::stdout().flush();

    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        st.draining.store(true, Ordering::Release);
        eprintln!(
            "pmad serve: shutting down; answering the {} images in flight",
            st.batcher.depth()
        );
        let _ = signalled_tx.send(());
    });
    let mut server = tokio::spawn(async move { server.await });
    let result = tokio::select! {
        r = &mut server => r,
        _ = signalled_rx => match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
            Ok(r) => r,
            Err(_) => {
                eprintln!(
                    "pmad serve: requests still in flight after {}s; exiting anyway",
                    DRAIN_TIMEOUT.as_secs()
                );
                server.abort();
                Ok(Ok(()))
            }
        },
    };
    // No connection is left, so nothing can queue any more: let the worker finish and stop.
    state.batcher.close();
    match result {
        Ok(Ok(())) => {
            eprintln!("pmad serve: stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(Error::invalid(format!("the HTTP server failed: {e}"))),
        Err(e) => Err(Error::invalid(format!("the HTTP server task failed: {e}"))),
    }
}

/// Completes on SIGTERM or ctrl-c (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
