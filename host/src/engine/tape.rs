//! What a call reads from outside its heap, so that running the call again on the same state
//! (a replay of its journal record) reproduces it exactly.
//!
//! The sandbox's inputs besides the code are the seed of `Math.random`, the call's clock
//! (`Date.now()`, `new Date()`, `performance.now()`: the wall clock when the call started plus
//! real time since, plus the time timers skipped) and the host's replies to its host calls
//! (`tools`, [`crate::host_call`]). A live run records each real-time reading and each reply,
//! with the point of the run where it came in, on its [`Tape`]; a replay plays them back in
//! order instead of reading the real clock or asking the host, and `Math.random` draws from
//! the same seed, so the replay computes what the call computed. Time zone and locale are
//! fixed for every host (see [`super::init`]).
//!
//! A run that reads its clock more than [`MAX_CLOCK_READINGS`] times (a busy-wait, say) keeps
//! only that many, and one that reads a `WeakRef` (`deref`: whether its target is still there
//! is the garbage collector's choice) depends on what no tape holds: its tape says
//! [`Replay::Impossible`], and the runtime stores such a call's state instead of its record.
//! So does a run whose host replies take more than [`MAX_TAPED_REPLY_BYTES`]: a journal
//! record stays small.

use serde::{Deserialize, Serialize};

use super::JsException;
use crate::host_call::{HostError, HostErrorKind, HostReply};

/// Most clock readings a tape keeps; a run that reads more cannot be replayed.
pub const MAX_CLOCK_READINGS: usize = 4096;

/// Most bytes of host replies a tape keeps; a run that gets more is stored as its state.
pub const MAX_TAPED_REPLY_BYTES: usize = 1 << 20;

/// The inputs one run read, as recorded (or played back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tape {
    /// The seed of the run's `Math.random`.
    pub seed: u64,
    /// The wall clock when the run started, in µs since the Unix epoch.
    pub start_us: u64,
    /// Each reading of real time since the run started, in µs, in order.
    pub clock_us: Vec<u64>,
    /// Whether a replay from this tape reproduces the run.
    pub replay: Replay,
    /// The error of the heap's last failed call, which the run found as `_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<JsException>,
    /// The host's replies to the run's host calls, in the order they came in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replies: Vec<TapedReply>,
    /// The key of the run's secure random bytes (`crypto.getRandomValues`), drawn from the
    /// system the first time the run asks for such bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Box<[u8; 32]>>,
}

/// A host reply as a tape holds it: which call it answered, what that call asked, and the
/// point of the run where it came in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapedReply {
    /// The call's number in the run (calls are numbered from 1 as the code makes them).
    pub call: u32,
    /// [`crate::host_call::HostCall::fingerprint`] of what the call asked.
    pub asked: u64,
    /// How many timers had fired when it came in.
    pub after_timers: u64,
    /// It came at once, as the call was made (the call could not be started).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_call: bool,
    /// The reply.
    pub reply: HostReply,
}

/// Whether a replay of a run from its tape reproduces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Replay {
    /// It does: every input the run read is on the tape.
    Exact,
    /// It does not, for the reason given.
    Impossible(String),
}

impl Tape {
    /// A tape for a live run starting now, with a fresh seed.
    pub fn starting_now() -> Self {
        let start_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Self {
            seed: uuid::Uuid::new_v4().as_u64_pair().0,
            start_us,
            clock_us: Vec::new(),
            replay: Replay::Exact,
            last_error: None,
            replies: Vec::new(),
            key: None,
        }
    }
}

/// A tape in use by a run: being recorded, or being played back.
pub(super) enum Deck {
    /// A live run: real time is read and written down.
    Recording {
        tape: Tape,
        started: std::time::Instant,
    },
    /// A replay: readings and replies come from the tape.
    Playing {
        tape: Tape,
        next: usize,
        next_reply: usize,
    },
}

impl Deck {
    /// A deck recording a live run that starts now.
    pub(super) fn record() -> Self {
        Self::record_after(None)
    }

    /// A deck recording a live run that starts now and finds `last_error` as `_error`.
    pub(super) fn record_after(last_error: Option<JsException>) -> Self {
        Deck::Recording {
            tape: Tape {
                last_error,
                ..Tape::starting_now()
            },
            started: std::time::Instant::now(),
        }
    }

    /// The error the run finds as `_error`.
    pub(super) fn last_error(&self) -> Option<&JsException> {
        self.tape().last_error.as_ref()
    }

    /// A deck playing `tape` back.
    pub(super) fn play(tape: Tape) -> Self {
        Deck::Playing {
            tape,
            next: 0,
            next_reply: 0,
        }
    }

