//! Dynamic batching: inspection requests are queued, and one worker thread gathers those for
//! the same class into one `Detector::inspect_batch` call (one backbone pass), up to
//! `max_batch` images or until the first of them has waited `max_wait` — and no longer than
//! while other admitted requests are still on their way (a lone request runs at once).
//!
//! - **Bounded.** A request is *admitted* before it is queued: one slot per image, at most
//!   `--queue` slots at once, held until its answer is sent. A request that does not fit
//!   gets 503 + Retry-After at once, so memory never grows with the offered load.
//! - **Off the async runtime.** The worker is a plain thread: decoding, the backbone (which
//!   fans out on the rayon pool), map encoding and JSON writing all run there; the async
//!   handlers only move bytes and wait for the answer.
//! - **One bad request costs only itself.** Images that do not decode answer their request
//!   400 before the batch runs; if the batch then fails (a non-finite value, say), each
//!   request of it is scored alone, so only the one that fails gets the error.
//! - **Order.** Requests of other classes that arrive while a batch gathers wait, in arrival
//!   order, for the next batch; a request larger than what is left of a batch waits too. A
//!   single JSON request of more than `max_batch` images is scored alone, in several passes.

use super::error::{ApiError, Stage};
use super::metrics::Metrics;
use super::model::ModelSlot;
use super::wire::{self, MapFormat};
use crate::data::RgbImage;
use axum::body::Bytes;
use rayon::prelude::*;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The answer to a job: a JSON body, or the error.
pub type Reply = std::result::Result<Vec<u8>, ApiError>;

/// Slots of the queue (one per image), shared by the handlers and the worker.
pub struct Admission {
    used: AtomicUsize,
    capacity: usize,
}

/// Slots held by one request; given back when dropped (after its answer was sent).
pub struct Permit {
    admission: Arc<Admission>,
    n: usize,
}

impl Admission {
    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.capacity).then_some(u + n)
            })
            .is_ok()
    }
}

