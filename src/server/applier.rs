//! The applier: follows the log and applies every event to the projections in offset order,
//! publishes how far it got (requests wait on that for read-your-writes), then acts on what
//! changed: pushes new messages, recalls and edits to online sessions, updates presence on membership
//! changes, closes the sessions of users whose tokens were revoked (all of a user's sessions,
//! or those opened with the one token revoked).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use tidings_projections::ids::{ChannelId, Uid, person_pair};
use tidings_projections::messages::Message;
use tidings_projections::trace::PushRecord;
use tidings_projections::{Envelope, Event, FLAG_JSON_PAYLOAD, FastMap};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::render::{
    EditNotice, cbor_frame, channel_ref, edit_json, edit_text, message_json, message_text,
};
use crate::server::completions;
use crate::server::delivery::{Frame, MAX_RUN, Pushed, Run, TOKEN_REVOKED};
use crate::server::state::{AppState, now_ms};

/// The applier keeps its event vector's capacity from pass to pass up to this many events.
const MAX_KEPT_EVENTS: usize = 16_384;

/// What to do after applying, outside the projections' lock.
enum Effect {
    Push(Arc<Pushed>, u64),
    Joined(ChannelId, Vec<Uid>),
    Left(ChannelId, Vec<Uid>),
    Deleted(ChannelId),
    Revoked(Uid),
    /// One token of the user revoked: the sessions opened with it close, not the others.
    TokenRevoked(Uid, Bytes),
}

/// A message's frame: JSON with the payload as sent; CBOR from the parsed tree.
fn message_frame(m: &Message, viewer: Option<&str>) -> Frame {
    let mut v = message_json(m, viewer);
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), json!("message"));
    }
    Frame {
        cbor: cbor_frame(&v),
        json: message_text(m, viewer, Some("message")).into(),
    }
}

/// One frame per viewpoint: shared for a group, one per side for a person channel.
fn frames(channel: &str, build: impl Fn(Option<&str>) -> Frame) -> Vec<(Option<Uid>, Frame)> {
    match person_pair(channel) {
        Some((a, b)) if a != b => vec![
            (Some(a.to_owned()), build(Some(a))),
            (Some(b.to_owned()), build(Some(b))),
        ],
        Some((a, _)) => vec![(None, build(Some(a)))],
        None => vec![(None, build(None))],
    }
}

/// The push of a notice about message `seq` of `channel` (a recall, an edit), from the event at
/// `offset`, with its frame for each viewpoint.
fn notice(channel: &str, seq: u64, offset: u64, build: impl Fn(Option<&str>) -> Frame) -> Effect {
    Effect::Push(
        Arc::new(Pushed {
            channel: channel.to_owned(),
            seq,
            offset,
            is_message: false,
            origin: None,
            frames: frames(channel, build),
        }),
        u64::MAX,
    )
}

fn effects_of(offset: u64, env: &Envelope) -> Option<Effect> {
    match &env.event {
        Event::MessageSent {
            channel,
            from,
            client_msg_id,
            seq,
            message_id,
            payload,
            flags,
        } => {
            let m = Message {
                channel: channel.clone(),
                seq: *seq,
                message_id: *message_id,
                from: from.clone(),
                client_msg_id: client_msg_id.clone(),
                ts: env.ts,
                offset,
                payload: Some(payload.clone()),
                json: flags & FLAG_JSON_PAYLOAD != 0,
                recalled: false,
                edited: false,
            };
            let build = |viewer: Option<&str>| message_frame(&m, viewer);
            Some(Effect::Push(
                Arc::new(Pushed {
                    channel: channel.clone(),
                    seq: *seq,
                    offset,
                    is_message: true,
                    origin: None,
                    frames: frames(channel, build),
                }),
                *message_id,
            ))
        }
        Event::MessageRecalled { channel, seq, by } => {
            let build = |viewer: Option<&str>| {
                Frame::new(
                    &json!({"type": "recall", "channel": channel_ref(channel, viewer), "seq": seq, "by": by}),
                )
            };
            Some(notice(channel, *seq, offset, build))
        }
        Event::MessageEdited {
            channel,
            seq,
            by,
            payload,
            flags,
        } => {
            let edit = EditNotice {
                channel,
                seq: *seq,
                by,
                ts: env.ts,
                payload,
                flags: *flags,
            };
            let build = |viewer: Option<&str>| Frame {
                cbor: cbor_frame(&edit_json(&edit, viewer)),
                json: edit_text(&edit, viewer).into(),
            };
            Some(notice(channel, *seq, offset, build))
        }
        Event::MembersSubscribed { channel, uids } => {
            Some(Effect::Joined(channel.clone(), uids.clone()))
        }
        Event::MembersUnsubscribed { channel, uids } => {
            Some(Effect::Left(channel.clone(), uids.clone()))
        }
        Event::ChannelDeleted { channel } => Some(Effect::Deleted(channel.clone())),
        Event::TokensRevoked { uid } => Some(Effect::Revoked(uid.clone())),
        Event::TokenRevoked { uid, token_hash } => {
            Some(Effect::TokenRevoked(uid.clone(), token_hash.clone()))
        }
        _ => None,
    }
}

