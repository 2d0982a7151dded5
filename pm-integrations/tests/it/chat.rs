//! The Slack Web API client and the calendar clients (Google Calendar v3, Microsoft Graph
//! v1.0) against wiremock servers answering in each API's shapes: Slack's `ok: false` errors,
//! Google's paged `events.list` with `nextSyncToken` and its `410 Gone` for an expired sync
//! token, Graph's subscriptions (create, extend, a `404` on renewal → a new one).

use pm_integrations::Error;
use pm_integrations::calendar::{CalendarClient, EventDraft, Watch};
use pm_integrations::crypto::Secret;
use pm_integrations::slack::{Message, SlackClient};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::date;
use wiremock::matchers::{body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn token() -> Secret {
    Secret::new("xoxb-test")
}

#[tokio::test]
async fn slack_posts_messages_and_reports_slack_errors_by_code() {
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat.postMessage"))
        .and(header("authorization", "Bearer xoxb-test"))
        .and(body_partial_json(json!({"channel": "C1", "text": "hi"})))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true, "channel": "C1", "ts": "1.2"})),
        )
        .expect(1)
        .mount(&slack)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/chat.postMessage"))
        .and(body_partial_json(json!({"channel": "C404"})))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": false, "error": "channel_not_found"})),
        )
        .mount(&slack)
        .await;
    let client = SlackClient::new(&format!("{}/api", slack.uri())).unwrap();
    let blocks = vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": "hi"}})];
    let m = Message { channel: "C1".into(), text: "hi".into(), blocks };
    assert_eq!(client.post_message(&token(), &m).await.unwrap(), "1.2");
    let e =
        client.post_message(&token(), &Message { channel: "C404".into(), ..m }).await.unwrap_err();
    assert!(
        matches!(&e, Error::Provider { message, .. } if message.contains("channel_not_found")),
        "{e}"
    );

    Mock::given(method("GET"))
        .and(path("/api/users.info"))
        .and(query_param("user", "U1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"ok": true, "user": {"id": "U1", "profile": {"email": "ada@example.com"}}}),
        ))
        .mount(&slack)
        .await;
    assert_eq!(
        client.user_email(&token(), "U1").await.unwrap().as_deref(),
        Some("ada@example.com")
    );
    let bad = client.user_email(&token(), "U1&user=U2").await.unwrap_err();
    assert!(matches!(bad, Error::Invalid { field, .. } if field == "user_id"));
}

