//! Comments both ways between pm tasks and the items of GitHub (issue comments) and Jira
//! (issue comments, ADF ↔ markdown), one [`CommentLink`] per pair. [`CommentApi`] holds what
//! differs between the two; the rules are the same.
//!
//! - **Inbound** (GitHub `issue_comment.created/edited/deleted`, Jira
//!   `comment_created/updated/deleted`, on a mapped item): a new provider comment becomes a pm
//!   comment on the mapped task, written by the integration's reporter and opening with who
//!   wrote it on the provider; the link is stored *before* the pm comment (under the comment
//!   id chosen then), so a redelivery finds the link and creates that same comment, and the
//!   pusher finds the link when the comment's event comes by. Edits and deletions apply to the
//!   linked pm comment.
//! - **Outbound** (`comment.created/updated/deleted` of a mapped task): POSTed as a comment of
//!   the item, edits sent (GitHub PATCH, Jira PUT), deletions DELETEd. The webhook of our own
//!   new comment may arrive before its link is saved: on GitHub what we post ends with an
//!   invisible marker (`<!-- pm:comment:<id> -->`) that names the pm comment; Jira documents
//!   (ADF) hold no such thing, so the pusher records a `comment.create` intent first and an
//!   unknown Jira comment arriving while one is in flight is deferred (retried) until the link
//!   exists — then it is an ordinary echo.
//! - **Whose comment it is**: a link remembers the side the comment was written on
//!   ([`CommentLink::origin`]). Only comments written in pm are pushed back when edited or
//!   deleted in pm. A comment copied from the provider is someone else's comment there — GitHub
//!   would refuse our edit (403), and rightly — so editing or deleting it in pm stays local:
//!   nothing is sent, nothing is recorded as a failure. Its author stays its owner: an edit on
//!   the provider replaces the pm copy (a local edit included); once deleted in pm it stays
//!   deleted (the link remains, so a later edit there does not bring it back).
//! - **Echo suppression** by fingerprint: the link holds a digest of the body each side held
//!   after the last sync. A change whose body equals it is the other side's copy of our own
//!   write and is ignored — whoever the actor (inbound comments are written as a user, since
//!   pm comments need a user author). Jira keeps ADF, so the body we expect back from it is
//!   ours through ADF and back ([`CommentApi::stored`]).
//!
//! Delivery is at-least-once: a crash after the provider accepted a comment and before the link
//! was stored re-posts it on replay unless the webhook (GitHub's, with its marker) linked it
//! first.

use pm_core::event::{Actor, Event, EventKind, Origin};
use pm_core::id::{CommentId, TaskId};
use pm_core::model::Markdown;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Applied, CREATE_LEASE, SyncEngine, core};
use crate::model::{
    CommentLink, CommentLinkId, Direction, ExternalMapping, Integration, Intent, IntentClaim,
};
use crate::provider::{InboundEvent, Provider, ProviderContext};
use crate::sync::Side;
use crate::{Error, Result};

/// The intent kind of comment creates (providers without a marker: Jira).
const COMMENT_INTENT: &str = "comment.create";

/// A provider's comments: what differs between GitHub's and Jira's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommentApi {
    /// GitHub issue comments (markdown, marker in an HTML comment).
    GitHub,
    /// Jira Cloud issue comments (ADF documents).
    Jira,
}

/// What happened to a provider comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommentAction {
    /// Written.
    Created,
    /// Changed.
    Edited,
    /// Removed.
    Deleted,
}

impl CommentApi {
    /// The comment API of provider `key`, if its comments are synced.
    pub fn of(key: &str) -> Option<Self> {
        match key {
            "github" => Some(CommentApi::GitHub),
            "jira" => Some(CommentApi::Jira),
            _ => None,
        }
    }

    /// The comment action a webhook event kind stands for, if it is one.
    pub fn inbound_action(self, kind: &str) -> Option<CommentAction> {
        use CommentAction::*;
        match (self, kind) {
            (CommentApi::GitHub, "issue_comment.created") => Some(Created),
            (CommentApi::GitHub, "issue_comment.edited") => Some(Edited),
            (CommentApi::GitHub, "issue_comment.deleted") => Some(Deleted),
            (CommentApi::Jira, "comment_created") => Some(Created),
            (CommentApi::Jira, "comment_updated") => Some(Edited),
            (CommentApi::Jira, "comment_deleted") => Some(Deleted),
            _ => None,
        }
    }

