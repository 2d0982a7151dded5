//! The store conformance suite (feature `testing`).
//!
//! One suite for every backend: the built-in SQLite and PostgreSQL adapters run it in their
//! tests, and a host that writes its own adapter runs the same functions against theirs. Checks
//! use fresh ids, so they may share a database; give [`run_all`] a freshly migrated one. Checks
//! panic with a message on failure, like any test.

use pm_core::event::{Actor, Event, EventKind};
use pm_core::id::{CommentId, EventId, IntegrationId, OrgId, ProjectId, TaskId, UserId};
use serde_json::json;
use time::OffsetDateTime;

use crate::Error;
use crate::crypto::{EncryptionKey, Keyring, Sealed};
use crate::model::*;
use crate::provider::{Capability, Mappings, ProviderKey};
use crate::store::IntegrationStores;
use crate::sync::{FieldPolicy, Side, Snapshot};

/// Runs every check against `stores`.
pub async fn run_all(stores: &IntegrationStores) {
    providers_seed_idempotently(stores).await;
    integrations_are_versioned_and_deleted_with_dependents(stores).await;
    credentials_are_sealed_and_replaced_at_their_version(stores).await;
    oauth_states_are_single_use(stores).await;
    oauth_tokens_are_sealed_versioned_and_deleted(stores).await;
    inbound_deliveries_dedupe_and_queue(stores).await;
    mappings_are_idempotent_and_syncs_atomic(stores).await;
    comment_links_are_unique_both_ways(stores).await;
    intents_are_claimed_once_and_taken_over_when_stale(stores).await;
    sync_failures_are_recorded_once_per_event_and_listed(stores).await;
    parked_pushes_are_claimed_in_event_order_per_task(stores).await;
    parked_pushes_give_up_into_failures_and_failures_requeue(stores).await;
    parked_push_stats_count_per_provider_since_the_oldest(stores).await;
    logs_page_newest_first_and_stay_redacted(stores).await;
    subscriptions_are_versioned(stores).await;
    outbound_deliveries_enqueue_retry_and_disable(stores).await;
}

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_750_000_000 + secs).expect("valid timestamp")
}

fn github() -> ProviderKey {
    ProviderKey::parse("github").expect("valid key")
}

/// A stored integration to hang other rows on.
pub async fn integration(stores: &IntegrationStores) -> Integration {
    let i = Integration {
        id: IntegrationId::new(),
        org_id: OrgId::new(),
        project_id: ProjectId::new(),
        provider: github(),
        name: "octo/repo".into(),
        config: json!({"repository": "octo/repo"}),
        mappings: Mappings::default(),
        enabled: true,
        version: 1,
        created_at: at(0),
        updated_at: at(0),
    };
    stores.integrations.create_integration(&i).await.expect("create integration");
    i
}

/// Providers are inserted once; a second seed changes nothing.
pub async fn providers_seed_idempotently(stores: &IntegrationStores) {
    let key = ProviderKey::parse(&format!("p{}", &uuid::Uuid::now_v7().simple().to_string()[20..]))
        .expect("valid key");
    let p = ProviderRecord {
        key: key.clone(),
        name: "Test".into(),
        capabilities: vec![Capability::Webhooks, Capability::OAuth],
        enabled: true,
        created_at: at(0),
    };
    assert!(stores.providers.ensure_provider(&p).await.unwrap(), "first seed inserts");
    let renamed = ProviderRecord { name: "Other".into(), ..p.clone() };
    assert!(!stores.providers.ensure_provider(&renamed).await.unwrap(), "second seed is a no-op");
    let all = stores.providers.list_providers().await.unwrap();
    let found = all.iter().find(|x| x.key == key).expect("listed");
    assert_eq!(found, &p, "the first record stays");
}

/// Updates need the current version; deleting removes credentials and mappings too.
pub async fn integrations_are_versioned_and_deleted_with_dependents(stores: &IntegrationStores) {
    let i = integration(stores).await;
    assert_eq!(stores.integrations.get_integration(i.id).await.unwrap(), i);
    assert_eq!(stores.integrations.list_integrations(i.org_id).await.unwrap(), vec![i.clone()]);
    // Across organizations by provider, enabled only (the shared database may hold others').
    assert!(stores.integrations.enabled_integrations_of(&github()).await.unwrap().contains(&i));

    let patch = IntegrationPatch { enabled: Some(false), ..Default::default() };
    let updated = stores.integrations.update_integration(i.id, 1, &patch, at(5)).await.unwrap();
    assert_eq!((updated.version, updated.enabled, updated.updated_at), (2, false, at(5)));
    assert_eq!(updated.name, i.name);
    let stale = stores.integrations.update_integration(i.id, 1, &patch, at(6)).await;
    assert!(matches!(stale, Err(Error::Conflict { current: 2, .. })), "{stale:?}");
    assert!(
        !stores
            .integrations
            .enabled_integrations_of(&github())
            .await
            .unwrap()
            .iter()
            .any(|x| x.id == i.id),
        "a disabled integration is not listed"
    );

    let sealed = Sealed::from_stored("v1.k.x");
    stores
        .credentials
        .put_credential(i.id, CredentialKind::ApiToken, &sealed, None, at(1))
        .await
        .unwrap();
    stores.mappings.create_mapping(&mapping(i.id, TaskId::new(), "octo/repo#1")).await.unwrap();
    stores.integrations.delete_integration(i.id).await.unwrap();
    assert!(matches!(
        stores.integrations.get_integration(i.id).await,
        Err(Error::NotFound { entity: "integration" })
    ));
    assert!(
        stores.credentials.get_credential(i.id, CredentialKind::ApiToken).await.unwrap().is_none()
    );
    assert!(stores.mappings.mapping_by_external(i.id, "octo/repo#1").await.unwrap().is_none());
    assert!(matches!(
        stores.integrations.delete_integration(i.id).await,
        Err(Error::NotFound { .. })
    ));
}

