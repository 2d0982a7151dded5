//! Engine benchmarks: cached and uncached checks on a realistic model, and the same at scale.
//!
//! Run: `cargo bench -p pm-permissions --bench engine`. Before criterion's runs it prints a
//! percentile table (p50/p99 over 200,000 individually timed checks; each timing includes ~20 ns
//! of `Instant` overhead) for:
//!
//! - `small`: 10,000 users, 10 orgs × 10 projects, 10,000 tasks, the 4-level default hierarchy
//!   (viewer ← team_member ← project_manager ← admin), one assignment per user (10k);
//! - `large`: the same requests against 1,000,000 assignments (100,000 users × 10, over 1,000
//!   projects) and 10,000 roles (random grants, chains up to 4 deep).
//!
//! "cached" repeats a working set of (user, project) pairs so the decision cache hits; "uncached"
//! bypasses the cache (`is_allowed_uncached`), i.e. the full indexed evaluation.

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use pm_permissions::engine::{Engine, EngineConfig};

// Shared with the cedar comparison bench; each binary uses only part of it.
#[allow(dead_code)]
mod common;

use common::{Rng, large, percentiles, requests, small};

fn bench(c: &mut Criterion) {
    let mut rng = Rng(42);
    let (snap, w) = small(&mut rng);
    let reqs = requests(&w, &snap, &mut rng, 200_000);
    let small_engine = Engine::new(snap, EngineConfig::default()).unwrap();
    // Cached: a working set of 1,000 requests, so (user, org, project) entries are warm.
    let hot: Vec<_> = reqs[..1_000].to_vec();
    for (u, a, r) in &hot {
        small_engine.is_allowed(*u, *a, r);
    }
    eprintln!("--- percentiles (individually timed) ---");
    percentiles(
        "small/cached",
        |i| {
            let (u, a, r) = &hot[i % hot.len()];
            small_engine.is_allowed(*u, *a, r)
        },
        200_000,
    );
    percentiles(
        "small/uncached",
        |i| {
            let (u, a, r) = &reqs[i];
            small_engine.is_allowed_uncached(*u, *a, r)
        },
        200_000,
    );

    let t0 = Instant::now();
    let big = large(&mut rng, &w);
    let big_reqs = requests(&w, &big, &mut rng, 200_000);
    let big_hot: Vec<_> = big_reqs[..1_000].to_vec();
    let big_engine = Engine::new(big, EngineConfig::default()).unwrap();
    eprintln!(
        "large model: {} assignments, {} roles, built in {:?}",
        big_engine.assignment_count(),
        big_engine.roles().len(),
        t0.elapsed()
    );
    for (u, a, r) in &big_hot {
        big_engine.is_allowed(*u, *a, r);
    }
    percentiles(
        "large/cached",
        |i| {
            let (u, a, r) = &big_hot[i % big_hot.len()];
            big_engine.is_allowed(*u, *a, r)
        },
        200_000,
    );
    percentiles(
        "large/uncached",
        |i| {
            let (u, a, r) = &big_reqs[i];
            big_engine.is_allowed_uncached(*u, *a, r)
        },
        200_000,
    );

    let mut g = c.benchmark_group("check");
    let mut i = 0usize;
    g.bench_function("small/cached", |b| {
        b.iter(|| {
            i = (i + 1) % hot.len();
            let (u, a, r) = &hot[i];
            small_engine.is_allowed(*u, *a, r)
        })
    });
    g.bench_function("small/uncached", |b| {
        b.iter(|| {
            i = (i + 1) % reqs.len();
            let (u, a, r) = &reqs[i];
            small_engine.is_allowed_uncached(*u, *a, r)
        })
    });
    g.bench_function("large/cached", |b| {
        b.iter(|| {
            i = (i + 1) % big_hot.len();
            let (u, a, r) = &big_hot[i];
            big_engine.is_allowed(*u, *a, r)
        })
    });
    g.bench_function("large/uncached", |b| {
        b.iter(|| {
            i = (i + 1) % big_reqs.len();
            let (u, a, r) = &big_reqs[i];
            big_engine.is_allowed_uncached(*u, *a, r)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
