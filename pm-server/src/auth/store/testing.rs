//! The [`AuthStore`] conformance suite (feature `testing`). Every adapter, including a host's
//! own, runs [`run_all`] against a migrated store whose database also holds pm-core's tables
//! (`directory` creates the users the auth rows refer to). Panics on the first violation.

use pm_core::event::Origin;
use pm_core::id::UserId;
use pm_core::model::{Email, Name, User, now};
use pm_core::store::DirectoryStore;
use time::Duration;
use uuid::Uuid;

use super::{ApiToken, AuthStore, Invite, NewRefreshToken, Rotation, Successor, TokenHash};
use crate::auth::Scope;

/// Runs every check.
pub async fn run_all(store: &dyn AuthStore, directory: &dyn DirectoryStore) {
    credentials(store, directory).await;
    refresh_rotation(store, directory).await;
    concurrent_rotation(store, directory).await;
    api_tokens(store, directory).await;
    invites(store, directory).await;
    secrets(store).await;
}

async fn user(directory: &dyn DirectoryStore) -> UserId {
    let id = UserId::new();
    let user = User {
        id,
        email: Email::parse(&format!("{}@example.com", id.0.simple())).unwrap(),
        display_name: Name::parse("Conformance").unwrap(),
        created_at: now(),
    };
    directory.create_user(&Origin::system(), &user).await.expect("create user");
    id
}