/// What is stored is the sealed form; replacing needs the version read (single-flight refresh).
pub async fn credentials_are_sealed_and_replaced_at_their_version(stores: &IntegrationStores) {
    let i = integration(stores).await;
    let ring = Keyring::new("k1", &EncryptionKey::generate()).unwrap();
    let ctx = CredentialKind::OAuthRefresh.context(i.id);
    let sealed = ring.seal(b"refresh-1", &ctx);
    let c = stores
        .credentials
        .put_credential(i.id, CredentialKind::OAuthRefresh, &sealed, Some(at(60)), at(0))
        .await
        .unwrap();
    assert_eq!((c.version, c.expires_at), (1, Some(at(60))));
    let read = stores
        .credentials
        .get_credential(i.id, CredentialKind::OAuthRefresh)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(read.sealed, sealed);
    assert_eq!(ring.open(&read.sealed, &ctx).unwrap(), b"refresh-1");

    // Two refreshers read version 1; only the first replacement wins.
    let next = ring.seal(b"refresh-2", &ctx);
    let won = stores.credentials.replace_credential(c.id, 1, &next, None, at(1)).await.unwrap();
    assert_eq!(won.version, 2);
    let loser = ring.seal(b"x", &ctx);
    let lost = stores.credentials.replace_credential(c.id, 1, &loser, None, at(1)).await;
    assert!(matches!(lost, Err(Error::Conflict { current: 2, .. })), "{lost:?}");
    assert!(matches!(
        stores.credentials.replace_credential(CredentialId::new(), 1, &next, None, at(1)).await,
        Err(Error::NotFound { .. })
    ));

    // Putting again overwrites (a reconnect) and bumps the version.
    let again = stores
        .credentials
        .put_credential(i.id, CredentialKind::OAuthRefresh, &sealed, None, at(2))
        .await
        .unwrap();
    assert_eq!((again.id, again.version), (c.id, 3));
    assert!(matches!(
        stores
            .credentials
            .put_credential(IntegrationId::new(), CredentialKind::ApiToken, &sealed, None, at(0))
            .await,
        Err(Error::NotFound { entity: "integration" })
    ));
    assert_eq!(stores.credentials.delete_credentials(i.id).await.unwrap(), 1);
}

/// A pending OAuth state is taken exactly once; expired ones are purged by later puts; states
/// need an existing integration and go with it.
pub async fn oauth_states_are_single_use(stores: &IntegrationStores) {
    let i = integration(stores).await;
    let ring = Keyring::new("k1", &EncryptionKey::generate()).unwrap();
    let state = |hash: &str, t: i64| OAuthState {
        state_hash: hash.to_owned(),
        integration_id: i.id,
        user_id: UserId::new(),
        verifier: ring.seal(b"verifier", &OAuthState::verifier_context(hash)),
        redirect_uri: "https://pm.example/api/v1/oauth/callback".into(),
        created_at: at(t),
        expires_at: at(t + 600),
    };
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let first = state(&format!("{tag}-a"), 0);
    stores.oauth.put_oauth_state(&first).await.unwrap();
    let taken = stores.oauth.take_oauth_state(&first.state_hash).await.unwrap();
    assert_eq!(taken.as_ref(), Some(&first));
    assert_eq!(
        ring.open(&taken.unwrap().verifier, &OAuthState::verifier_context(&first.state_hash))
            .unwrap(),
        b"verifier"
    );
    assert!(stores.oauth.take_oauth_state(&first.state_hash).await.unwrap().is_none(), "reused");

    // An expired state is dropped when a later one is stored.
    let old = state(&format!("{tag}-b"), 0);
    stores.oauth.put_oauth_state(&old).await.unwrap();
    let later = state(&format!("{tag}-c"), 601);
    stores.oauth.put_oauth_state(&later).await.unwrap();
    assert!(stores.oauth.take_oauth_state(&old.state_hash).await.unwrap().is_none(), "purged");

    // Concurrent takers: exactly one wins.
    let raced = state(&format!("{tag}-d"), 601);
    stores.oauth.put_oauth_state(&raced).await.unwrap();
    let (a, b) = tokio::join!(
        stores.oauth.take_oauth_state(&raced.state_hash),
        stores.oauth.take_oauth_state(&raced.state_hash)
    );
    assert_eq!(usize::from(a.unwrap().is_some()) + usize::from(b.unwrap().is_some()), 1);

    let mut orphan = state(&format!("{tag}-e"), 601);
    orphan.integration_id = IntegrationId::new();
    assert!(matches!(
        stores.oauth.put_oauth_state(&orphan).await,
        Err(Error::NotFound { entity: "integration" })
    ));
    stores.integrations.delete_integration(i.id).await.unwrap();
    assert!(stores.oauth.take_oauth_state(&later.state_hash).await.unwrap().is_none(), "cascade");
}