#[tokio::test]
async fn google_lists_all_pages_and_restarts_after_a_gone_sync_token() {
    let g = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/calendar/v3/calendars/team%40group.calendar.google.com/events"))
        .and(query_param("syncToken", "old"))
        .respond_with(ResponseTemplate::new(410).set_body_json(
            json!({"error": {"code": 410, "message": "Sync token is no longer valid, a full sync is required."}}),
        ))
        .mount(&g)
        .await;
    Mock::given(method("GET"))
        .and(path("/calendar/v3/calendars/team%40group.calendar.google.com/events"))
        .and(query_param("pageToken", "p2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "items": [{"id": "b", "status": "cancelled"}], "nextSyncToken": "fresh"
        })))
        .mount(&g)
        .await;
    Mock::given(method("GET"))
        .and(path("/calendar/v3/calendars/team%40group.calendar.google.com/events"))
        .and(query_param("showDeleted", "true"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "items": [{"id": "a", "summary": "A", "start": {"dateTime": "2025-05-06T09:00:00+02:00"}}],
            "nextPageToken": "p2"
        })))
        .mount(&g)
        .await;
    let client = CalendarClient::for_provider(
        "google_calendar",
        &format!("{}/calendar/v3", g.uri()),
        &json!({"calendar_id": "team@group.calendar.google.com"}),
    )
    .unwrap();
    let CalendarClient::Google(google) = &client else { panic!("google") };
    let changes = google.changes(&token(), Some("old")).await.unwrap();
    assert_eq!(changes.next_sync_token.as_deref(), Some("fresh"));
    assert_eq!(changes.events.len(), 2);
    assert_eq!(changes.events[0].date, Some(date!(2025 - 05 - 06)));
    assert!(changes.events[1].cancelled);

    // Creating a task's event twice finds the first (Google's 409 for a taken id → patch).
    let task = "0190a5b4-7c1e-7d2f-8a3b-4c5d6e7f8091";
    let event_id = "pm0190a5b47c1e7d2f8a3b4c5d6e7f8091";
    Mock::given(method("POST"))
        .and(path("/calendar/v3/calendars/team%40group.calendar.google.com/events"))
        .and(body_partial_json(json!({"id": event_id})))
        .respond_with(ResponseTemplate::new(409).set_body_json(
            json!({"error": {"code": 409, "message": "The requested identifier already exists."}}),
        ))
        .mount(&g)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!(
            "/calendar/v3/calendars/team%40group.calendar.google.com/events/{event_id}"
        )))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": event_id, "start": {"date": "2025-07-01"}})),
        )
        .expect(1)
        .mount(&g)
        .await;
    let draft = EventDraft {
        title: "PM-2 Again".into(),
        date: date!(2025 - 07 - 01),
        task_id: task.into(),
    };
    let ev = client.create_event(&token(), &draft).await.unwrap();
    assert_eq!((ev.id.as_str(), ev.date), (event_id, Some(date!(2025 - 07 - 01))));

    assert!(matches!(
        CalendarClient::for_provider("google_calendar", &g.uri(), &json!({"calendar_id": "../x"})),
        Err(Error::Invalid { field, .. }) if field == "config.calendar_id"
    ));
}

#[tokio::test]
async fn graph_events_and_subscriptions_including_a_vanished_one() {
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1.0/me/events"))
        .and(body_partial_json(json!({"isAllDay": true, "subject": "PM-1 Ship"})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "id": "AAMk1=", "subject": "PM-1 Ship",
            "start": {"dateTime": "2025-06-01T00:00:00.0000000", "timeZone": "UTC"}
        })))
        .mount(&graph)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/v1.0/me/events/AAMkGone="))
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"error": {"code": "ErrorItemNotFound", "message": "The specified object was not found in the store."}}),
        ))
        .mount(&graph)
        .await;
    let in_a_day = (OffsetDateTime::now_utc() + time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    Mock::given(method("PATCH"))
        .and(path("/v1.0/subscriptions/gone"))
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"error": {"code": "ResourceNotFound", "message": "The object was not found."}}),
        ))
        .mount(&graph)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1.0/subscriptions"))
        .and(body_partial_json(json!({"resource": "me/events", "clientState": "cs"})))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"id": "new-sub", "expirationDateTime": in_a_day})),
        )
        .expect(1)
        .mount(&graph)
        .await;
    let client =
        CalendarClient::for_provider("outlook", &format!("{}/v1.0", graph.uri()), &json!({}))
            .unwrap();
    let draft =
        EventDraft { title: "PM-1 Ship".into(), date: date!(2025 - 06 - 01), task_id: "t".into() };
    let ev = client.create_event(&token(), &draft).await.unwrap();
    assert_eq!((ev.id.as_str(), ev.date), ("AAMk1=", Some(date!(2025 - 06 - 01))));
    client.delete_event(&token(), "AAMkGone=").await.expect("a vanished event is deleted");
    assert!(client.delete_event(&token(), "../subscriptions").await.is_err());

    let old = Watch {
        id: "gone".into(),
        resource_id: None,
        expires_at: OffsetDateTime::now_utc(),
        sync_token: None,
    };
    let renewed = client
        .renew(
            &token(),
            &old,
            "https://pm.example/h",
            "cs",
            std::time::Duration::from_secs(3600),
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    assert_eq!(renewed.id, "new-sub", "a subscription Graph dropped is recreated");
}
