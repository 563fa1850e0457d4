//! Every limit the hub enforces per connection, per device and per address,
//! with its named default, and the token-bucket rate limiter behind the
//! rate limits.
//!
//! Protocol limits that both sides know (frame size, ops per push,
//! subscriptions) default to the constants in `protocol::message`; a hub may
//! lower them, never raise them past the protocol's own. Rate limits are
//! token buckets shared by every connection of one device or one address, so
//! opening more sockets buys no more throughput.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use omnisync_core::protocol::message;
use omnisync_core::{DeviceId, TenantId};
use omnisync_hub_engine::hub_session::SessionLimits;

/// Bytes queued for one connection's socket before the hub gives the
/// device up as not reading (16 MiB: four maximal frames). Never below
/// `message::FRAME_BYTES_MAX`, or one large batch could trip it.
pub const OUTBOUND_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Below this many queued bytes the next catch-up page is read and live
/// commits are queued; above it a commit is left to a later catch-up read,
/// so a device that reads slowly is fed at its own pace instead of being
/// buffered for.
pub const CATCH_UP_OUTBOUND_BYTES_MAX: usize = 1024 * 1024;
/// A device that takes none of a batch of frames within this time is
/// disconnected.
pub const SEND_TIMEOUT_MS: u64 = 10_000;
/// New connections per second per authenticated device (sustained).
pub const DEVICE_CONNECTIONS_PER_S: u32 = 2;
/// New connections per device in a burst.
pub const DEVICE_CONNECTIONS_BURST: u32 = 20;
/// New connections per second per client address (sustained; a store's
/// devices often share one address).
pub const ADDRESS_CONNECTIONS_PER_S: u32 = 100;
/// New connections per address in a burst (a store's whole fleet at once).
pub const ADDRESS_CONNECTIONS_BURST: u32 = 2000;
/// Messages per second per device, over all its connections (sustained).
pub const DEVICE_MESSAGES_PER_S: u32 = 2000;
/// Messages per device in a burst.
pub const DEVICE_MESSAGES_BURST: u32 = 4000;
/// Messages per second per client address (sustained).
pub const ADDRESS_MESSAGES_PER_S: u32 = 20_000;
/// Messages per address in a burst.
pub const ADDRESS_MESSAGES_BURST: u32 = 40_000;
/// Most devices or addresses tracked by one rate limiter; when full, idle
/// entries are dropped, and if none is idle a new key is refused.
pub const RATE_KEYS_MAX: usize = 100_000;
/// A TLS handshake must finish within this time.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Most TLS handshakes in progress at once.
pub const TLS_HANDSHAKES_IN_FLIGHT_MAX: usize = 256;

/// A sustained rate with a burst allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Events per second, sustained.
    pub per_s: u32,
    /// Events allowed at once after a quiet period.
    pub burst: u32,
}

impl Rate {
    /// `per_s` sustained with `burst` at once.
    pub const fn new(per_s: u32, burst: u32) -> Self {
        Self { per_s, burst }
    }
}

/// Every configurable limit of a hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket message (and frame) accepted, bytes; at most
    /// `message::FRAME_BYTES_MAX`.
    pub frame_bytes_max: usize,
    /// Most ops in one `Push`; at most `message::PUSH_OPS_MAX`.
    pub push_ops_max: usize,
    /// Most subscriptions per connection.
    pub subscriptions_max: usize,
    /// Bytes queued for a socket before the device is disconnected.
    pub outbound_bytes_max: usize,
    /// Time a device may take to accept a batch of frames.
    pub send_timeout_ms: u64,
    /// New connections per device.
    pub device_connections: Rate,
    /// New connections per address.
    pub address_connections: Rate,
    /// Messages per device.
    pub device_messages: Rate,
    /// Messages per address.
    pub address_messages: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            frame_bytes_max: message::FRAME_BYTES_MAX,
            push_ops_max: message::PUSH_OPS_MAX,
            subscriptions_max: message::SUBSCRIPTIONS_MAX,
            outbound_bytes_max: OUTBOUND_BYTES_MAX,
            send_timeout_ms: SEND_TIMEOUT_MS,
            device_connections: Rate::new(DEVICE_CONNECTIONS_PER_S, DEVICE_CONNECTIONS_BURST),
            address_connections: Rate::new(ADDRESS_CONNECTIONS_PER_S, ADDRESS_CONNECTIONS_BURST),
            device_messages: Rate::new(DEVICE_MESSAGES_PER_S, DEVICE_MESSAGES_BURST),
            address_messages: Rate::new(ADDRESS_MESSAGES_PER_S, ADDRESS_MESSAGES_BURST),
        }
    }
}

