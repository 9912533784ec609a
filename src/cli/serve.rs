//! `pmad serve --model DIR [--addr 127.0.0.1:8080] [--max-batch N] [--max-wait-ms T]
//! [--queue Q] [--device cpu|cuda] [--token-file F]`: the model behind HTTP (see
//! `pmad::serve` for the routes, batching, registration and shutdown).

use clap::Args;
use pmad::serve::{ServeConfig, config};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The model directory (a `pmad train` output).
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// Most images scored in one backbone pass.
    #[arg(long, default_value_t = config::DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// Longest a request waits for others to share its pass (milliseconds).
    #[arg(long, default_value_t = config::DEFAULT_MAX_WAIT_MS)]
    pub max_wait_ms: u64,
    /// Most images admitted at once (queued or being scored); more get 503 + Retry-After.
    #[arg(long, default_value_t = config::DEFAULT_QUEUE)]
    pub queue: usize,
    /// Largest request body (MiB); larger ones get 413.
    #[arg(long, default_value_t = config::DEFAULT_MAX_BODY_MB)]
    pub max_body_mb: usize,
    /// Where the backbone, the nearest-prototype search and the ViT run: cpu | cuda.
    #[arg(long, default_value = "cpu")]
    pub device: pmad::detector::Device,
    /// File holding the bearer token that `POST /v1/classes/{class}/register` requires
    /// (default: $PMAD_SERVE_TOKEN; neither: registration answers 403).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Backbone weights (default: the model's backbone in the weights folder).
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> pmad::Result<()> {
    let mb = args.max_body_mb;
    let config = ServeConfig {
        model: args.model,
        weights: args.weights,
        addr: args.addr,
        max_batch: args.max_batch,
        max_wait: Duration::from_millis(args.max_wait_ms),
        queue: args.queue,
        max_body: mb
            .checked_mul(1 << 20)
            .ok_or_else(|| pmad::Error::invalid(format!("--max-body-mb {mb}: too large")))?,
        device: args.device,
        token: config::read_token(args.token_file.as_deref())?,
    };
    pmad::serve::run(config)
}