    fn tape(&self) -> &Tape {
        match self {
            Deck::Recording { tape, .. } | Deck::Playing { tape, .. } => tape,
        }
    }

    /// Marks the run as one a replay cannot reproduce, for `why` (the first reason stays).
    pub(super) fn cannot_replay(&mut self, why: &str) {
        let tape = match self {
            Deck::Recording { tape, .. } | Deck::Playing { tape, .. } => tape,
        };
        if tape.replay == Replay::Exact {
            tape.replay = Replay::Impossible(why.to_string());
        }
    }

    /// Whether it records a live run (rather than playing one back).
    pub(super) fn is_recording(&self) -> bool {
        matches!(self, Deck::Recording { .. })
    }

    /// The seed of the run's `Math.random`.
    pub(super) fn seed(&self) -> u64 {
        self.tape().seed
    }

    /// The key of the run's secure random bytes: drawn from the system and recorded the
    /// first time a live run asks, played back in a replay.
    pub(super) fn key(&mut self) -> [u8; 32] {
        let recording = self.is_recording();
        let tape = match self {
            Deck::Recording { tape, .. } | Deck::Playing { tape, .. } => tape,
        };
        if let Some(key) = &tape.key {
            return **key;
        }
        if !recording && tape.replay == Replay::Exact {
            tape.replay =
                Replay::Impossible("the replay drew random bytes that the call did not".into());
        }
        let key = fresh_key();
        tape.key = Some(Box::new(key));
        key
    }

    /// The wall clock when the run started, in ms since the Unix epoch.
    pub(super) fn clock_start_ms(&self) -> f64 {
        self.tape().start_us as f64 / 1000.0
    }

    /// Real time since the run started, in ms (to the µs): read and recorded, or played back.
    pub(super) fn read_clock(&mut self) -> f64 {
        self.read_clock_us() as f64 / 1000.0
    }

    fn read_clock_us(&mut self) -> u64 {
        match self {
            Deck::Recording { tape, started } => {
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                if tape.clock_us.len() < MAX_CLOCK_READINGS {
                    tape.clock_us.push(us);
                } else if tape.replay == Replay::Exact {
                    tape.replay = Replay::Impossible(format!(
                        "the call read the clock more than {MAX_CLOCK_READINGS} times"
                    ));
                }
                us
            }
            Deck::Playing { tape, next, .. } => match tape.clock_us.get(*next) {
                Some(us) => {
                    *next += 1;
                    *us
                }
                None => {
                    // The replay read the clock more often than the call: it went another way.
                    if tape.replay == Replay::Exact {
                        tape.replay = Replay::Impossible(
                            "the replay read the clock more often than the call did".into(),
                        );
                    }
                    tape.clock_us.last().copied().unwrap_or(0)
                }
            },
        }
    }

    /// Writes down a reply that came in for a live run.
    pub(super) fn record_reply(&mut self, mut reply: TapedReply) {
        if let Deck::Recording { tape, .. } = self {
            let taped: usize = tape.replies.iter().map(|r| r.reply.size()).sum();
            if taped + reply.reply.size() > MAX_TAPED_REPLY_BYTES {
                if tape.replay == Replay::Exact {
                    tape.replay = Replay::Impossible(format!(
                        "its host replies (tool results, responses) took more than {} KiB",
                        MAX_TAPED_REPLY_BYTES >> 10
                    ));
                }
                // No replay will read them: keep only that the calls were answered, so that
                // the run's answer and record stay small.
                for taped in tape.replies.iter_mut().chain(std::iter::once(&mut reply)) {
                    taped.reply =
                        HostReply::Failed(HostError::new(HostErrorKind::TooLarge, "not kept"));
                }
            }
            tape.replies.push(reply);
        }
    }

    /// In a replay, the next taped reply if it came in after `fired` timers.
    pub(super) fn next_reply(&mut self, fired: u64) -> Option<TapedReply> {
        match self {
            Deck::Playing {
                tape, next_reply, ..
            } => {
                let reply = tape.replies.get(*next_reply)?;
                if reply.after_timers != fired || reply.at_call {
                    return None;
                }
                *next_reply += 1;
                Some(reply.clone())
            }
            Deck::Recording { .. } => None,
        }
    }

    /// In a replay, the taped reply to call `call` if it came at once, as the call was made.
    pub(super) fn reply_at_call(&mut self, call: u32) -> Option<TapedReply> {
        match self {
            Deck::Playing {
                tape, next_reply, ..
            } => {
                let reply = tape.replies.get(*next_reply)?;
                if !reply.at_call || reply.call != call {
                    return None;
                }
                *next_reply += 1;
                Some(reply.clone())
            }
            Deck::Recording { .. } => None,
        }
    }

