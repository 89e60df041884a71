//! `GET /v1/conversations` (read mode, cached per user), `GET /v1/sync` and `GET /v1/changes`.
//!
//! Expired messages (their send below the log's first offset: `tidings_projections::messages`'
//! module doc): sync starts after a channel's expired floor when the cursor is below it;
//! `/v1/changes` tells a recall or an edit of one as the notice alone. The conversation list
//! shows its last message from the head's preview, which needs no log, but for a payload
//! longer than the preview, read from the log: once expired it is not shown (as after a
//! clear). Unread counts leave expired messages out ([`unread_retained`], on the page's
//! conversations: the cached list counts from the read position).

use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::value::{RawValue, to_raw_value};
use tidings_projections::conv_cache::fingerprint;
use tidings_projections::conversations::{Conversation, compute, page};
use tidings_projections::{FLAG_JSON_PAYLOAD, messages};

use super::messages::{PAGE_PAYLOAD_BYTES, load_page};
use super::{ApiQuery, page_limit};
use crate::render::{PreviewView, change_notice_raw, channel_ref, message_raw};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult};
use crate::server::state::AppState;

/// Query of `GET /v1/conversations`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConversationsQuery {
    /// At most this many: 1 to 1000 (default 100; a larger limit is taken as 1000). Without
    /// `since_version`, the most recently active; with it, those changed longest ago first
    /// (the lowest versions: page on with the answer's `version` while `has_more`). Each page
    /// is ordered newest first.
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "super::saturating_limit")]
    pub(crate) limit: Option<usize>,
    /// Only conversations changed after this version (from an earlier answer).
    pub(crate) since_version: Option<u64>,
}

/// A user's conversation list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ConversationsPage {
    /// `{channel, last_seq, last_message, unread, read_seq, delivered_seq, updated_at, version}`,
    /// newest first.
    #[schema(value_type = Vec<Object>)]
    pub(crate) conversations: Vec<Box<RawValue>>,
    /// Channels that left the list since `since_version`.
    pub(crate) removed: Vec<String>,
    /// Whether `limit` cut the list.
    pub(crate) has_more: bool,
    /// Pass as `since_version` next time.
    pub(crate) version: u64,
    /// Whether `since_version` was below a conversation's leaving the caller's list (a group
    /// they left, or that was deleted) that is no longer kept: the retention's removals let go
    /// of those older than the log's start, once nothing of the group can reach the user. This
    /// page is then answered as without `since_version`: the most recently active, `has_more`
    /// when `limit` cut the list (page on from `version` as after any first page); replace what
    /// you hold with the list so paged (`removed` is empty). `false` otherwise.
    pub(crate) reset: bool,
}

/// A conversation as the caller sees it.
#[derive(Debug, Serialize)]
struct ConversationView {
    channel: String,
    last_seq: u64,
    last_message: Option<Box<RawValue>>,
    unread: u64,
    read_seq: u64,
    delivered_seq: u64,
    updated_at: u64,
    version: u64,
}

/// `c` as the caller sees it; `whole`: a last message longer than its preview is read from
/// the log, else left out (`"truncated": true`: the page's budget is spent).
async fn render(
    state: &AppState,
    c: &Conversation,
    me: &str,
    whole: bool,
) -> ApiResult<Box<RawValue>> {
    let last_message = match &c.last_message {
        None => None,
        Some(m) if m.truncated && !m.recalled => {
            // The head keeps a prefix of long payloads: read the message itself. One that has
            // expired (`tidings_projections::messages`' module doc) is not shown, as one
            // cleared is not.
            let plan = {
                let p = state.proj();
                messages::plan_range(&p.state, p.index_files(), &c.channel, m.seq, m.seq)?
            };
            // Left out: as it would show unless expired (the plan says; not read).
            if !whole {
                let expired = plan
                    .first()
                    .is_none_or(|m| messages::is_expired(m, state.expired_below()));
                let cut = PreviewView::cut(m.seq, m.message_id, &m.from, m.ts, m.edited);
                if expired { None } else { Some(raw(&cut)?) }
            } else {
                // In the shape of a preview's (below): the conversation names the channel, and a
                // head keeps no `client_msg_id` (the long message's answer had both, the short
                // one's neither: one field a client read was there only for long messages).
                let loaded = messages::load_retained(&state.log, &plan, state.expiring()).await?;
                match loaded.first() {
                    Some(full) => Some(raw(&PreviewView::new(
                        full.seq,
                        full.message_id,
                        &full.from,
                        full.ts,
                        full.recalled,
                        full.edited,
                        full.payload.as_deref().unwrap_or_default(),
                        if full.json { FLAG_JSON_PAYLOAD } else { 0 },
                    ))?),
                    None => None,
                }
            }
        }
        Some(m) => Some(raw(&PreviewView::new(
            m.seq,
            m.message_id,
            &m.from,
            m.ts,
            m.recalled,
            m.edited,
            &m.preview,
            m.flags,
        ))?),
    };
    raw(&ConversationView {
        channel: channel_ref(&c.channel, Some(me)),
        last_seq: c.last_seq,
        last_message,
        unread: c.unread,
        read_seq: c.read_seq,
        delivered_seq: c.delivered_seq,
        updated_at: c.updated_at,
        version: c.version,
    })
}

