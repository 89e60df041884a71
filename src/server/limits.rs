//! Rate limits: a token bucket of `rate` tokens per second holding up to twice that, the
//! send buckets of users ([`UserRates`]): one per user, whatever carries their sends — a token
//! per send and one per payload byte, taken together or not at all — and the person channels
//! each user opened this hour ([`NewChats`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Users [`UserRates`] holds before it first forgets idle buckets.
const SWEEP_FLOOR: usize = 100_000;

#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate_per_sec: u32) -> Self {
        let rate = f64::from(rate_per_sec.max(1));
        Self::with_burst(rate, rate * 2.0)
    }

    /// `rate` tokens a second (at least 1), holding up to `burst` (at least the rate); full.
    fn with_burst(rate: f64, burst: f64) -> Self {
        let rate = rate.max(1.0);
        let burst = burst.max(rate);
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there (`None`: there is one now). Takes nothing.
    pub(crate) fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.wait_for(now, 1.0)
    }

    /// How long until `n` tokens are there (`None`: they are now). Takes nothing. `n` past the
    /// burst is never there: callers keep the burst at least the largest `n` they ask for.
    fn wait_for(&mut self, now: Instant, n: f64) -> Option<Duration> {
        self.refill(now);
        (self.tokens < n).then(|| Duration::from_secs_f64((n - self.tokens) / self.rate))
    }

    pub(crate) fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// One user's send bucket: every send of theirs, over any of their WebSocket sessions or over
/// HTTP, takes a token from it (a bucket per connection let a user with
/// `limits.sessions_per_user` sessions send that many times the limit), and one byte token per
/// byte of its payload from the bucket beside it. A session holds its handle for its life, so
/// its sends take this bucket's lock only — shared with the user's own other connections, not
/// with every send on the server.
#[derive(Debug, Clone)]
pub(crate) struct UserBucket(Arc<Mutex<Pair>>);

/// A user's two buckets: sends, and payload bytes.
#[derive(Debug)]
struct Pair {
    sends: TokenBucket,
    bytes: TokenBucket,
}

/// Which of a user's limits a refused send ran into, and how long until it would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// Sends a second.
    Sends(Duration),
    /// Payload bytes a second.
    Bytes(Duration),
}

/// The rates of a user's buckets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendRates {
    /// Sends a second (bursts of twice that).
    pub(crate) sends: u32,
    /// Payload bytes a second (bursts of twice that, and at least `max_payload`).
    pub(crate) bytes: u64,
    /// The largest payload: a full bucket always holds one.
    pub(crate) max_payload: usize,
}