/// OAuth tokens are stored sealed, replaced only at the version read (single-flight refresh
/// across instances), re-put on reconnect, and deleted alone or with their integration.
pub async fn oauth_tokens_are_sealed_versioned_and_deleted(stores: &IntegrationStores) {
    let i = integration(stores).await;
    let ring = Keyring::new("k1", &EncryptionKey::generate()).unwrap();
    let access = |v: &str| ring.seal(v.as_bytes(), &OAuthToken::access_context(i.id));
    let refresh = |v: &str| ring.seal(v.as_bytes(), &OAuthToken::refresh_context(i.id));
    let user = UserId::new();
    let tok = OAuthToken {
        integration_id: i.id,
        access: access("gho_access_1"),
        refresh: Some(refresh("ghr_refresh_1")),
        token_type: "bearer".into(),
        scopes: vec!["repo".into(), "read:user".into()],
        expires_at: Some(at(3600)),
        status: OAuthStatus::Active,
        status_reason: None,
        connected_by: user,
        version: 1,
        created_at: at(0),
        updated_at: at(0),
    };
    assert!(stores.oauth.get_oauth_token(i.id).await.unwrap().is_none());
    let stored = stores.oauth.put_oauth_token(&tok).await.unwrap();
    assert_eq!(stored, tok);
    assert_eq!(stored.key_id(), "k1");
    let read = stores.oauth.get_oauth_token(i.id).await.unwrap().expect("stored");
    assert_eq!(read, tok);
    assert_eq!(
        ring.open(read.refresh.as_ref().unwrap(), &OAuthToken::refresh_context(i.id)).unwrap(),
        b"ghr_refresh_1"
    );

    // Two refreshers read version 1: the first write wins, the second conflicts.
    let refreshed = OAuthToken {
        access: access("gho_access_2"),
        refresh: Some(refresh("ghr_refresh_2")),
        expires_at: Some(at(7200)),
        scopes: vec!["repo".into()],
        updated_at: at(3500),
        ..tok.clone()
    };
    let won = stores.oauth.update_oauth_token(&refreshed, 1).await.unwrap();
    assert_eq!((won.version, won.created_at, won.updated_at), (2, at(0), at(3500)));
    assert_eq!(won.access, refreshed.access);
    assert_eq!(won.scopes, vec!["repo".to_owned()]);
    let lost = stores.oauth.update_oauth_token(&tok, 1).await;
    assert!(matches!(lost, Err(Error::Conflict { current: 2, .. })), "{lost:?}");

    // Marking it for reconnect is a versioned write too.
    let marked = OAuthToken {
        status: OAuthStatus::NeedsReconnect,
        status_reason: Some("invalid_grant".into()),
        refresh: None,
        expires_at: None,
        ..won.clone()
    };
    let m = stores.oauth.update_oauth_token(&marked, 2).await.unwrap();
    assert_eq!(
        (m.status, m.status_reason.as_deref(), m.version),
        (OAuthStatus::NeedsReconnect, Some("invalid_grant"), 3)
    );
    assert_eq!((m.refresh, m.expires_at), (None, None));

    // A reconnect puts fresh tokens over it: active again, next version, created_at kept.
    let again = stores
        .oauth
        .put_oauth_token(&OAuthToken { created_at: at(9000), updated_at: at(9000), ..tok.clone() })
        .await
        .unwrap();
    assert_eq!((again.version, again.status, again.created_at), (4, OAuthStatus::Active, at(0)));

    let mut orphan = tok.clone();
    orphan.integration_id = IntegrationId::new();
    assert!(matches!(
        stores.oauth.put_oauth_token(&orphan).await,
        Err(Error::NotFound { entity: "integration" })
    ));
    assert!(matches!(
        stores.oauth.update_oauth_token(&orphan, 1).await,
        Err(Error::NotFound { entity: "oauth connection" })
    ));
    assert!(stores.oauth.delete_oauth_token(i.id).await.unwrap());
    assert!(!stores.oauth.delete_oauth_token(i.id).await.unwrap());
    stores.oauth.put_oauth_token(&tok).await.unwrap();
    stores.integrations.delete_integration(i.id).await.unwrap();
    assert!(stores.oauth.get_oauth_token(i.id).await.unwrap().is_none(), "cascade");
}

fn inbound(i: &Integration, delivery_id: &str, t: i64) -> InboundDelivery {
    InboundDelivery::new(
        i.provider.clone(),
        i.id,
        delivery_id.into(),
        vec![("X-GitHub-Event".into(), "issues".into())],
        br#"{"action":"opened"}"#.to_vec(),
        at(t),
    )
}

/// A delivery id is stored once; the queue hands out due items oldest first, leases them, and
/// takes back failed ones at their retry time.
pub async fn inbound_deliveries_dedupe_and_queue(stores: &IntegrationStores) {
    let i = integration(stores).await;
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let d1 = inbound(&i, &format!("{tag}-1"), 0);
    assert_eq!(stores.inbound.ingest(&d1).await.unwrap(), Ingested::New(d1.id));
    let replay = inbound(&i, &format!("{tag}-1"), 1);
    assert_eq!(stores.inbound.ingest(&replay).await.unwrap(), Ingested::Duplicate(d1.id));
    assert!(matches!(stores.inbound.get_inbound(replay.id).await, Err(Error::NotFound { .. })));
    let d2 = inbound(&i, &format!("{tag}-2"), 2);
    assert_eq!(stores.inbound.ingest(&d2).await.unwrap(), Ingested::New(d2.id));
    let stored = stores.inbound.get_inbound(d1.id).await.unwrap();
    assert_eq!(stored, d1, "stored as given, body bytes intact");

    // Other suites' deliveries share the table: only look at ours.
    let ours = |v: Vec<InboundDelivery>| -> Vec<DeliveryId> {
        v.into_iter().filter(|d| d.integration_id == i.id).map(|d| d.id).collect()
    };
    let claimed = ours(stores.inbound.claim_inbound(at(10), at(40), 100).await.unwrap());
    assert_eq!(claimed, vec![d1.id, d2.id], "oldest first");
    assert!(ours(stores.inbound.claim_inbound(at(20), at(50), 100).await.unwrap()).is_empty());
    assert_eq!(stores.inbound.get_inbound(d1.id).await.unwrap().attempts, 1);

    stores.inbound.finish_inbound(d1.id, &Attempt::Succeeded).await.unwrap();
    let retry = Attempt::Failed { error: "provider down".into(), retry_at: Some(at(45)) };
    stores.inbound.finish_inbound(d2.id, &retry).await.unwrap();
    assert!(ours(stores.inbound.claim_inbound(at(44), at(60), 100).await.unwrap()).is_empty());
    let again = ours(stores.inbound.claim_inbound(at(45), at(60), 100).await.unwrap());
    assert_eq!(again, vec![d2.id], "retried at its time; the done one never again");
    let give_up = Attempt::Failed { error: "bad payload".into(), retry_at: None };
    stores.inbound.finish_inbound(d2.id, &give_up).await.unwrap();
    let d2 = stores.inbound.get_inbound(d2.id).await.unwrap();
    assert_eq!((d2.status, d2.attempts), (QueueStatus::Failed, 2));
    assert_eq!(d2.last_error.as_deref(), Some("bad payload"));
    assert!(ours(stores.inbound.claim_inbound(at(1000), at(1100), 100).await.unwrap()).is_empty());
    assert!(matches!(
        stores.inbound.finish_inbound(DeliveryId::new(), &Attempt::Succeeded).await,
        Err(Error::NotFound { .. })
    ));
}

