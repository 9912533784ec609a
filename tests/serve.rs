//! `pmad serve` end to end: the binary on 127.0.0.1:0 over a small model built from
//! synthetic data. Verdicts equal `pmad inspect`'s, every error path gets its status, the
//! metrics are valid Prometheus text, concurrent requests share batches, registration needs
//! the token and swaps the model while serving, and SIGTERM answers what is in flight.
//! Every server is started and stopped by its test; request counts and waits are bounded.

mod common;
#[path = "common/http.rs"]
mod http;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

const CLASS: &str = "synth_fabric";
const INSPECT: &str = "/v1/classes/synth_fabric/inspect";

struct Fixture {
    /// Holds `mv/` (the synthetic class, as the README names it) and `model/`.
    base: PathBuf,
    model: PathBuf,
    weights: PathBuf,
    /// Normal training images of the class.
    train: Vec<PathBuf>,
    /// Test images (normal and defective).
    test: Vec<PathBuf>,
}

/// Synthetic data and a model with one registered class (library calls, no training: the
/// default distance score needs only the bank); built once, or None to skip.
fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let m = common::one_class_model("pmad-serve", 5, 8, 4, 4)?;
        let (base, model, weights, train, mut test) = (m.base, m.model, m.weights, m.train, m.test);
        assert!(test.len() >= 8, "{} test images", test.len());
        test.truncate(8);
        Some(Fixture {
            base,
            model,
            weights,
            train,
            test,
        })
    })
    .as_ref()
}

/// A `pmad serve` child process; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(model: &Path, weights: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(common::pmad_bin())
            .args(["serve", "--model"])
            .arg(model)
            .arg("--weights")
            .arg(weights)
            .args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .env_remove("PMAD_SERVE_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err_pipe, err_buf) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut b = err_buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("pmad serve: listening on http://") {
                    let _ = tx.send(a.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let mut server = Server {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            stderr,
        };
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(a) => server.addr = a,
            Err(_) => panic!(
                "pmad serve did not start within 90 s:\n{}",
                server.stderr.lock().unwrap()
            ),
        }
        server
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits (at most 60 s) for the exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "pmad serve did not exit within 60 s of SIGTERM:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post_png(addr: SocketAddr, path: &str, png: &[u8]) -> http::Response {
    http::request(addr, "POST", path, &[("Content-Type", "image/png")], png).unwrap()
}

