//! A session's own sends while it catches up, and the messages catch-up left out as its own.
//!
//! A session that sends while it catches up must not get its own message twice: once as a
//! sendack and once as a catch-up message. Catch-up therefore skips the messages whose seqs this
//! session sent ([`OwnSends::mark`]). The skip is right only if the sendack comes, and one send
//! in a stalled apply (over `APPLY_TIMEOUT`) is answered `apply_timeout` instead: no sendack,
//! and the message must reach the session as a message.
//!
//! Catch-up and the answer race: the applier publishes the message (catch-up can read it) and
//! only then takes the send's answer, which the timeout sweep may have taken first. So:
//!
//! - an own message that catch-up meets after its sendack was written is skipped and forgotten;
//! - one it meets before any answer is *held* here (it is applied, so it will be answered) and
//!   written when the answer turns out to be `apply_timeout` ([`OwnSends::not_applied`]), or
//!   dropped on its sendack ([`OwnSends::answered`]);
//! - an `apply_timeout` that comes before catch-up meets the message unmarks it: catch-up (or
//!   the live push, which no longer counts the session as the sender) delivers it.
//!
//! Held messages outlive catch-up (the answer may come once the session is live), and are
//! bounded by the session's sends in flight: each is let go at its answer.

use std::collections::HashMap;

use tidings_projections::ids::ChannelId;
use tidings_projections::messages::Message;

/// See the module doc.
#[derive(Debug, Default)]
pub(super) struct OwnSends {
    /// While catching up: the seqs this session sent, by channel, with whether their sendack is
    /// written. `None` once live (the live push knows its sender).
    marked: Option<HashMap<ChannelId, HashMap<u64, bool>>>,
    /// Own messages catch-up left out before their answer was written.
    held: HashMap<(ChannelId, u64), Message>,
}

impl OwnSends {
    /// For a session that catches up first (`catching_up`), or one live from the start.
    pub(super) fn new(catching_up: bool) -> Self {
        Self {
            marked: catching_up.then(HashMap::new),
            held: HashMap::new(),
        }
    }

    /// This session sent `seq` in `channel` (sequenced, not yet answered).
    pub(super) fn mark(&mut self, channel: &str, seq: u64) {
        if let Some(marked) = &mut self.marked {
            marked
                .entry(channel.to_owned())
                .or_default()
                .insert(seq, false);
        }
    }

    /// Catch-up met `m`: the message to write, or `None` when it is this session's own (its
    /// sendack says it, or will).
    pub(super) fn catch_up(&mut self, m: Message) -> Option<Message> {
        let Some(seqs) = self.marked.as_mut().and_then(|c| c.get_mut(&m.channel)) else {
            return Some(m);
        };
        match seqs.remove(&m.seq) {
            None => Some(m),
            Some(true) => None,
            Some(false) => {
                self.held.insert((m.channel.clone(), m.seq), m);
                None
            }
        }
    }

    /// The sendack of `seq` in `channel` is written.
    pub(super) fn answered(&mut self, channel: &str, seq: u64) {
        if let Some(answered) = self
            .marked
            .as_mut()
            .and_then(|c| c.get_mut(channel))
            .and_then(|seqs| seqs.get_mut(&seq))
        {
            *answered = true;
        } else if !self.held.is_empty() {
            self.held.remove(&(channel.to_owned(), seq));
        }
    }

    /// The send of `seq` in `channel` was answered `apply_timeout`: no sendack comes. The
    /// message to write now if catch-up left it out; otherwise catch-up or the live push
    /// delivers it.
    pub(super) fn not_applied(&mut self, channel: &str, seq: u64) -> Option<Message> {
        if let Some(seqs) = self.marked.as_mut().and_then(|c| c.get_mut(channel))
            && seqs.remove(&seq).is_some()
        {
            return None;
        }
        if self.held.is_empty() {
            return None;
        }
        self.held.remove(&(channel.to_owned(), seq))
    }

    /// Catch-up is over: nothing more is skipped; held messages still wait for their answers.
    pub(super) fn live(&mut self) {
        self.marked = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(channel: &str, seq: u64) -> Message {
        Message {
            channel: channel.to_owned(),
            seq,
            message_id: seq,
            from: "ann".into(),
            client_msg_id: format!("c{seq}"),
            ts: 0,
            offset: seq,
            payload: None,
            json: false,
            recalled: false,
            edited: false,
        }
    }

    #[test]
    fn an_own_message_acked_first_is_skipped() {
        let mut own = OwnSends::new(true);
        own.mark("g", 7);
        own.answered("g", 7);
        assert!(own.catch_up(msg("g", 7)).is_none());
        assert!(own.held.is_empty());
        // Another channel's seq 7 is not this session's.
        assert!(own.catch_up(msg("h", 7)).is_some());
    }

    #[test]
    fn an_own_message_met_before_its_sendack_is_held_then_dropped() {
        let mut own = OwnSends::new(true);
        own.mark("g", 7);
        assert!(own.catch_up(msg("g", 7)).is_none());
        own.answered("g", 7);
        assert!(own.held.is_empty());
        assert!(own.not_applied("g", 7).is_none());
    }

    #[test]
    fn an_apply_timeout_after_catch_up_skipped_the_message_delivers_it() {
        let mut own = OwnSends::new(true);
        own.mark("g", 7);
        assert!(own.catch_up(msg("g", 7)).is_none());
        // Live before the answer comes: the held message still waits for it.
        own.live();
        let m = own.not_applied("g", 7).map(|m| m.seq);
        assert_eq!(m, Some(7));
        assert!(own.held.is_empty());
    }

    #[test]
    fn an_apply_timeout_before_catch_up_lets_catch_up_deliver_it() {
        let mut own = OwnSends::new(true);
        own.mark("g", 7);
        assert!(own.not_applied("g", 7).is_none());
        assert_eq!(own.catch_up(msg("g", 7)).map(|m| m.seq), Some(7));
    }

    #[test]
    fn a_live_session_marks_nothing() {
        let mut own = OwnSends::new(false);
        own.mark("g", 7);
        assert!(own.catch_up(msg("g", 7)).is_some());
        assert!(own.not_applied("g", 7).is_none());
    }
}