fn mapping(integration: IntegrationId, task: TaskId, external: &str) -> ExternalMapping {
    let mut base = Snapshot::new();
    base.insert("title".into(), json!("a"));
    ExternalMapping {
        id: MappingId::new(),
        integration_id: integration,
        task_id: task,
        external_id: external.into(),
        external_url: Some(format!("https://example.test/{external}")),
        base,
        remote_updated_at: Some(at(0)),
        pushed_fingerprint: None,
        version: 1,
        created_at: at(0),
        updated_at: at(0),
    }
}

/// Creating a link twice returns the first; a sync's base and conflicts commit together.
pub async fn mappings_are_idempotent_and_syncs_atomic(stores: &IntegrationStores) {
    let i = integration(stores).await;
    let task = TaskId::new();
    let m = mapping(i.id, task, "octo/repo#7");
    let (created, new) = stores.mappings.create_mapping(&m).await.unwrap();
    assert!(new);
    assert_eq!(created, m);
    let (again, new) =
        stores.mappings.create_mapping(&mapping(i.id, task, "octo/repo#7")).await.unwrap();
    assert!(!new, "idempotent create");
    assert_eq!(again.id, m.id);
    let other_item = stores.mappings.create_mapping(&mapping(i.id, task, "octo/repo#8")).await;
    assert!(matches!(other_item, Err(Error::AlreadyExists { .. })), "{other_item:?}");
    assert_eq!(stores.mappings.mapping_by_task(i.id, task).await.unwrap().unwrap().id, m.id);

    let conflict = |field: &str| SyncConflict {
        id: ConflictId::new(),
        integration_id: i.id,
        mapping_id: m.id,
        task_id: task,
        field: field.into(),
        base: json!("a"),
        local: json!("ours"),
        remote: json!("theirs"),
        resolved: json!("theirs"),
        winner: Side::Remote,
        policy: FieldPolicy::Latest,
        detected_at: at(3),
        resolved_at: None,
    };
    let mut base = Snapshot::new();
    base.insert("title".into(), json!("theirs"));
    let synced = SyncedBase {
        base: base.clone(),
        remote_updated_at: Some(at(2)),
        pushed_fingerprint: Some("fp".into()),
        at: at(3),
    };
    let c1 = conflict("title");
    let after =
        stores.mappings.commit_sync(m.id, 1, &synced, std::slice::from_ref(&c1)).await.unwrap();
    assert_eq!((after.version, &after.base), (2, &base));
    assert_eq!(after.pushed_fingerprint.as_deref(), Some("fp"));

    // A stale sync writes neither the base nor its conflicts.
    let stale = stores.mappings.commit_sync(m.id, 1, &synced, &[conflict("due")]).await;
    assert!(matches!(stale, Err(Error::Conflict { current: 2, .. })), "{stale:?}");
    let listed = stores.mappings.list_conflicts(i.id, true, 10, None).await.unwrap();
    assert_eq!(listed.items, vec![c1.clone()]);
    assert_eq!(stores.mappings.get_conflict(c1.id).await.unwrap(), c1);
    let missing = stores.mappings.get_conflict(ConflictId::new()).await;
    assert!(matches!(missing, Err(Error::NotFound { entity: "conflict" })), "{missing:?}");

    let resolved = stores.mappings.resolve_conflict(c1.id, at(9)).await.unwrap();
    assert_eq!(resolved.resolved_at, Some(at(9)));
    assert!(stores.mappings.list_conflicts(i.id, true, 10, None).await.unwrap().items.is_empty());
    assert_eq!(stores.mappings.list_conflicts(i.id, false, 10, None).await.unwrap().items.len(), 1);

    for n in 0..3 {
        let extra = mapping(i.id, TaskId::new(), &format!("octo/repo#{}", 100 + n));
        stores.mappings.create_mapping(&extra).await.unwrap();
    }
    let p1 = stores.mappings.list_mappings(i.id, 3, None).await.unwrap();
    assert_eq!(p1.items.len(), 3);
    let p2 = stores.mappings.list_mappings(i.id, 3, p1.next.map(Into::into)).await.unwrap();
    assert_eq!(p2.items.len(), 1);
    assert_eq!(p2.items[0].id, m.id, "newest first, the oldest last");
    assert!(p2.next.is_none());
    assert!(matches!(
        stores.mappings.list_mappings(i.id, 0, None).await,
        Err(Error::Invalid { field, .. }) if field == "limit"
    ));

    // Deleting a mapping takes its conflicts with it and frees the task and the item.
    stores.mappings.delete_mapping(m.id).await.unwrap();
    assert!(stores.mappings.mapping_by_task(i.id, task).await.unwrap().is_none());
    assert!(stores.mappings.list_conflicts(i.id, false, 10, None).await.unwrap().items.is_empty());
    assert!(matches!(
        stores.mappings.delete_mapping(m.id).await,
        Err(Error::NotFound { entity: "mapping" })
    ));
    let (relinked, new) =
        stores.mappings.create_mapping(&mapping(i.id, task, "octo/repo#9")).await.unwrap();
    assert!(new && relinked.external_id == "octo/repo#9");
}

/// Logs list newest first, per integration or all, and what comes back is redacted.
pub async fn logs_page_newest_first_and_stay_redacted(stores: &IntegrationStores) {
    let i = integration(stores).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let e = LogEntry {
            id: LogId::new(),
            integration_id: Some(i.id),
            provider: "github".into(),
            direction: Direction::Outbound,
            operation: "issue.update".into(),
            ok: n != 1,
            detail: Redacted::new(json!({"n": n, "access_token": "gho_secret"})),
            at: at(n),
        };
        stores.logs.append_log(&e).await.unwrap();
        ids.push(e.id);
    }
    let page = stores.logs.list_logs(Some(i.id), 2, None).await.unwrap();
    assert_eq!(page.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[2], ids[1]]);
    assert!(!page.items[1].ok);
    let rest = stores.logs.list_logs(Some(i.id), 2, page.next.map(Into::into)).await.unwrap();
    assert_eq!(rest.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[0]]);
    assert!(!rest.items[0].detail.as_value().to_string().contains("gho_secret"));
    assert!(!stores.logs.list_logs(None, 100, None).await.unwrap().items.is_empty());
}

