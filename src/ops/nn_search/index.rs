//! Exact nearest-prototype search through an index built once per bank.
//!
//! Two lower bounds on `|q - p|` let the search skip almost all of the bank while still
//! returning the true nearest row.
//!
//! **Cluster (ball) bound.** k-means splits the bank into `C` clusters (about 128 rows each
//! by default), stored contiguously, each with its centroid `c` and radius
//! `r = max |p - c|`. By the triangle inequality every row `p` of the cluster has
//! `|q - p| >= |q - c| - |p - c| >= |q - c| - r`; once some row is known at distance `u`
//! from `q`, a cluster with `|q - c| - r > u` cannot hold a nearer one and is skipped whole
//! (the ball bound of metric trees, e.g. Fukunaga & Narendra 1975).
//!
//! **Projection bound.** With an orthonormal basis `U` (`k` rows: the bank's principal
//! subspace) split every vector into its projection `x_U = U x` and the orthogonal remainder
//! `x_⊥`. By Pythagoras and the reverse triangle inequality in the complement,
//!
//! `|q - p|² = |q_U - p_U|² + |q_⊥ - p_⊥|² >= |q_U - p_U|² + (|q_⊥| - |p_⊥|)²`.
//!
//! The right side is the squared distance between the `k + 1`-dim "bound vectors"
//! `(x_U, |x_⊥|)`, so bounds for a block of queries against a cluster are one small GEMM
//! via `|a|² + |b|² - 2 a·b` (`k + 1 = 41` wide by default, against `d = 152`). Only rows
//! whose bound is below the best distance found so far get an exact `Σ (q - p)²`.
//!
//! **Search.** Everything is centred on the bank mean first (smaller norms, smaller
//! rounding in the expansions).
//! 1. distances from every query to every centroid: one GEMM;
//! 2. each query scans its nearest ("home") cluster, starting from the row of smallest
//!    bound: this gives `u`, the distance of a real bank row, usually the final answer;
//! 3. each query scans the other clusters the ball bound cannot rule out.
//!
//! A cluster is scanned for all its queries at once (gather their bound vectors, one GEMM
//! against the cluster's bound block, then exact distances for the surviving rows). Steps 2
//! and 3 run in parallel over (cluster, query chunk) tasks. Where the projection bound
//! keeps more than 1/6 of a scan's (query, row) pairs (queries far from everything, or
//! data with no low-dimensional structure) the scan is instead one exact GEMM over the
//! cluster, as in the brute force, which is then cheaper than single distances.
//!
//! **Exactness.** The bounds only skip work, never choose a result, and they are made
//! conservative under float rounding: every comparison of a bound with `u` allows a margin
//! of twice a worst-case bound of the expansion's rounding error, `(d+2)·ε·(|q|² + |p|²)`
//! (cf. Higham's γ_n), which also covers the basis being orthonormal only to f32 precision.
//! Rows are compared by direct `Σ (q - p)²` sums (by the GEMM expansion inside a dense
//! scan, as in the brute force), and the returned `dist2` is always the direct sum for the
//! returned row. So `dist2` matches the brute force's up to float rounding, and the index
//! can differ only between rows at the same distance up to rounding.

use super::kmeans::kmeans;
use super::subspace::{scatter_matrix, top_eigenspace};
use super::{Nearest, nearest_rows, row_sq_norms};
use crate::ops::matmul::{Trans, gemm};
use rayon::prelude::*;

/// How to build a [`BankIndex`]. The defaults were tuned on real 152-d patch features
/// (banks of 14k and 28k rows); the search is exact whatever the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexParams {
    /// Rows per k-means cluster to aim for (the cluster count is `ceil(P / cluster_size)`).
    pub cluster_size: usize,
    /// Lloyd iterations.
    pub kmeans_iters: usize,
    /// Dimension of the projection bound's subspace (capped at `d`).
    pub proj_dim: usize,
}

impl Default for IndexParams {
    fn default() -> IndexParams {
        IndexParams {
            cluster_size: 128,
            kmeans_iters: 8,
            proj_dim: 40,
        }
    }
}

/// Orthogonal-iteration rounds for the principal subspace.
const SUBSPACE_ITERS: usize = 30;
/// A cluster scan computes single exact distances only while at most `1 / DENSE_FRACTION`
/// of its (query, row) pairs survive the projection bound; above that, one GEMM over the
/// cluster is cheaper (a single distance costs ~5x a GEMM multiply-add per element).
const DENSE_FRACTION: usize = 6;
/// Most queries one scan task gathers (bigger groups are split, for parallelism).
const SCAN_CHUNK: usize = 256;
const SEED: u64 = 0x6b6d_6561_6e73;