impl Limits {
    /// The limits with every value brought into its valid range: protocol
    /// limits no higher than the protocol's, nothing zero.
    pub fn clamped(self) -> Self {
        let rate = |rate: Rate| Rate::new(rate.per_s.max(1), rate.burst.max(1));
        Self {
            frame_bytes_max: self.frame_bytes_max.clamp(1024, message::FRAME_BYTES_MAX),
            push_ops_max: self.push_ops_max.clamp(1, message::PUSH_OPS_MAX),
            subscriptions_max: self.subscriptions_max.max(1),
            outbound_bytes_max: self.outbound_bytes_max.max(message::FRAME_BYTES_MAX),
            send_timeout_ms: self.send_timeout_ms.clamp(100, 600_000),
            device_connections: rate(self.device_connections),
            address_connections: rate(self.address_connections),
            device_messages: rate(self.device_messages),
            address_messages: rate(self.address_messages),
        }
    }

    /// The part the protocol session enforces.
    pub fn session(&self) -> SessionLimits {
        SessionLimits {
            push_ops_max: self.push_ops_max,
            subscriptions_max: self.subscriptions_max,
        }
    }
}

/// The hub's shared rate limiters.
pub struct RateLimiters {
    /// Connections per device.
    pub device_connections: RateLimiter<(TenantId, DeviceId)>,
    /// Connections per address.
    pub address_connections: RateLimiter<IpAddr>,
    /// Messages per device.
    pub device_messages: RateLimiter<(TenantId, DeviceId)>,
    /// Messages per address.
    pub address_messages: RateLimiter<IpAddr>,
}

impl RateLimiters {
    /// Limiters for `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            device_connections: RateLimiter::new(limits.device_connections, RATE_KEYS_MAX),
            address_connections: RateLimiter::new(limits.address_connections, RATE_KEYS_MAX),
            device_messages: RateLimiter::new(limits.device_messages, RATE_KEYS_MAX),
            address_messages: RateLimiter::new(limits.address_messages, RATE_KEYS_MAX),
        }
    }
}

/// Token buckets keyed by device or address, bounded in memory.
pub struct RateLimiter<K> {
    rate: Rate,
    keys_max: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// An event over its rate: when the next one would be allowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateExceeded {
    /// Milliseconds until a token is back.
    pub retry_after_ms: u64,
    /// The limit that was hit.
    pub rate: Rate,
}

impl std::fmt::Display for RateExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "over {} per second (burst {}); retry in {} ms",
            self.rate.per_s, self.rate.burst, self.retry_after_ms
        )
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter allowing `rate` per key, tracking at most `keys_max` keys.
    pub fn new(rate: Rate, keys_max: usize) -> Self {
        Self {
            rate,
            keys_max,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` at `now`, or says when to come back.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), RateExceeded> {
        let per_s = f64::from(self.rate.per_s);
        let burst = f64::from(self.rate.burst);
        // A panic while holding the lock cannot leave a bucket half-written.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.keys_max {
            // Forget keys whose bucket has refilled: they are idle.
            buckets.retain(|_, bucket| {
                bucket.tokens + now.saturating_duration_since(bucket.updated).as_secs_f64() * per_s
                    < burst
            });
            if buckets.len() >= self.keys_max {
                return Err(RateExceeded {
                    retry_after_ms: 1000,
                    rate: self.rate,
                });
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_s).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(RateExceeded {
                retry_after_ms: ((1.0 - bucket.tokens) / per_s * 1000.0).ceil() as u64,
                rate: self.rate,
            })
        }
    }

    /// Keys currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(Rate::new(10, 5), 100);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.check(&1, start).unwrap();
        }
        let refused = limiter.check(&1, start).unwrap_err();
        assert_eq!(refused.retry_after_ms, 100);
        limiter.check(&2, start).unwrap();
        limiter
            .check(&1, start + Duration::from_millis(100))
            .unwrap();
        assert!(
            limiter
                .check(&1, start + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn the_key_table_is_bounded_and_forgets_idle_keys() {
        let limiter = RateLimiter::new(Rate::new(1, 2), 3);
        let start = Instant::now();
        for key in 0..3 {
            limiter.check(&key, start).unwrap();
        }
        assert!(limiter.check(&99, start).is_err(), "full of busy keys");
        limiter.check(&99, start + Duration::from_secs(5)).unwrap();
        assert!(limiter.tracked() <= 3);
    }

    #[test]
    fn limits_are_clamped_to_the_protocol() {
        let limits = Limits {
            frame_bytes_max: usize::MAX,
            push_ops_max: 0,
            device_messages: Rate::new(0, 0),
            ..Limits::default()
        }
        .clamped();
        assert_eq!(limits.frame_bytes_max, message::FRAME_BYTES_MAX);
        assert_eq!(limits.push_ops_max, 1);
        assert_eq!(limits.device_messages, Rate::new(1, 1));
    }
}