fn subscription(org: OrgId) -> Subscription {
    Subscription {
        id: SubscriptionId::new(),
        org_id: org,
        project_id: None,
        url: "https://hooks.example.test/pm".into(),
        events: EventFilter::parse(vec!["task.*".into()]).unwrap(),
        description: "CI".into(),
        secrets: Sealed::from_stored("v1.k.secrets"),
        enabled: true,
        disabled_reason: None,
        consecutive_failures: 0,
        version: 1,
        created_at: at(0),
        updated_at: at(0),
    }
}

/// Subscriptions: CRUD at versions; enabling forgives a failure streak.
pub async fn subscriptions_are_versioned(stores: &IntegrationStores) {
    let org = OrgId::new();
    let s = subscription(org);
    stores.webhooks.create_subscription(&s).await.unwrap();
    assert_eq!(stores.webhooks.get_subscription(s.id).await.unwrap(), s);
    assert_eq!(stores.webhooks.list_subscriptions(org).await.unwrap(), vec![s.clone()]);
    assert!(stores.webhooks.enabled_subscriptions().await.unwrap().iter().any(|x| x.id == s.id));

    let patch = SubscriptionPatch {
        events: Some(EventFilter::parse(vec!["*".into()]).unwrap()),
        enabled: Some(false),
        ..Default::default()
    };
    let u = stores.webhooks.update_subscription(s.id, 1, &patch, at(1)).await.unwrap();
    assert_eq!((u.version, u.enabled), (2, false));
    assert!(u.events.matches("comment.created"));
    assert!(!stores.webhooks.enabled_subscriptions().await.unwrap().iter().any(|x| x.id == s.id));
    assert!(matches!(
        stores.webhooks.update_subscription(s.id, 1, &patch, at(2)).await,
        Err(Error::Conflict { current: 2, .. })
    ));
    stores.webhooks.delete_subscription(s.id).await.unwrap();
    assert!(matches!(stores.webhooks.get_subscription(s.id).await, Err(Error::NotFound { .. })));
}

fn event(seq: i64, org: OrgId) -> Event {
    Event {
        seq,
        id: EventId::new(),
        at: at(seq),
        org_id: Some(org),
        project_id: None,
        task_id: None,
        actor: Actor::System,
        kind: EventKind::TaskCreated,
        subject: uuid::Uuid::now_v7(),
        payload: json!({"n": seq}),
        cause: None,
    }
}

