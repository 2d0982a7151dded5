//! The server side of the PWA (issue 8): offline sync ([`sync`], protocol in
//! `docs/sync-protocol.md`), Web Push ([`push`] delivery and subscriptions, [`webpush`] the
//! RFC 8291 encryption and RFC 8292 VAPID signatures) and the tables they need ([`store`]: op
//! results for exactly-once replay, push subscriptions).
//!
//! The routes are in `api::sync` and `api::push`; they only parse and answer, the rules live
//! here.

pub mod push;
pub mod store;
pub mod sync;
pub mod webpush;
