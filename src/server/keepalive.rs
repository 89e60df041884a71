//! When a WebSocket session pings its client and when it gives up on it.
//!
//! A connection quiet both ways — nothing read from the client, no write to it completed — for
//! `ping_after` (a third of `limits.ws_idle_secs`) gets a ping; clients answer pings by
//! themselves. One quiet for `idle_after` whose ping went unanswered for `ping_after` is closed
//! (4002 `idle_timeout`): a peer gone without a FIN would otherwise hold its slot, its registry
//! entry and its queue. Completed writes count as activity because a client slowly reading a
//! long backlog reads the ping only after it; a peer that is gone while it is written to never
//! acknowledges those writes, and the socket's `TCP_USER_TIMEOUT` ends it. The close needs an
//! unanswered ping, so a session too busy to look at its timer closes nobody unpinged.

use std::time::Duration;

use tokio::time::Instant;

/// What the timer asks of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing now; look again at the instant.
    Wait(Instant),
    /// Ping the client, then look again at the instant.
    Ping(Instant),
    /// Close the session: quiet too long, its ping unanswered.
    Close,
}

/// A session's keepalive state.
#[derive(Debug)]
pub(crate) struct Keepalive {
    idle_after: Duration,
    ping_after: Duration,
    /// The last activity: a frame read, a write completed.
    heard: Instant,
    /// When the first ping since then went out.
    pinged: Option<Instant>,
}

impl Keepalive {
    /// Quiet for `idle_after` closes; a ping goes after a third of it.
    pub(crate) fn new(idle_after: Duration, now: Instant) -> Self {
        Self {
            idle_after,
            ping_after: idle_after / 3,
            heard: now,
            pinged: None,
        }
    }

    /// When to look first.
    pub(crate) fn first_check(&self) -> Instant {
        self.heard + self.ping_after
    }

    /// The connection showed life (a frame read, a write completed).
    pub(crate) fn activity(&mut self, now: Instant) {
        self.heard = now;
        self.pinged = None;
    }

    /// What is due at `now`.
    pub(crate) fn check(&mut self, now: Instant) -> Due {
        let silent = now.saturating_duration_since(self.heard);
        let unanswered = self
            .pinged
            .is_some_and(|p| now.saturating_duration_since(p) >= self.ping_after);
        if silent >= self.idle_after && unanswered {
            return Due::Close;
        }
        if silent < self.ping_after {
            return Due::Wait(self.heard + self.ping_after);
        }
        let next = now + self.ping_after;
        if self.pinged.is_none() || unanswered {
            self.pinged.get_or_insert(now);
            Due::Ping(next)
        } else {
            Due::Wait(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// A quiet connection is pinged at a third, again at two thirds, and closed at the end.
    #[test]
    fn a_quiet_connection_is_pinged_twice_then_closed() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(90 * S, t0);
        assert_eq!(k.first_check(), t0 + 30 * S);
        assert_eq!(k.check(t0 + 10 * S), Due::Wait(t0 + 30 * S));
        assert_eq!(k.check(t0 + 30 * S), Due::Ping(t0 + 60 * S));
        assert_eq!(k.check(t0 + 60 * S), Due::Ping(t0 + 90 * S));
        assert_eq!(k.check(t0 + 90 * S), Due::Close);
    }

    /// Any activity starts over; a check that comes late (a busy session) pings before it
    /// closes, however long the quiet.
    #[test]
    fn activity_resets_and_a_late_check_pings_first() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(90 * S, t0);
        assert_eq!(k.check(t0 + 30 * S), Due::Ping(t0 + 60 * S));
        k.activity(t0 + 40 * S);
        assert_eq!(k.check(t0 + 60 * S), Due::Wait(t0 + 70 * S));
        assert_eq!(k.check(t0 + 500 * S), Due::Ping(t0 + 530 * S));
        assert_eq!(k.check(t0 + 510 * S), Due::Wait(t0 + 540 * S));
        assert_eq!(k.check(t0 + 530 * S), Due::Close);
    }
}