    /// The provider's name in bylines.
    fn name(self) -> &'static str {
        match self {
            CommentApi::GitHub => "GitHub",
            CommentApi::Jira => "Jira",
        }
    }

    /// Whether what we post carries pm's marker (GitHub); else creates go through intents.
    fn marks(self) -> bool {
        self == CommentApi::GitHub
    }

    /// The provider's id of a webhook's `comment`.
    fn id(self, c: &Value) -> Option<String> {
        match self {
            CommentApi::GitHub => c["id"].as_i64().map(|n| n.to_string()),
            CommentApi::Jira => c["id"].as_str().map(str::to_owned),
        }
    }

    /// A webhook comment's body as markdown (Jira: ADF, or a plain string).
    fn body(self, c: &Value) -> String {
        match (self, &c["body"]) {
            (CommentApi::Jira, doc @ Value::Object(_)) => crate::adf::to_markdown(doc),
            (_, b) => b.as_str().unwrap_or_default().to_owned(),
        }
    }

    /// The byline of a webhook comment's author.
    fn byline(self, c: &Value) -> String {
        match self {
            CommentApi::GitHub => {
                format!("@{}", c["user"]["login"].as_str().unwrap_or("someone"))
            }
            CommentApi::Jira => c["author"]["displayName"].as_str().unwrap_or("someone").to_owned(),
        }
    }

    /// The body the provider holds, and sends back, after we write `body`: Jira keeps ADF.
    pub fn stored(self, body: &str) -> String {
        match self {
            CommentApi::GitHub => body.to_owned(),
            CommentApi::Jira => crate::adf::to_markdown(&crate::adf::from_markdown(body)),
        }
    }

    /// Posts pm comment `id` on `item`; returns the provider's comment id.
    async fn post(
        self,
        ctx: &ProviderContext,
        item: &str,
        id: CommentId,
        body: &str,
    ) -> Result<String> {
        match self {
            CommentApi::GitHub => Ok(crate::providers::GitHub
                .comment(ctx, item, &with_marker(body, id))
                .await?
                .to_string()),
            CommentApi::Jira => crate::jira::comment(ctx, item, body).await,
        }
    }

    /// Replaces the body of the provider's comment `external` on `item`.
    async fn edit(
        self,
        ctx: &ProviderContext,
        item: &str,
        external: &str,
        id: CommentId,
        body: &str,
    ) -> Result<()> {
        match self {
            CommentApi::GitHub => {
                crate::providers::GitHub.edit_comment(ctx, external, &with_marker(body, id)).await
            }
            CommentApi::Jira => crate::jira::edit_comment(ctx, item, external, body).await,
        }
    }

    /// Deletes the provider's comment `external` on `item` (one already gone counts).
    async fn delete(self, ctx: &ProviderContext, item: &str, external: &str) -> Result<()> {
        match self {
            CommentApi::GitHub => crate::providers::GitHub.delete_comment(ctx, external).await,
            CommentApi::Jira => crate::jira::delete_comment(ctx, item, external).await,
        }
    }
}

const MARKER_PREFIX: &str = "<!-- pm:comment:";
const MARKER_SUFFIX: &str = " -->";

/// `body` with pm's marker for comment `id` appended (invisible in rendered markdown).
pub fn with_marker(body: &str, id: CommentId) -> String {
    format!("{}\n\n{MARKER_PREFIX}{}{MARKER_SUFFIX}", body.trim_end(), id.0)
}

/// Splits pm's marker off a provider comment body: (the pm comment it names, the body).
pub fn split_marker(body: &str) -> (Option<CommentId>, &str) {
    let trimmed = body.trim_end();
    if let Some(start) = trimmed.rfind(MARKER_PREFIX)
        && let Some(id) = trimmed[start + MARKER_PREFIX.len()..].strip_suffix(MARKER_SUFFIX)
        && let Ok(id) = uuid::Uuid::parse_str(id)
    {
        return (Some(CommentId(id)), trimmed[..start].trim_end());
    }
    (None, trimmed)
}

/// A digest of a comment body, line ends and trailing space normalized.
pub fn body_fingerprint(body: &str) -> String {
    let normalized = body.replace("\r\n", "\n");
    crate::webhook::hex(&Sha256::digest(normalized.trim_end().as_bytes()))
}

/// The pm body of a comment written on the provider `api` by `who`.
fn attributed(api: CommentApi, who: &str, body: &str) -> String {
    format!("**{who}** on {}:\n\n{}", api.name(), body.trim_end())
}

