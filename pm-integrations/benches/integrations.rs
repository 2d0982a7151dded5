//! pm-integrations benchmarks (issue 6 targets).
//!
//! Run: `cargo bench -p pm-integrations --bench integrations`.
//!
//! - `verify/github_sha256_25k`, `verify/standard_webhooks_25k`: signature verification of a
//!   25 KB payload (target ≤ 20 µs each).
//! - `ingest/github_sqlite`: what the inbound endpoint does per delivery — verify the
//!   signature, extract the delivery id, persist with dedupe into the SQLite queue (target
//!   ≥ 5 000/s, i.e. ≤ 200 µs each). Every iteration is a new delivery id.
//! - `sync/inbound_100`: 100 GitHub `issues.opened` events applied by the [`SyncEngine`]:
//!   100 mappings + 100 tasks (labels resolved) through pm-core on SQLite.
//! - `sync/push_100`: 100 mapped tasks changed locally, each pushed: fetch the issue from a
//!   wiremock GitHub, three-way merge, PATCH, commit the new base (target: 100 items ≤ 1 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pm_core::Pm;
use pm_core::authz::AllowAll;
use pm_core::blob::FsBlobStore;
use pm_core::event::Origin;
use pm_core::id::IntegrationId;
use pm_core::model::{TaskPatch, TaskTitle};
use pm_integrations::clock::SystemClock;
use pm_integrations::model::{InboundDelivery, Integration};
use pm_integrations::provider::{Provider, ProviderKey};
use pm_integrations::providers::{GitHub, Registry};
use pm_integrations::ssrf::TargetPolicy;
use pm_integrations::store::IntegrationStores;
use pm_integrations::sync::engine::{Applied, SyncEngine};
use pm_integrations::webhook::InboundRequest;
use pm_integrations::webhook::inbound::{
    GITHUB_DELIVERY, GITHUB_EVENT, GITHUB_SIGNATURE, hub_signature,
};
use pm_integrations::webhook::outbound::{self, WebhookSecret};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

fn payload_25k() -> Vec<u8> {
    let filler = "x".repeat(25 * 1024 - 200);
    json!({"action": "edited", "issue": {"number": 1, "title": "t", "body": filler},
           "repository": {"full_name": "octo/repo"}})
    .to_string()
    .into_bytes()
}

fn verify(c: &mut Criterion) {
    let body = payload_25k();
    let mut g = c.benchmark_group("verify");
    let secret = b"it's a secret to everybody";
    let req = InboundRequest::new(body.clone())
        .header(GITHUB_SIGNATURE, hub_signature(secret, &body))
        .header(GITHUB_DELIVERY, "d-1")
        .header(GITHUB_EVENT, "issues");
    let now = time::OffsetDateTime::now_utc();
    g.bench_function("github_sha256_25k", |b| {
        b.iter(|| GitHub.verify(secret, &req, now).unwrap());
    });
    let key = WebhookSecret::generate();
    let keys = [key];
    let signed = outbound::sign(&keys, "msg_bench", now, &body).unwrap();
    g.bench_function("standard_webhooks_25k", |b| {
        b.iter(|| {
            outbound::verify(
                &keys,
                &signed.id,
                &signed.timestamp,
                &signed.signature,
                &body,
                now,
                300,
            )
            .unwrap()
        });
    });
    g.finish();
}

struct Env {
    _dir: tempfile::TempDir,
    stores: IntegrationStores,
    pm: Pm,
    integration: Integration,
    engine: SyncEngine,
    _mock: MockServer,
}

/// A GitHub issues API that answers GET and PATCH of any issue number, keeping PATCHed titles.
#[derive(Default)]
struct GitHubApi(std::sync::Mutex<std::collections::HashMap<u64, String>>);

impl Respond for GitHubApi {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let n: u64 = req.url.path().rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(1);
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let mut titles = self.0.lock().unwrap();
        if let Some(t) = body["title"].as_str() {
            titles.insert(n, t.to_owned());
        }
        let title = titles.get(&n).cloned().unwrap_or_else(|| format!("Issue {n}"));
        ResponseTemplate::new(200).set_body_json(json!({
            "number": n, "title": title, "body": "", "state": "open", "labels": [{"name": "bug"}],
            "html_url": format!("https://github.com/octo/repo/issues/{n}"),
            "updated_at": "2026-01-01T00:00:00Z"}))
    }
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let core = pm_core::store::open(&url).await.unwrap();
    core.admin.migrate().await.unwrap();
    let fx = pm_core::testing::fixture(&core).await;
    let pm = Pm::new(core, Arc::new(AllowAll), Arc::new(FsBlobStore::new(dir.path().join("b"))));
    let stores = pm_integrations::store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    let mock = MockServer::start().await;
    Mock::given(any()).respond_with(GitHubApi::default()).mount(&mock).await;
    let mut mappings = GitHub.default_mappings();
    mappings.fields.remove("description");
    let now = time::OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let integration = Integration {
        id: IntegrationId::new(),
        org_id: fx.org.id,
        project_id: fx.project.id,
        provider: ProviderKey::parse("github").unwrap(),
        name: "octo/repo".into(),
        config: json!({"repository": "octo/repo", "base_url": mock.uri(),
                       "reporter_id": fx.user.id.0}),
        mappings,
        enabled: true,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    stores.integrations.create_integration(&integration).await.unwrap();
    let engine = SyncEngine::new(
        pm.clone(),
        stores.clone(),
        Arc::new(Registry::default()),
        None,
        None,
        TargetPolicy::parse_allow_list("127.0.0.1/32").unwrap(),
        Arc::new(SystemClock),
    );
    Env { _dir: dir, stores, pm, integration, engine, _mock: mock }
}

