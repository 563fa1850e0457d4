//! The hubs a device may sync with, and the order and pace in which it
//! tries them.
//!
//! A device is given one or more hub URLs (`ws://` or `wss://`); a URL
//! whose host name resolves to several addresses stands for each of them.
//! The runtime walks the resulting addresses as a ring: a connection that
//! was up and dropped is retried on the *next* address at once (a hub
//! process that died is not waited for), and every failed attempt after
//! that moves on again, with an exponential backoff with jitter capped at
//! [`BACKOFF_MAX_MS`], so a fleet whose hub died spreads its reconnects
//! instead of stampeding the survivors. [`Rotation`] is that schedule,
//! pure and deterministic given its jitter source; the runtime in
//! `client/mod.rs` resolves names and connects.

use std::fmt;
use std::net::SocketAddr;

use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// Most hub URLs one device may be given.
pub const HUB_URLS_MAX: usize = 64;
/// Longest hub URL accepted.
pub const HUB_URL_BYTES_MAX: usize = 2048;
/// The first retry after a connection that was up dropped waits at most
/// this long (a random share of it), so a fleet that lost its hub does not
/// reach the next one in the same millisecond.
pub const FIRST_RETRY_JITTER_MS: u64 = 100;
/// Backoff of the first failed attempt (then doubled per failure).
pub const BACKOFF_MIN_MS: u64 = 100;
/// Longest backoff between two failed attempts.
pub const BACKOFF_MAX_MS: u64 = 3_000;
/// Wait after a refusal of the session that retrying cannot fix (bad
/// credentials, unsupported version, forbidden, rate-limited): every hub of
/// a deployment would answer the same.
pub const REFUSED_BACKOFF_MS: u64 = 10_000;

/// A hub URL that was checked when it was configured: `ws://` or `wss://`,
/// a host, an optional port and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubUrl {
    url: String,
    secure: bool,
    host: String,
    port: u16,
}

/// Why a hub address was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HubUrlError {
    /// No address at all.
    #[error("no hub address given (expected one or more ws://HOST:PORT/v1/sync URLs)")]
    Empty,
    /// More addresses than [`HUB_URLS_MAX`].
    #[error("{0} hub addresses given; at most {HUB_URLS_MAX} are allowed")]
    TooMany(usize),
    /// One address is not a usable `ws://` or `wss://` URL.
    #[error("hub address {url:?}: {reason}")]
    Malformed {
        /// The address as given (cut to a readable length).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl HubUrl {
    /// Parses and checks one hub URL, e.g. `ws://10.0.0.5:7878/v1/sync` or
    /// `wss://hub.example/v1/sync` (surrounding blanks are ignored).
    pub fn parse(text: &str) -> Result<Self, HubUrlError> {
        let url = text.trim();
        let malformed = |reason: &str| HubUrlError::Malformed {
            url: url.chars().take(120).collect(),
            reason: reason.to_owned(),
        };
        if url.len() > HUB_URL_BYTES_MAX {
            return Err(malformed("too long"));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(malformed("contains blanks or control characters"));
        }
        let (secure, rest) = if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else {
            return Err(malformed("expected a ws:// or wss:// URL"));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(malformed("user information is not allowed"));
        }
        let (host, port) =
            split_authority(authority, if secure { 443 } else { 80 }).map_err(&malformed)?;
        url.into_client_request()
            .map_err(|error| malformed(&error.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            secure,
            host,
            port,
        })
    }

    /// The URL as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// True for `wss://`.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The host: a name, or an IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (the scheme's default if the URL names none).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for HubUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.url)
    }
}

impl std::str::FromStr for HubUrl {
    type Err = HubUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// `host[:port]` or `[v6]:port` → (host, port).
fn split_authority(authority: &str, default_port: u16) -> Result<(String, u16), &'static str> {
    let parse_port = |port: &str| match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("bad port (expected 1 to 65535)"),
        Ok(port) => Ok(port),
    };
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("unclosed [ in the host")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("bad IPv6 address in brackets");
        }
        let port = match after.strip_prefix(':') {
            Some(port) => parse_port(port)?,
            None if after.is_empty() => default_port,
            None => return Err("unexpected text after the IPv6 address"),
        };
        (host.to_owned(), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, parse_port(port)?),
            None => (authority, default_port),
        };
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !host.chars().all(name_char) {
            return Err("bad host name");
        }
        (host.to_owned(), port)
    };
    if host.is_empty() {
        return Err("no host");
    }
    Ok((host, port))
}