impl SyncEngine {
    /// Applies an `issue_comment.*` webhook event of `i` (GitHub).
    pub(super) async fn apply_inbound_comment(
        &self,
        i: &Integration,
        api: CommentApi,
        action: CommentAction,
        external_id: &str,
        ev: &InboundEvent,
    ) -> Result<Applied> {
        let comment = &ev.raw["comment"];
        let Some(cid) = api.id(comment) else {
            return Ok(Applied::Skipped("no comment"));
        };
        let raw_body = api.body(comment);
        let (marker, body) =
            if api.marks() { split_marker(&raw_body) } else { (None, raw_body.trim_end()) };
        let remote_fp = body_fingerprint(body);
        let link = self.stores.sync_state.comment_link_by_external(i.id, &cid).await?;
        let integration = Origin { actor: Actor::Integration(i.id), cause: None };
        if action == CommentAction::Deleted {
            let Some(l) = link else { return Ok(Applied::Skipped("not linked")) };
            // The link first: the pm deletion's event then finds nothing to push back.
            self.stores.sync_state.delete_comment_link(l.id).await?;
            match self.pm.delete_comment(&integration, l.comment_id).await {
                Ok(()) | Err(pm_core::Error::NotFound { .. }) => {}
                Err(e) => return Err(core(e)),
            }
            self.log(i, Direction::Inbound, "sync.comment_deleted", true, json!({
                "external_id": external_id, "comment_id": l.comment_id, "external_comment_id": cid,
            }))
            .await;
            return Ok(synced(l.task_id, true));
        }
        if let Some(l) = link {
            if l.remote_fingerprint == remote_fp {
                return Ok(Applied::Skipped("echo"));
            }
            let who = api.byline(comment);
            return self.edit_local_comment(i, api, &l, &who, body, &remote_fp).await;
        }
        let Some(m) = self.stores.mappings.mapping_by_external(i.id, external_id).await? else {
            self.defer_if_creating(i).await?;
            return Ok(Applied::Skipped("not mapped"));
        };
        if !api.marks() {
            // Perhaps our own comment, whose link is not stored yet: wait for it.
            self.defer_if_commenting(i).await?;
        }
        if let Some(ours) = marker {
            // Our own comment, back before its link was stored: link it, apply nothing.
            let now = self.clock.now();
            let l = CommentLink {
                id: CommentLinkId::new(),
                integration_id: i.id,
                task_id: m.task_id,
                comment_id: ours,
                external_id: external_id.to_owned(),
                external_comment_id: cid,
                local_fingerprint: body_fingerprint(body),
                remote_fingerprint: remote_fp,
                origin: Side::Local,
                created_at: now,
                updated_at: now,
            };
            match self.stores.sync_state.link_comment(&l).await {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            return Ok(Applied::Skipped("echo"));
        }
        let local = attributed(api, &api.byline(comment), body);
        let parsed = Markdown::parse_field("comment.body", &local).map_err(core)?;
        let now = self.clock.now();
        let linked = self
            .stores
            .sync_state
            .link_comment(&CommentLink {
                id: CommentLinkId::new(),
                integration_id: i.id,
                task_id: m.task_id,
                comment_id: CommentId::new(),
                external_id: external_id.to_owned(),
                external_comment_id: cid.clone(),
                local_fingerprint: body_fingerprint(&local),
                remote_fingerprint: remote_fp,
                origin: Side::Remote,
                created_at: now,
                updated_at: now,
            })
            .await;
        let l = match linked {
            Ok((l, _)) => l,
            // The same comment's other delivery linked it first; that one creates it.
            Err(Error::AlreadyExists { .. }) => return Ok(Applied::Skipped("linked concurrently")),
            Err(e) => return Err(e),
        };
        // pm comments need a user author: the integration's reporter writes it.
        let author = Origin::user(self.reporter(i).await?);
        match self.pm.add_comment_with_id(&author, m.task_id, l.comment_id, parsed).await {
            Ok(_) | Err(pm_core::Error::AlreadyExists { .. }) => {}
            Err(e) => {
                // No comment, no link: a retried delivery starts over.
                let _ = self.stores.sync_state.delete_comment_link(l.id).await;
                return match e {
                    pm_core::Error::NotFound { .. } => Ok(Applied::Skipped("task deleted")),
                    e => Err(core(e)),
                };
            }
        }
        self.log(
            i,
            Direction::Inbound,
            "sync.comment_created",
            true,
            json!({
                "external_id": external_id, "comment_id": l.comment_id, "external_comment_id": cid,
            }),
        )
        .await;
        Ok(synced(m.task_id, true))
    }

    /// Fails with a retryable `Conflict` while a comment create of `i` is in flight (its
    /// webhook may be the comment we are creating).
    async fn defer_if_commenting(&self, i: &Integration) -> Result<()> {
        let since = self.clock.now() - CREATE_LEASE;
        if self.stores.sync_state.intents_in_flight(i.id, COMMENT_INTENT, since).await? > 0 {
            return Err(Error::Conflict {
                entity: "comment link (a comment create is in flight)",
                current: 0,
            });
        }
        Ok(())
    }

    async fn edit_local_comment(
        &self,
        i: &Integration,
        api: CommentApi,
        l: &CommentLink,
        who: &str,
        body: &str,
        remote_fp: &str,
    ) -> Result<Applied> {
        let integration = Origin { actor: Actor::Integration(i.id), cause: None };
        for _ in 0..4 {
            let current = match self.pm.stores().comments.get_comment(l.comment_id).await {
                Ok(c) => c,
                Err(pm_core::Error::NotFound { .. }) => {
                    return Ok(Applied::Skipped("comment deleted"));
                }
                Err(e) => return Err(core(e)),
            };
            // A comment first written in pm keeps its plain body; one from the provider its
            // byline.
            let local = match l.origin {
                Side::Local => body.to_owned(),
                Side::Remote => attributed(api, who, body),
            };
            let local_fp = body_fingerprint(&local);
            // The link first: the edit's event then finds its body already synced.
            self.stores
                .sync_state
                .update_comment_link(l.id, &local_fp, remote_fp, self.clock.now())
                .await?;
            let edited = match Markdown::parse_field("comment.body", &local) {
                Ok(parsed) => {
                    self.pm.edit_comment(&integration, l.comment_id, current.version, parsed).await
                }
                Err(e) => Err(e),
            };
            match edited {
                Ok(_) => {}
                Err(e) => {
                    // Not applied: the link goes back to the bodies both sides still hold.
                    self.stores
                        .sync_state
                        .update_comment_link(
                            l.id,
                            &l.local_fingerprint,
                            &l.remote_fingerprint,
                            self.clock.now(),
                        )
                        .await?;
                    match e {
                        pm_core::Error::Conflict(_) => continue,
                        e => return Err(core(e)),
                    }
                }
            }
            self.log(
                i,
                Direction::Inbound,
                "sync.comment_edited",
                true,
                json!({
                    "external_id": l.external_id, "comment_id": l.comment_id,
                    "external_comment_id": l.external_comment_id,
                }),
            )
            .await;
            return Ok(synced(l.task_id, true));
        }
        Err(Error::Conflict { entity: "comment", current: 0 })
    }

    /// Pushes a pm comment event of a task mapped in `i`: created → posted, updated → the
    /// provider's comment edited (posted when never linked), deleted → deleted there — for
    /// comments written in pm only.
    pub(super) async fn push_comment_event(
        &self,
        i: &Integration,
        provider: &dyn Provider,
        task: TaskId,
        e: &Event,
    ) -> Result<Applied> {
        let Some(api) = CommentApi::of(provider.info().key.as_str()) else {
            return Ok(Applied::Skipped("comments not supported"));
        };
        let Some(m) = self.stores.mappings.mapping_by_task(i.id, task).await? else {
            return Ok(Applied::Skipped("not mapped"));
        };
        let comment_id = CommentId(e.subject);
        let link = self.stores.sync_state.comment_link(i.id, comment_id).await?;
        if let Some(l) = link.as_ref().filter(|l| l.origin == Side::Remote) {
            // The creation of our own copy (written as the reporter, so not caught by actor).
            if e.kind == EventKind::CommentCreated {
                return Ok(Applied::Skipped("echo"));
            }
            // Someone else's comment on the provider: a pm edit or deletion stays local (the
            // link stays too, so the provider's later edits of a comment deleted here do not
            // revive it).
            self.log(
                i,
                Direction::Outbound,
                "sync.comment_kept_local",
                true,
                json!({
                    "external_id": l.external_id, "comment_id": comment_id,
                    "external_comment_id": l.external_comment_id, "event_kind": e.kind.as_str(),
                }),
            )
            .await;
            return Ok(Applied::Skipped("comment written on the provider"));
        }
        if e.kind == EventKind::CommentDeleted {
            let Some(l) = link else { return Ok(Applied::Skipped("not linked")) };
            let ctx = self.context(i).await?;
            api.delete(&ctx, &l.external_id, &l.external_comment_id).await?;
            self.stores.sync_state.delete_comment_link(l.id).await?;
            self.log(
                i,
                Direction::Outbound,
                "sync.comment_deleted",
                true,
                json!({
                    "external_id": l.external_id, "comment_id": comment_id,
                    "external_comment_id": l.external_comment_id,
                }),
            )
            .await;
            return Ok(synced(task, false));
        }
        // The comment as it is now (a replayed event must not push an older body).
        let current = match self.pm.stores().comments.get_comment(comment_id).await {
            Ok(c) => c,
            Err(pm_core::Error::NotFound { .. }) => return Ok(Applied::Skipped("comment deleted")),
            Err(e) => return Err(core(e)),
        };
        // Written in pm (a provider's comment returned above): our text, as the provider will
        // hold it.
        let body = current.body.as_str();
        let local_fp = body_fingerprint(body);
        let remote_fp = body_fingerprint(&api.stored(body));
        let now = self.clock.now();
        match link {
            Some(l) if l.local_fingerprint == local_fp => Ok(Applied::Skipped("echo")),
            Some(l) => {
                let ctx = self.context(i).await?;
                api.edit(&ctx, &l.external_id, &l.external_comment_id, comment_id, body).await?;
                self.stores
                    .sync_state
                    .update_comment_link(l.id, &local_fp, &remote_fp, now)
                    .await?;
                self.log(
                    i,
                    Direction::Outbound,
                    "sync.comment_edited",
                    true,
                    json!({
                        "external_id": l.external_id, "comment_id": comment_id,
                        "external_comment_id": l.external_comment_id,
                    }),
                )
                .await;
                Ok(synced(task, false))
            }
            None => {
                let ctx = self.context(i).await?;
                // Without a marker the webhook of this comment cannot name it: it waits while
                // this intent is pending (until the link below exists).
                let intent = Intent {
                    key: format!("{COMMENT_INTENT}:{}:{}", i.id.0, comment_id.0),
                    integration_id: i.id,
                    kind: COMMENT_INTENT.to_owned(),
                    started_at: now,
                };
                if !api.marks() {
                    match self.stores.sync_state.begin_intent(&intent, now - CREATE_LEASE).await? {
                        IntentClaim::Claimed => {}
                        IntentClaim::InFlight | IntentClaim::Done(_) => {
                            return Err(Error::Conflict {
                                entity: "comment link (a comment create is in flight)",
                                current: 0,
                            });
                        }
                    }
                }
                let posted = self.post_comment(i, api, &ctx, &m, comment_id, body).await;
                if !api.marks()
                    && let Err(e) = self.stores.sync_state.abandon_intent(&intent.key).await
                {
                    tracing::warn!(error = %e, "cannot drop a comment-create intent");
                }
                posted
            }
        }
    }

    /// Posts pm comment `comment_id` on `m`'s item and links it (the caller holds the
    /// intent).
    async fn post_comment(
        &self,
        i: &Integration,
        api: CommentApi,
        ctx: &ProviderContext,
        m: &ExternalMapping,
        comment_id: CommentId,
        body: &str,
    ) -> Result<Applied> {
        let (item, task) = (m.external_id.as_str(), m.task_id);
        let remote_id = api.post(ctx, item, comment_id, body).await?;
        let now = self.clock.now();
        let l = CommentLink {
            id: CommentLinkId::new(),
            integration_id: i.id,
            task_id: task,
            comment_id,
            external_id: item.to_owned(),
            external_comment_id: remote_id.clone(),
            local_fingerprint: body_fingerprint(body),
            remote_fingerprint: body_fingerprint(&api.stored(body)),
            origin: Side::Local,
            created_at: now,
            updated_at: now,
        };
        // Linked meanwhile by the webhook of this very comment (its marker): fine.
        match self.stores.sync_state.link_comment(&l).await {
            Ok(_) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        self.log(
            i,
            Direction::Outbound,
            "sync.comment_pushed",
            true,
            json!({
                "external_id": item, "comment_id": comment_id,
                "external_comment_id": remote_id,
            }),
        )
        .await;
        Ok(synced(task, false))
    }
}

fn synced(task_id: TaskId, inbound: bool) -> Applied {
    let field = vec!["comment".to_owned()];
    let (to_local, to_remote) = if inbound { (field, Vec::new()) } else { (Vec::new(), field) };
    Applied::Synced { task_id, to_local, to_remote, conflicts: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_bylines_come_off() {
        let id = CommentId(uuid::Uuid::now_v7());
        let posted = with_marker("Looks good\n", id);
        assert_eq!(split_marker(&posted), (Some(id), "Looks good"));
        assert_eq!(split_marker("plain <!-- note -->"), (None, "plain <!-- note -->"));
        assert_eq!(body_fingerprint("a\r\nb  "), body_fingerprint("a\nb"));
        assert_eq!(
            attributed(CommentApi::GitHub, "@octocat", "hi\n"),
            "**@octocat** on GitHub:\n\nhi"
        );
        assert_eq!(attributed(CommentApi::Jira, "Ann Lee", "hi"), "**Ann Lee** on Jira:\n\nhi");
    }
}