/// A prototype bank prepared for exact nearest-row search (see the module docs).
#[derive(Clone, Debug)]
pub struct BankIndex {
    d: usize,
    /// Bank mean; rows, centroids and queries are centred on it.
    mean: Vec<f32>,
    /// Orthonormal basis `[k, d]` of the projection bound.
    basis: Vec<f32>,
    /// Centred centroids `[C, d]`, their squared norms, and the ball radii (rounded up).
    centroids: Vec<f32>,
    centroid_sq: Vec<f32>,
    radius: Vec<f32>,
    /// Cluster `c` owns the stored rows `offsets[c]..offsets[c + 1]` (none is empty).
    offsets: Vec<usize>,
    /// Centred bank rows `[P, d]`, grouped by cluster, and their squared norms.
    rows: Vec<f32>,
    rows_sq: Vec<f32>,
    /// Bound vectors of the stored rows, each cluster's block transposed (the layout the
    /// GEMM reads fastest): cluster `c` with `n` rows from `lo = offsets[c]` is the
    /// `[k + 1, n]` block at `bounds[lo * (k + 1)..]`. `bound_sq` holds their squared norms.
    bounds: Vec<f32>,
    bound_sq: Vec<f32>,
    /// Original bank index of each stored row.
    order: Vec<u32>,
    /// Largest squared norm of a stored row: bounds the rounding error of any distance.
    max_row_sq: f32,
    /// Relative rounding slack of the expansion, `(d + 2)·ε`.
    slack: f32,
    /// Wall time the build took (k-means, if run, + assembly), for reports.
    build_time: std::time::Duration,
}

/// Work done by one search, for tuning and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SearchStats {
    pub queries: usize,
    /// (query, cluster) pairs scanned, home clusters included.
    pub clusters_scanned: usize,
    /// Projection bounds computed (bank rows in the scanned clusters, summed over queries).
    pub bounds_computed: usize,
    /// Exact distances computed (single ones, and those inside dense cluster GEMMs).
    pub exact_distances: usize,
}

/// Best row found so far for one query: its direct squared distance and stored index.
#[derive(Clone, Copy, Debug)]
struct Best {
    dist2: f32,
    row: u32,
}

const NONE_YET: Best = Best {
    dist2: f32::INFINITY,
    row: 0,
};

/// Outcome of one cluster scan: the queries whose best improved, and the number of exact
/// distances computed.
struct Scanned {
    improved: Vec<(u32, Best)>,
    exact: usize,
}

/// Per-worker buffers of the cluster scans: gathered query rows, and GEMM outputs of the
/// projection bounds and of dense scans.
#[derive(Default)]
struct Scratch {
    gathered: Vec<f32>,
    bounds: Vec<f32>,
    dense: Vec<f32>,
}

/// Centred queries and what the bounds need of them.
struct Queries {
    /// Centred rows `[n, d]` and squared norms.
    x: Vec<f32>,
    sq: Vec<f32>,
    /// Bound vectors `[n, k + 1]` and their squared norms.
    bound: Vec<f32>,
    bound_sq: Vec<f32>,
}

impl BankIndex {
    /// Index of `bank [P, d]` (`P >= 1`) with the default [`IndexParams`].
    pub fn build(bank: &[f32], d: usize) -> BankIndex {
        BankIndex::build_with(bank, d, &IndexParams::default())
    }

    /// Index of `bank [P, d]` (`P >= 1`) built with `params`.
    pub fn build_with(bank: &[f32], d: usize, params: &IndexParams) -> BankIndex {
        let start = std::time::Instant::now();
        let (mean, centred) = centre_bank(bank, d);
        let clusters = (centred.len() / d).div_ceil(params.cluster_size.max(1));
        let centroids = kmeans(&centred, d, clusters, params.kmeans_iters, SEED);
        BankIndex::assemble(centred, d, mean, centroids, params.proj_dim, start)
    }

