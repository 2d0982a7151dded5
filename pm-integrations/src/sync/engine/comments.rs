//! Comments both ways between pm tasks and GitHub issues, one [`CommentLink`] per pair.
//!
//! - **Inbound** (`issue_comment.created/edited/deleted` on a mapped issue): a new GitHub
//!   comment becomes a pm comment on the mapped task, written by the integration's reporter
//!   and opening with who wrote it on GitHub; the link is stored *before* the pm comment (under
//!   the comment id chosen then), so a redelivery finds the link and creates that same comment,
//!   and the pusher finds the link when the comment's event comes by. Edits and deletions
//!   apply to the linked pm comment.
//! - **Outbound** (`comment.created/updated/deleted` of a mapped task): POSTed as an issue
//!   comment, edits PATCHed, deletions DELETEd. What we post ends with an invisible marker
//!   (`<!-- pm:comment:<id> -->`), so the webhook for our own comment is recognised even when
//!   it arrives before the link is saved.
//! - **Whose comment it is**: a link remembers the side the comment was written on
//!   ([`CommentLink::origin`]). Only comments written in pm are pushed back when edited or
//!   deleted in pm. A comment copied from GitHub is someone else's comment there — GitHub
//!   would refuse our edit (403), and rightly — so editing or deleting it in pm stays local:
//!   nothing is sent, nothing is recorded as a failure. Its author stays its owner: an edit on
//!   GitHub replaces the pm copy (a local edit included); once deleted in pm it stays deleted
//!   (the link remains, so a later GitHub edit does not bring it back).
//! - **Echo suppression** by fingerprint: the link holds a digest of the body each side held
//!   after the last sync. A change whose body equals it is the other side's copy of our own
//!   write and is ignored — whoever the actor (inbound comments are written as a user, since
//!   pm comments need a user author).
//!
//! Delivery is at-least-once: a crash after GitHub accepted a comment and before the link was
//! stored re-posts it on replay unless the webhook (with its marker) linked it first.

use pm_core::event::{Actor, Event, EventKind, Origin};
use pm_core::id::{CommentId, TaskId};
use pm_core::model::Markdown;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Applied, SyncEngine, core};
use crate::model::{CommentLink, CommentLinkId, Direction, Integration};
use crate::provider::{InboundEvent, Provider};
use crate::sync::Side;
use crate::{Error, Result};

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

/// The pm body of a comment written on GitHub by `login`.
fn attributed(login: &str, body: &str) -> String {
    format!("**@{login}** on GitHub:\n\n{}", body.trim_end())
}

impl SyncEngine {
    /// Applies an `issue_comment.*` webhook event of `i` (GitHub).
    pub(super) async fn apply_inbound_comment(
        &self,
        i: &Integration,
        external_id: &str,
        ev: &InboundEvent,
    ) -> Result<Applied> {
        let comment = &ev.raw["comment"];
        let Some(cid) = comment["id"].as_i64().map(|n| n.to_string()) else {
            return Ok(Applied::Skipped("no comment"));
        };
        let raw_body = comment["body"].as_str().unwrap_or_default();
        let (marker, body) = split_marker(raw_body);
        let remote_fp = body_fingerprint(body);
        let link = self.stores.sync_state.comment_link_by_external(i.id, &cid).await?;
        let action = ev.kind.strip_prefix("issue_comment.").unwrap_or_default();
        let integration = Origin { actor: Actor::Integration(i.id), cause: None };
        if action == "deleted" {
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
        if !matches!(action, "created" | "edited") {
            return Ok(Applied::Skipped("comment action not synced"));
        }
        if let Some(l) = link {
            if l.remote_fingerprint == remote_fp {
                return Ok(Applied::Skipped("echo"));
            }
            return self.edit_local_comment(i, &l, comment, body, &remote_fp).await;
        }
        let Some(m) = self.stores.mappings.mapping_by_external(i.id, external_id).await? else {
            self.defer_if_creating(i).await?;
            return Ok(Applied::Skipped("not mapped"));
        };
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
        let login = comment["user"]["login"].as_str().unwrap_or("someone");
        let local = attributed(login, body);
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

    async fn edit_local_comment(
        &self,
        i: &Integration,
        l: &CommentLink,
        comment: &Value,
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
            // A comment first written in pm keeps its plain body; one from GitHub its byline.
            let login = comment["user"]["login"].as_str().unwrap_or("someone");
            let local = match l.origin {
                Side::Local => body.to_owned(),
                Side::Remote => attributed(login, body),
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

    /// Pushes a pm comment event of a task mapped in `i`: created → POST, updated → PATCH
    /// (POST when never linked), deleted → DELETE. GitHub only; Jira gets new comments.
    pub(super) async fn push_comment_event(
        &self,
        i: &Integration,
        provider: &dyn Provider,
        task: TaskId,
        e: &Event,
    ) -> Result<Applied> {
        let Some(m) = self.stores.mappings.mapping_by_task(i.id, task).await? else {
            return Ok(Applied::Skipped("not mapped"));
        };
        let comment_id = CommentId(e.subject);
        if provider.info().key.as_str() != "github" {
            if e.kind != EventKind::CommentCreated {
                return Ok(Applied::Skipped("comment edits not supported"));
            }
            return self.push_comment(i, provider, task, &e.payload).await;
        }
        let link = self.stores.sync_state.comment_link(i.id, comment_id).await?;
        if let Some(l) = link.as_ref().filter(|l| l.origin == Side::Remote) {
            // The creation of our own copy (written as the reporter, so not caught by actor).
            if e.kind == EventKind::CommentCreated {
                return Ok(Applied::Skipped("echo"));
            }
            // Someone else's comment on GitHub: a pm edit or deletion stays local (the link
            // stays too, so GitHub's later edits of a comment deleted here do not revive it).
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
            crate::providers::GitHub.delete_comment(&ctx, &l.external_comment_id).await?;
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
        // Written in pm (a provider's comment returned above): the same text on both sides.
        let remote_body = current.body.as_str();
        let local_fp = body_fingerprint(remote_body);
        let remote_fp = local_fp.clone();
        let ctx = self.context(i).await?;
        let now = self.clock.now();
        match link {
            Some(l) if l.local_fingerprint == local_fp => Ok(Applied::Skipped("echo")),
            Some(l) => {
                crate::providers::GitHub
                    .edit_comment(
                        &ctx,
                        &l.external_comment_id,
                        &with_marker(remote_body, comment_id),
                    )
                    .await?;
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
                let remote_id = crate::providers::GitHub
                    .comment(&ctx, &m.external_id, &with_marker(remote_body, comment_id))
                    .await?
                    .to_string();
                let l = CommentLink {
                    id: CommentLinkId::new(),
                    integration_id: i.id,
                    task_id: task,
                    comment_id,
                    external_id: m.external_id.clone(),
                    external_comment_id: remote_id.clone(),
                    local_fingerprint: local_fp,
                    remote_fingerprint: remote_fp,
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
                        "external_id": m.external_id, "comment_id": comment_id,
                        "external_comment_id": remote_id,
                    }),
                )
                .await;
                Ok(synced(task, false))
            }
        }
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
        assert_eq!(attributed("octocat", "hi\n"), "**@octocat** on GitHub:\n\nhi");
    }
}