/// `c.unread` without the messages that have expired (`tidings_projections::messages`' module
/// doc): the cached list counts every message after the caller's read position, and a user
/// away longer than the retention would be told of messages no read can bring. Cut at the
/// channel's expired floor ([`AppState::expired_floor`]: found once per log start) when the
/// caller's read position is below it. Only the page's conversations, and only once the log
/// starts past 0 or the message index let go of seqs (`IndexState::dropped_through`).
fn unread_retained(
    state: &AppState,
    p: &tidings_projections::Projections,
    me: &str,
    c: &Conversation,
) -> ApiResult<u64> {
    if c.unread == 0 {
        return Ok(0);
    }
    let cur = p.state.cursors.get(me, &c.channel);
    let seen = cur.read.max(cur.cleared);
    let floor = state.expired_floor(p, &c.channel)?;
    if floor <= seen {
        return Ok(c.unread);
    }
    let retained = c.last_seq.saturating_sub(floor).saturating_sub(
        p.state
            .heads
            .recalled_between(&c.channel, floor, c.last_seq),
    );
    Ok(retained.min(c.unread))
}

/// Conversations whose floor a list checks per hold of the projections' lock
/// ([`with_trim_versions`]).
const FLOORS_PER_LOCK: usize = 16;

/// For an incremental list from `since`: `all` with the version of each conversation whose
/// unread count the retention cut (the caller's read position below the channel's expired
/// floor: [`unread_retained`]), or whose last message, longer than its preview, it expired
/// (shown as none from then on: [`render`]; until 2026-12-02 an incremental list kept it),
/// raised to the offset of the latest `log_trimmed` event
/// (`State::trimmed`) when that is past `since` and the conversation's own version is not:
/// the removal changed the count, and the list carries the conversation again with it. Until
/// 2026-11-30 no event moved such a conversation's version, and incremental lists kept the
/// count from before the removal. Every conversation still cut is listed again after each
/// removal, cut by it or earlier (some listed again with the count the client has; none
/// missed, as the latest event alone is known: a conversation cut by an earlier removal is
/// raised as long as it stays cut), all at the event's version: a page then runs over its
/// limit to take every conversation sharing it, as after any event that changed many. The
/// floors are those [`AppState::expired_floor`] remembers per log start: read once per
/// channel after a removal, a few channels per hold of the lock. Not for a full list, which
/// has every count as it is and versions from which an incremental list raises in turn.
fn with_trim_versions(
    state: &AppState,
    me: &str,
    mut all: Vec<Conversation>,
    since: u64,
) -> ApiResult<Vec<Conversation>> {
    if state.expired_below() == 0 {
        return Ok(all);
    }
    let Some(trimmed) = state.proj().state.trimmed.filter(|t| t.offset > since) else {
        return Ok(all);
    };
    for chunk in all.chunks_mut(FLOORS_PER_LOCK) {
        let p = state.proj();
        for c in chunk {
            // A last message longer than its preview is read from the log (`render`): once
            // expired it is shown as none.
            let long_head = c
                .last_message
                .as_ref()
                .filter(|m| m.truncated && !m.recalled)
                .map(|m| m.seq);
            if c.version > since || (c.unread == 0 && long_head.is_none()) {
                continue;
            }
            let cur = p.state.cursors.get(me, &c.channel);
            let floor = state.expired_floor(&p, &c.channel)?;
            let cut = c.unread > 0 && floor > cur.read.max(cur.cleared);
            if cut || long_head.is_some_and(|seq| seq <= floor) {
                c.version = trimmed.offset;
            }
        }
    }
    Ok(all)
}

