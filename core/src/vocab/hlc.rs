//! Hybrid logical clocks and last-writer-wins registers on top of automerge.
//!
//! automerge resolves concurrent writes to one key by op id, not by time, so
//! a register that must follow "the latest write wins" stores its own
//! timestamp with every value: a hybrid logical clock (wall time in ms plus a
//! counter), ties broken by the writer. A reader looks at every concurrent
//! value of the key (`get_all`) and takes the greatest `(hlc, writer)`, which
//! every replica computes alike. A writer always stamps a value greater than
//! every value it can see in the register, so a causally later write wins
//! even if the later writer's clock is behind.
//!
//! A device clock far ahead of the hub would otherwise win every register
//! until real time caught up with it. The device therefore stamps with its
//! clock corrected by the offset it learnt from the hub's `Welcome`, and a
//! clock more than [`CLOCK_DRIFT_MAX_MS`] ahead of the hub is clamped and
//! logged.

use serde::{Deserialize, Serialize};

/// How far ahead of the hub a device clock may run before it is clamped.
pub const CLOCK_DRIFT_MAX_MS: u64 = 5 * 60 * 1000;
/// Longest encoded register value accepted from a document.
pub const REGISTER_BYTES_MAX: usize = 16 * 1024;

/// A hybrid logical clock reading: wall ms since the epoch, then a counter.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct Hlc {
    /// Wall-clock part, ms since the Unix epoch.
    pub wall_ms: u64,
    /// Logical part: orders events within one millisecond.
    pub counter: u32,
}

impl Hlc {
    /// The next reading after `self` within the same millisecond.
    pub fn successor(self) -> Hlc {
        Hlc {
            wall_ms: self.wall_ms,
            counter: self.counter.saturating_add(1),
        }
    }
}

/// A device's clock, corrected by the hub offset and clamped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HlcClock {
    /// Last reading handed out.
    pub last: Hlc,
    /// hub time minus device time, ms, as learnt at the last handshake.
    pub hub_offset_ms: i64,
}

impl HlcClock {
    /// A new reading strictly greater than every earlier one and than `floor`.
    /// `now_ms` is the device's wall clock.
    pub fn tick(&mut self, now_ms: u64, floor: Hlc) -> Hlc {
        let corrected = now_ms.saturating_add_signed(self.hub_offset_ms);
        let candidate = Hlc {
            wall_ms: corrected,
            counter: 0,
        };
        let bound = self.last.max(floor);
        let reading = if candidate > bound {
            candidate
        } else {
            bound.successor()
        };
        self.last = reading;
        reading
    }

    /// Learns the hub's clock from a handshake. Returns the skew in ms
    /// (positive: the device is ahead) so the caller can log it.
    pub fn observe_hub(&mut self, hub_ms: u64, now_ms: u64) -> i64 {
        let offset = hub_ms as i64 - now_ms as i64;
        self.hub_offset_ms = offset;
        -offset
    }

    /// True when a reading is further ahead of the corrected clock than
    /// [`CLOCK_DRIFT_MAX_MS`]: written by a device whose clock was wrong.
    pub fn is_far_future(&self, reading: Hlc, now_ms: u64) -> bool {
        let corrected = now_ms.saturating_add_signed(self.hub_offset_ms);
        reading.wall_ms > corrected.saturating_add(CLOCK_DRIFT_MAX_MS)
    }
}

/// One stamped value of a last-writer-wins register, as stored in a document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stamped<T> {
    /// When it was written.
    pub hlc: Hlc,
    /// Who wrote it (replica id bytes): the tie-breaker.
    pub writer: [u8; 16],
    /// The value.
    pub value: T,
}

impl<T: Serialize> Stamped<T> {
    /// Encodes for storage as an automerge bytes value.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data into a Vec: postcard cannot fail here.
        postcard::to_stdvec(self).expect("postcard encoding of a register value")
    }
}

/// Reads only the clock of an encoded stamped value (whatever its type).
pub fn stamp_of(bytes: &[u8]) -> Option<Hlc> {
    if bytes.len() > REGISTER_BYTES_MAX {
        return None;
    }
    postcard::take_from_bytes::<Hlc>(bytes)
        .ok()
        .map(|(hlc, _)| hlc)
}

impl<T: for<'de> Deserialize<'de>> Stamped<T> {
    /// Decodes a stored value; `None` for bytes that are not one (never panics).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > REGISTER_BYTES_MAX {
            return None;
        }
        postcard::from_bytes(bytes).ok()
    }

    /// The ordering key: later clock first, then the greater writer.
    pub fn order_key(&self) -> (Hlc, [u8; 16]) {
        (self.hlc, self.writer)
    }
}

/// The winner among concurrent stamped values: greatest `(hlc, writer)`.
pub fn winner<T>(values: impl IntoIterator<Item = Stamped<T>>) -> Option<Stamped<T>> {
    values
        .into_iter()
        .max_by_key(|stamped| (stamped.hlc, stamped.writer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_clock_ahead_of_the_hub_is_corrected() {
        let mut clock = HlcClock::default();
        // The device thinks it is 10 hours later than the hub does.
        let skew = clock.observe_hub(1_000_000, 1_000_000 + 36_000_000);
        assert_eq!(skew, 36_000_000);
        let reading = clock.tick(1_000_000 + 36_000_000 + 5, Hlc::default());
        assert_eq!(reading.wall_ms, 1_000_005);
        assert!(clock.is_far_future(
            Hlc {
                wall_ms: 1_000_000 + CLOCK_DRIFT_MAX_MS + 10,
                counter: 0
            },
            1_000_000
        ));
    }

    #[test]
    fn a_write_after_seeing_a_future_value_still_wins() {
        let mut clock = HlcClock::default();
        let seen = Hlc {
            wall_ms: 5_000,
            counter: 3,
        };
        let reading = clock.tick(1_000, seen);
        assert!(reading > seen);
    }

    proptest! {
        #[test]
        fn readings_are_strictly_monotonic_under_any_clock(
            steps in proptest::collection::vec((0u64..10_000, 0u64..10_000, any::<bool>(), -5_000i64..5_000), 1..200)
        ) {
            let mut clock = HlcClock::default();
            let mut previous = Hlc::default();
            for (now, floor_wall, observe, hub_skew) in steps {
                if observe {
                    clock.observe_hub(now.saturating_add_signed(hub_skew), now);
                }
                let floor = Hlc { wall_ms: floor_wall, counter: 0 };
                let reading = clock.tick(now, floor);
                prop_assert!(reading > previous, "{reading:?} after {previous:?}");
                prop_assert!(reading > floor);
                previous = reading;
            }
        }

        #[test]
        fn stamped_values_round_trip(wall in any::<u64>(), counter in any::<u32>(), value in any::<i64>()) {
            let stamped = Stamped { hlc: Hlc { wall_ms: wall, counter }, writer: [3; 16], value };
            prop_assert_eq!(Stamped::<i64>::decode(&stamped.encode()), Some(stamped));
        }

        #[test]
        fn garbage_never_decodes_into_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Stamped::<String>::decode(&bytes);
        }
    }
}
