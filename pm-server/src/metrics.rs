//! Operational metrics in the Prometheus text format at `GET /metrics`.
//!
//! Owns the HTTP request counters and latency histograms (recorded by [`track`], a middleware
//! around every route) and renders, at scrape time, gauges read from the live services:
//!
//! | series | type | labels |
//! |---|---|---|
//! | `pm_http_requests_total` | counter | `method`, `route`, `status` |
//! | `pm_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `pm_http_requests_in_flight` | gauge | |
//! | `pm_websocket_connections` | gauge | |
//! | `pm_realtime_channels` | gauge | |
//! | `pm_event_log_head_seq` | gauge | |
//! | `pm_event_log_consumer_lag` | gauge | `consumer` (events not yet processed) |
//! | `pm_workflow_executions_running` | gauge | (capped at 10 000) |
//! | `pm_workflow_timers_due` | gauge | (capped at 10 000) |
//! | `pm_sync_parked_pushes` | gauge | `provider` (pushes waiting in the sync's retry queue) |
//! | `pm_sync_parked_push_oldest_age_seconds` | gauge | `provider` (0 when none waits) |
//! | `pm_process_uptime_seconds` | gauge | |
//!
//! `route` is the matched route template (`/api/v1/tasks/{task_id}`), never the raw path, so the
//! number of series stays bounded whatever clients send; requests no API route matched (the web
//! app's static files, 404s) count under `route="unmatched"`. The endpoint needs no credential (like `/healthz`): it reveals no data,
//! and a deployment keeps it off the public listener at its reverse proxy (docs/deploy.md).
//! Scrapes are cheap: the gauges cost a handful of indexed queries.
//!
//! The sync's retry queue is reported per provider, not per integration: a provider that is
//! down parks the pushes of all its integrations, which is what an alert wants to see (a
//! growing oldest age), and the provider label stays bounded by the registered providers where
//! an integration label would grow with every integration created. Every registered provider
//! has both series, at 0 when nothing waits, so an alert needs no `absent()` clause; which
//! integrations are concerned is `GET /api/v1/integrations/{id}/parked-pushes`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

/// Upper bounds (seconds) of the latency histogram's buckets: 1 ms … 10 s, dense around the
/// 5–100 ms where API latencies live.
const BUCKETS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How many running executions / due timers a scrape counts at most.
const QUEUE_CAP: u32 = 10_000;

/// The server's metric registry. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    in_flight: AtomicI64,
    /// route → method → per-status counts and a latency histogram. Nested so that a request
    /// looks its entry up by `&str` without allocating; strings are allocated once per new
    /// (route, method). A mutex is enough: the critical section is two hash lookups and a few
    /// adds, far below a request's own cost.
    routes: Mutex<HashMap<String, HashMap<String, RouteStats>>>,
}

#[derive(Debug, Default)]
struct RouteStats {
    by_status: HashMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                in_flight: AtomicI64::new(0),
                routes: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Metrics {
    fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut routes = self.inner.routes.lock().unwrap_or_else(|e| e.into_inner());
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), HashMap::new());
        }
        let methods = routes.get_mut(route).expect("inserted above");
        if !methods.contains_key(method) {
            methods.insert(method.to_owned(), RouteStats::default());
        }
        let stats = methods.get_mut(method).expect("inserted above");
        *stats.by_status.entry(status).or_default() += 1;
        stats.count += 1;
        stats.sum_seconds += seconds;
        if let Some(i) = BUCKETS.iter().position(|&le| seconds <= le) {
            stats.buckets[i] += 1;
        }
    }

    /// The HTTP series in the text format (the gauges are added by [`render`]).
    fn render_http(&self, out: &mut String) {
        let routes = self.inner.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<(&String, &String)> = routes
            .iter()
            .flat_map(|(route, methods)| methods.keys().map(move |method| (method, route)))
            .collect();
        keys.sort();
        out.push_str(
            "# HELP pm_http_requests_total HTTP requests answered, by route template and status.\n",
        );
        out.push_str("# TYPE pm_http_requests_total counter\n");
        for key in &keys {
            let stats = &routes[key.1][key.0];
            let mut statuses: Vec<_> = stats.by_status.iter().collect();
            statuses.sort();
            for (status, n) in statuses {
                let _ = writeln!(
                    out,
                    "pm_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                    key.0,
                    escape(key.1)
                );
            }
        }
        out.push_str("# HELP pm_http_request_duration_seconds Time to the response head.\n");
        out.push_str("# TYPE pm_http_request_duration_seconds histogram\n");
        for key in &keys {
            let stats = &routes[key.1][key.0];
            let labels = format!("method=\"{}\",route=\"{}\"", key.0, escape(key.1));
            let mut cumulative = 0;
            for (le, n) in BUCKETS.iter().zip(stats.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "pm_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "pm_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                stats.count
            );
            let _ = writeln!(
                out,
                "pm_http_request_duration_seconds_sum{{{labels}}} {}",
                stats.sum_seconds
            );
            let _ =
                writeln!(out, "pm_http_request_duration_seconds_count{{{labels}}} {}", stats.count);
        }
        gauge(
            out,
            "pm_http_requests_in_flight",
            "Requests being handled now.",
            self.inner.in_flight.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "pm_process_uptime_seconds",
            "Seconds since the server started.",
            self.inner.started.elapsed().as_secs(),
        );
    }
}