fn post_json(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> http::Response {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    http::request(addr, "POST", path, &h, body.as_bytes()).unwrap()
}

fn images_json(paths: &[PathBuf]) -> String {
    let list: Vec<String> = paths
        .iter()
        .map(|p| B64.encode(std::fs::read(p).unwrap()))
        .collect();
    serde_json::json!({ "images": list }).to_string()
}

/// The value of the sample `series` (name with its labels, exactly) in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (at most 30 s) until `n` images are admitted and unanswered.
fn wait_queue_depth(addr: SocketAddr, n: usize) {
    let t = Instant::now();
    loop {
        let m = http::get(addr, "/metrics").text();
        if metric(&m, "pmad_queue_depth") == Some(n as f64) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "queue depth never reached {n}:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `pmad inspect`'s JSON line per image: path -> (score, threshold, verdict).
fn cli_inspect(
    model: &Path,
    weights: &Path,
    class: &str,
    images: &[PathBuf],
) -> HashMap<String, (f64, f64, String)> {
    let mut args: Vec<String> = [
        "inspect",
        "--model",
        model.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--class",
        class,
    ]
    .map(String::from)
    .to_vec();
    args.extend(images.iter().map(|p| p.display().to_string()));
    let out = common::pmad_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["path"].as_str().unwrap().to_string(),
                (
                    v["score"].as_f64().unwrap(),
                    v["threshold"].as_f64().unwrap(),
                    v["verdict"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// The server's result for an image equals the CLI's (scores to float rounding: batches
/// may be grouped differently).
fn assert_same(server: &serde_json::Value, cli: &(f64, f64, String), what: &str) {
    let s = server["score"].as_f64().unwrap();
    assert!(
        (s - cli.0).abs() <= 1e-4 * cli.0.abs().max(1e-3),
        "{what}: server score {s}, pmad inspect {}",
        cli.0
    );
    assert_eq!(server["threshold"].as_f64().unwrap(), cli.1, "{what}");
    assert_eq!(server["verdict"].as_str().unwrap(), cli.2, "{what}");
}

#[test]
fn verdicts_equal_pmad_inspect_and_concurrent_requests_share_a_batch() {
    let Some(f) = fixture() else { return };
    let server = Server::start(
        &f.model,
        &f.weights,
        &["--max-batch", "4", "--max-wait-ms", "500"],
    );
    let addr = server.addr;
    let cli = cli_inspect(&f.model, &f.weights, CLASS, &f.test);

    // One raw PNG per request, all at once.
    let barrier = Arc::new(Barrier::new(f.test.len()));
    let handles: Vec<_> = f
        .test
        .iter()
        .map(|p| {
            let (png, b) = (std::fs::read(p).unwrap(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                post_png(addr, INSPECT, &png)
            })
        })
        .collect();
    for (p, h) in f.test.iter().zip(handles) {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_same(&v, &cli[&p.display().to_string()], &p.display().to_string());
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(96), Some(96))
        );
    }

    let m = http::get(addr, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let m = m.text();
    let series = "pmad_requests_total{route=\"/v1/classes/{class}/inspect\",code=\"200\"}";
    assert_eq!(metric(&m, series), Some(8.0), "{m}");
    let batches = metric(&m, "pmad_batch_size_count").unwrap();
    let images = metric(&m, "pmad_batch_size_sum").unwrap();
    let singles = metric(&m, "pmad_batch_size_bucket{le=\"1\"}").unwrap();
    assert_eq!(images, 8.0, "{m}");
    assert!(
        batches < images && singles < batches,
        "8 concurrent requests were never batched: {batches} passes for {images} images"
    );
    assert_eq!(
        metric(
            &m,
            "pmad_request_duration_seconds_count{route=\"/v1/classes/{class}/inspect\"}"
        ),
        Some(8.0)
    );
    let normal = metric(&m, "pmad_images_total{verdict=\"normal\"}").unwrap();
    let anomalous = metric(&m, "pmad_images_total{verdict=\"anomalous\"}").unwrap();
    assert_eq!(normal + anomalous, 8.0);
    assert_eq!(metric(&m, "pmad_queue_depth"), Some(0.0));
    assert_eq!(metric(&m, "pmad_ready"), Some(1.0));
    // Every sample line is `name{labels} value` with a number as the value.
    for l in m.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, value) = l.rsplit_once(' ').unwrap();
        assert!(name.starts_with("pmad_"), "{l}");
        assert!(value.parse::<f64>().is_ok(), "{l}");
    }

    // The same images as one JSON batch, with the map as floats, then as a 16-bit PNG.
    let body = images_json(&f.test);
    let r = post_json(addr, &format!("{INSPECT}?map=f32"), &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), f.test.len());
    for (p, res) in f.test.iter().zip(results) {
        assert_same(res, &cli[&p.display().to_string()], "json batch");
        let map = &res["map"];
        assert_eq!(map["format"], "f32");
        let values = map["values"].as_array().unwrap();
        assert_eq!(values.len(), 96 * 96);
        assert!(values.iter().all(|x| x.as_f64().unwrap().is_finite()));
    }
    // No pass was larger than --max-batch, the 8-image request's included.
    let m = http::get(addr, "/metrics").text();
    assert_eq!(metric(&m, "pmad_batch_size_sum"), Some(16.0), "{m}");
    assert_eq!(
        metric(&m, "pmad_batch_size_bucket{le=\"4\"}"),
        metric(&m, "pmad_batch_size_count"),
        "{m}"
    );
    let r = post_png(
        addr,
        &format!("{INSPECT}?map=png"),
        &std::fs::read(&f.test[0]).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let map = &r.json()["map"];
    assert_eq!(map["format"], "png16");
    assert!(map["scale"].as_f64().unwrap() > 0.0);
    let png = B64.decode(map["data"].as_str().unwrap()).unwrap();
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (96, 96));
    assert_eq!(img.color(), image::ColorType::L16);
}

#[test]
fn routes_answer_and_bad_requests_get_clear_errors() {
    let Some(f) = fixture() else { return };
    let server = Server::start(&f.model, &f.weights, &["--max-body-mb", "1"]);
    let addr = server.addr;
    let png = std::fs::read(&f.test[0]).unwrap();

    assert_eq!(http::get(addr, "/healthz").status, 200);
    let r = http::get(addr, "/readyz");
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );
    let r = http::get(addr, "/v1/classes");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["classes"], serde_json::json!([CLASS]));

    // Unknown class: 404 naming it and what is registered.
    let r = post_png(addr, "/v1/classes/synth_nope/inspect", &png);
    assert_eq!(r.status, 404);
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(e.contains("synth_nope") && e.contains(CLASS), "{e}");
    assert_eq!(
        post_png(addr, "/v1/classes/..bad/inspect", &png).status,
        404
    );
    // Not an image, a truncated image: 400 with the reason.
    let r = post_png(addr, INSPECT, b"definitely not a png");
    assert_eq!(r.status, 400);
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("image 0 of the request") && e.contains("not an image"),
        "{e}"
    );
    let r = post_png(addr, INSPECT, &png[..png.len() / 2]);
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("decode"),
        "{}",
        r.text()
    );
    // A JSON batch with one bad image fails whole, naming the image.
    let body = serde_json::json!({"images": [B64.encode(&png), B64.encode(b"junk")]});
    let r = post_json(addr, INSPECT, &[], &body.to_string());
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("image 1 of the request")
    );
    let r = post_json(addr, INSPECT, &[], "{\"imgs\": []}");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("expected"));
    let r = post_json(addr, INSPECT, &[], "{\"images\": [\"%%%\"]}");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("base64"));
    let r = post_png(addr, &format!("{INSPECT}?map=jpeg"), &png);
    assert_eq!(r.status, 400, "{}", r.text());
    // Wrong content type, body over the limit.
    let r = http::request(
        addr,
        "POST",
        INSPECT,
        &[("Content-Type", "text/plain")],
        &png,
    )
    .unwrap();
    assert_eq!(r.status, 415);
    let big = vec![0u8; 3 << 19];
    let r = post_png(addr, INSPECT, &big);
    assert_eq!(r.status, 413, "{}", r.text());
    // No token configured: registration is refused outright.
    let r = post_json(
        addr,
        "/v1/classes/new_class/register",
        &[("Authorization", "Bearer 0123456789abcdef0123")],
        &images_json(&f.train),
    );
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("--token-file"));
    assert_eq!(http::get(addr, "/nowhere").status, 404);

    // The server is still fine, and counted every outcome.
    assert_eq!(post_png(addr, INSPECT, &png).status, 200);
    let m = http::get(addr, "/metrics").text();
    let count = |code: u16| {
        metric(
            &m,
            &format!(
                "pmad_requests_total{{route=\"/v1/classes/{{class}}/inspect\",code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(count(404), Some(2.0), "{m}");
    assert_eq!(count(400), Some(6.0), "{m}");
    assert_eq!(count(415), Some(1.0), "{m}");
    assert_eq!(count(413), Some(1.0), "{m}");
    assert_eq!(count(200), Some(1.0), "{m}");
    assert_eq!(
        metric(
            &m,
            "pmad_requests_total{route=\"/v1/classes/{class}/register\",code=\"403\"}"
        ),
        Some(1.0)
    );

    // The README's curl example, as written there, against this server.
    readme_curl_example(f, addr);
}

/// Runs the `curl` commands of the README's "HTTP service" example (port replaced by the
/// test server's) from a folder laid out like the example's, and checks their output.
fn readme_curl_example(f: &Fixture, addr: SocketAddr) {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped the README curl example: no curl on this machine");
        return;
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("\n## HTTP service")
        .nth(1)
        .expect("README has a section \"## HTTP service\"");
    let block = section
        .split("```bash\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the HTTP service section has a bash example");
    // Commands, with backslash continuations joined; only the curl ones run here.
    let joined = block.replace("\\\n", " ");
    let curls: Vec<&str> = joined
        .lines()
        .map(|l| l.split(" #").next().unwrap().trim())
        .filter(|l| l.starts_with("curl "))
        .collect();
    assert!(curls.len() >= 2, "the example has curl commands: {block}");
    for c in curls {
        let cmd = c.replace("127.0.0.1:8080", &addr.to_string());
        let out = Command::new("sh")
            .args(["-c", &cmd])
            .current_dir(&f.base)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if cmd.contains("/inspect") {
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{cmd}: not JSON ({e}): {text}"));
            assert!(
                v["verdict"] == "normal" || v["verdict"] == "anomalous",
                "{cmd}: {text}"
            );
            assert!(v["score"].as_f64().unwrap().is_finite());
        } else if cmd.contains("/metrics") {
            assert!(text.contains("pmad_requests_total"), "{cmd}: {text}");
        } else {
            assert!(
                !text.is_empty() && !text.contains("\"error\""),
                "{cmd}: {text}"
            );
        }
    }
}

/// Copies a model directory (small) so a test can change it.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn a_full_queue_answers_503_and_registration_needs_the_token() {
    let Some(f) = fixture() else { return };
    let model = f.base.join("model-register");
    let _ = std::fs::remove_dir_all(&model);
    copy_dir(&f.model, &model);
    let token = "serve-test-token-0123456789";
    let token_file = f.base.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut server = Server::start(
        &model,
        &f.weights,
        &[
            "--queue",
            "2",
            "--max-wait-ms",
            "1500",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let addr = server.addr;
    let png = std::fs::read(&f.test[0]).unwrap();

    // Two requests fill the queue (they wait 1.5 s for company); a third is turned away.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let png = png.clone();
            std::thread::spawn(move || post_png(addr, INSPECT, &png))
        })
        .collect();
    wait_queue_depth(addr, 2);
    let mut conn = http::Conn::open(addr).unwrap();
    let r = conn
        .request("POST", INSPECT, &[("Content-Type", "image/png")], &png)
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    // The refused body was read and dropped: the connection stays usable.
    assert_eq!(
        conn.request("GET", "/healthz", &[], b"").unwrap().status,
        200
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("queue is full")
    );
    for h in waiting {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // More images in one request than the queue can ever hold: a client error.
    let r = post_json(addr, INSPECT, &[], &images_json(&f.test[..3]));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("at most 2"));

    // Registration: the token is required and checked.
    let path = "/v1/classes/served_fabric/register";
    let body = images_json(&f.train);
    let r = post_json(addr, path, &[], &body);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = post_json(
        addr,
        path,
        &[("Authorization", "Bearer serve-test-token-wrong-guess")],
        &body,
    );
    assert_eq!(r.status, 401);
    let auth = format!("Bearer {token}");
    let auth = [("Authorization", auth.as_str())];
    let r = post_json(addr, path, &auth, &images_json(&f.train[..1]));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("at least 2"));
    let broken = serde_json::json!({"images": [B64.encode(&png), B64.encode(b"junk")]});
    let r = post_json(addr, path, &auth, &broken.to_string());
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("image 1 of the request")
    );
    assert_eq!(
        post_json(addr, "/v1/classes/bad.name/register", &auth, &body).status,
        400
    );
    assert_eq!(
        post_png(addr, "/v1/classes/served_fabric/inspect", &png).status,
        404
    );

    let r = post_json(addr, path, &auth, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["class"], "served_fabric");
    assert_eq!(v["n_train_images"].as_u64(), Some(f.train.len() as u64));
    assert!(v["threshold"].as_f64().unwrap().is_finite());
    let r = http::get(addr, "/v1/classes");
    assert_eq!(
        r.json()["classes"],
        serde_json::json!(["served_fabric", CLASS])
    );

    // The new class serves at once, and scores as `pmad inspect` does on the same model.
    let cli = cli_inspect(&model, &f.weights, "served_fabric", &f.test[..2]);
    for p in &f.test[..2] {
        let r = post_png(
            addr,
            "/v1/classes/served_fabric/inspect",
            &std::fs::read(p).unwrap(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_same(
            &r.json(),
            &cli[&p.display().to_string()],
            "registered while serving",
        );
    }
    // The class registered from the same images equals the original one.
    let orig = cli_inspect(&model, &f.weights, CLASS, &f.test[..2]);
    for p in &f.test[..2] {
        let key = p.display().to_string();
        assert_eq!(cli[&key].0, orig[&key].0, "{key}");
    }
    assert!(server.terminate().success(), "{}", server.stderr());
}

#[test]
fn sigterm_answers_the_requests_in_flight_before_exiting() {
    let Some(f) = fixture() else { return };
    let mut server = Server::start(&f.model, &f.weights, &["--max-wait-ms", "2000"]);
    let addr = server.addr;
    let requests: Vec<_> = f.test[..4]
        .iter()
        .map(|p| {
            let png = std::fs::read(p).unwrap();
            std::thread::spawn(move || post_png(addr, INSPECT, &png))
        })
        .collect();
    // All four are queued (waiting out the 2 s batch window) when the signal comes.
    wait_queue_depth(addr, 4);
    let status = server.terminate();
    for h in requests {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert!(
            v["verdict"] == "normal" || v["verdict"] == "anomalous",
            "{v}"
        );
    }
    assert!(status.success(), "exit {status}:\n{}", server.stderr());
    let err = server.stderr();
    assert!(
        err.contains("shutting down") && err.contains("stopped"),
        "{err}"
    );
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}