/// Of the uids a `MembersSubscribed` event named, those the projection holds as members of
/// `channel` now (after the pass). The projection ignores a subscribe to a channel that no
/// longer exists — a `DELETE` of the channel can land between the subscribe's existence check
/// and its event — and registering those uids for delivery anyway would push them the
/// messages of a channel re-created later under the same id, which they are not members of.
/// (Any later unsubscribe in the same pass is applied after this, in log order.)
fn still_members(state: &tidings_projections::State, channel: &str, uids: Vec<Uid>) -> Vec<Uid> {
    uids.into_iter()
        .filter(|u| state.subs.is_member(channel, u))
        .collect()
}

/// The first wait before the applier reads again records the object store did not answer
/// for; doubled each time, up to [`COLD_WAIT_MAX`].
const COLD_WAIT_FIRST: std::time::Duration = std::time::Duration::from_millis(50);
const COLD_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs until `stop` is cancelled. A record that is not a valid event stops the applier (the
/// server then reports not ready): the projections must never skip what a rebuild would not.
pub(crate) async fn run(
    state: Arc<AppState>,
    applied: watch::Sender<u64>,
    stop: CancellationToken,
) {
    // However the applier ends, requests still waiting for it are told (they answer 503).
    struct CloseWaiters<'a>(&'a AppState, &'a CancellationToken);
    impl Drop for CloseWaiters<'_> {
        fn drop(&mut self) {
            let why = if self.1.is_cancelled() {
                completions::shutting_down()
            } else {
                completions::applier_stopped()
            };
            self.0.applied_waiters.close(why.clone());
            self.0.completions.close(why, &self.0.metrics);
        }
    }
    let _close = CloseWaiters(&state, &stop);
    let mut tail = state.log.tail(*applied.borrow());
    // Reads of records the object store did not answer for, in a row.
    let mut cold_waits = 0u32;
    // A pass's events and pushes; kept from pass to pass (fresh vectors each pass cost page
    // faults: at saturation the largest source of them in the server).
    let mut applied_envs: Vec<(u64, Envelope)> = Vec::new();
    let mut pushes: Vec<(Arc<Pushed>, u64)> = Vec::new();
    loop {
        // A burst's capacity is kept for the next, but never more than this many events.
        if applied_envs.capacity() > MAX_KEPT_EVENTS {
            applied_envs = Vec::new();
        }
        applied_envs.clear();
        let batch = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            b = tail.next_batch(1 << 20) => b,
        };
        let batch = match batch {
            Ok(b) => {
                cold_waits = 0;
                b
            }
            Err(tidings_log::LogError::Closed) => return,
            // Records only in the object store (the tier's local retention let go of their
            // segment before the applier read it), and the store did not answer in time: an
            // outage, not damage. The applier waits and reads them again (it stopped for good:
            // not ready until a restart); sends meanwhile wait, or are told `apply_timeout`.
            Err(e) if e.is_cold_storage_unavailable() => {
                cold_waits = cold_waits.saturating_add(1);
                let wait = COLD_WAIT_FIRST
                    .saturating_mul(1 << cold_waits.min(6))
                    .min(COLD_WAIT_MAX);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "the applier's next records are in the object store, which did not answer; trying again");
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                tail = state.log.tail(*applied.borrow());
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "the applier cannot read the log; stopping");
                state
                    .ready
                    .store(false, std::sync::atomic::Ordering::Release);
                return;
            }
        };
        applied_envs.reserve(batch.len());
        let mut failed = None;
        let next = {
            let mut p = state.proj_mut();
            let mut next = *applied.borrow();
            for rec in &batch {
                let env = match Envelope::decode(rec.offset, &rec.payload) {
                    Ok(env) => env,
                    Err(e) => {
                        // Under the write lock: a write checked after it is refused.
                        state
                            .applier_stopping
                            .store(true, std::sync::atomic::Ordering::Release);
                        failed = Some(e.to_string());
                        break;
                    }
                };
                // A second recall of one message (two recalls raced to the log) changes nothing
                // and is pushed to no one: sessions get one `recall` frame per message. Nor is
                // an edit of a recalled message, which the projections ignore (the server
                // refuses to write one: `http/edit.rs`).
                let repeated = match &env.event {
                    Event::MessageRecalled { channel, seq, .. }
                    | Event::MessageEdited { channel, seq, .. } => {
                        p.state.heads.is_recalled(channel, *seq)
                    }
                    _ => false,
                };
                if let Err(e) = p.apply(rec.offset, &env) {
                    // Set under the write lock: no snapshot reads the state in between.
                    state
                        .applier_failed
                        .store(true, std::sync::atomic::Ordering::Release);
                    state
                        .applier_stopping
                        .store(true, std::sync::atomic::Ordering::Release);
                    failed = Some(e.to_string());
                    break;
                }
                next = rec.offset + 1;
                state.metrics.events_applied.inc();
                if !repeated {
                    applied_envs.push((rec.offset, env));
                }
            }
            next
        };
        applied.send_replace(next);
        state.applied_waiters.advance(next);
        // Every send of the pass is answered before any session runs: each session writes
        // its acks of the pass in one go.
        let origins = state
            .completions
            .take(
                applied_envs
                    .iter()
                    .filter_map(|(offset, env)| match &env.event {
                        Event::MessageSent { message_id, .. } => Some((*message_id, *offset)),
                        _ => None,
                    }),
            )
            .answer(&state.metrics);
        // A stopped applier refuses writes from here, not from the end of its last pass: a
        // send or an event accepted while that pass's effects ran was written after the
        // record it stopped at, then answered as failed (until 2026-12-02).
        if failed.is_some() {
            let why = completions::applier_stopped();
            state.applied_waiters.close(why.clone());
            state.completions.close(why, &state.metrics);
        }
        // Effects are worked out after the projections' lock is released; a message nobody
        // else is online for is not rendered at all.
        let effects = applied_envs.iter().filter_map(|(offset, env)| {
            if let Event::MessageSent {
                channel,
                message_id,
                ..
            } = &env.event
                && !state
                    .delivery
                    .has_recipients(channel, origins.get(message_id).copied())
            {
                return None;
            }
            effects_of(*offset, env)
        });
        // Pushes are gathered into one run per channel (in log order within it) and handed
        // out when the pass ends or a membership change comes (which must see them first). A
        // session registered since the pass was applied holds the groups of after it, and is
        // offered none of it (`Session::from_offset` in delivery.rs).
        for e in effects {
            let e = match e {
                Effect::Push(mut msg, message_id) => {
                    if msg.is_message
                        && let Some(&origin) = origins.get(&message_id)
                        && let Some(m) = Arc::get_mut(&mut msg)
                    {
                        m.origin = Some(origin);
                    }
                    pushes.push((msg, message_id));
                    continue;
                }
                other => other,
            };
            push_runs(&state, &mut pushes);
            match e {
                Effect::Push(..) => {} // gathered above
                Effect::Joined(c, uids) => {
                    let members = still_members(&state.proj().state, &c, uids);
                    state.delivery.joined(&c, &members);
                }
                Effect::Left(c, uids) => state.delivery.left(&c, &uids),
                Effect::Deleted(c) => state.delivery.deleted(&c),
                Effect::Revoked(uid) => state.delivery.close_user(&uid, TOKEN_REVOKED),
                Effect::TokenRevoked(uid, hash) => {
                    state.delivery.close_token(&uid, &hash, TOKEN_REVOKED);
                }
            }
        }
        push_runs(&state, &mut pushes);
        // The reads waiting for this pass's pushes follow them.
        state.read_notices.pushed_through(&state, next);
        if let Some(e) = failed {
            tracing::error!(error = %e, offset = next, "cannot apply the log; stopping the applier (run `tidings verify`)");
            state
                .ready
                .store(false, std::sync::atomic::Ordering::Release);
            return;
        }
    }
}