/// Enqueue is idempotent and moves the cursor; attempts retry, then disable the subscription at
/// the threshold; a success resets the streak; redelivery makes a delivery due again.
pub async fn outbound_deliveries_enqueue_retry_and_disable(stores: &IntegrationStores) {
    let org = OrgId::new();
    let s = subscription(org);
    stores.webhooks.create_subscription(&s).await.unwrap();
    let consumer = format!("test-{}", uuid::Uuid::now_v7().simple());
    assert_eq!(stores.webhooks.cursor(&consumer).await.unwrap(), 0);

    let (e1, e2) = (event(1, org), event(2, org));
    let batch =
        vec![OutboundDelivery::new(s.id, &e1, at(0)), OutboundDelivery::new(s.id, &e2, at(0))];
    assert_eq!(stores.webhooks.enqueue_outbound(&consumer, 2, &batch).await.unwrap(), 2);
    assert_eq!(stores.webhooks.cursor(&consumer).await.unwrap(), 2);
    // Re-enqueueing the same events (a crash before the cursor moved elsewhere) adds nothing,
    // and the cursor never moves back.
    let dup = vec![OutboundDelivery::new(s.id, &e1, at(0))];
    assert_eq!(stores.webhooks.enqueue_outbound(&consumer, 1, &dup).await.unwrap(), 0);
    assert_eq!(stores.webhooks.cursor(&consumer).await.unwrap(), 2);
    let orphan = vec![OutboundDelivery::new(SubscriptionId::new(), &e1, at(0))];
    assert!(matches!(
        stores.webhooks.enqueue_outbound(&consumer, 3, &orphan).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(stores.webhooks.cursor(&consumer).await.unwrap(), 2, "failed enqueue moved nothing");

    let ours = |v: Vec<OutboundDelivery>| -> Vec<OutboundDelivery> {
        v.into_iter().filter(|d| d.subscription_id == s.id).collect()
    };
    let claimed = ours(stores.webhooks.claim_outbound(at(1), at(31), 100).await.unwrap());
    assert_eq!(claimed.iter().map(|d| d.event_id).collect::<Vec<_>>(), vec![e1.id, e2.id]);
    assert!(ours(stores.webhooks.claim_outbound(at(2), at(32), 100).await.unwrap()).is_empty());

    let fail = |t: i64, retry: Option<i64>| OutboundAttempt {
        status: Some(500),
        error: Some("HTTP 500".into()),
        retry_at: retry.map(at),
        at: at(t),
        disable_after: 3,
    };
    let (d, sub) =
        stores.webhooks.finish_outbound(claimed[0].id, &fail(2, Some(10))).await.unwrap();
    assert_eq!((d.status, d.attempts, d.last_status), (QueueStatus::Pending, 1, Some(500)));
    assert_eq!((sub.consecutive_failures, sub.enabled), (1, true));
    let ok = OutboundAttempt {
        status: Some(204),
        error: None,
        retry_at: None,
        at: at(3),
        disable_after: 3,
    };
    let (d2, sub) = stores.webhooks.finish_outbound(claimed[1].id, &ok).await.unwrap();
    assert_eq!(d2.status, QueueStatus::Done);
    assert_eq!(sub.consecutive_failures, 0, "a success resets the streak");

    // Three failures in a row disable it, once, with a reason.
    let mut last = None;
    for n in 0..3 {
        let due = ours(
            stores
                .webhooks
                .claim_outbound(at(100 + n * 100), at(130 + n * 100), 100)
                .await
                .unwrap(),
        );
        assert_eq!(due.len(), 1, "retry {n} is due");
        let retry = if n < 2 { Some(150 + n * 100) } else { None };
        last = Some(
            stores.webhooks.finish_outbound(due[0].id, &fail(101 + n * 100, retry)).await.unwrap(),
        );
    }
    let (dead, sub) = last.unwrap();
    assert_eq!((dead.status, dead.attempts), (QueueStatus::Failed, 4));
    assert_eq!((sub.enabled, sub.consecutive_failures), (false, 3));
    assert!(sub.disabled_reason.is_some());
    assert_eq!(sub.version, 2, "disabling is a change of the subscription");

    let again = stores.webhooks.redeliver(dead.id, at(1000)).await.unwrap();
    assert_eq!(
        (again.status, again.attempts, again.available_at),
        (QueueStatus::Pending, 0, at(1000))
    );
    assert_eq!(
        ours(stores.webhooks.claim_outbound(at(1000), at(1030), 100).await.unwrap()).len(),
        1
    );

    let page = stores.webhooks.list_outbound(s.id, 1, None).await.unwrap();
    assert_eq!(page.items[0].event_id, e2.id, "newest first");
    let rest = stores.webhooks.list_outbound(s.id, 1, page.next.map(Into::into)).await.unwrap();
    assert_eq!(rest.items[0].event_id, e1.id);
    assert_eq!(stores.webhooks.get_outbound(dead.id).await.unwrap().id, dead.id);

    // Enabling again forgives the streak.
    let enable = SubscriptionPatch { enabled: Some(true), ..Default::default() };
    let back = stores.webhooks.update_subscription(s.id, 2, &enable, at(2000)).await.unwrap();
    assert_eq!((back.enabled, back.consecutive_failures, back.disabled_reason), (true, 0, None));
    stores.webhooks.delete_subscription(s.id).await.unwrap();
    assert!(matches!(stores.webhooks.get_outbound(dead.id).await, Err(Error::NotFound { .. })));
}

/// A comment link is unique per pm comment (linking again returns it) and per provider comment
/// (`AlreadyExists`); fingerprints update; deleting reports whether it existed; links go with
/// their integration.
pub async fn comment_links_are_unique_both_ways(stores: &IntegrationStores) {
    let i = integration(stores).await;
    let s = &stores.sync_state;
    let link = CommentLink {
        id: CommentLinkId::new(),
        integration_id: i.id,
        task_id: TaskId::new(),
        comment_id: CommentId::new(),
        external_id: "octo/repo#1".into(),
        external_comment_id: "9001".into(),
        local_fingerprint: "l1".into(),
        remote_fingerprint: "r1".into(),
        origin: Side::Remote,
        created_at: at(1),
        updated_at: at(1),
    };
    let (stored, new) = s.link_comment(&link).await.expect("link");
    assert!(new);
    assert_eq!(stored, link);
    let again = CommentLink {
        id: CommentLinkId::new(),
        external_comment_id: "9002".into(),
        ..link.clone()
    };
    let (existing, new) = s.link_comment(&again).await.expect("link again");
    assert!(!new, "the pm comment is linked already");
    assert_eq!(existing.id, link.id);
    let other =
        CommentLink { id: CommentLinkId::new(), comment_id: CommentId::new(), ..link.clone() };
    assert!(matches!(s.link_comment(&other).await, Err(Error::AlreadyExists { .. })));
    let by_external =
        s.comment_link_by_external(i.id, "9001").await.expect("read").expect("linked");
    assert_eq!(by_external.comment_id, link.comment_id);
    s.update_comment_link(link.id, "l2", "r2", at(2)).await.expect("update");
    let updated = s.comment_link(i.id, link.comment_id).await.expect("read").expect("linked");
    assert_eq!(
        (updated.local_fingerprint.as_str(), updated.remote_fingerprint.as_str()),
        ("l2", "r2")
    );
    assert_eq!(updated.updated_at, at(2));
    assert!(s.delete_comment_link(link.id).await.expect("delete"));
    assert!(!s.delete_comment_link(link.id).await.expect("delete again"));
    assert!(matches!(
        s.update_comment_link(link.id, "l", "r", at(3)).await,
        Err(Error::NotFound { .. })
    ));
    assert!(s.comment_link(i.id, link.comment_id).await.expect("read").is_none());
    s.link_comment(&link).await.expect("relink");
    stores.integrations.delete_integration(i.id).await.expect("delete integration");
    assert!(s.comment_link(i.id, link.comment_id).await.expect("read").is_none());
}

/// An intent is claimed by one caller; a second sees it in flight, or done with its result;
/// a stale pending one is taken over; abandoning frees the key; in-flight counts honour kind
/// and age.
pub async fn intents_are_claimed_once_and_taken_over_when_stale(stores: &IntegrationStores) {
    let i = integration(stores).await;
    let s = &stores.sync_state;
    let key = format!("test:{}", uuid::Uuid::now_v7());
    let intent = Intent {
        key: key.clone(),
        integration_id: i.id,
        kind: "item.create".into(),
        started_at: at(100),
    };
    assert_eq!(s.begin_intent(&intent, at(0)).await.expect("begin"), IntentClaim::Claimed);
    assert_eq!(s.begin_intent(&intent, at(50)).await.expect("again"), IntentClaim::InFlight);
    assert_eq!(s.intents_in_flight(i.id, "item.create", at(99)).await.expect("count"), 1);
    assert_eq!(s.intents_in_flight(i.id, "item.create", at(100)).await.expect("count"), 0);
    assert_eq!(s.intents_in_flight(i.id, "slack.message", at(0)).await.expect("count"), 0);
    // Its sender died: past its lease the next caller takes it over.
    let later = Intent { started_at: at(200), ..intent.clone() };
    assert_eq!(s.begin_intent(&later, at(150)).await.expect("take over"), IntentClaim::Claimed);
    assert_eq!(s.intents_in_flight(i.id, "item.create", at(150)).await.expect("count"), 1);
    s.finish_intent(&key, &json!({"ts": "1.2"}), at(201)).await.expect("finish");
    assert_eq!(
        s.begin_intent(&Intent { started_at: at(900), ..intent.clone() }, at(800))
            .await
            .expect("done"),
        IntentClaim::Done(json!({"ts": "1.2"}))
    );
    assert_eq!(s.intents_in_flight(i.id, "item.create", at(0)).await.expect("count"), 0);
    s.abandon_intent(&key).await.expect("abandon leaves a done intent");
    assert!(matches!(
        s.begin_intent(&intent, at(0)).await.expect("still done"),
        IntentClaim::Done(_)
    ));
    let other = Intent { key: format!("test:{}", uuid::Uuid::now_v7()), ..intent.clone() };
    assert_eq!(s.begin_intent(&other, at(0)).await.expect("begin"), IntentClaim::Claimed);
    s.abandon_intent(&other.key).await.expect("abandon");
    assert_eq!(s.begin_intent(&other, at(0)).await.expect("free again"), IntentClaim::Claimed);
    assert!(matches!(
        s.finish_intent("test:unknown", &json!(null), at(1)).await,
        Err(Error::NotFound { .. })
    ));
    let orphan = Intent {
        integration_id: IntegrationId::new(),
        key: format!("test:{}", uuid::Uuid::now_v7()),
        ..intent
    };
    assert!(matches!(s.begin_intent(&orphan, at(0)).await, Err(Error::NotFound { .. })));
}

/// A failure is stored once per (integration, event) — a second record updates it — and listed
/// newest first with a cursor.
pub async fn sync_failures_are_recorded_once_per_event_and_listed(stores: &IntegrationStores) {
    let i = integration(stores).await;
    let s = &stores.sync_state;
    let failure = |seq: i64| SyncFailure {
        id: SyncFailureId::new(),
        integration_id: i.id,
        task_id: Some(TaskId::new()),
        event_id: EventId::new(),
        event_seq: seq,
        event_kind: "task.updated".into(),
        attempts: 1,
        error: "provider github failed: HTTP 502".into(),
        failed_at: at(seq),
    };
    let (a, b) = (failure(1), failure(2));
    s.record_sync_failure(&a).await.expect("record");
    s.record_sync_failure(&b).await.expect("record");
    let retried =
        SyncFailure { id: SyncFailureId::new(), attempts: 7, error: "later".into(), ..b.clone() };
    s.record_sync_failure(&retried).await.expect("record again");
    let page = s.list_sync_failures(i.id, 1, None).await.expect("list");
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, b.id, "newest first, one row per event");
    assert_eq!((page.items[0].attempts, page.items[0].error.as_str()), (7, "later"));
    let rest = s.list_sync_failures(i.id, 10, page.next.map(SyncFailureId)).await.expect("list");
    assert_eq!(rest.items, vec![a]);
    assert!(rest.next.is_none());
    assert!(matches!(s.list_sync_failures(i.id, 0, None).await, Err(Error::Invalid { .. })));
}

fn task_event(seq: i64, org: OrgId, task: TaskId) -> Event {
    Event { task_id: Some(task), kind: EventKind::TaskUpdated, ..event(seq, org) }
}

/// Parking is idempotent per (integration, event); only the oldest parked event of an
/// (integration, task) is claimed, soonest due first, and a claim leases it; a later event of
/// the task is claimable once the earlier one is dropped; a reschedule records the attempt.
pub async fn parked_pushes_are_claimed_in_event_order_per_task(stores: &IntegrationStores) {
    let i = integration(stores).await;
    let s = &stores.sync_state;
    let (a, b) = (TaskId::new(), TaskId::new());
    // Far in the future, so other checks' rows sharing the database are never due here.
    let t0 = at(10_000_000);
    let later = |secs: i64| t0 + time::Duration::seconds(secs);
    let a1 =
        ParkedPush::new(i.id, &task_event(10, i.org_id, a), 1, Some("502".into()), later(5), t0)
            .expect("push");
    let a2 = ParkedPush::new(i.id, &task_event(11, i.org_id, a), 0, None, t0, t0).expect("push");
    let b1 =
        ParkedPush::new(i.id, &task_event(12, i.org_id, b), 1, None, later(1), t0).expect("push");
    assert!(!s.has_parked_pushes(i.id, a).await.expect("has"));
    for p in [&a1, &a2, &b1] {
        assert!(s.park_push(p).await.expect("park"));
    }
    let again = ParkedPush { id: ParkedPushId::new(), ..a1.clone() };
    assert!(!s.park_push(&again).await.expect("park again"), "one row per event");
    assert!(s.has_parked_pushes(i.id, a).await.expect("has"));
    assert!(!s.has_parked_pushes(i.id, TaskId::new()).await.expect("has"));
    // Listed from the queue's head (oldest parked first), a page at a time.
    let first = s.list_parked_pushes(i.id, 2, None).await.expect("list");
    assert_eq!(first.items, vec![a1.clone(), a2.clone()], "round trip, oldest first");
    let rest = s.list_parked_pushes(i.id, 2, first.next.map(ParkedPushId)).await.expect("list");
    assert_eq!(rest.items, vec![b1.clone()]);
    assert!(rest.next.is_none());

    // a2 is due but waits behind a1; b1 is due at +1.
    let mine = |v: Vec<ParkedPush>| -> Vec<ParkedPushId> {
        v.into_iter().filter(|p| p.integration_id == i.id).map(|p| p.id).collect()
    };
    assert!(mine(s.claim_parked_pushes(t0, later(60), 10).await.expect("claim")).is_empty());
    assert_eq!(mine(s.claim_parked_pushes(later(1), later(60), 10).await.expect("claim")), [b1.id]);
    // Leased: not claimed again before the lease ends (and a1 is not due yet).
    assert!(mine(s.claim_parked_pushes(later(2), later(60), 10).await.expect("claim")).is_empty());
    let claimed = s.claim_parked_pushes(later(60), later(120), 10).await.expect("claim");
    let ids = mine(claimed.clone());
    assert_eq!(ids, [a1.id, b1.id], "a1 due at +5, b1's lease over at +60");
    assert_eq!(claimed.iter().find(|p| p.id == a1.id).expect("a1").next_attempt_at, later(120));

    s.reschedule_push(a1.id, 2, "HTTP 503", later(200)).await.expect("reschedule");
    let a1_now = s.list_parked_pushes(i.id, 10, None).await.expect("list").items;
    let a1_now = a1_now.iter().find(|p| p.id == a1.id).expect("a1");
    assert_eq!((a1_now.attempts, a1_now.last_error.as_deref()), (2, Some("HTTP 503")));
    assert_eq!(a1_now.next_attempt_at, later(200));
    assert!(s.drop_parked_push(b1.id).await.expect("drop"));
    assert!(!s.drop_parked_push(b1.id).await.expect("drop again"));
    assert!(matches!(s.reschedule_push(b1.id, 1, "x", t0).await, Err(Error::NotFound { .. })));
    // a1 pushed: a2 comes next.
    assert!(s.drop_parked_push(a1.id).await.expect("drop"));
    assert_eq!(
        mine(s.claim_parked_pushes(later(121), later(180), 10).await.expect("claim")),
        [a2.id]
    );
    assert!(matches!(s.list_parked_pushes(i.id, 0, None).await, Err(Error::Invalid { .. })));
    let orphan =
        ParkedPush { id: ParkedPushId::new(), integration_id: IntegrationId::new(), ..a2.clone() };
    assert!(matches!(s.park_push(&orphan).await, Err(Error::NotFound { .. })));
    stores.integrations.delete_integration(i.id).await.expect("delete integration");
    assert!(s.list_parked_pushes(i.id, 10, None).await.expect("list").items.is_empty());
}

/// Giving up removes the parked push and records the failure together; a failure is read,
/// dismissed, or re-queued (deleted and parked together, once).
pub async fn parked_pushes_give_up_into_failures_and_failures_requeue(stores: &IntegrationStores) {
    let i = integration(stores).await;
    let s = &stores.sync_state;
    let task = TaskId::new();
    let t0 = at(20_000_000);
    let e = task_event(20, i.org_id, task);
    let p = ParkedPush::new(i.id, &e, 7, Some("HTTP 502".into()), t0, t0).expect("push");
    s.park_push(&p).await.expect("park");
    let failure = SyncFailure {
        id: SyncFailureId::new(),
        integration_id: i.id,
        task_id: Some(task),
        event_id: e.id,
        event_seq: e.seq,
        event_kind: "task.updated".into(),
        attempts: 7,
        error: "HTTP 502".into(),
        failed_at: t0,
    };
    s.fail_parked_push(p.id, &failure).await.expect("give up");
    assert!(!s.has_parked_pushes(i.id, task).await.expect("has"));
    assert_eq!(s.get_sync_failure(failure.id).await.expect("get"), failure);
    assert!(matches!(s.fail_parked_push(p.id, &failure).await, Err(Error::NotFound { .. })));

    let requeued = ParkedPush::new(i.id, &e, 0, None, t0, t0).expect("push");
    s.requeue_sync_failure(failure.id, &requeued).await.expect("requeue");
    assert!(matches!(s.get_sync_failure(failure.id).await, Err(Error::NotFound { .. })));
    assert_eq!(
        s.list_parked_pushes(i.id, 10, None).await.expect("list").items,
        vec![requeued.clone()]
    );
    let twice = ParkedPush { id: ParkedPushId::new(), ..requeued.clone() };
    assert!(matches!(
        s.requeue_sync_failure(failure.id, &twice).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(s.list_parked_pushes(i.id, 10, None).await.expect("list").items.len(), 1);

    let other = SyncFailure { id: SyncFailureId::new(), event_id: EventId::new(), ..failure };
    s.record_sync_failure(&other).await.expect("record");
    assert!(s.delete_sync_failure(other.id).await.expect("dismiss"));
    assert!(!s.delete_sync_failure(other.id).await.expect("dismiss again"));
    assert!(matches!(s.get_sync_failure(other.id).await, Err(Error::NotFound { .. })));
}

/// The queue's statistics count the parked pushes of every integration of a provider and give
/// the oldest one's parking time; a provider with nothing parked is absent.
pub async fn parked_push_stats_count_per_provider_since_the_oldest(stores: &IntegrationStores) {
    // Providers of their own, so other checks' rows sharing the database do not count here.
    let fresh = || {
        ProviderKey::parse(&format!("q{}", &uuid::Uuid::now_v7().simple().to_string()[20..]))
            .expect("valid key")
    };
    let (busy, idle) = (fresh(), fresh());
    let s = &stores.sync_state;
    let base = integration(stores).await;
    let mut of = Vec::new();
    for provider in [&busy, &busy, &idle] {
        let i =
            Integration { id: IntegrationId::new(), provider: provider.clone(), ..base.clone() };
        stores.integrations.create_integration(&i).await.expect("create integration");
        of.push(i);
    }
    let stats_of =
        |all: Vec<ParkedPushStats>, k: &ProviderKey| all.into_iter().find(|st| &st.provider == k);
    assert!(stats_of(s.parked_push_stats().await.expect("stats"), &busy).is_none());

    let t0 = at(30_000_000);
    let mut parked = Vec::new();
    for (n, (i, since)) in [(&of[0], 20), (&of[1], 5), (&of[1], 9)].into_iter().enumerate() {
        let e = task_event(30 + n as i64, i.org_id, TaskId::new());
        let when = t0 + time::Duration::seconds(since);
        let p = ParkedPush::new(i.id, &e, 1, Some("HTTP 503".into()), when, when).expect("push");
        assert!(s.park_push(&p).await.expect("park"));
        parked.push(p);
    }
    let all = s.parked_push_stats().await.expect("stats");
    let st = stats_of(all.clone(), &busy).expect("busy provider listed");
    assert_eq!((st.count, st.oldest_parked_at), (3, t0 + time::Duration::seconds(5)), "{st:?}");
    assert!(stats_of(all, &idle).is_none(), "nothing parked for the idle provider");

    // The oldest one pushed: the age restarts at the next oldest.
    assert!(s.drop_parked_push(parked[1].id).await.expect("drop"));
    let st = stats_of(s.parked_push_stats().await.expect("stats"), &busy).expect("listed");
    assert_eq!((st.count, st.oldest_parked_at), (2, t0 + time::Duration::seconds(9)));
    for p in [&parked[0], &parked[2]] {
        assert!(s.drop_parked_push(p.id).await.expect("drop"));
    }
    assert!(stats_of(s.parked_push_stats().await.expect("stats"), &busy).is_none());
}