impl UserBucket {
    fn new(rates: SendRates) -> Self {
        let bytes = rates.bytes as f64;
        let burst = (bytes * 2.0).max(rates.max_payload as f64);
        Self(Arc::new(Mutex::new(Pair {
            sends: TokenBucket::new(rates.sends),
            bytes: TokenBucket::with_burst(bytes, burst),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pair> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a send's token and `bytes` byte tokens — both, or neither — or says which limit
    /// holds the send back and for how long (the longer wait, when both do). The clock is
    /// read under the lock, so the connections sharing the bucket take in the order of their
    /// times (an older time after a newer one would move the bucket's clock back and count the
    /// time between twice).
    pub(crate) fn take(&self, bytes: usize) -> Result<(), Limited> {
        let mut pair = self.lock();
        let now = Instant::now();
        let n = bytes as f64;
        let by_sends = pair.sends.wait(now);
        let by_bytes = pair.bytes.wait_for(now, n);
        match (by_sends, by_bytes) {
            (None, None) => {
                pair.sends.tokens -= 1.0;
                pair.bytes.tokens -= n;
                Ok(())
            }
            (Some(s), Some(b)) if b > s => Err(Limited::Bytes(b)),
            (Some(s), _) => Err(Limited::Sends(s)),
            (None, Some(b)) => Err(Limited::Bytes(b)),
        }
    }

    /// Whether a connection holds this bucket besides the map. A handle is made only from
    /// another, so once the map's is the last only [`UserRates::bucket`] makes one, under the
    /// map's lock: under that lock, a bucket no connection holds stays so.
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
}

/// The send buckets of users, by uid: a WebSocket session takes its user's at registration
/// and keeps it; an HTTP send takes it per request.
#[derive(Debug)]
pub(crate) struct UserRates {
    rates: SendRates,
    /// The fewest users held before idle buckets are forgotten.
    floor: usize,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    by_user: HashMap<String, UserBucket>,
    /// How many users make the next new one forget the idle buckets first: twice those kept
    /// by the last sweep (at least the floor), so sweeps cost O(1) a new user however many
    /// buckets stay in use.
    sweep_at: usize,
}

impl UserRates {
    /// Buckets of these rates.
    pub(crate) fn new(rates: SendRates) -> Self {
        Self::with_floor(rates, SWEEP_FLOOR)
    }

    fn with_floor(rates: SendRates, floor: usize) -> Self {
        Self {
            rates,
            floor,
            buckets: Mutex::new(Buckets {
                by_user: HashMap::new(),
                sweep_at: floor,
            }),
        }
    }

    /// `uid`'s bucket: the one their other connections use, or a new full one.
    pub(crate) fn bucket(&self, uid: &str) -> UserBucket {
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = m.by_user.get(uid) {
            return b.clone();
        }
        if m.by_user.len() >= m.sweep_at {
            m.forget_idle(Instant::now());
            m.sweep_at = m.by_user.len().saturating_mul(2).max(self.floor);
        }
        let b = UserBucket::new(self.rates);
        m.by_user.insert(uid.to_owned(), b.clone());
        b
    }

    #[cfg(test)]
    fn users(&self) -> usize {
        let m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        m.by_user.len()
    }
}

impl Buckets {
    /// Forgets the buckets no connection holds and that are full: one made again is full too,
    /// so the user gains nothing. A bucket a session holds stays, full or not: a fresh one in
    /// its place would give the user's other connections a second bucket beside the session's.
    fn forget_idle(&mut self, now: Instant) {
        self.by_user
            .retain(|_, b| b.in_use() || !b.lock().is_full(now));
    }
}

impl Pair {
    fn is_full(&mut self, now: Instant) -> bool {
        self.sends.is_full(now) && self.bytes.is_full(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates of `n` sends a second, with bytes to spare.
    fn sends(n: u32) -> SendRates {
        SendRates {
            sends: n,
            bytes: 1 << 30,
            max_payload: 1 << 16,
        }
    }

    /// Payload bytes are a limit of their own beside sends, taken with the send or not at all:
    /// a burst of twice the byte rate, but never less than one largest payload.
    #[test]
    fn payload_bytes_are_limited_beside_sends() {
        // Slow rates: a slow machine refills little between two calls.
        let rates = UserRates::new(SendRates {
            sends: 10,
            bytes: 100,
            max_payload: 150,
        });
        let b = rates.bucket("alice");
        assert!(
            b.take(150).is_ok(),
            "the largest payload fits a full bucket"
        );
        // 50 bytes (and a little refill) left of the 200 burst.
        let Err(Limited::Bytes(wait)) = b.take(100) else {
            panic!("past the byte burst")
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(b.take(40).is_ok(), "a smaller payload still fits");
        // A refused send took nothing: its send token is still there for the next (a refusal
        // only refills).
        let before = b.lock().sends.tokens;
        assert!(b.take(100).is_err());
        assert!(b.lock().sends.tokens >= before, "no send token taken");
        // A byte rate below half the largest payload: the burst is one largest payload.
        let small = UserRates::new(SendRates {
            sends: 10,
            bytes: 1,
            max_payload: 1500,
        });
        assert!(small.bucket("bob").take(1500).is_ok());
        // Sends run out on their own too (20 with no payload).
        let s = small.bucket("carol");
        let taken = (0..30).filter(|_| s.take(0).is_ok()).count();
        assert!((20..=21).contains(&taken), "{taken}");
        while s.take(0).is_ok() {}
        assert!(matches!(s.take(0), Err(Limited::Sends(_))));
    }

    /// A user's hour: `per_hour` new channels, then the wait until it ends; a fresh hour after
    /// it. Users whose hour ended are forgotten only when a new user would pass the sweep mark.
    #[test]
    fn new_chats_per_user_per_hour() {
        let mut n = NewChats::default();
        let t0 = Instant::now();
        assert!(n.take("a", 2, t0).is_ok());
        assert!(n.take("a", 2, t0).is_ok());
        let wait = n.take("a", 2, t0 + Duration::from_secs(600)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(3000));
        assert!(n.take("b", 2, t0).is_ok(), "another user's own hour");
        assert!(n.take("a", 2, t0 + HOUR).is_ok(), "a fresh hour");
        // A slot given back (its send not written) is free again, once.
        n.give_back("a");
        assert!(n.take("a", 2, t0 + HOUR).is_ok());
        assert!(n.take("a", 2, t0 + HOUR).is_ok());
        assert!(n.take("a", 2, t0 + HOUR).is_err());
        n.give_back("nobody");
        // The sweep: a map at the mark forgets the users whose hour ended, once.
        let mut n = NewChats::default();
        for i in 0..SWEEP_FLOOR {
            assert!(n.take(&format!("u{i}"), 1, t0).is_ok());
        }
        assert!(n.take("late", 1, t0 + HOUR).is_ok());
        assert_eq!(n.hours.len(), 1, "the ended hours forgotten");
        assert_eq!(n.sweep_at, SWEEP_FLOOR);
    }

    #[test]
    fn bursts_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10);
        let taken = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(taken, 20, "a burst of twice the rate");
        assert!(!b.take(t0));
        assert!(
            b.take(t0 + Duration::from_millis(150)),
            "refills at the rate"
        );
    }

    #[test]
    fn says_how_long_until_a_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10);
        assert_eq!(b.wait(t0), None);
        while b.take(t0) {}
        let w = b.wait(t0).unwrap();
        assert!(
            w > Duration::from_millis(90) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        assert_eq!(b.wait(t0 + w), None, "a token is back after that long");
    }

    #[test]
    fn connections_of_one_user_share_a_bucket() {
        let rates = UserRates::new(sends(1));
        let (phone, laptop) = (rates.bucket("alice"), rates.bucket("alice"));
        let http = || rates.bucket("alice");
        let taken = (0..20)
            .filter(|i| match i % 3 {
                0 => phone.take(0).is_ok(),
                1 => laptop.take(0).is_ok(),
                _ => http().take(0).is_ok(),
            })
            .count();
        assert_eq!(taken, 2, "one burst of twice the rate for the user");
        let Err(Limited::Sends(wait)) = laptop.take(0) else {
            panic!("past the burst")
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(rates.bucket("bob").take(0).is_ok(), "per user");
    }

    #[test]
    fn idle_buckets_are_forgotten_and_held_ones_kept() {
        let rates = UserRates::with_floor(sends(1), 3);
        let held = rates.bucket("held");
        while held.take(0).is_ok() {}
        // Not full, though no connection holds it: forgotten, it would come back full.
        assert!(rates.bucket("spent").take(0).is_ok());
        drop(rates.bucket("idle"));
        assert_eq!(rates.users(), 3);
        // A fourth user finds three: the idle one goes, the others stay.
        drop(rates.bucket("new"));
        assert_eq!(rates.users(), 3);
        let again = rates.bucket("held");
        assert!(Arc::ptr_eq(&again.0, &held.0), "not a fresh one");
        assert!(again.take(0).is_err(), "still empty");
        // Once no session holds it and it has refilled, it is forgotten too.
        drop((held, again));
        let later = Instant::now() + Duration::from_secs(10);
        rates.buckets.lock().unwrap().forget_idle(later);
        assert_eq!(rates.users(), 0, "every bucket was full and unheld by then");
    }
}

/// Person channels each user opened in the current hour ([`NewChats::take`]): a person
/// channel needs no creation and may name any uid, and each one holds a head, a preview and
/// cursors for good — a user sending to made-up uids grew the server's memory by ~1.3 KB a
/// channel, without end. Held under the sequencer's lock. Forgotten on restart (a fresh hour).
#[derive(Debug, Default)]
pub(crate) struct NewChats {
    /// By user: when their hour began, and how many they opened in it.
    hours: HashMap<String, (Instant, u32)>,
    /// Forget users whose hour ended once a new one would make the map this large (then twice
    /// what is left, at least [`SWEEP_FLOOR`]): not a sweep of every entry at every call.
    sweep_at: usize,
}

/// An hour of [`NewChats`].
const HOUR: Duration = Duration::from_secs(3600);

impl NewChats {
    /// Counts a new person channel of `uid` against `per_hour`; `Err(wait)` when their hour's
    /// allowance is spent (`wait`: until it ends).
    pub(crate) fn take(&mut self, uid: &str, per_hour: u32, now: Instant) -> Result<(), Duration> {
        if !self.hours.contains_key(uid) && self.hours.len() >= self.sweep_at.max(SWEEP_FLOOR) {
            self.hours
                .retain(|_, (began, _)| now.duration_since(*began) < HOUR);
            self.sweep_at = (self.hours.len() * 2).max(SWEEP_FLOOR);
        }
        let (began, count) = self.hours.entry(uid.to_owned()).or_insert((now, 0));
        if now.duration_since(*began) >= HOUR {
            (*began, *count) = (now, 0);
        }
        if *count >= per_hour {
            return Err(HOUR.saturating_sub(now.duration_since(*began)));
        }
        *count += 1;
        Ok(())
    }

    /// Gives back a slot [`NewChats::take`] counted for `uid`, whose send was then not written
    /// (refused, or its enqueue failed): only what was not written is free again.
    pub(crate) fn give_back(&mut self, uid: &str) {
        if let Some((_, count)) = self.hours.get_mut(uid) {
            *count = count.saturating_sub(1);
        }
    }
}