fn hash() -> TokenHash {
    let mut h = [0u8; 32];
    h[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    h[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    h
}

fn successor() -> Successor {
    Successor { id: Uuid::now_v7(), token_hash: hash(), expires_at: now() + Duration::days(1) }
}

fn login(user: UserId, family: Uuid) -> NewRefreshToken {
    NewRefreshToken {
        id: Uuid::now_v7(),
        family_id: family,
        user_id: user,
        token_hash: hash(),
        expires_at: now() + Duration::days(1),
        created_at: now(),
    }
}

/// Passwords: create once, change (revoking other families), unknown users.
pub async fn credentials(store: &dyn AuthStore, directory: &dyn DirectoryStore) {
    let u = user(directory).await;
    assert_eq!(store.password_hash(u).await.unwrap(), None);
    store.create_credential(u, "$argon2id$one", now()).await.unwrap();
    assert_eq!(store.password_hash(u).await.unwrap().as_deref(), Some("$argon2id$one"));
    let again = store.create_credential(u, "$argon2id$two", now()).await.unwrap_err();
    assert!(matches!(again, pm_core::Error::AlreadyExists { .. }), "{again:?}");

    let keep = login(u, Uuid::now_v7());
    let other = login(u, Uuid::now_v7());
    store.insert_refresh(&keep).await.unwrap();
    store.insert_refresh(&other).await.unwrap();
    store.change_password(u, "$argon2id$three", Some(keep.family_id), now()).await.unwrap();
    assert_eq!(store.password_hash(u).await.unwrap().as_deref(), Some("$argon2id$three"));
    assert!(matches!(
        store.rotate_refresh(&other.token_hash, &successor(), now()).await.unwrap(),
        Rotation::Invalid
    ));
    assert!(matches!(
        store.rotate_refresh(&keep.token_hash, &successor(), now()).await.unwrap(),
        Rotation::Rotated { .. }
    ));

    let nobody = user(directory).await;
    let missing = store.change_password(nobody, "$x", None, now()).await.unwrap_err();
    assert!(matches!(missing, pm_core::Error::NotFound { .. }), "{missing:?}");
}

/// Rotation, reuse detection, expiry and logout.
pub async fn refresh_rotation(store: &dyn AuthStore, directory: &dyn DirectoryStore) {
    let u = user(directory).await;
    let family = Uuid::now_v7();
    let first = login(u, family);
    store.insert_refresh(&first).await.unwrap();

    let second = successor();
    assert_eq!(
        store.rotate_refresh(&first.token_hash, &second, now()).await.unwrap(),
        Rotation::Rotated { user_id: u, family_id: family }
    );
    let third = successor();
    assert_eq!(
        store.rotate_refresh(&second.token_hash, &third, now()).await.unwrap(),
        Rotation::Rotated { user_id: u, family_id: family }
    );
    // Replaying the first token revokes the family: the newest token stops working too.
    assert_eq!(
        store.rotate_refresh(&first.token_hash, &successor(), now()).await.unwrap(),
        Rotation::Reused { user_id: u, family_id: family }
    );
    assert_eq!(
        store.rotate_refresh(&third.token_hash, &successor(), now()).await.unwrap(),
        Rotation::Invalid
    );
    assert_eq!(
        store.rotate_refresh(&hash(), &successor(), now()).await.unwrap(),
        Rotation::Invalid
    );

    // Expired tokens do not rotate.
    let mut old = login(u, Uuid::now_v7());
    old.expires_at = now() - Duration::seconds(1);
    store.insert_refresh(&old).await.unwrap();
    assert_eq!(
        store.rotate_refresh(&old.token_hash, &successor(), now()).await.unwrap(),
        Rotation::Invalid
    );

    // Logout revokes the family of any of its tokens.
    let session = login(u, Uuid::now_v7());
    store.insert_refresh(&session).await.unwrap();
    let next = successor();
    store.rotate_refresh(&session.token_hash, &next, now()).await.unwrap();
    assert!(store.revoke_refresh_family(&session.token_hash, now()).await.unwrap());
    assert_eq!(
        store.rotate_refresh(&next.token_hash, &successor(), now()).await.unwrap(),
        Rotation::Invalid
    );
    assert!(!store.revoke_refresh_family(&hash(), now()).await.unwrap());
}

/// Two concurrent presentations of one token: exactly one rotates, and the family ends revoked.
pub async fn concurrent_rotation(store: &dyn AuthStore, directory: &dyn DirectoryStore) {
    let u = user(directory).await;
    for _ in 0..5 {
        let t = login(u, Uuid::now_v7());
        store.insert_refresh(&t).await.unwrap();
        let (a, b) = (successor(), successor());
        let (ra, rb) = tokio::join!(
            store.rotate_refresh(&t.token_hash, &a, now()),
            store.rotate_refresh(&t.token_hash, &b, now())
        );
        let results = [ra.unwrap(), rb.unwrap()];
        let rotated = results.iter().filter(|r| matches!(r, Rotation::Rotated { .. })).count();
        let reused = results.iter().filter(|r| matches!(r, Rotation::Reused { .. })).count();
        assert_eq!((rotated, reused), (1, 1), "{results:?}");
        for s in [a, b] {
            let r = store.rotate_refresh(&s.token_hash, &successor(), now()).await.unwrap();
            assert_eq!(r, Rotation::Invalid, "a successor survived a detected reuse");
        }
    }
}

/// API tokens: create, find, list (unrevoked only, oldest first), revoke (owner only), touch.
pub async fn api_tokens(store: &dyn AuthStore, directory: &dyn DirectoryStore) {
    let (u, other) = (user(directory).await, user(directory).await);
    let at = now();
    let token = |name: &str, scope, created_at| ApiToken {
        id: Uuid::now_v7(),
        user_id: u,
        name: name.to_owned(),
        token_hash: hash(),
        scope,
        expires_at: Some(at + Duration::days(30)),
        revoked_at: None,
        last_used_at: None,
        created_at,
    };
    let a = token("ci", Scope::Read, at);
    let mut b = token("laptop", Scope::Write, at + Duration::seconds(1));
    b.expires_at = None;
    store.create_api_token(&a).await.unwrap();
    store.create_api_token(&b).await.unwrap();
    assert_eq!(store.find_api_token(&a.token_hash).await.unwrap().as_ref(), Some(&a));
    assert_eq!(store.find_api_token(&hash()).await.unwrap(), None);
    assert_eq!(store.list_api_tokens(u).await.unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(store.list_api_tokens(other).await.unwrap(), vec![]);

    let used = at + Duration::seconds(5);
    store.touch_api_token(a.id, used).await.unwrap();
    assert_eq!(
        store.find_api_token(&a.token_hash).await.unwrap().unwrap().last_used_at,
        Some(used)
    );

    let e = store.revoke_api_token(other, a.id, now()).await.unwrap_err();
    assert!(matches!(e, pm_core::Error::NotFound { .. }), "{e:?}");
    store.revoke_api_token(u, a.id, now()).await.unwrap();
    let found = store.find_api_token(&a.token_hash).await.unwrap().unwrap();
    assert!(found.revoked_at.is_some() && !found.is_active(now()));
    assert_eq!(store.list_api_tokens(u).await.unwrap(), vec![b.clone()]);
    let e = store.revoke_api_token(u, a.id, now()).await.unwrap_err();
    assert!(matches!(e, pm_core::Error::NotFound { .. }), "{e:?}");
}

/// Invites are single-use until released, and expire.
pub async fn invites(store: &dyn AuthStore, directory: &dyn DirectoryStore) {
    let u = user(directory).await;
    let invite = Invite {
        id: Uuid::now_v7(),
        token_hash: hash(),
        created_by: u,
        expires_at: now() + Duration::days(1),
        created_at: now(),
    };
    store.create_invite(&invite).await.unwrap();
    assert_eq!(store.consume_invite(&invite.token_hash, now()).await.unwrap(), Some(invite.id));
    assert_eq!(store.consume_invite(&invite.token_hash, now()).await.unwrap(), None);
    store.release_invite(invite.id).await.unwrap();
    assert_eq!(store.consume_invite(&invite.token_hash, now()).await.unwrap(), Some(invite.id));
    assert_eq!(store.consume_invite(&hash(), now()).await.unwrap(), None);

    let expired = Invite { id: Uuid::now_v7(), token_hash: hash(), expires_at: now(), ..invite };
    store.create_invite(&expired).await.unwrap();
    let later = now() + Duration::seconds(1);
    assert_eq!(store.consume_invite(&expired.token_hash, later).await.unwrap(), None);
}

/// The first stored secret wins.
pub async fn secrets(store: &dyn AuthStore) {
    let name = format!("test-{}", Uuid::now_v7());
    let first = store.load_or_store_secret(&name, b"first").await.unwrap();
    assert_eq!(first, b"first");
    assert_eq!(store.load_or_store_secret(&name, b"second").await.unwrap(), b"first");
}