    /// The tape as the run left it. A replay that read fewer readings or replies than
    /// recorded went another way than the call.
    pub(super) fn finish(self) -> Tape {
        match self {
            Deck::Recording { tape, .. } => tape,
            Deck::Playing {
                mut tape,
                next,
                next_reply,
            } => {
                if next < tape.clock_us.len() && tape.replay == Replay::Exact {
                    tape.replay = Replay::Impossible(format!(
                        "the replay read the clock {next} times, the call {}",
                        tape.clock_us.len()
                    ));
                }
                if next_reply < tape.replies.len() && tape.replay == Replay::Exact {
                    tape.replay = Replay::Impossible(format!(
                        "the replay took {next_reply} tool replies, the call {}",
                        tape.replies.len()
                    ));
                }
                tape
            }
        }
    }
}

/// `Math.random`'s generator: SplitMix64, fully determined by its seed.
pub(super) struct Random(u64);

/// 32 bytes from the system's secure random source.
pub(super) fn fresh_key() -> [u8; 32] {
    let mut key = [0; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).is_err() {
        // The system's source does not fail on the systems mcp-v8 runs on; if it ever did,
        // two UUIDs are drawn from it too.
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        key[..16].copy_from_slice(a.as_bytes());
        key[16..].copy_from_slice(b.as_bytes());
    }
    key
}

/// Secure random bytes from a run's key (HMAC-SHA-256 of a counter): unpredictable without
/// the key, which never leaves the host's records, and the same again in a replay.
pub(super) struct SecureRandom {
    key: ring::hmac::Key,
    counter: u64,
}

impl SecureRandom {
    pub(super) fn new(key: &[u8; 32]) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            counter: 0,
        }
    }

    /// Fills `bytes`.
    pub(super) fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(32) {
            self.counter += 1;
            let block = ring::hmac::sign(&self.key, &self.counter.to_le_bytes());
            chunk.copy_from_slice(&block.as_ref()[..chunk.len()]);
        }
    }
}

impl Random {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A number in [0, 1) with 53 random bits, as V8's own.
    pub(super) fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_random_bytes_follow_the_key_and_a_replay_draws_them_again() {
        let draw = |key: &[u8; 32]| {
            let mut random = SecureRandom::new(key);
            let mut bytes = [0u8; 70];
            random.fill(&mut bytes);
            bytes
        };
        let mut live = Deck::record();
        let key = live.key();
        assert_eq!(live.key(), key, "one key per run");
        assert_eq!(draw(&key), draw(&key));
        assert_ne!(draw(&key), draw(&Deck::record().key()));
        let tape = live.finish();
        assert_eq!(tape.key, Some(Box::new(key)));
        assert_eq!(Deck::play(tape).key(), key);

        let mut replay = Deck::play(Deck::record().finish());
        replay.key();
        assert!(matches!(replay.finish().replay, Replay::Impossible(_)));
    }

    #[test]
    fn random_numbers_follow_the_seed_and_stay_in_range() {
        let draw = |seed| {
            let mut random = Random::new(seed);
            (0..1000).map(|_| random.next_f64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(9).iter().all(|x| (0.0..1.0).contains(x)));
        let mean = draw(10).iter().sum::<f64>() / 1000.0;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }

    #[test]
    fn a_played_tape_gives_back_its_readings_and_notices_a_different_path() {
        let mut recording = Deck::record();
        let readings: Vec<f64> = (0..3).map(|_| recording.read_clock()).collect();
        let tape = recording.finish();
        let recorded: Vec<f64> = tape.clock_us.iter().map(|us| *us as f64 / 1000.0).collect();
        assert_eq!(recorded, readings);
        assert_eq!(tape.replay, Replay::Exact);

        let mut same = Deck::play(tape.clone());
        let again: Vec<f64> = (0..3).map(|_| same.read_clock()).collect();
        assert_eq!(again, readings);
        assert_eq!(same.finish().replay, Replay::Exact);

        let mut more = Deck::play(tape.clone());
        for _ in 0..4 {
            more.read_clock();
        }
        assert!(matches!(more.finish().replay, Replay::Impossible(_)));
        let mut fewer = Deck::play(tape);
        fewer.read_clock();
        assert!(matches!(fewer.finish().replay, Replay::Impossible(_)));
    }

    #[test]
    fn a_run_that_reads_the_clock_too_often_cannot_be_replayed() {
        let mut deck = Deck::record();
        for _ in 0..=MAX_CLOCK_READINGS {
            deck.read_clock();
        }
        let tape = deck.finish();
        assert_eq!(tape.clock_us.len(), MAX_CLOCK_READINGS);
        assert!(matches!(tape.replay, Replay::Impossible(why) if why.contains("4096")));
    }
}
