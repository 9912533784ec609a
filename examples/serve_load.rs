//! Load generator for `pmad serve` (a benchmark, not a test): closed-loop clients on
//! keep-alive connections POST raw images for a fixed time at each concurrency, and the same
//! images are scored in-process as `pmad inspect --batch 8` does (decode in parallel, one
//! `inspect_batch` per 8) right before each concurrency level, for the throughput ratio; plus
//! the in-process latency of one image at a time before the 1-client level, for its ratio.
//!
//! ```text
//! cargo run --release --example serve_load -- --addr 127.0.0.1:8080 --model MODEL \
//!     --class bottle --images DIR [--clients 1,4,16,64] [--seconds 10] [--pid SERVER_PID]
//! ```
//! Loopback only (the address must be a loopback one); every client stops at the deadline
//! after its request in flight. `scripts/serve_load.sh` starts the server and runs this.

#[path = "../tests/common/http.rs"]
mod http;

use clap::Parser;
use pmad::detector::Detector;
use rayon::prelude::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// The server (loopback only).
    #[arg(long)]
    addr: SocketAddr,
    /// The model directory the server serves (for the in-process baseline).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    class: String,
    /// Folder of images (png/jpg), sent round-robin.
    #[arg(long)]
    images: PathBuf,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// Seconds per level (and per baseline).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The server's process id, for its resident memory (Linux /proc).
    #[arg(long)]
    pid: Option<u32>,
    /// Backbone weights (default: the model's in the weights folder).
    #[arg(long)]
    weights: Option<PathBuf>,
}

/// Resident and peak resident memory (MiB) of a process, from /proc/PID/status.
fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let l = s.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = l.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

struct Level {
    clients: usize,
    ok: u64,
    busy: u64,
    errors: u64,
    secs: f64,
    p50: f64,
    p99: f64,
    rss_max: f64,
}

