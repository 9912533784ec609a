//! What `pmad serve` is started with, checked before anything is loaded or bound.

use crate::detector::Device;
use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default `--addr`: loopback only; listening on other interfaces is the operator's choice.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Default `--max-batch`: the CLI's `inspect --batch` default, where the backbone's batched
/// GEMMs already amortise well on a CPU.
pub const DEFAULT_MAX_BATCH: usize = 8;
/// Default `--max-wait-ms`: short next to one image's scoring time (tens of ms on a CPU), so
/// a lone request barely waits, while requests arriving together still share a pass.
pub const DEFAULT_MAX_WAIT_MS: u64 = 5;
/// Default `--queue`: images admitted (waiting or being scored) before new ones get 503.
pub const DEFAULT_QUEUE: usize = 64;
/// Default `--max-body-mb`: a request body larger than this gets 413 before it is read whole.
pub const DEFAULT_MAX_BODY_MB: usize = 32;
/// Environment variable holding the register token when `--token-file` is not given.
pub const TOKEN_ENV: &str = "PMAD_SERVE_TOKEN";
/// Most images in one JSON batch request (each is also one slot of the queue).
pub const MAX_IMAGES_PER_REQUEST: usize = 64;

/// The settings of a running server.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The model directory (a `pmad train` output).
    pub model: PathBuf,
    /// Backbone weights (default: the model's backbone in the weights folder).
    pub weights: Option<PathBuf>,
    /// Where to listen; port 0 picks a free port (the bound address is printed).
    pub addr: SocketAddr,
    /// Most images scored in one backbone pass.
    pub max_batch: usize,
    /// Longest a request waits for others to share its pass.
    pub max_wait: Duration,
    /// Most images admitted at once (queued or being scored); more get 503 + Retry-After.
    pub queue: usize,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Where scoring runs.
    pub device: Device,
    /// Bearer token that `register` requires; `None`: registration is refused (403).
    pub token: Option<String>,
}

impl ServeConfig {
    /// A configuration with the defaults for everything but the model directory.
    pub fn new(model: PathBuf) -> ServeConfig {
        ServeConfig {
            model,
            weights: None,
            addr: DEFAULT_ADDR.parse().expect("the default address parses"),
            max_batch: DEFAULT_MAX_BATCH,
            max_wait: Duration::from_millis(DEFAULT_MAX_WAIT_MS),
            queue: DEFAULT_QUEUE,
            max_body: DEFAULT_MAX_BODY_MB << 20,
            device: Device::Cpu,
            token: None,
        }
    }

    /// Checks every bound; the message names the flag.
    pub fn check(&self) -> Result<()> {
        if !(1..=1024).contains(&self.max_batch) {
            return Err(Error::invalid(format!(
                "--max-batch {}: must be between 1 and 1024",
                self.max_batch
            )));
        }
        if self.max_wait > Duration::from_secs(10) {
            return Err(Error::invalid(format!(
                "--max-wait-ms {}: must be at most 10000",
                self.max_wait.as_millis()
            )));
        }
        if !(1..=100_000).contains(&self.queue) {
            return Err(Error::invalid(format!(
                "--queue {}: must be between 1 and 100000",
                self.queue
            )));
        }
        if self.max_body < 1024 {
            return Err(Error::invalid(format!(
                "--max-body-mb: the body limit ({} bytes) is too small for any image",
                self.max_body
            )));
        }
        if let Some(t) = &self.token {
            check_token(t)?;
        }
        Ok(())
    }
}

/// A usable token: long enough not to be guessed and printable (it travels in a header).
pub fn check_token(token: &str) -> Result<()> {
    if token.len() < 16 {
        return Err(Error::invalid(
            "the register token must be at least 16 characters",
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "the register token must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// The token from `--token-file` (trailing newline removed) or else `$PMAD_SERVE_TOKEN`;
/// `None` when neither is given.
pub fn read_token(file: Option<&std::path::Path>) -> Result<Option<String>> {
    let raw = match file {
        Some(f) => Some(std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?),
        None => std::env::var(TOKEN_ENV).ok(),
    };
    let Some(raw) = raw else {
        return Ok(None);
    };
    let t = raw.trim_end_matches(['\n', '\r']).to_string();
    check_token(&t).map_err(|e| match file {
        Some(f) => Error::format(f, e.to_string()),
        None => Error::invalid(format!("${TOKEN_ENV}: {e}")),
    })?;
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_and_name_the_flag() {
        let ok = ServeConfig::new("m".into());
        ok.check().unwrap();
        let mut c = ok.clone();
        c.max_batch = 0;
        assert!(c.check().unwrap_err().to_string().contains("--max-batch"));
        let mut c = ok.clone();
        c.queue = 0;
        assert!(c.check().unwrap_err().to_string().contains("--queue"));
        let mut c = ok.clone();
        c.max_wait = Duration::from_secs(11);
        assert!(c.check().unwrap_err().to_string().contains("--max-wait-ms"));
        let mut c = ok;
        c.token = Some("short".into());
        assert!(c.check().unwrap_err().to_string().contains("16 characters"));
    }
}