fn opened(number: u64) -> pm_integrations::provider::InboundEvent {
    let body = json!({"action": "opened", "issue": {"number": number, "title": format!("Issue {number}"),
        "body": "", "state": "open", "labels": [{"name": "bug"}], "updated_at": "2026-01-01T00:00:00Z"},
        "repository": {"full_name": "octo/repo"}});
    let req = InboundRequest::new(body.to_string()).header(GITHUB_EVENT, "issues");
    GitHub.parse(&req).unwrap().remove(0)
}

fn ingest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let env = rt.block_on(env());
    let secret = b"it's a secret to everybody";
    let body = json!({"action": "edited", "issue": {"number": 1, "title": "Fix login",
        "body": "A typical issue body of a few hundred bytes. ".repeat(8), "state": "open",
        "labels": [{"name": "bug"}], "updated_at": "2026-01-01T00:00:00Z"},
        "repository": {"full_name": "octo/repo"}})
    .to_string()
    .into_bytes();
    let signature = hub_signature(secret, &body);
    let n = AtomicU64::new(0);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    g.bench_function("github_sqlite", |b| {
        b.to_async(&rt).iter(|| async {
            let id = format!("delivery-{}", n.fetch_add(1, Ordering::Relaxed));
            let req = InboundRequest::new(body.clone())
                .header(GITHUB_SIGNATURE, signature.clone())
                .header(GITHUB_DELIVERY, id)
                .header(GITHUB_EVENT, "issues");
            let now = time::OffsetDateTime::now_utc();
            GitHub.verify(secret, &req, now).unwrap();
            let delivery_id = GitHub.delivery_id(&req).unwrap();
            let d = InboundDelivery::new(
                env.integration.provider.clone(),
                env.integration.id,
                delivery_id,
                vec![(GITHUB_EVENT.to_owned(), "issues".to_owned())],
                req.body,
                now,
            );
            env.stores.inbound.ingest(&d).await.unwrap()
        });
    });
    g.finish();
}

fn sync(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let env = rt.block_on(env());
    let next = AtomicU64::new(1);
    let mut g = c.benchmark_group("sync");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("inbound_100", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let env = &env;
            let next = &next;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let events: Vec<_> =
                        (0..100).map(|_| opened(next.fetch_add(1, Ordering::Relaxed))).collect();
                    let t = Instant::now();
                    for e in &events {
                        let r = env.engine.apply_inbound(&env.integration, e).await.unwrap();
                        assert!(matches!(r, Applied::Created { .. }), "{r:?}");
                    }
                    total += t.elapsed();
                }
                total
            }
        });
    });
    // 100 mapped tasks to push.
    let tasks = rt.block_on(async {
        let mut ids = Vec::new();
        for _ in 0..100 {
            let e = opened(next.fetch_add(1, Ordering::Relaxed));
            match env.engine.apply_inbound(&env.integration, &e).await.unwrap() {
                Applied::Created { task_id, .. } => ids.push(task_id),
                other => panic!("{other:?}"),
            }
        }
        ids
    });
    let round = AtomicU64::new(0);
    g.bench_function("push_100", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (env, tasks, round) = (&env, &tasks, &round);
            async move {
                let mut total = Duration::ZERO;
                let origin = Origin::system();
                for _ in 0..iters {
                    let r = round.fetch_add(1, Ordering::Relaxed);
                    for id in tasks {
                        let t = env.pm.get_task(&origin, *id).await.unwrap();
                        let patch = TaskPatch {
                            title: Some(
                                TaskTitle::parse(&format!("Edited {r} {}", t.number)).unwrap(),
                            ),
                            ..Default::default()
                        };
                        env.pm.update_task(&origin, *id, t.version, patch).await.unwrap();
                    }
                    let t = Instant::now();
                    for id in tasks {
                        let r = env.engine.push_task(&env.integration, *id).await.unwrap();
                        assert!(matches!(r, Applied::Synced { .. }), "{r:?}");
                    }
                    total += t.elapsed();
                }
                total
            }
        });
    });
    g.finish();
}

criterion_group!(benches, verify, ingest, sync);
criterion_main!(benches);