/// Parses a list of hub URLs, keeping their order and dropping repeats.
pub fn parse_hub_urls<S: AsRef<str>>(urls: &[S]) -> Result<Vec<HubUrl>, HubUrlError> {
    if urls.is_empty() {
        return Err(HubUrlError::Empty);
    }
    if urls.len() > HUB_URLS_MAX {
        return Err(HubUrlError::TooMany(urls.len()));
    }
    let mut hubs: Vec<HubUrl> = Vec::with_capacity(urls.len());
    for url in urls {
        let hub = HubUrl::parse(url.as_ref())?;
        if !hubs.contains(&hub) {
            hubs.push(hub);
        }
    }
    Ok(hubs)
}

/// Parses a comma-separated list of hub URLs (`ws://a:7878,ws://b:7878`),
/// the form command lines take.
pub fn parse_hub_list(text: &str) -> Result<Vec<HubUrl>, HubUrlError> {
    let urls: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    parse_hub_urls(&urls)
}

/// One address the runtime connects to: a configured URL and one of the
/// socket addresses its host resolved to. The URL's host name stays the
/// name the TLS handshake verifies (SNI) and the `Host` header sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The configured URL.
    pub hub: HubUrl,
    /// The address connected to.
    pub addr: SocketAddr,
}

impl fmt::Display for Endpoint {
    /// The URL, with the resolved address when the URL names a host.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hub.host.parse::<std::net::IpAddr>().is_ok() {
            write!(formatter, "{}", self.hub)
        } else {
            write!(formatter, "{} ({})", self.hub, self.addr)
        }
    }
}

/// How a connection attempt ended, as far as the schedule cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The session was up (hello answered), then the connection dropped.
    Lost,
    /// The connection or the handshake failed.
    Failed,
    /// The hub refused the session for a reason retrying cannot fix.
    Refused,
    /// Something changed that makes an immediate retry of the same address
    /// worthwhile (new credentials, a lower protocol version to offer).
    RetryNow,
}

/// The next attempt: which address (an index into the ring) and after how
/// long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Index of the address to try, below the ring's length.
    pub position: usize,
    /// How long to wait first, ms.
    pub delay_ms: u64,
}

/// The failover schedule over a ring of addresses: where the next attempt
/// goes and how long it waits. Deterministic given the jitter source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    position: usize,
    failures: u32,
}

impl Rotation {
    /// A schedule starting at the first address.
    pub fn new() -> Self {
        Self::default()
    }

    /// The address the next attempt goes to.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Failed attempts since the last session that was up.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Decides the next attempt after one that ended with `end`, over a
    /// ring of `len` addresses. `jitter(max)` returns a number in
    /// `0..=max` (random in the runtime, fixed in tests).
    ///
    /// - `Lost`: the next address, after at most [`FIRST_RETRY_JITTER_MS`];
    ///   the failure count starts again.
    /// - `Failed`: the next address, after an exponential backoff from
    ///   [`BACKOFF_MIN_MS`] up to [`BACKOFF_MAX_MS`], half of it jitter.
    /// - `Refused`: the next address after about [`REFUSED_BACKOFF_MS`].
    /// - `RetryNow`: the same address at once.
    pub fn next(
        &mut self,
        len: usize,
        end: AttemptEnd,
        mut jitter: impl FnMut(u64) -> u64,
    ) -> Retry {
        let len = len.max(1);
        let advance = |position: usize| (position + 1) % len;
        let (position, delay_ms) = match end {
            AttemptEnd::Lost => {
                self.failures = 0;
                (
                    advance(self.position),
                    jitter(FIRST_RETRY_JITTER_MS).min(FIRST_RETRY_JITTER_MS),
                )
            }
            AttemptEnd::Failed => {
                self.failures = self.failures.saturating_add(1);
                (
                    advance(self.position),
                    spread(backoff_ms(self.failures), &mut jitter),
                )
            }
            AttemptEnd::Refused => {
                self.failures = self.failures.saturating_add(1);
                (
                    advance(self.position),
                    spread(REFUSED_BACKOFF_MS, &mut jitter),
                )
            }
            AttemptEnd::RetryNow => (self.position % len, 0),
        };
        self.position = position;
        Retry { position, delay_ms }
    }
}