    /// Rebuilds an index from centroids saved with [`BankIndex::centroids`] (any `[C, d]`
    /// points give a correct index; these give the same clusters without rerunning
    /// k-means), with a `proj_dim`-dimensional projection bound.
    pub fn with_centroids(bank: &[f32], d: usize, centroids: &[f32], proj_dim: usize) -> BankIndex {
        assert!(
            !centroids.is_empty() && centroids.len().is_multiple_of(d),
            "BankIndex: centroids must be a non-empty [C, {d}] array"
        );
        let start = std::time::Instant::now();
        let (mean, centred) = centre_bank(bank, d);
        let centroids = centroids
            .chunks(d)
            .flat_map(|c| c.iter().zip(&mean).map(|(v, m)| v - m))
            .collect();
        BankIndex::assemble(centred, d, mean, centroids, proj_dim, start)
    }

    /// Assigns the centred rows to their nearest centroid, stores them cluster by cluster
    /// (dropping empty clusters), measures the radii and computes the bound vectors.
    fn assemble(
        centred: Vec<f32>,
        d: usize,
        mean: Vec<f32>,
        centroids: Vec<f32>,
        proj_dim: usize,
        start: std::time::Instant,
    ) -> BankIndex {
        let np = centred.len() / d;
        let assign = nearest_rows(&centred, &centroids, &row_sq_norms(&centroids, d), d).index;
        let mut count = vec![0usize; centroids.len() / d];
        for &a in &assign {
            count[a as usize] += 1;
        }
        // Counting sort of the rows by cluster; `next[c]` is the next free slot of cluster c.
        let kept: Vec<usize> = (0..count.len()).filter(|&c| count[c] > 0).collect();
        let mut offsets = vec![0usize];
        let mut next = vec![0usize; count.len()];
        for &c in &kept {
            let start = *offsets.last().unwrap();
            next[c] = start;
            offsets.push(start + count[c]);
        }
        let mut order = vec![0u32; np];
        for (i, &a) in assign.iter().enumerate() {
            order[next[a as usize]] = i as u32;
            next[a as usize] += 1;
        }
        let rows: Vec<f32> = order
            .iter()
            .flat_map(|&i| {
                centred[i as usize * d..(i as usize + 1) * d]
                    .iter()
                    .copied()
            })
            .collect();
        drop(centred);
        let centroids: Vec<f32> = kept
            .iter()
            .flat_map(|&c| centroids[c * d..(c + 1) * d].iter().copied())
            .collect();
        let slack = (d as f32 + 2.0) * f32::EPSILON;
        let radius = (0..kept.len())
            .into_par_iter()
            .map(|c| {
                let cen = &centroids[c * d..(c + 1) * d];
                let far = rows[offsets[c] * d..offsets[c + 1] * d]
                    .chunks(d)
                    .map(|p| dist2(p, cen))
                    .fold(0.0f32, f32::max);
                far.sqrt() * (1.0 + slack)
            })
            .collect();
        let k = proj_dim.clamp(1, d);
        let basis: Vec<f32> = top_eigenspace(&scatter_matrix(&rows, d), d, k, SUBSPACE_ITERS, SEED)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let row_bounds = bound_vectors(&rows, d, &basis);
        let bound_sq = row_sq_norms(&row_bounds, k + 1);
        let bounds = offsets
            .windows(2)
            .flat_map(|w| transpose(&row_bounds[w[0] * (k + 1)..w[1] * (k + 1)], k + 1))
            .collect();
        let rows_sq = row_sq_norms(&rows, d);
        let max_row_sq = rows_sq.iter().copied().fold(0.0, f32::max);
        BankIndex {
            d,
            mean,
            basis,
            centroid_sq: row_sq_norms(&centroids, d),
            centroids,
            radius,
            offsets,
            rows,
            rows_sq,
            bounds,
            bound_sq,
            order,
            max_row_sq,
            slack,
            build_time: start.elapsed(),
        }
    }

    /// How long building this index took (k-means when it ran, then the assembly).
    pub fn build_time(&self) -> std::time::Duration {
        self.build_time
    }

