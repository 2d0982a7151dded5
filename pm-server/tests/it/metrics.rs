//! `/metrics` scraped over HTTP from a real server: the named series exist and count what
//! happened, routes are labelled by template (bounded cardinality), WebSocket sessions and the
//! event-log consumers' lag are reported.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::api::{Server, org_and_project};
use crate::realtime::Ws;

pub(crate) async fn scrape(s: &Server) -> String {
    let res = s.http.get(format!("{}/metrics", s.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    res.text().await.unwrap()
}

/// The value of the sample whose name and labels are exactly `series`.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_report_live_gauges() {
    let s = Server::start().await;
    let (_, token) = s.user("metrics@example.com").await;
    let (_, project, _) = org_and_project(&s, &token, "metrics", "MET").await;
    let task = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({"title": "Count me"})),
        )
        .await;
    let task_id = task.ok(201)["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        s.call(Method::GET, &format!("/api/v1/tasks/{task_id}"), Some(&token), None).await.ok(200);
    }
    let missing = s.http.get(format!("{}/no/such/path/{task_id}", s.base)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let ws = Ws::connect(&s.base, &token).await;

    let text = scrape(&s).await;
    let get = "method=\"GET\",route=\"/api/v1/tasks/{task_id}\"";
    assert_eq!(
        sample(&text, &format!("pm_http_requests_total{{{get},status=\"200\"}}")),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, &format!("pm_http_request_duration_seconds_count{{{get}}}")),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, &format!("pm_http_request_duration_seconds_bucket{{{get},le=\"+Inf\"}}")),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "pm_http_requests_total{method=\"POST\",route=\"/api/v1/projects/{project_id}/tasks\",status=\"201\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pm_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"),
        Some(1.0)
    );
    assert!(!text.contains(&task_id), "raw paths must not become labels:\n{text}");
    assert_eq!(sample(&text, "pm_websocket_connections"), Some(1.0));
    assert!(sample(&text, "pm_event_log_head_seq").unwrap() >= 1.0, "{text}");
    // The notification consumer follows the log: its lag drains to zero.
    let consumer = "pm_event_log_consumer_lag{consumer=\"pm-realtime.notifications\"}";
    let mut lag = sample(&text, consumer);
    for _ in 0..100 {
        if lag == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        lag = sample(&scrape(&s).await, consumer);
    }
    assert_eq!(lag, Some(0.0), "{text}");
    for name in ["pm_http_requests_in_flight", "pm_process_uptime_seconds", "pm_realtime_channels"]
    {
        assert!(sample(&text, name).is_some(), "{name} missing:\n{text}");
    }
    drop(ws);
}