/// Pushes `pushes` (then empty) as one run per channel, and records what happened (metrics,
/// sampled traces).
fn push_runs(state: &AppState, pushes: &mut Vec<(Arc<Pushed>, u64)>) {
    if !pushes.is_empty() {
        push_by_channel(state, pushes);
        pushes.clear();
    }
}

fn push_by_channel(state: &AppState, pushes: &[(Arc<Pushed>, u64)]) {
    let mut by_channel: FastMap<&str, Vec<usize>> = FastMap::default();
    let mut order: Vec<&str> = Vec::new();
    for (i, (msg, _)) in pushes.iter().enumerate() {
        by_channel
            .entry(msg.channel.as_str())
            .or_insert_with(|| {
                order.push(msg.channel.as_str());
                Vec::new()
            })
            .push(i);
    }
    for channel in order {
        let Some(idx) = by_channel.get(channel) else {
            continue;
        };
        for part in idx.chunks(MAX_RUN) {
            let run: Run = Arc::new(part.iter().map(|&i| pushes[i].0.clone()).collect());
            let stats = state.delivery.push(&run);
            for &i in part {
                let (msg, message_id) = &pushes[i];
                let (sessions, dropped) = stats.for_message(msg);
                state
                    .metrics
                    .pushes
                    .add(u64::from(sessions.saturating_sub(dropped)));
                if msg.is_message && state.samples.sampled(*message_id) {
                    state.samples.record(
                        &msg.channel,
                        msg.seq,
                        PushRecord {
                            at_ms: now_ms(),
                            online_users: stats.users,
                            sessions,
                            dropped,
                        },
                    );
                }
            }
            state
                .metrics
                .slow_consumer_closes
                .add(u64::from(stats.closed_slow));
        }
    }
}

