//! Access on open sockets, over real WebSockets: a member removed from the organization loses
//! its channels (`unsubscribed`, reason `forbidden`) while the socket stays healthy; an expired
//! access token closes the socket with 4001; a read-scoped API token may watch but not send
//! presence, typing or cursors.

use std::time::Duration;

use pm_realtime::HubConfig;
use pm_server::auth::{JwtKeys, Scope};
use reqwest::Method;
use serde_json::json;
use tokio::time::Instant;

use super::{Ws, with_hub_config};
use crate::api::{Server, TEST_SECRET, org_and_project};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_loses_the_orgs_channels_on_an_open_socket() {
    let s = Server::start().await;
    let (_, alice) = s.user("alice-owner@example.com").await;
    let (bob_id, bob) = s.user("bob-member@example.com").await;
    let (org, project, _) = org_and_project(&s, &alice, "removal", "REM").await;
    let member = format!("/api/v1/orgs/{org}/members/{}", bob_id.0);
    s.call(Method::PUT, &member, Some(&alice), Some(json!({"role": "member"}))).await.ok(200);

    let mut ws = Ws::connect(&s.base, &bob).await;
    let (och, pch, uch) =
        (format!("org:{org}"), format!("project:{project}"), format!("user:{}", bob_id.0));
    for ch in [&och, &pch, &uch] {
        ws.subscribe(ch, None).await;
    }

    s.call(Method::DELETE, &member, Some(&alice), None).await.ok(204);
    let mut lost = Vec::new();
    for _ in 0..2 {
        let v = ws.expect("unsubscribed").await;
        assert_eq!(v["reason"], "forbidden", "{v}");
        lost.push(v["channel"].as_str().unwrap().to_owned());
    }
    lost.sort();
    let mut want = vec![och.clone(), pch.clone()];
    want.sort();
    assert_eq!(lost, want, "the org's channels go; the user's own channel stays");

    // The socket is healthy; subscribing again is refused.
    ws.ping().await;
    ws.send(json!({"type": "subscribe", "channel": pch})).await;
    let err = ws.expect("error").await;
    assert_eq!(err["code"], "forbidden", "{err}");
    ws.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_closes_the_socket_with_4001() {
    let s = Server::start_with(|state| {
        let config =
            HubConfig { sweep_interval: Duration::from_millis(100), ..HubConfig::default() };
        with_hub_config(state, config)
    })
    .await;
    let (user, long_lived) = s.user("expiring@example.com").await;
    let (_, project, _) = org_and_project(&s, &long_lived, "expiry", "EXP").await;
    // The same secret, a 2-second lifetime (the `exp` claim has whole seconds: 1-2 s left).
    let short = JwtKeys::new(TEST_SECRET, Duration::from_secs(2));
    let (token, _) = short.issue(user, Scope::Write).unwrap();

    let started = Instant::now();
    let mut expiring = Ws::connect(&s.base, &token).await;
    let mut lasting = Ws::connect(&s.base, &long_lived).await;
    let pch = format!("project:{project}");
    expiring.subscribe(&pch, None).await;
    lasting.subscribe(&pch, None).await;

    let close = expiring.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4001, "{close:?}");
    assert_eq!(close.reason.as_str(), "token expired");
    let after = started.elapsed();
    assert!(after < Duration::from_secs(5), "closed {after:?} after connecting");
    lasting.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_may_watch_but_not_signal() {
    let s = Server::start().await;
    let (_, t) = s.user("reader@example.com").await;
    let (_, project, _) = org_and_project(&s, &t, "readonly", "RDO").await;
    let created = s
        .call(
            Method::POST,
            "/api/v1/me/tokens",
            Some(&t),
            Some(json!({"name": "dash", "scope": "read"})),
        )
        .await;
    let read_token = created.ok(201)["token"].as_str().unwrap().to_owned();

    let mut ws = Ws::connect(&s.base, &read_token).await;
    let pch = format!("project:{project}");
    ws.subscribe(&pch, None).await;
    for frame in [
        json!({"type": "presence", "channel": pch, "status": "away"}),
        json!({"type": "typing", "channel": pch}),
        json!({"type": "cursor", "channel": pch, "position": {"index": 1}}),
    ] {
        ws.send(frame.clone()).await;
        let err = ws.expect("error").await;
        assert_eq!(err["code"], "read_only", "{frame} → {err}");
        assert_eq!(err["channel"], pch.as_str());
        assert!(err["message"].as_str().unwrap().contains("read-only"), "{err}");
    }
    ws.ping().await;

    // It still receives what it may read.
    let url = format!("/api/v1/projects/{project}/tasks");
    s.call(Method::POST, &url, Some(&t), Some(json!({"title": "Seen read-only"}))).await.ok(201);
    let v = ws.next_durable().await;
    assert_eq!(v["type"], "event", "{v}");
    assert_eq!(v["event"]["kind"], "task.created");
}