/// The backoff after `failures` failed attempts in a row (at least one).
pub fn backoff_ms(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(32);
    BACKOFF_MIN_MS
        .saturating_mul(1u64 << doublings)
        .min(BACKOFF_MAX_MS)
}

/// Half of `base` fixed, the other half jitter: between `base / 2` and `base`.
fn spread(base: u64, jitter: &mut impl FnMut(u64) -> u64) -> u64 {
    let half = base / 2;
    half + jitter(base - half).min(base - half)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter(_: u64) -> u64 {
        0
    }

    fn full_jitter(max: u64) -> u64 {
        max
    }

    #[test]
    fn urls_are_checked_when_configured() {
        let hub = HubUrl::parse(" wss://hub.example:8443/v1/sync ").unwrap();
        assert_eq!(
            (hub.as_str(), hub.is_secure(), hub.host(), hub.port()),
            ("wss://hub.example:8443/v1/sync", true, "hub.example", 8443)
        );
        let hub = HubUrl::parse("ws://[::1]:7000/v1/sync").unwrap();
        assert_eq!((hub.host(), hub.port()), ("::1", 7000));
        assert_eq!(HubUrl::parse("ws://10.0.0.5/v1/sync").unwrap().port(), 80);
        assert_eq!(HubUrl::parse("wss://hub.example").unwrap().port(), 443);
        for bad in [
            "",
            "http://hub.example/v1/sync",
            "hub.example:7000",
            "ws://",
            "ws://:7000/v1/sync",
            "ws://hub.example:0/v1/sync",
            "ws://hub.example:99999/v1/sync",
            "ws://hub.example:port/v1/sync",
            "ws://user@hub.example/v1/sync",
            "ws://hub example/v1/sync",
            "ws://[::1/v1/sync",
            "ws://[nope]:7000/",
            "ws://hub.example:7000/v1/\u{7}sync",
            "ws://hub.example:7000/v1 sync",
        ] {
            assert!(
                matches!(HubUrl::parse(bad), Err(HubUrlError::Malformed { .. })),
                "{bad:?} was accepted"
            );
        }
        let error = HubUrl::parse("http://hub:1/").unwrap_err().to_string();
        assert!(error.contains("ws:// or wss://"), "{error}");
    }

    #[test]
    fn lists_keep_their_order_drop_repeats_and_refuse_nothing_given() {
        let hubs = parse_hub_list("ws://a:1/v1/sync, ws://b:2/v1/sync,ws://a:1/v1/sync").unwrap();
        let urls: Vec<&str> = hubs.iter().map(HubUrl::as_str).collect();
        assert_eq!(urls, ["ws://a:1/v1/sync", "ws://b:2/v1/sync"]);
        assert_eq!(parse_hub_list(" , "), Err(HubUrlError::Empty));
        assert_eq!(parse_hub_urls::<&str>(&[]), Err(HubUrlError::Empty));
        assert!(matches!(
            parse_hub_list("ws://a:1/v1/sync,ftp://b"),
            Err(HubUrlError::Malformed { .. })
        ));
        let many: Vec<String> = (0..=HUB_URLS_MAX)
            .map(|n| format!("ws://h{n}:1/"))
            .collect();
        assert_eq!(
            parse_hub_urls(&many),
            Err(HubUrlError::TooMany(HUB_URLS_MAX + 1))
        );
    }

    #[test]
    fn endpoints_show_the_resolved_address_only_for_names() {
        let addr: SocketAddr = "10.0.0.5:7000".parse().unwrap();
        let named = Endpoint {
            hub: HubUrl::parse("ws://hub.local:7000/v1/sync").unwrap(),
            addr,
        };
        assert_eq!(
            named.to_string(),
            "ws://hub.local:7000/v1/sync (10.0.0.5:7000)"
        );
        let literal = Endpoint {
            hub: HubUrl::parse("ws://10.0.0.5:7000/v1/sync").unwrap(),
            addr,
        };
        assert_eq!(literal.to_string(), "ws://10.0.0.5:7000/v1/sync");
    }

    #[test]
    fn a_dropped_connection_goes_to_the_next_address_at_once() {
        let mut rotation = Rotation::new();
        assert_eq!(rotation.position(), 0);
        let retry = rotation.next(3, AttemptEnd::Lost, full_jitter);
        assert_eq!(
            retry,
            Retry {
                position: 1,
                delay_ms: FIRST_RETRY_JITTER_MS
            }
        );
        let retry = rotation.next(3, AttemptEnd::Lost, no_jitter);
        assert_eq!(
            retry,
            Retry {
                position: 2,
                delay_ms: 0
            }
        );
        // Around the ring.
        assert_eq!(rotation.next(3, AttemptEnd::Lost, no_jitter).position, 0);
        // A jitter source that overshoots is clamped.
        assert_eq!(
            rotation.next(3, AttemptEnd::Lost, |_| u64::MAX).delay_ms,
            FIRST_RETRY_JITTER_MS
        );
    }

    #[test]
    fn failed_attempts_walk_the_ring_with_a_capped_exponential_backoff() {
        let mut rotation = Rotation::new();
        rotation.next(2, AttemptEnd::Lost, no_jitter);
        let mut positions = Vec::new();
        let mut delays = Vec::new();
        for _ in 0..8 {
            let retry = rotation.next(2, AttemptEnd::Failed, full_jitter);
            positions.push(retry.position);
            delays.push(retry.delay_ms);
        }
        assert_eq!(positions, [0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3000, 3000, 3000]);
        assert_eq!(rotation.failures(), 8);
        // Without jitter each wait is half its backoff: never zero, so a
        // fleet whose every hub is down does not spin.
        let mut rotation = Rotation::new();
        let low: Vec<u64> = (0..7)
            .map(|_| rotation.next(2, AttemptEnd::Failed, no_jitter).delay_ms)
            .collect();
        assert_eq!(low, [50, 100, 200, 400, 800, 1500, 1500]);
        // A session that comes up again starts the backoff over.
        rotation.next(2, AttemptEnd::Lost, no_jitter);
        assert_eq!(rotation.failures(), 0);
        assert_eq!(
            rotation.next(2, AttemptEnd::Failed, full_jitter).delay_ms,
            100
        );
    }

    #[test]
    fn refusals_wait_long_and_retry_now_stays_put() {
        let mut rotation = Rotation::new();
        let retry = rotation.next(2, AttemptEnd::Refused, no_jitter);
        assert_eq!(
            retry,
            Retry {
                position: 1,
                delay_ms: REFUSED_BACKOFF_MS / 2
            }
        );
        let retry = rotation.next(2, AttemptEnd::Refused, full_jitter);
        assert_eq!(
            retry,
            Retry {
                position: 0,
                delay_ms: REFUSED_BACKOFF_MS
            }
        );
        let retry = rotation.next(2, AttemptEnd::RetryNow, full_jitter);
        assert_eq!(
            retry,
            Retry {
                position: 0,
                delay_ms: 0
            }
        );
        assert_eq!(rotation.failures(), 2);
    }

    #[test]
    fn a_single_address_is_a_ring_of_one_and_an_empty_ring_does_not_divide_by_zero() {
        let mut rotation = Rotation::new();
        assert_eq!(rotation.next(1, AttemptEnd::Lost, no_jitter).position, 0);
        assert_eq!(rotation.next(1, AttemptEnd::Failed, no_jitter).position, 0);
        assert_eq!(rotation.next(0, AttemptEnd::Failed, no_jitter).position, 0);
        // The ring shrank (a name resolved to fewer addresses): back in range.
        let mut rotation = Rotation::new();
        rotation.next(5, AttemptEnd::Lost, no_jitter);
        rotation.next(5, AttemptEnd::Lost, no_jitter);
        assert_eq!(
            rotation.next(2, AttemptEnd::RetryNow, no_jitter).position,
            0
        );
        assert_eq!(rotation.next(2, AttemptEnd::Lost, no_jitter).position, 1);
    }

    #[test]
    fn the_backoff_saturates() {
        assert_eq!(backoff_ms(0), BACKOFF_MIN_MS);
        assert_eq!(backoff_ms(1), BACKOFF_MIN_MS);
        assert_eq!(backoff_ms(u32::MAX), BACKOFF_MAX_MS);
    }
}
