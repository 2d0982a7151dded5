//! One instance (SQLite, in-process broker): the WebSocket transport and the notification API.

use pm_realtime::HubConfig;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::{Ws, refused, with_hub_config, ws_url};
use crate::api::{Server, org_and_project};

async fn create_task(s: &Server, token: &str, project: &str, body: Value) -> Value {
    let url = format!("/api/v1/projects/{project}/tasks");
    s.call(Method::POST, &url, Some(token), Some(body)).await.ok(201).clone()
}

/// Asserts an `event` frame on `channel` for `task` of `kind`; returns its seq.
#[track_caller]
fn assert_event(v: &Value, channel: &str, kind: &str, task: &str) -> i64 {
    assert_eq!(v["type"], "event", "{v}");
    assert_eq!(v["channel"], channel, "{v}");
    assert_eq!(v["event"]["kind"], kind, "{v}");
    assert_eq!(v["event"]["task_id"], task, "{v}");
    assert_eq!(v["seq"], v["event"]["seq"], "{v}");
    v["seq"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_changes_reach_subscribed_sockets() {
    let s = Server::start().await;
    let (_, t) = s.user("live@example.com").await;
    let (_, project, _) = org_and_project(&s, &t, "live", "LIV").await;
    let mut ws = Ws::connect(&s.base, &t).await;
    let pch = format!("project:{project}");
    let start = ws.subscribe(&pch, None).await;

    let task = create_task(&s, &t, &project, json!({"title": "Live"})).await;
    let id = task["id"].as_str().unwrap();
    let created = assert_event(&ws.next_durable().await, &pch, "task.created", id);
    assert!(created > start);

    let tch = format!("task:{id}");
    ws.subscribe(&tch, None).await;
    let res = s
        .call(
            Method::PATCH,
            &format!("/api/v1/tasks/{id}"),
            Some(&t),
            Some(json!({"title": "Live, renamed", "version": task["version"]})),
        )
        .await;
    res.ok(200);
    // Once per channel, same seq.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let v = ws.next_durable().await;
        let ch = v["channel"].as_str().unwrap().to_owned();
        seen.push((ch.clone(), assert_event(&v, &ch, "task.updated", id)));
    }
    seen.sort();
    assert_eq!(seen[0].1, seen[1].1);
    assert!(seen[0].1 > created);
    let mut channels: Vec<_> = seen.iter().map(|(c, _)| c.clone()).collect();
    channels.sort();
    let mut want = vec![pch, tch];
    want.sort();
    assert_eq!(channels, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_happens_before_the_upgrade() {
    let s = Server::start().await;
    let (_, t) = s.user("auth-ws@example.com").await;

    // No credential at all.
    let (status, ct, body) = refused(ws_url(&s.base).into_client_request().unwrap()).await;
    assert_eq!((status, ct.as_str()), (401, "application/problem+json"), "{body}");
    assert_eq!(body["status"], 401);

    // A bad token in the subprotocol list, and in the query.
    let mut req = ws_url(&s.base).into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("pm.v1, bearer.not-a-jwt"));
    let (status, ct, _) = refused(req).await;
    assert_eq!((status, ct.as_str()), (401, "application/problem+json"));
    let url = format!("{}?access_token=not-a-jwt", ws_url(&s.base));
    let (status, ct, _) = refused(url.into_client_request().unwrap()).await;
    assert_eq!((status, ct.as_str()), (401, "application/problem+json"));

    // A valid token in the query works (no subprotocol asked, none answered).
    let url = format!("{}?access_token={t}", ws_url(&s.base));
    let (mut ws, res) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(res.headers().get("sec-websocket-protocol").is_none());
    use futures_util::SinkExt as _;
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    let mut ws = Ws { stream: ws };
    ws.expect("pong").await;

    // A plain GET (no upgrade) with a valid token is a 400 problem, not a 5xx.
    let res = s.call(Method::GET, "/api/v1/ws", Some(&t), None).await;
    res.problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_project_is_refused_and_the_socket_stays_healthy() {
    let s = Server::start().await;
    let (_, mallory) = s.user("mallory@example.com").await;
    let (_, alice) = s.user("alice@example.com").await;
    let (_, project, _) = org_and_project(&s, &alice, "alice-co", "ALC").await;
    let mut ws = Ws::connect(&s.base, &mallory).await;
    ws.send(json!({"type": "subscribe", "channel": format!("project:{project}")})).await;
    let err = ws.expect("error").await;
    assert_eq!(err["code"], "forbidden", "{err}");
    assert_eq!(err["field"], "channel");
    ws.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_last_seq_gets_exactly_the_missed_events() {
    let s = Server::start().await;
    let (_, t) = s.user("resume@example.com").await;
    let (_, project, _) = org_and_project(&s, &t, "resume", "RES").await;
    let pch = format!("project:{project}");
    let mut ws = Ws::connect(&s.base, &t).await;
    ws.subscribe(&pch, None).await;
    let first = create_task(&s, &t, &project, json!({"title": "Before"})).await;
    let last_seq =
        assert_event(&ws.next_durable().await, &pch, "task.created", first["id"].as_str().unwrap());
    drop(ws);

    let mut missed = Vec::new();
    for i in 0..5 {
        let task = create_task(&s, &t, &project, json!({"title": format!("Missed {i}")})).await;
        missed.push(task["id"].as_str().unwrap().to_owned());
    }

    let mut ws = Ws::connect(&s.base, &t).await;
    assert_eq!(ws.subscribe(&pch, Some(last_seq)).await, last_seq);
    let mut prev = last_seq;
    for id in &missed {
        let seq = assert_event(&ws.next_durable().await, &pch, "task.created", id);
        assert!(seq > prev, "in order, no duplicate");
        prev = seq;
    }
    // Nothing else was replayed: the next event is the next change.
    let after = create_task(&s, &t, &project, json!({"title": "After"})).await;
    assert_event(&ws.next_durable().await, &pch, "task.created", after["id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_closed_as_slow_consumer_and_others_keep_receiving() {
    let s = Server::start_with(|state| {
        with_hub_config(state, HubConfig { max_queue_bytes: 256 * 1024, ..HubConfig::default() })
    })
    .await;
    let (_, t) = s.user("slow@example.com").await;
    let (_, project, _) = org_and_project(&s, &t, "slow", "SLO").await;
    let pch = format!("project:{project}");
    let mut stalled = Ws::connect_small_window(&s.base, &t).await;
    stalled.subscribe(&pch, None).await;
    let mut healthy = Ws::connect(&s.base, &t).await;
    healthy.subscribe(&pch, None).await;

    // The healthy client reads everything while the stalled one reads nothing.
    // Enough bytes to fill the kernel's socket buffers (which autotune up to several MiB on
    // loopback) and then the hub's queue.
    const N: usize = 120;
    let reader = tokio::spawn(async move {
        let mut events = 0;
        while events < N {
            if healthy.next_durable().await["type"] == "event" {
                events += 1;
            }
        }
        healthy
    });
    let description = "x".repeat(60 * 1024);
    for i in 0..N {
        create_task(
            &s,
            &t,
            &project,
            json!({"title": format!("Bulk {i}"), "description": description}),
        )
        .await;
    }
    let mut healthy = reader.await.unwrap();
    healthy.ping().await;

    // Once it reads again, the stalled client finds the slow-consumer close after what fit.
    let mut got = 0;
    let close = loop {
        match stalled.next().await {
            Ok(v) => {
                if v["type"] == "event" {
                    got += 1;
                }
            }
            Err(c) => break c.expect("a close frame"),
        }
    };
    assert!(got < N, "the stalled client got everything");
    assert_eq!(u16::from(close.code), 4008, "{close:?}");
    assert_eq!(close.reason.as_str(), "slow consumer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_errors_and_oversize_frames_close_only_their_socket() {
    let s = Server::start_with(|state| {
        with_hub_config(state, HubConfig { max_frame_bytes: 4096, ..HubConfig::default() })
    })
    .await;
    let (_, t) = s.user("frames@example.com").await;
    let (_, project, _) = org_and_project(&s, &t, "frames", "FRM").await;
    let pch = format!("project:{project}");
    let mut other = Ws::connect(&s.base, &t).await;
    other.subscribe(&pch, None).await;
    let mut ws = Ws::connect(&s.base, &t).await;

    ws.send_raw(Message::text("not json")).await;
    let err = ws.expect("error").await;
    assert_eq!(err["code"], "invalid_frame", "{err}");
    ws.send(json!({"type": "subscribe", "channel": "nowhere:1"})).await;
    let err = ws.expect("error").await;
    assert_eq!(
        (err["code"].as_str(), err["field"].as_str()),
        (Some("invalid_frame"), Some("channel"))
    );
    ws.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    let err = ws.expect("error").await;
    assert_eq!(err["code"], "invalid_frame", "{err}");
    ws.ping().await;

    // Over the limit: the WebSocket layer refuses it and closes with 1009.
    let big = json!({"type": "ping", "pad": "x".repeat(10_000)}).to_string();
    ws.send_raw(Message::text(big)).await;
    let close = ws.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");

    other.ping().await;
    let task = create_task(&s, &t, &project, json!({"title": "Still live"})).await;
    assert_event(&other.next_durable().await, &pch, "task.created", task["id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_a_user_notifies_them_over_rest_and_live() {
    let s = Server::start().await;
    let (_, a) = s.user("owner@example.com").await;
    let (b_id, b) = s.user("assignee@example.com").await;
    let (org, project, _) = org_and_project(&s, &a, "notify", "NTF").await;
    s.call(
        Method::PUT,
        &format!("/api/v1/orgs/{org}/members/{}", b_id.0),
        Some(&a),
        Some(json!({"role": "member"})),
    )
    .await
    .ok(200);

    let mut ws = Ws::connect(&s.base, &b).await;
    let uch = format!("user:{}", b_id.0);
    ws.subscribe(&uch, None).await;

    let task = create_task(&s, &a, &project, json!({"title": "For B"})).await;
    let id = task["id"].as_str().unwrap();
    s.call(
        Method::PATCH,
        &format!("/api/v1/tasks/{id}"),
        Some(&a),
        Some(json!({"assignees": [b_id.0], "version": task["version"]})),
    )
    .await
    .ok(200);

    let live = ws.expect("notification").await;
    assert_eq!(live["channel"], uch);
    assert_eq!(live["notification"]["kind"], "assigned", "{live}");
    assert_eq!(live["notification"]["task_id"], id);
    let nid = live["notification"]["id"].as_str().unwrap().to_owned();

    let list = s.call(Method::GET, "/api/v1/me/notifications", Some(&b), None).await;
    let items = list.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{}", list.body);
    assert_eq!(items[0]["id"], nid.as_str());
    assert_eq!(items[0]["read_at"], Value::Null);
    let count = |token: String| {
        let s = &s;
        async move {
            let res = s
                .call(Method::GET, "/api/v1/me/notifications/unread-count", Some(&token), None)
                .await;
            res.ok(200)["count"].as_u64().unwrap()
        }
    };
    assert_eq!(count(b.clone()).await, 1);
    assert_eq!(count(a.clone()).await, 0, "users only see their own");
    let theirs =
        s.call(Method::POST, &format!("/api/v1/me/notifications/{nid}/read"), Some(&a), None).await;
    theirs.problem(404);

    let read =
        s.call(Method::POST, &format!("/api/v1/me/notifications/{nid}/read"), Some(&b), None).await;
    assert!(read.ok(200)["read_at"].is_string());
    assert_eq!(count(b.clone()).await, 0);
    let unread = s.call(Method::GET, "/api/v1/me/notifications?unread=true", Some(&b), None).await;
    assert_eq!(unread.ok(200)["items"].as_array().unwrap().len(), 0);

    s.call(Method::POST, &format!("/api/v1/me/notifications/{nid}/unread"), Some(&b), None)
        .await
        .ok(200);
    assert_eq!(count(b.clone()).await, 1);
    let all = s.call(Method::POST, "/api/v1/me/notifications/read-all", Some(&b), None).await;
    assert_eq!(all.ok(200)["updated"], 1);
    assert_eq!(count(b.clone()).await, 0);

    // Paging parameters are validated like everywhere else.
    s.call(Method::GET, "/api/v1/me/notifications?limit=0", Some(&b), None).await.problem(400);
    s.call(Method::GET, "/api/v1/me/notifications?cursor=nope", Some(&b), None).await.problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_pages_follow_the_cursor() {
    let s = Server::start().await;
    let (_, a) = s.user("pager@example.com").await;
    let (b_id, b) = s.user("paged@example.com").await;
    let (org, project, _) = org_and_project(&s, &a, "pages", "PGS").await;
    s.call(
        Method::PUT,
        &format!("/api/v1/orgs/{org}/members/{}", b_id.0),
        Some(&a),
        Some(json!({"role": "member"})),
    )
    .await
    .ok(200);
    for i in 0..3 {
        create_task(&s, &a, &project, json!({"title": format!("T{i}"), "assignees": [b_id.0]}))
            .await;
    }
    // The consumer derives asynchronously.
    let mut tries = 0;
    loop {
        let res =
            s.call(Method::GET, "/api/v1/me/notifications/unread-count", Some(&b), None).await;
        if res.ok(200)["count"] == 3 {
            break;
        }
        tries += 1;
        assert!(tries < 100, "notifications never arrived");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let first = s.call(Method::GET, "/api/v1/me/notifications?limit=2", Some(&b), None).await;
    assert_eq!(first.ok(200)["items"].as_array().unwrap().len(), 2);
    assert!(first.header("link").is_some_and(|l| l.contains("rel=\"next\"")));
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = s
        .call(
            Method::GET,
            &format!("/api/v1/me/notifications?limit=2&cursor={cursor}"),
            Some(&b),
            None,
        )
        .await;
    let items = second.ok(200)["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert!(second.body["next_cursor"].is_null());
    assert_ne!(items[0]["id"], first.body["items"][0]["id"]);
    assert_ne!(items[0]["id"], first.body["items"][1]["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_keep_a_quiet_client_alive_and_shutdown_closes_with_1001() {
    use std::time::Duration;
    let s = Server::start_with(|state| {
        with_hub_config(
            state,
            HubConfig {
                heartbeat_timeout: Duration::from_millis(600),
                idle_timeout: Duration::from_secs(1),
                sweep_interval: Duration::from_millis(100),
                ..HubConfig::default()
            },
        )
    })
    .await;
    let (_, t) = s.user("quiet@example.com").await;
    let mut ws = Ws::connect(&s.base, &t).await;
    // Send nothing for well past the heartbeat timeout, only answering the server's pings
    // (tungstenite does that while reading).
    use futures_util::StreamExt as _;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(2000);
    while let Ok(msg) = tokio::time::timeout_at(until, ws.stream.next()).await {
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "the server pings every heartbeat_timeout / 3 ({pings})");
    ws.ping().await;

    drop(s); // graceful shutdown
    let close = ws.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001, "{close:?}");
}

/// A burst queued for one socket at once (a replay of 150 missed events) goes out in batches of
/// `write_batch` frames per flush: every event arrives, once, in `seq` order, and the socket stays
/// healthy afterwards (live events and pings follow the burst).
async fn a_burst_arrives_complete_and_in_order(write_batch: usize) {
    let s = Server::start_with(|state| {
        with_hub_config(state, HubConfig { write_batch, ..HubConfig::default() })
    })
    .await;
    let (_, t) = s.user("burst@example.com").await;
    let (_, project, _) = org_and_project(&s, &t, "burst", "BUR").await;
    let pch = format!("project:{project}");
    let mut ws = Ws::connect(&s.base, &t).await;
    let start = ws.subscribe(&pch, None).await;
    drop(ws);
    let mut ids = Vec::new();
    for i in 0..150 {
        let task = create_task(&s, &t, &project, json!({"title": format!("Burst {i}")})).await;
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    let mut ws = Ws::connect(&s.base, &t).await;
    ws.subscribe(&pch, Some(start)).await;
    let mut prev = start;
    for id in &ids {
        let seq = assert_event(&ws.next_durable().await, &pch, "task.created", id);
        assert!(seq > prev, "in order, no duplicate");
        prev = seq;
    }
    let after = create_task(&s, &t, &project, json!({"title": "After the burst"})).await;
    assert_event(&ws.next_durable().await, &pch, "task.created", after["id"].as_str().unwrap());
    ws.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_arrives_complete_and_in_order_in_small_batches() {
    a_burst_arrives_complete_and_in_order(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_arrives_complete_and_in_order_in_default_batches() {
    a_burst_arrives_complete_and_in_order(HubConfig::default().write_batch).await;
}

/// A frame larger than the transport's fragment size (an event carrying a 24 KB description,
/// multi-byte characters included) is written as a fragmented message (`pm_server::ws`) and
/// arrives whole and valid at a stock client; the connection carries on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_event_arrives_whole_and_the_connection_carries_on() {
    let s = Server::start().await;
    let (_, t) = s.user("large@example.com").await;
    let (_, project, _) = org_and_project(&s, &t, "large", "LRG").await;
    let pch = format!("project:{project}");
    let mut ws = Ws::connect(&s.base, &t).await;
    ws.subscribe(&pch, None).await;
    let description = "é€ large, ".repeat(2_000);
    assert!(description.len() > 10 * pm_server::ws::FRAGMENT_BYTES);
    let task =
        create_task(&s, &t, &project, json!({"title": "Large", "description": description})).await;
    let id = task["id"].as_str().unwrap();
    let v = ws.next_durable().await;
    assert_event(&v, &pch, "task.created", id);
    assert_eq!(v["event"]["payload"]["task"]["description"], description, "reassembled exactly");
    let small = create_task(&s, &t, &project, json!({"title": "Small after"})).await;
    assert_event(&ws.next_durable().await, &pch, "task.created", small["id"].as_str().unwrap());
    ws.ping().await;
}