/// Escapes a label value (`\`, `"` and newlines), per the text format.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

/// Middleware recording every request's method, route template, status and latency (to the
/// response head; streaming bodies are not waited for).
pub async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    // Both clones are cheap (a standard method is a tag, a matched path an `Arc<str>`).
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    metrics.inner.in_flight.fetch_add(1, Ordering::Relaxed);
    // Decrements even when the handler future is dropped (client gone, timeout).
    let _guard = InFlight(&metrics.inner.in_flight);
    let response = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    metrics.record(
        method.as_str(),
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The `/metrics` route.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<AppState>) -> Response {
    let body = render(&state).await;
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Everything in the text format. A gauge whose source fails is left out (and logged) rather
/// than failing the scrape: the scrape is how one notices the failure.
pub async fn render(state: &AppState) -> String {
    let mut out = String::with_capacity(16 * 1024);
    state.metrics.render_http(&mut out);

    let stats = state.realtime.stats();
    gauge(
        &mut out,
        "pm_websocket_connections",
        "Open WebSocket sessions on this instance.",
        stats.map_or(0, |s| s.sessions),
    );
    gauge(
        &mut out,
        "pm_realtime_channels",
        "Realtime channels with a subscriber or a present member on this instance.",
        stats.map_or(0, |s| s.channels),
    );

    let log = &state.stores.events;
    match log.latest_seq().await {
        Ok(head) => {
            gauge(&mut out, "pm_event_log_head_seq", "The newest event's seq.", head);
            out.push_str(
                "# HELP pm_event_log_consumer_lag Events the consumer has not processed yet.\n\
                 # TYPE pm_event_log_consumer_lag gauge\n",
            );
            let mut consumers: Vec<(&str, Option<i64>)> = vec![(
                pm_realtime::notification::CONSUMER,
                log.load_cursor(pm_realtime::notification::CONSUMER).await.ok(),
            )];
            // The hub's tailer keeps its position in memory (a restarted instance resumes at
            // the head), so its lag is read from the hub itself.
            if let Some(s) = stats {
                consumers.push(("pm-realtime.hub", Some(s.tail_seq)));
            }
            if state.workflows.is_some() {
                let name = pm_workflows::engine::CONSUMER;
                consumers.push((name, log.load_cursor(name).await.ok()));
            }
            // pm-integrations keeps its consumers' cursors in its own table (each moves in the
            // transaction that enqueues the work it derived).
            if let Some(ints) = &state.integrations {
                for name in [
                    crate::integrations::FANOUT_CONSUMER,
                    crate::integrations::SYNC_CONSUMER,
                    crate::chat::CONSUMER,
                ] {
                    consumers.push((name, ints.stores.webhooks.cursor(name).await.ok()));
                }
            }
            for (name, cursor) in consumers {
                if let Some(cursor) = cursor {
                    let lag = (head - cursor).max(0);
                    let _ = writeln!(out, "pm_event_log_consumer_lag{{consumer=\"{name}\"}} {lag}");
                }
            }
        }
        Err(err) => tracing::warn!(error = %err, "metrics: reading the event log head failed"),
    }

    if let Some(ints) = &state.integrations {
        match ints.stores.sync_state.parked_push_stats().await {
            Ok(stats) => render_parked(&mut out, ints, stats),
            Err(err) => {
                tracing::warn!(error = %err, "metrics: reading the push retry queue failed")
            }
        }
    }

    if let Some(engine) = &state.workflows {
        let stores = engine.stores();
        match stores.executions.list_running(QUEUE_CAP).await {
            Ok(running) => gauge(
                &mut out,
                "pm_workflow_executions_running",
                "Workflow executions not finished yet (running or waiting), capped at 10000.",
                running.len(),
            ),
            Err(err) => tracing::warn!(error = %err, "metrics: counting executions failed"),
        }
        match stores.timers.due_timers(time::OffsetDateTime::now_utc(), QUEUE_CAP).await {
            Ok(due) => gauge(
                &mut out,
                "pm_workflow_timers_due",
                "Workflow timers past their time and not fired yet, capped at 10000.",
                due.len(),
            ),
            Err(err) => tracing::warn!(error = %err, "metrics: counting due timers failed"),
        }
    }
    out
}

/// The push retry queue's two series, one sample per provider: every registered one (0 when
/// nothing waits) and any other the queue holds pushes for.
fn render_parked(
    out: &mut String,
    ints: &crate::integrations::Integrations,
    stats: Vec<pm_integrations::model::ParkedPushStats>,
) {
    let now = ints.clock.now();
    // provider → (count, age of the oldest in seconds); sorted for a stable output.
    let mut by_provider: std::collections::BTreeMap<String, (u64, i64)> =
        ints.registry.all().map(|p| (p.info().key.to_string(), (0, 0))).collect();
    for st in stats {
        // A clock step backwards must not show a negative age.
        let age = (now - st.oldest_parked_at).whole_seconds().max(0);
        by_provider.insert(st.provider.to_string(), (st.count, age));
    }
    out.push_str(
        "# HELP pm_sync_parked_pushes Pushes to the provider waiting in the sync's retry queue.\n\
         # TYPE pm_sync_parked_pushes gauge\n",
    );
    for (provider, (count, _)) in &by_provider {
        let _ = writeln!(out, "pm_sync_parked_pushes{{provider=\"{}\"}} {count}", escape(provider));
    }
    out.push_str(
        "# HELP pm_sync_parked_push_oldest_age_seconds Seconds the provider's longest-waiting \
         parked push has waited (0 when none waits).\n\
         # TYPE pm_sync_parked_push_oldest_age_seconds gauge\n",
    );
    for (provider, (_, age)) in &by_provider {
        let _ = writeln!(
            out,
            "pm_sync_parked_push_oldest_age_seconds{{provider=\"{}\"}} {age}",
            escape(provider)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.record("GET", "/api/v1/tasks/{task_id}", 200, 0.004);
        m.record("GET", "/api/v1/tasks/{task_id}", 200, 0.02);
        m.record("GET", "/api/v1/tasks/{task_id}", 404, 30.0);
        m.record("POST", "/a\"b", 201, 0.0);
        let mut out = String::new();
        m.render_http(&mut out);
        let line = |prefix: &str| {
            out.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line {prefix} in\n{out}"))
                .rsplit_once(' ')
                .unwrap()
                .1
                .to_owned()
        };
        let labels = "method=\"GET\",route=\"/api/v1/tasks/{task_id}\"";
        assert_eq!(line(&format!("pm_http_requests_total{{{labels},status=\"200\"}}")), "2");
        assert_eq!(line(&format!("pm_http_requests_total{{{labels},status=\"404\"}}")), "1");
        assert_eq!(
            line(&format!("pm_http_request_duration_seconds_bucket{{{labels},le=\"0.001\"}}")),
            "0"
        );
        assert_eq!(
            line(&format!("pm_http_request_duration_seconds_bucket{{{labels},le=\"0.005\"}}")),
            "1"
        );
        assert_eq!(
            line(&format!("pm_http_request_duration_seconds_bucket{{{labels},le=\"0.025\"}}")),
            "2"
        );
        assert_eq!(
            line(&format!("pm_http_request_duration_seconds_bucket{{{labels},le=\"10\"}}")),
            "2"
        );
        assert_eq!(
            line(&format!("pm_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}}")),
            "3"
        );
        assert_eq!(line(&format!("pm_http_request_duration_seconds_count{{{labels}}}")), "3");
        assert!(out.contains("route=\"/a\\\"b\""), "{out}");
    }
}