/// `clients` closed-loop clients for `secs` seconds.
fn run_level(
    addr: SocketAddr,
    bodies: &Arc<Vec<Vec<u8>>>,
    path: &str,
    clients: usize,
    secs: f64,
    pid: Option<u32>,
) -> Level {
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let (ok, busy, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, next, bodies) = (stop.clone(), next.clone(), bodies.clone());
            let (ok, busy, errors, lat) =
                (ok.clone(), busy.clone(), errors.clone(), latencies.clone());
            let path = path.to_string();
            std::thread::spawn(move || {
                let mut conn = None;
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let c = match conn.take() {
                        Some(c) => c,
                        None => match http::Conn::open(addr) {
                            Ok(c) => c,
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                        },
                    };
                    let mut c = c;
                    let body = &bodies[next.fetch_add(1, Ordering::Relaxed) % bodies.len()];
                    let t = Instant::now();
                    match c.request("POST", &path, &[("Content-Type", "image/png")], body) {
                        Ok(r) if r.status == 200 => {
                            mine.push(t.elapsed().as_secs_f64());
                            ok.fetch_add(1, Ordering::Relaxed);
                            conn = Some(c);
                        }
                        Ok(r) if r.status == 503 => {
                            busy.fetch_add(1, Ordering::Relaxed);
                            conn = Some(c);
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Ok(r) => {
                            eprintln!("HTTP {}: {}", r.status, r.text());
                            errors.fetch_add(1, Ordering::Relaxed);
                            conn = Some(c);
                        }
                        Err(e) => {
                            eprintln!("request failed: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    let mut rss_max: f64 = 0.0;
    while t0.elapsed().as_secs_f64() < secs {
        if let Some((rss, _)) = pid.and_then(rss_mib) {
            rss_max = rss_max.max(rss);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_by(f64::total_cmp);
    Level {
        clients,
        ok: ok.load(Ordering::Relaxed),
        busy: busy.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        secs,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        rss_max,
    }
}

/// In-process, as `pmad inspect --batch 8`: decode 8 in parallel, one `inspect_batch`;
/// images/s over `secs` seconds (whole passes over the images, at least one).
fn baseline_batch8(det: &Detector, class: &str, paths: &[PathBuf], secs: f64) -> f64 {
    let t = Instant::now();
    let mut n = 0;
    while n == 0 || t.elapsed().as_secs_f64() < secs {
        for chunk in paths.chunks(8) {
            let imgs: Vec<_> = chunk
                .par_iter()
                .map(|p| pmad::data::load_rgb(p).unwrap())
                .collect();
            det.inspect_batch(class, &imgs).unwrap();
            n += chunk.len();
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// In-process latency of one image at a time (decode + inspect), median over `secs`.
fn baseline_single(det: &Detector, class: &str, bodies: &[Vec<u8>], secs: f64) -> f64 {
    let t = Instant::now();
    let mut lat = Vec::new();
    let mut i = 0;
    while lat.is_empty() || t.elapsed().as_secs_f64() < secs {
        let s = Instant::now();
        let img = pmad::data::image::decode_rgb(&bodies[i % bodies.len()], Path::new("x")).unwrap();
        det.inspect_image(class, &img).unwrap();
        lat.push(s.elapsed().as_secs_f64());
        i += 1;
    }
    lat.sort_by(f64::total_cmp);
    percentile(&lat, 0.5)
}

fn main() {
    let a = Args::parse();
    assert!(
        a.addr.ip().is_loopback(),
        "--addr must be a loopback address"
    );
    let paths = pmad::detector::pipeline::list_images(&a.images).unwrap();
    assert!(!paths.is_empty(), "no images in {}", a.images.display());
    let bodies: Arc<Vec<Vec<u8>>> =
        Arc::new(paths.iter().map(|p| std::fs::read(p).unwrap()).collect());
    let det = Detector::open(&a.model, a.weights.as_deref()).unwrap();
    det.class(&a.class).unwrap();
    let path = format!("/v1/classes/{}/inspect", a.class);
    // Warm both sides (class loaded, pages touched) before timing.
    baseline_batch8(&det, &a.class, &paths[..paths.len().min(8)], 0.0);
    let warm = http::request(
        a.addr,
        "POST",
        &path,
        &[("Content-Type", "image/png")],
        &bodies[0],
    )
    .unwrap();
    assert_eq!(warm.status, 200, "{}", warm.text());

    // Each level runs right after its own in-process baseline (the machine's load drifts;
    // adjacent runs compare fairly), and the 1-client level right after the in-process
    // single-image latency too.
    let mut levels = Vec::new();
    let mut single_p50 = f64::NAN;
    for &c in &a.clients {
        let base = baseline_batch8(&det, &a.class, &paths, a.seconds);
        if c == 1 {
            single_p50 = baseline_single(&det, &a.class, &bodies, a.seconds);
        }
        let l = run_level(a.addr, &bodies, &path, c, a.seconds, a.pid);
        eprintln!(
            "{c} clients: {} ok, {} 503, {} errors in {:.1}s; in-process batch 8 just before: \
             {base:.2} images/s",
            l.ok, l.busy, l.errors, l.secs
        );
        levels.push((l, base));
    }
    let peak = a.pid.and_then(rss_mib).map(|(_, hwm)| hwm);

    println!(
        "{} images of {}, {:.0} s per level; each level's ratio is to the in-process \
         `inspect --batch 8` throughput measured just before it",
        paths.len(),
        a.images.display(),
        a.seconds
    );
    println!();
    println!(
        "| clients | requests ok | images/s | in-process batch-8 images/s | ratio | p50 ms | p99 ms | 503 | errors | max RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (l, base) in &levels {
        let tput = l.ok as f64 / l.secs;
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} | {:.0} |",
            l.clients,
            l.ok,
            tput,
            base,
            tput / base,
            l.p50 * 1e3,
            l.p99 * 1e3,
            l.busy,
            l.errors,
            l.rss_max
        );
    }
    if let Some((l, _)) = levels.iter().find(|(l, _)| l.clients == 1) {
        println!();
        println!(
            "1-client p50 {:.1} ms / in-process single-image p50 {:.1} ms: {:.2}",
            l.p50 * 1e3,
            single_p50 * 1e3,
            l.p50 / single_p50
        );
    }
    if let Some(p) = peak {
        println!("server peak RSS (VmHWM): {p:.0} MiB");
    }
}