/// `all` with every conversation's version raised past `let_go`, the highest offset of the
/// caller's removals let go (`Cursors::removals_let_go`). An incremental call from below it is
/// answered as a first call, so a version a page answers with must not be below it: the
/// version of a first page that leaves some out is just below the lowest left out, and the
/// call from it would be answered as a first call again, for ever. Raised, that version is at
/// least `let_go` (the offset of a removal applied before the list's version). An incremental
/// call from exactly `let_go` gets the raised conversations once more.
fn past_let_go(mut all: Vec<Conversation>, let_go: Option<u64>) -> Vec<Conversation> {
    if let Some(let_go) = let_go {
        for c in &mut all {
            c.version = c.version.max(let_go.saturating_add(1));
        }
    }
    all
}

/// One JSON text (the payloads in it as sent).
fn raw<T: Serialize>(v: &T) -> ApiResult<Box<RawValue>> {
    to_raw_value(v).map_err(|e| ApiError::internal(format!("rendering the answer: {e}")))
}

/// The caller's conversations: computed from channels × heads × cursors, cached per user.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", params(ConversationsQuery),
    responses((status = 200, body = ConversationsPage)), security(("bearer" = [])))]
pub(crate) async fn conversations(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ConversationsQuery>,
) -> ApiResult<axum::Json<ConversationsPage>> {
    let me = caller.require_user()?.to_owned();
    let mut limit = page_limit(q.limit, 100)?;
    // A page stops at `PAGE_PAYLOAD_BYTES` of conversations (after the first), as a history
    // page does: each last message longer than its preview is read whole from the log, and a
    // thousand of 64 KiB were a 64 MB answer held whole. A page that would run past it is
    // made again with the limit that fits (the page `page` makes for that limit: its
    // `has_more` and `version` page on from it). Each try has a lower limit.
    let (list, reset, convs) = 'fit: loop {
        // Tried again when a `log_trimmed` event let go of one of the caller's removals while the
        // list was read (`page` below): each try after the first needs another such event, one
        // per retention pass at most.
        let (mut list, reset) = loop {
            // The version a page answers with is the offset applied when its list was valid:
            // taken under the same lock as the fingerprint the cached list is checked against. A
            // version below a removal from the list that was let go (`State::forget_left`) may
            // have missed it: answered as a first call (`reset`).
            let (fp, version, let_go) = {
                let p = state.proj();
                (
                    fingerprint(&p.state, &me),
                    p.state.applied.unwrap_or(0),
                    p.state.cursors.removals_let_go.get(me.as_str()).copied(),
                )
            };
            // A version past this server's (a data directory restored to an earlier point, or
            // a client's own damage) is no version of this list: answered as a first call too
            // (it was answered as nothing changed, and the client never caught up).
            let since_version = q
                .since_version
                .filter(|&since| since <= version && let_go.is_none_or(|offset| since >= offset));
            let reset = q.since_version.is_some() && since_version.is_none();
            let (all, version) = match state.conv_cache.get(&me, fp).await {
                Some(list) => (list, version),
                None => {
                    let (fp, list, version) = {
                        let p = state.proj();
                        (
                            fingerprint(&p.state, &me),
                            compute(&p.state, &me),
                            p.state.applied.unwrap_or(0),
                        )
                    };
                    state.conv_cache.put(&me, fp, &list);
                    (list, version)
                }
            };
            let all = past_let_go(all, let_go);
            let all = match since_version {
                Some(since) => with_trim_versions(&state, &me, all, since)?,
                None => all,
            };
            let p = state.proj();
            // The removals `page` reads are those of this lock: one let go since `let_go` was
            // read could be one this call's `since_version` had not seen.
            if p.state.cursors.removals_let_go.get(me.as_str()).copied() != let_go {
                continue;
            }
            break (
                page(&p.state, &me, &all, since_version, limit, version),
                reset,
            );
        };
        // Expired messages: below the log's start, or let go by the index (even with no start
        // known: a tiered directory started without its store).
        {
            let p = state.proj();
            if state.expired_below() > 0 || !p.state.index.dropped.is_empty() {
                for c in &mut list.conversations {
                    c.unread = unread_retained(&state, &p, &me, c)?;
                }
            }
        }
        // Rendered in the order `page` picks them (by activity; from `since_version`, lowest
        // versions first), so that the first that fit are a page of their own.
        let mut order: Vec<usize> = (0..list.conversations.len()).collect();
        if q.since_version.is_some() && !reset {
            order.sort_by_key(|&i| list.conversations[i].version);
        }
        let mut rendered: Vec<Option<Box<RawValue>>> = vec![None; order.len()];
        let mut bytes = 0usize;
        let mut fit = None;
        let mut whole = true;
        for (k, &i) in order.iter().enumerate() {
            let c = &list.conversations[i];
            let mut r = render(&state, c, &me, whole).await?;
            if whole && k > 0 && bytes.saturating_add(r.get().len()) > PAGE_PAYLOAD_BYTES {
                if k < limit {
                    fit = Some(k);
                    break;
                }
                // Past `limit`: the conversations sharing the last one's version, which a
                // page keeps together (a paging version cannot fall between them) — as many
                // as one event touched (a removal of the retention: every conversation whose
                // count it cut). They are kept, their long last messages left out
                // (`"truncated": true`).
                whole = false;
                r = render(&state, c, &me, false).await?;
            }
            bytes = bytes.saturating_add(r.get().len());
            rendered[i] = Some(r);
        }
        if let Some(k) = fit
            && k < limit
        {
            limit = k;
            continue 'fit;
        }
        break (
            list,
            reset,
            rendered.into_iter().flatten().collect::<Vec<_>>(),
        );
    };
    Ok(axum::Json(ConversationsPage {
        conversations: convs,
        removed: list
            .removed
            .iter()
            .map(|c| channel_ref(c, Some(&me)))
            .collect(),
        has_more: list.has_more,
        version: list.version,
        reset,
    }))
}