    /// Heap bytes the index holds (its own copy of the bank rows, grouped by cluster, plus
    /// centroids, projection bounds and bookkeeping); the bank itself is held apart.
    pub fn memory_bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        (self.mean.len()
            + self.basis.len()
            + self.centroids.len()
            + self.centroid_sq.len()
            + self.radius.len()
            + self.rows.len()
            + self.rows_sq.len()
            + self.bounds.len()
            + self.bound_sq.len())
            * f
            + self.offsets.len() * std::mem::size_of::<usize>()
            + self.order.len() * std::mem::size_of::<u32>()
    }

    /// Row width.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Number of bank rows.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Always false: an index holds at least one row.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Number of (non-empty) clusters.
    pub fn num_clusters(&self) -> usize {
        self.radius.len()
    }

    /// Cluster centroids `[C, d]` in bank coordinates: save them to rebuild the index with
    /// [`BankIndex::with_centroids`].
    pub fn centroids(&self) -> Vec<f32> {
        self.centroids
            .chunks(self.d)
            .flat_map(|c| c.iter().zip(&self.mean).map(|(v, m)| v + m))
            .collect()
    }

    /// Nearest bank row (original index) and squared distance for each row of
    /// `queries [Q, d]`.
    pub fn nearest(&self, queries: &[f32]) -> Nearest {
        self.search(queries).0
    }

    /// [`BankIndex::nearest`] plus counts of the work done.
    pub fn search(&self, queries: &[f32]) -> (Nearest, SearchStats) {
        let q = self.prepare(queries);
        let n = q.sq.len();
        let dc = self.centroid_dist2(&q);
        let nc = self.num_clusters();
        let home: Vec<usize> = dc.chunks(nc).map(argmin).collect();
        let mut stats = SearchStats {
            queries: n,
            ..SearchStats::default()
        };
        let mut best = vec![NONE_YET; n];
        let mut groups = vec![Vec::new(); nc];
        for (i, &h) in home.iter().enumerate() {
            groups[h].push(i as u32);
        }
        self.scan(&q, &groups, &mut best, &mut stats);
        let groups = self.unpruned(&dc, &q, &home, &best);
        self.scan(&q, &groups, &mut best, &mut stats);
        let out = Nearest {
            index: best.iter().map(|b| self.order[b.row as usize]).collect(),
            dist2: best.iter().map(|b| b.dist2).collect(),
        };
        (out, stats)
    }

    /// Centres the queries and computes their bound vectors.
    fn prepare(&self, queries: &[f32]) -> Queries {
        let d = self.d;
        assert!(queries.len().is_multiple_of(d), "BankIndex: ragged queries");
        let x: Vec<f32> = queries
            .chunks(d)
            .flat_map(|r| r.iter().zip(&self.mean).map(|(v, m)| v - m))
            .collect();
        let bound = bound_vectors(&x, d, &self.basis);
        Queries {
            sq: row_sq_norms(&x, d),
            bound_sq: row_sq_norms(&bound, self.basis.len() / d + 1),
            bound,
            x,
        }
    }

    /// Squared distances `[n, C]` from the centred queries to the centroids (one GEMM).
    fn centroid_dist2(&self, q: &Queries) -> Vec<f32> {
        let (n, nc) = (q.sq.len(), self.num_clusters());
        let mut dc = vec![0.0f32; n * nc];
        let (a, b) = (&q.x, &self.centroids);
        gemm(n, nc, self.d, a, Trans::N, b, Trans::T, &mut dc, 0.0);
        for (row, &qs) in dc.chunks_mut(nc).zip(&q.sq) {
            for (v, &cs) in row.iter_mut().zip(&self.centroid_sq) {
                *v = qs + cs - 2.0 * *v;
            }
        }
        dc
    }

    /// Rounding margin for comparisons involving query `i`: twice the worst-case error of
    /// an expansion `|q|² + |p|² - 2 q·p` with any stored row `p`.
    fn margin(&self, q: &Queries, i: usize) -> f32 {
        2.0 * self.slack * (q.sq[i] + self.max_row_sq)
    }

    /// For each cluster, the queries (other than those it is home to) whose ball bound does
    /// not exclude it: `|q - c| - r <= u`, with `|q - c|²` lowered and `u²` raised by the
    /// rounding margin. Compared squared, as `|q - c|² <= (r + u)²`, to avoid a root per
    /// pair.
    fn unpruned(&self, dc: &[f32], q: &Queries, home: &[usize], best: &[Best]) -> Vec<Vec<u32>> {
        let nc = self.num_clusters();
        let mut groups = vec![Vec::new(); nc];
        for (i, row) in dc.chunks(nc).enumerate() {
            let margin = self.margin(q, i);
            let u = (best[i].dist2 + margin).sqrt();
            for (c, &v) in row.iter().enumerate() {
                let reach = self.radius[c] + u;
                if c != home[i] && v - margin <= reach * reach {
                    groups[c].push(i as u32);
                }
            }
        }
        groups
    }

    /// Number of rows in cluster `c`.
    fn cluster_len(&self, c: usize) -> usize {
        self.offsets[c + 1] - self.offsets[c]
    }

    /// Scans cluster `c` for the queries `groups[c]`, for every `c`, and keeps each query's
    /// best row in `best`.
    fn scan(&self, q: &Queries, groups: &[Vec<u32>], best: &mut [Best], stats: &mut SearchStats) {
        let tasks: Vec<(usize, &[u32])> = groups
            .iter()
            .enumerate()
            .flat_map(|(c, g)| g.chunks(SCAN_CHUNK).map(move |chunk| (c, chunk)))
            .collect();
        for &(c, chunk) in &tasks {
            stats.clusters_scanned += chunk.len();
            stats.bounds_computed += chunk.len() * self.cluster_len(c);
        }
        let known: &[Best] = best;
        let found: Vec<Scanned> = tasks
            .par_iter()
            .map_init(Scratch::default, |scratch, &(c, chunk)| {
                self.scan_cluster(q, c, chunk, known, scratch)
            })
            .collect();
        for found in found {
            stats.exact_distances += found.exact;
            for (i, b) in found.improved {
                let cur = &mut best[i as usize];
                if b.dist2 < cur.dist2 {
                    *cur = b;
                }
            }
        }
    }

    /// Scans cluster `c` for the queries `members`, whose best rows so far are in `known`:
    /// projection bounds of all (query, row) pairs by one GEMM, then exact distances for the
    /// rows whose bound is below the query's best. A query with no best yet first takes
    /// the row of smallest bound. When the bounds rule out too little (unstructured data,
    /// queries far from the bank) one exact GEMM over the whole cluster is cheaper than many
    /// single distances, and is used instead.
    fn scan_cluster(
        &self,
        q: &Queries,
        c: usize,
        members: &[u32],
        known: &[Best],
        scratch: &mut Scratch,
    ) -> Scanned {
        let kb = self.basis.len() / self.d + 1;
        let (lo, hi) = (self.offsets[c], self.offsets[c + 1]);
        let (m, np) = (members.len(), hi - lo);
        gather(&q.bound, kb, members, &mut scratch.gathered);
        let dots = &mut scratch.bounds;
        dots.resize(m * np, 0.0);
        let block = &self.bounds[lo * kb..hi * kb];
        gemm(
            m,
            np,
            kb,
            &scratch.gathered,
            Trans::N,
            block,
            Trans::N,
            dots,
            0.0,
        );
        let row_sq = &self.bound_sq[lo..hi];
        let mut exact = 0;
        let mut best: Vec<Best> = members
            .iter()
            .zip(dots.chunks(np))
            .map(|(&i, dot)| match known[i as usize] {
                b if b.dist2 < f32::INFINITY => b,
                _ => {
                    exact += 1;
                    self.exact(q, i as usize, lo + argmin_expansion(dot, row_sq))
                }
            })
            .collect();
        let candidates: usize = (members.iter().zip(&best).zip(dots.chunks(np)))
            .map(|((&i, &b), dot)| self.survivors(q, i as usize, b, dot, row_sq))
            .sum();
        if candidates * DENSE_FRACTION > m * np {
            exact += m * np;
            self.scan_dense(q, c, members, &mut best, scratch);
        } else {
            exact += self.scan_sparse(q, c, members, &mut best, &scratch.bounds);
        }
        let improved = (members.iter().zip(best))
            .filter(|&(&i, b)| b.dist2 < known[i as usize].dist2)
            .map(|(&i, b)| (i, b))
            .collect();
        Scanned { improved, exact }
    }

    /// Exact distances from each query of `members` to the rows of cluster `c` its
    /// projection bound keeps (bounds from the GEMM output `dots [m, n]`), tightening the
    /// limit as its best improves. Returns the number of distances computed.
    fn scan_sparse(
        &self,
        q: &Queries,
        c: usize,
        members: &[u32],
        best: &mut [Best],
        dots: &[f32],
    ) -> usize {
        let (lo, hi) = (self.offsets[c], self.offsets[c + 1]);
        let row_sq = &self.bound_sq[lo..hi];
        let mut exact = 0;
        for ((&i, b), dot) in members.iter().zip(best).zip(dots.chunks(hi - lo)) {
            let i = i as usize;
            let mut limit = self.bound_limit(q, i, *b);
            for (j, (&dp, &ps)) in dot.iter().zip(row_sq).enumerate() {
                if ps - 2.0 * dp <= limit {
                    exact += 1;
                    let e = self.exact(q, i, lo + j);
                    if e.dist2 < b.dist2 {
                        *b = e;
                        limit = self.bound_limit(q, i, e);
                    }
                }
            }
        }
        exact
    }

    /// The projection bound keeps row `j` for query `i` with best `b` while
    /// `|qb|² + |pb_j|² - 2 qb·pb_j <= b + margin`; rearranged as
    /// `|pb_j|² - 2 qb·pb_j <= limit`, this is the limit.
    fn bound_limit(&self, q: &Queries, i: usize, b: Best) -> f32 {
        b.dist2 + self.margin(q, i) - q.bound_sq[i]
    }

    /// How many rows the projection bound keeps for query `i` with best `b`, from the
    /// bound GEMM's row `dot` and the rows' `|pb_j|²`.
    fn survivors(&self, q: &Queries, i: usize, b: Best, dot: &[f32], row_sq: &[f32]) -> usize {
        let t = self.bound_limit(q, i, b);
        (dot.iter().zip(row_sq))
            .filter(|&(&dp, &ps)| ps - 2.0 * dp <= t)
            .count()
    }

    /// Exact GEMM scan of cluster `c` for `members`, as in the brute force: argmin of
    /// `|p|² - 2 q·p` over the cluster, then the winner's direct distance.
    fn scan_dense(
        &self,
        q: &Queries,
        c: usize,
        members: &[u32],
        best: &mut [Best],
        scratch: &mut Scratch,
    ) {
        let d = self.d;
        let (lo, hi) = (self.offsets[c], self.offsets[c + 1]);
        let (m, np) = (members.len(), hi - lo);
        gather(&q.x, d, members, &mut scratch.gathered);
        let dots = &mut scratch.dense;
        dots.resize(m * np, 0.0);
        let (rows, rows_sq) = (&self.rows[lo * d..hi * d], &self.rows_sq[lo..hi]);
        gemm(
            m,
            np,
            d,
            &scratch.gathered,
            Trans::N,
            rows,
            Trans::T,
            dots,
            0.0,
        );
        for ((&i, b), dot) in members.iter().zip(best).zip(dots.chunks(np)) {
            let e = self.exact(q, i as usize, lo + argmin_expansion(dot, rows_sq));
            if e.dist2 < b.dist2 {
                *b = e;
            }
        }
    }

    /// Direct squared distance from query `i` to stored row `r`.
    fn exact(&self, q: &Queries, i: usize, r: usize) -> Best {
        let d = self.d;
        Best {
            dist2: dist2(&q.x[i * d..(i + 1) * d], &self.rows[r * d..(r + 1) * d]),
            row: r as u32,
        }
    }
}