#[cfg(test)]
mod tests {
    use tidings_projections::{ChannelFlags, Envelope, Event, State};

    use super::still_members;

    fn apply(state: &mut State, events: Vec<Event>) {
        for e in events {
            let offset = state.next_offset();
            state.apply(offset, &Envelope::new(1, e)).unwrap();
        }
    }

    #[test]
    fn a_subscribe_the_projection_ignored_registers_nobody_for_delivery() {
        let mut state = State::default();
        let uids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // A subscribe that landed after the channel's deletion (it passed the existence check
        // before the delete's event was applied): the projection ignores it.
        apply(
            &mut state,
            vec![
                Event::ChannelCreated {
                    channel: "g".into(),
                    flags: ChannelFlags::default(),
                },
                Event::ChannelDeleted {
                    channel: "g".into(),
                },
                Event::MembersSubscribed {
                    channel: "g".into(),
                    uids: uids(&["mallory"]),
                },
            ],
        );
        assert!(still_members(&state, "g", uids(&["mallory"])).is_empty());
        // Re-created under the same id: only its members count.
        apply(
            &mut state,
            vec![
                Event::ChannelCreated {
                    channel: "g".into(),
                    flags: ChannelFlags::default(),
                },
                Event::MembersSubscribed {
                    channel: "g".into(),
                    uids: uids(&["alice"]),
                },
            ],
        );
        assert_eq!(
            still_members(&state, "g", uids(&["mallory", "alice"])),
            uids(&["alice"])
        );
    }
}