/// Query of `GET /v1/sync`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SyncQuery {
    /// At most this many messages: 1 to 1000 (default 100; a larger limit is taken as 1000).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "super::saturating_limit")]
    pub(crate) limit: Option<usize>,
}

/// Messages after the caller's delivered cursor in every channel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SyncPage {
    /// Oldest first per channel. Ack what you stored (`POST /v1/channels/{id}/ack`).
    #[schema(value_type = Vec<Object>)]
    pub(crate) messages: Vec<Box<RawValue>>,
    /// Whether more remain after these.
    pub(crate) has_more: bool,
}

/// Offline sync: every message after the caller's delivered cursor, in every channel.
#[utoipa::path(get, path = "/v1/sync", tag = "conversations", params(SyncQuery),
    responses((status = 200, body = SyncPage)), security(("bearer" = [])))]
pub(crate) async fn sync(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SyncQuery>,
) -> ApiResult<axum::Json<SyncPage>> {
    let me = caller.require_user()?.to_owned();
    let limit = page_limit(q.limit, 100)?;
    let expired_below = state.expired_below();
    let (plan, has_more) = {
        let p = state.proj();
        // Also after what a WebSocket session acknowledged that is not yet written; and after
        // the expired messages (`tidings_projections::messages`' module doc).
        messages::plan_sync_from(
            &p.state,
            p.index_files(),
            &me,
            limit,
            expired_below,
            |ch, cursor| cursor.max(state.acks.delivered(&me, ch)),
        )?
    };
    let (msgs, cut) = load_page(&state.log, &plan, false, state.expiring()).await?;
    Ok(axum::Json(SyncPage {
        messages: msgs.iter().map(|m| message_raw(m, Some(&me))).collect(),
        has_more: has_more || cut,
    }))
}

/// Query of `GET /v1/changes`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ChangesQuery {
    /// The `version` of the previous answer. Without it: no messages, only the version to
    /// start from (a new device holds nothing that could have changed). `0`: every change.
    pub(crate) since: Option<u64>,
    /// At most this many messages: 1 to 1000 (default 100; a larger limit is taken as 1000).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "super::saturating_limit")]
    pub(crate) limit: Option<usize>,
}