/// Copies the `w`-wide rows `members` of `x` into `buf`.
fn gather(x: &[f32], w: usize, members: &[u32], buf: &mut Vec<f32>) {
    buf.clear();
    for &i in members {
        buf.extend_from_slice(&x[i as usize * w..(i as usize + 1) * w]);
    }
}

/// Column means of `bank [P, d]` and the bank centred on them.
fn centre_bank(bank: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    assert!(
        d > 0 && !bank.is_empty() && bank.len().is_multiple_of(d),
        "BankIndex: empty or ragged bank"
    );
    let np = bank.len() / d;
    let mut sum = vec![0f64; d];
    for row in bank.chunks(d) {
        sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / np as f64) as f32).collect();
    let centred = bank
        .chunks(d)
        .flat_map(|r| r.iter().zip(&mean).map(|(v, m)| v - m))
        .collect();
    (mean, centred)
}

/// Bound vectors `[n, k + 1]` of the rows `x [n, d]` for the orthonormal `basis [k, d]`:
/// the projection `U x` followed by the norm of the remainder `|x - Uᵀ U x|` (computed
/// from the remainder itself, not as a difference of squared norms, which would cancel).
fn bound_vectors(x: &[f32], d: usize, basis: &[f32]) -> Vec<f32> {
    let (n, k) = (x.len() / d, basis.len() / d);
    let mut proj = vec![0.0f32; n * k];
    gemm(n, k, d, x, Trans::N, basis, Trans::T, &mut proj, 0.0);
    let mut back = vec![0.0f32; n * d];
    gemm(n, d, k, &proj, Trans::N, basis, Trans::N, &mut back, 0.0);
    let mut out = Vec::with_capacity(n * (k + 1));
    for ((xr, br), pr) in x.chunks(d).zip(back.chunks(d)).zip(proj.chunks(k)) {
        out.extend_from_slice(pr);
        out.push(dist2(xr, br).sqrt());
    }
    out
}