impl Permit {
    /// Takes `extra` more slots for the same request; false (nothing taken) when full.
    pub fn grow(&mut self, extra: usize) -> bool {
        let ok = self.admission.try_take(extra);
        if ok {
            self.n += extra;
        }
        ok
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// One inspection request, queued.
pub struct Job {
    pub class: String,
    /// Encoded images (PNG, JPEG, ...), decoded by the worker.
    pub images: Vec<Bytes>,
    pub map: Option<MapFormat>,
    /// One raw image: the answer is that image's object; else `{"results": [...]}`.
    pub single: bool,
    pub reply: oneshot::Sender<Reply>,
    pub permit: Permit,
    /// When it was queued: its batch closes at most `max_wait` after this.
    pub queued: Instant,
}

/// The queue and its worker thread.
pub struct Batcher {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    admission: Arc<Admission>,
}

impl Batcher {
    /// Starts the worker thread.
    pub fn start(
        slot: Arc<ModelSlot>,
        metrics: Arc<Metrics>,
        max_batch: usize,
        max_wait: Duration,
        queue: usize,
    ) -> Batcher {
        let (tx, rx) = mpsc::channel();
        let admission = Arc::new(Admission {
            used: AtomicUsize::new(0),
            capacity: queue,
        });
        let worker = Worker {
            rx,
            slot,
            metrics,
            max_batch,
            max_wait,
            pending: VecDeque::new(),
            admission: admission.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("pmad-batcher".into())
            .spawn(move || worker.run())
            .expect("cannot start the batching thread");
        Batcher {
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(handle)),
            admission,
        }
    }

    /// Takes `n` queue slots, or `None` when the queue is full.
    pub fn admit(&self, n: usize) -> Option<Permit> {
        self.admission.try_take(n).then(|| Permit {
            admission: self.admission.clone(),
            n,
        })
    }

    /// Queues a job (503 once the server is closing).
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let closing = || ApiError::unavailable("the server is shutting down", 1);
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        tx.as_ref()
            .ok_or_else(closing)?
            .send(job)
            .map_err(|_| closing())
    }

    /// Images admitted and not yet answered.
    pub fn depth(&self) -> usize {
        self.admission.used.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.admission.capacity
    }

    /// Whether the worker thread is running.
    pub fn alive(&self) -> bool {
        self.worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    /// Stops taking jobs, lets the worker answer every queued one, and waits for it.
    pub fn close(&self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let handle = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

struct Worker {
    rx: mpsc::Receiver<Job>,
    slot: Arc<ModelSlot>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    max_wait: Duration,
    /// Jobs received but left for a later batch (another class, or too large to fit).
    pending: VecDeque<Job>,
    /// The queue's slots (images admitted and not yet answered): tells whether any other
    /// request could still join the batch being gathered.
    admission: Arc<Admission>,
}

impl Worker {
    fn run(mut self) {
        while let Some((class, jobs)) = self.gather() {
            // A panic while scoring drops the batch's reply senders: those requests get 500
            // and the server goes on.
            let scored = std::panic::catch_unwind(AssertUnwindSafe(|| self.score(&class, jobs)));
            if scored.is_err() {
                eprintln!(
                    "error: scoring a batch of class '{class}' panicked; its requests got 500"
                );
            }
        }
    }

    /// The next batch: the oldest job, the waiting jobs of its class, then what arrives for
    /// that class before the oldest job's deadline, up to `max_batch` images. `None` once
    /// the queue is closed and empty.
    fn gather(&mut self) -> Option<(String, Vec<Job>)> {
        let first = match self.pending.pop_front() {
            Some(j) => j,
            None => self.rx.recv().ok()?,
        };
        let deadline = first.queued + self.max_wait;
        let class = first.class.clone();
        let mut n = first.images.len();
        let mut batch = vec![first];
        let fits = |n: usize, j: &Job| j.class == class && n + j.images.len() <= self.max_batch;
        let mut i = 0;
        while i < self.pending.len() && n < self.max_batch {
            if fits(n, &self.pending[i]) {
                let j = self.pending.remove(i).expect("index checked");
                n += j.images.len();
                batch.push(j);
            } else {
                i += 1;
            }
        }
        while n < self.max_batch {
            // Nobody else admitted (every admitted image is in this batch or pending): no
            // request can join before the deadline, so waiting would only add latency (a lone
            // client would pay `max_wait` on every request).
            let pending: usize = self.pending.iter().map(|j| j.images.len()).sum();
            if self.admission.used.load(Ordering::Acquire) <= n + pending {
                break;
            }
            let now = Instant::now();
            let next = if now >= deadline {
                match self.rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            } else {
                match self.rx.recv_timeout(deadline - now) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            };
            if fits(n, &next) {
                n += next.images.len();
                batch.push(next);
            } else {
                self.pending.push_back(next);
            }
        }
        Some((class, batch))
    }

    /// Decodes, scores and answers one batch of jobs of `class`.
    fn score(&self, class: &str, jobs: Vec<Job>) {
        // Nobody is waiting for a request whose client went away.
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if jobs.is_empty() {
            return;
        }
        let decoded: Vec<Result<Vec<RgbImage>, ApiError>> = jobs
            .par_iter()
            .map(|j| {
                j.images
                    .par_iter()
                    .enumerate()
                    .map(|(i, b)| wire::decode(b, i))
                    .collect::<crate::Result<Vec<_>>>()
                    .map_err(|e| ApiError::from_pmad(Stage::Decode, &e))
            })
            .collect();
        let mut ready: Vec<(Job, Vec<RgbImage>)> = Vec::with_capacity(jobs.len());
        for (job, d) in jobs.into_iter().zip(decoded) {
            match d {
                Ok(imgs) => ready.push((job, imgs)),
                Err(e) => answer(job, Err(e)),
            }
        }
        if ready.is_empty() {
            return;
        }
        let det = self.slot.current();
        let all: Vec<RgbImage> = ready
            .iter_mut()
            .flat_map(|(_, imgs)| std::mem::take(imgs))
            .collect();
        let sizes: Vec<usize> = ready.iter().map(|(j, _)| j.images.len()).collect();
        // A GPU sends the maps down only when some request of the batch asked for one.
        let want_maps = ready.iter().any(|(j, _)| j.map.is_some());
        match self.inspect(&det, class, &all, want_maps) {
            Ok(results) => {
                let mut at = 0;
                for ((job, _), n) in ready.into_iter().zip(sizes) {
                    let r = self.body(class, &job, &all[at..at + n], &results[at..at + n]);
                    answer(job, r);
                    at += n;
                }
            }
            Err(e) if ready.len() > 1 => {
                eprintln!(
                    "warning: a batch of {} requests of class '{class}' failed ({e}); scoring \
                     each alone",
                    ready.len()
                );
                let mut at = 0;
                for ((job, _), n) in ready.into_iter().zip(sizes) {
                    let imgs = &all[at..at + n];
                    at += n;
                    let r = match self.inspect(&det, class, imgs, job.map.is_some()) {
                        Ok(results) => self.body(class, &job, imgs, &results),
                        Err(e) => Err(ApiError::from_pmad(Stage::Score, &e)),
                    };
                    answer(job, r);
                }
            }
            Err(e) => {
                let (job, _) = ready.pop().expect("one job");
                answer(job, Err(ApiError::from_pmad(Stage::Score, &e)));
            }
        }
    }

    /// Scores `imgs` in passes of at most `max_batch` images (only a single request larger
    /// than that needs more than one), counting each pass; the maps only when `want_maps`.
    fn inspect(
        &self,
        det: &crate::detector::Detector,
        class: &str,
        imgs: &[RgbImage],
        want_maps: bool,
    ) -> crate::Result<Vec<crate::detector::Inspection>> {
        let mut out = Vec::with_capacity(imgs.len());
        for chunk in imgs.chunks(self.max_batch) {
            self.metrics.batch(chunk.len());
            out.extend(det.inspect_batch_with(class, chunk, want_maps)?);
        }
        Ok(out)
    }

    /// The JSON body answering `job`, whose images and results these are.
    fn body(
        &self,
        class: &str,
        job: &Job,
        imgs: &[RgbImage],
        results: &[crate::detector::Inspection],
    ) -> Reply {
        let items: Vec<serde_json::Value> = imgs
            .par_iter()
            .zip(results)
            .enumerate()
            .map(|(i, (img, r))| wire::result_json(class, i, img, r, job.map))
            .collect::<crate::Result<_>>()
            .map_err(|e| ApiError::from_pmad(Stage::Score, &e))?;
        for r in results {
            self.metrics.verdict(r.anomalous);
        }
        let value = if job.single {
            items.into_iter().next().unwrap_or_default()
        } else {
            serde_json::json!({ "results": items })
        };
        serde_json::to_vec(&value).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot write the response: {e}"),
            )
        })
    }
}

/// Frees the job's queue slots, then sends the answer (a client that went away is no
/// error). Slots first: a client that sends its next request as soon as it has this answer
/// must find its slot free, even if this thread is descheduled right after the send.
fn answer(job: Job, reply: Reply) {
    let Job {
        reply: tx, permit, ..
    } = job;
    drop(permit);
    let _ = tx.send(reply);
}