/// Messages recalled or edited since a version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ChangesPage {
    /// Each changed message once, as the history API shows it now (`"recalled": true`, or
    /// the edited payload with `"edited": true`), in the order of its latest change. A banned
    /// group's message the caller is not owed (at or below their delivered cursor), and one
    /// at or below their cursor in a group they left or that was deleted, comes as
    /// `{channel, seq, recalled: true}` or `{channel, seq, edited: true}` alone.
    #[schema(value_type = Vec<Object>)]
    pub(crate) messages: Vec<Box<RawValue>>,
    /// Pass as `since` next time.
    pub(crate) version: u64,
    /// Whether more changes remain (ask again with `since=version` now).
    pub(crate) has_more: bool,
    /// Whether `since` is below where the log started at the retention's latest removal: the
    /// recalls and edits made before then, all of messages that have expired since, are no
    /// longer kept, so this answer cannot tell them. A device that holds messages history no
    /// longer serves may hold some recalled or edited without knowing it (and may drop them).
    pub(crate) forgotten: bool,
}

/// Recalls and edits of messages in the caller's channels since `since`: what a device that
/// was offline (or synced over HTTP only) missed of messages it may already hold. A live
/// WebSocket session gets each recall as a `recall` frame; this is the catch-up for them.
#[utoipa::path(get, path = "/v1/changes", tag = "conversations", params(ChangesQuery),
    responses((status = 200, body = ChangesPage)), security(("bearer" = [])))]
pub(crate) async fn changes(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> ApiResult<axum::Json<ChangesPage>> {
    let me = caller.require_user()?.to_owned();
    let limit = page_limit(q.limit, 100)?;
    let (plan, forgotten) = {
        let p = state.proj();
        // The recalls and edits below the start were let go (`Heads::forget_changes_below`).
        let forgotten = q
            .since
            .is_some_and(|since| p.state.trimmed.is_some_and(|t| since < t.start));
        // A version past this server's (a data directory restored to an earlier point, or a
        // client's own damage): every change still kept is told, from the start, and
        // `forgotten` says the caller's version was no version of this log (it was answered
        // as nothing changed, and the client never caught up).
        let future = q.since.is_some_and(|since| since > p.state.next_offset());
        let forgotten = forgotten || future;
        let since = if future { Some(0) } else { q.since };
        let plan = match since {
            Some(since) => {
                let (files, expired_below) = (p.index_files(), state.expired_below());
                messages::plan_changes(&p.state, files, &me, since, limit, expired_below)?
            }
            None => messages::ChangesPlan {
                changes: Vec::new(),
                version: p.state.next_offset(),
                has_more: false,
                offsets: Vec::new(),
            },
        };
        (plan, forgotten)
    };
    // Loaded a few at a time, and cut (`has_more`, the next page from the first change left
    // out) past `PAGE_PAYLOAD_BYTES` of payload after at least one message, as history pages
    // are: a thousand edits to 64 KiB was a 64 MB answer held whole.
    const CHUNK: usize = 64;
    let mut plan = plan;
    let mut out = Vec::with_capacity(plan.changes.len());
    let mut bytes = 0usize;
    let mut told = 0usize;
    'chunks: while told < plan.changes.len() {
        let chunk = &plan.changes[told..(told + CHUNK).min(plan.changes.len())];
        let refs: Vec<_> = chunk
            .iter()
            .filter_map(|c| match c {
                messages::Change::Message(m) => Some(m.clone()),
                messages::Change::Notice { .. } => None,
            })
            .collect();
        let mut loaded = messages::load_retained(&state.log, &refs, state.expiring())
            .await?
            .into_iter()
            .peekable();
        for change in chunk {
            match change {
                // `load_retained` returned one message for each `Message` entry, in order,
                // but for those that expired since the plan: told as the notice alone, as the
                // plan tells the ones expired before.
                messages::Change::Message(m) => {
                    match loaded.next_if(|l| l.channel == m.channel && l.seq == m.seq) {
                        Some(l) => {
                            let size = l.payload.as_ref().map_or(0, |p| p.len());
                            if told > 0 && bytes.saturating_add(size) > PAGE_PAYLOAD_BYTES {
                                break 'chunks;
                            }
                            bytes = bytes.saturating_add(size);
                            out.push(message_raw(&l, Some(&me)));
                        }
                        None => {
                            out.push(change_notice_raw(&m.channel, m.seq, m.recalled, Some(&me)))
                        }
                    }
                }
                messages::Change::Notice {
                    channel,
                    seq,
                    recalled,
                } => out.push(change_notice_raw(channel, *seq, *recalled, Some(&me))),
            }
            told += 1;
        }
    }
    plan.cut(told);
    Ok(axum::Json(ChangesPage {
        messages: out,
        version: plan.version,
        has_more: plan.has_more,
        forgotten,
    }))
}