/// `[rows, cols]` -> `[cols, rows]`.
fn transpose(x: &[f32], cols: usize) -> Vec<f32> {
    let rows = x.len() / cols;
    (0..cols)
        .flat_map(|j| (0..rows).map(move |i| x[i * cols + j]))
        .collect()
}

/// Direct `Σ (a-b)²`, in eight independent lanes so it vectorises.
fn dist2(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = (ca.remainder().iter().zip(cb.remainder()))
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let mut acc = [0.0f32; 8];
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Argmin over `j` of `|p_j|² - 2 q·p_j`, from the GEMM output `dot` (`q·p_j`) and
/// `row_sq` (`|p_j|²`): the nearest row by the expansion.
fn argmin_expansion(dot: &[f32], row_sq: &[f32]) -> usize {
    let mut best = (f32::INFINITY, 0);
    for (j, (&dp, &ps)) in dot.iter().zip(row_sq).enumerate() {
        let v = ps - 2.0 * dp;
        if v < best.0 {
            best = (v, j);
        }
    }
    best.1
}

/// Index of the smallest value (the first on ties).
fn argmin(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x < v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::super::nearest_naive;
    use super::*;
    use crate::ops::testutil::seeded;
    use crate::rng::Rng;

    /// Every query gets the brute-force distance (within rounding) and an index whose true
    /// distance is that minimum.
    fn assert_exact(index: &BankIndex, queries: &[f32], bank: &[f32], d: usize) -> SearchStats {
        let (got, stats) = index.search(queries);
        let want = nearest_naive(queries, bank, d);
        assert_eq!(got.index.len(), want.index.len());
        for (i, q) in queries.chunks(d).enumerate() {
            let tol = 1e-4 * (1.0 + want.dist2[i]);
            assert!(
                (got.dist2[i] - want.dist2[i]).abs() <= tol,
                "query {i}: got {} want {}",
                got.dist2[i],
                want.dist2[i]
            );
            let j = got.index[i] as usize;
            let true_d: f32 = q
                .iter()
                .zip(&bank[j * d..(j + 1) * d])
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            assert!(
                (true_d - want.dist2[i]).abs() <= tol,
                "query {i}: index {j}"
            );
        }
        stats
    }

    /// Rows resembling patch features: `centers` Gaussian clusters in `d` dims with a
    /// decaying variance spectrum (scale `0.95^j` along dimension `j`, randomly rotated by
    /// mixing neighbouring dimensions), points spread around their center at `spread`.
    fn clustered(n: usize, d: usize, centers: usize, spread: f32, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let scale: Vec<f32> = (0..d).map(|j| 10.0 * 0.95f32.powi(j as i32)).collect();
        let c: Vec<f32> = (0..centers * d)
            .map(|i| rng.normal() * scale[i % d])
            .collect();
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let k = rng.below(centers);
            let raw: Vec<f32> = (0..d)
                .map(|j| c[k * d + j] + spread * rng.normal() * scale[j])
                .collect();
            // Mix neighbours so the principal axes are not the coordinate axes.
            out.extend((0..d).map(|j| raw[j] + 0.5 * raw[(j + 1) % d] + 3.0));
        }
        out
    }

    fn small_clusters(proj_dim: usize) -> IndexParams {
        IndexParams {
            cluster_size: 16,
            kmeans_iters: 5,
            proj_dim,
        }
    }

    #[test]
    fn exact_on_uniform_data_ragged_sizes() {
        for &(nq, np, d) in &[
            (1, 1, 3),
            (5, 2, 8),
            // Low dimension: many queries near cluster borders, the ball bound at work.
            (500, 3000, 2),
            (400, 2000, 3),
            (130, 517, 17),
            (300, 1100, 152),
            (77, 2500, 152),
        ] {
            let q = seeded(nq * d, 11);
            let p = seeded(np * d, 12);
            for params in [
                IndexParams::default(),
                small_clusters(8),
                small_clusters(64),
            ] {
                assert_exact(&BankIndex::build_with(&p, d, &params), &q, &p, d);
            }
        }
    }

    #[test]
    fn exact_on_clustered_low_rank_data_and_prunes() {
        let d = 152;
        let bank = clustered(3000, d, 300, 0.3, 21);
        // In-distribution queries, plus far-out ones (like anomalous patches).
        let mut q = clustered(333, d, 300, 0.3, 22);
        q.extend(clustered(50, d, 300, 0.3, 23).iter().map(|v| 2.5 * v));
        let index = BankIndex::build(&bank, d);
        let stats = assert_exact(&index, &q, &bank, d);
        let nq = q.len() / d;
        assert_eq!(stats.queries, nq);
        // The point of the index: most of the bank is never measured exactly.
        assert!(
            stats.exact_distances * 4 < nq * bank.len(),
            "{stats:?} for {nq} queries"
        );
        assert_exact(
            &BankIndex::build_with(&bank, d, &small_clusters(16)),
            &q,
            &bank,
            d,
        );
    }

    #[test]
    fn duplicates_and_queries_equal_to_bank_rows() {
        let d = 24;
        let base = clustered(200, d, 20, 0.2, 31);
        // Every row three times.
        let bank: Vec<f32> = base.chunks(d).flat_map(|r| r.repeat(3)).collect();
        let q: Vec<f32> = base.iter().step_by(1).copied().take(50 * d).collect();
        for params in [IndexParams::default(), small_clusters(8)] {
            let index = BankIndex::build_with(&bank, d, &params);
            let got = index.nearest(&q);
            for (i, &j) in got.index.iter().enumerate() {
                assert_eq!(got.dist2[i], 0.0, "query {i}");
                assert_eq!(j as usize / 3, i, "query {i} found row {j}");
            }
            assert_exact(&index, &q, &bank, d);
        }
        // A bank of one row repeated: every query finds it.
        let one: Vec<f32> = base[..d].repeat(40);
        let index = BankIndex::build_with(&one, d, &small_clusters(4));
        assert_exact(&index, &q, &one, d);
    }

    #[test]
    fn exact_for_queries_next_to_bank_rows() {
        // A query just off a bank row on the rim of its cluster may have another cluster as
        // home: the ball bound must still send it to the row's own cluster.
        let d = 48;
        let bank = clustered(2000, d, 40, 0.4, 61);
        let mut rng = Rng::new(62);
        let q: Vec<f32> = bank.iter().map(|v| v + 0.05 * rng.normal()).collect();
        for params in [
            IndexParams::default(),
            small_clusters(8),
            small_clusters(24),
        ] {
            assert_exact(&BankIndex::build_with(&bank, d, &params), &q, &bank, d);
        }
    }

    #[test]
    fn rebuild_from_saved_centroids_gives_the_same_answers() {
        let d = 40;
        let bank = clustered(900, d, 50, 0.3, 41);
        let q = clustered(120, d, 50, 0.3, 42);
        let a = BankIndex::build_with(&bank, d, &small_clusters(12));
        let b = BankIndex::with_centroids(&bank, d, &a.centroids(), 12);
        assert_eq!(a.num_clusters(), b.num_clusters());
        assert_eq!(a.len(), 900);
        let (ra, rb) = (a.nearest(&q), b.nearest(&q));
        assert_eq!(ra.index, rb.index);
        assert_eq!(ra.dist2, rb.dist2);
        // Arbitrary centroids (here: a few bank rows, plus one far away) are also exact.
        let mut c = bank[..5 * d].to_vec();
        c.extend(std::iter::repeat_n(1e3, d));
        assert_exact(&BankIndex::with_centroids(&bank, d, &c, 6), &q, &bank, d);
    }

    #[test]
    fn projection_bound_never_exceeds_the_distance() {
        let d = 30;
        let x = clustered(400, d, 10, 0.5, 51);
        let index = BankIndex::build_with(&x, d, &small_clusters(7));
        let rows = &index.rows;
        let b = bound_vectors(rows, d, &index.basis);
        let kb = index.basis.len() / d + 1;
        for i in (0..400).step_by(7) {
            for j in (0..400).step_by(3) {
                let lb = dist2(&b[i * kb..(i + 1) * kb], &b[j * kb..(j + 1) * kb]);
                let true_d = dist2(&rows[i * d..(i + 1) * d], &rows[j * d..(j + 1) * d]);
                assert!(lb <= true_d * (1.0 + 1e-5) + 1e-4, "{lb} > {true_d}");
            }
        }
    }

    #[test]
    fn empty_query_set() {
        let bank = seeded(10 * 4, 1);
        let r = BankIndex::build(&bank, 4).nearest(&[]);
        assert!(r.index.is_empty() && r.dist2.is_empty());
    }
}
