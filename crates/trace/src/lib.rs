//! W3C Trace Context (`traceparent` and `tracestate`,
//! <https://www.w3.org/TR/trace-context/>) for Sagaflow's hops. A saga's
//! trace starts with the trigger event's `traceparent` (or fresh, when the
//! publisher sent none or an invalid one); every hop — the orchestrator
//! issuing a command or lifecycle event, the adapter handling a command,
//! the adapter's HTTP call — is a child span: same trace id, a new span id,
//! so a tracing backend shows one tree per saga. The trigger's `tracestate`
//! (the vendors' list) travels unchanged alongside, on every hop.
//!
//! This crate needs no Kafka client: the bus re-exports it for message
//! headers, and telemetry uses it for span export.

use std::fmt;

/// One span's identity as carried in a `traceparent` header.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// `N` bytes of a per-thread SplitMix64 stream seeded once from the OS.
/// Ids must be unique, not secret, and one `getrandom` call per span id
/// (a syscall on every record a saga sends) cost 0.6 % of the stack's CPU.
/// Each thread starts at its own random point of a 2^64-long cycle, so two
/// threads' ids meet only if their seeds fall within the ids they draw.
fn random<const N: usize>() -> [u8; N] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    let mut b = [0u8; N];
    STATE.with(|state| {
        for chunk in b.chunks_mut(8) {
            let x = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(x);
            chunk.copy_from_slice(&splitmix64(x).to_le_bytes()[..chunk.len()]);
        }
    });
    // All-zero ids are invalid; make sure one byte is set.
    if b.iter().all(|x| *x == 0) {
        b[N - 1] = 1;
    }
    b
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A thread's starting point: from the OS, or without an OS random source
/// from the time, the thread and an address.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_ok() {
        return u64::from_le_bytes(b);
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::time::SystemTime::now().hash(&mut h);
    std::thread::current().id().hash(&mut h);
    (&b as *const _ as usize).hash(&mut h);
    h.finish()
}

fn hex_to<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Appends `bytes` as lowercase hex. Ids are formatted for every record a
/// saga sends: a `format!` per byte was 2 % of a loaded stack's CPU.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

impl TraceContext {
    /// A new trace: random trace and span ids, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: random(),
            span_id: random(),
            flags: 1,
        }
    }

    /// Parses a `traceparent` header (version 00; lowercase hex; neither id
    /// all zeros). Future versions are read by their first four fields, as
    /// the specification asks.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut parts = header.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        if version.len() != 2 || version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        hex_to::<1>(version)?;
        let ctx = Self {
            trace_id: hex_to(trace)?,
            span_id: hex_to(span)?,
            flags: hex_to::<1>(flags)?[0],
        };
        let zero = |b: &[u8]| b.iter().all(|x| *x == 0);
        (!zero(&ctx.trace_id) && !zero(&ctx.span_id)).then_some(ctx)
    }

    /// The parsed header, or a new trace when it is absent or invalid.
    pub fn continue_or_start(header: Option<&str>) -> Self {
        header.and_then(Self::parse).unwrap_or_else(Self::new_root)
    }

    /// A child span: the same trace, a new span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: random(),
            ..*self
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        // "00-" 32 hex "-" 16 hex "-" 2 hex
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({})", self.header())
    }
}

/// The child of the span in `parent` (a `traceparent` header), or the root
/// of a new trace when `parent` is absent or invalid, as a header value.
pub fn child_header(parent: Option<&str>) -> String {
    match parent.and_then(TraceContext::parse) {
        Some(p) => p.child().header(),
        None => TraceContext::new_root().header(),
    }
}

/// The two W3C trace headers of one message: `traceparent`, and the
/// `tracestate` that travels unchanged alongside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// A caller's headers as Sagaflow forwards them: a valid `traceparent`
    /// unchanged and an invalid one replaced by the root of a new trace
    /// (none when there is none); the `tracestate` only with a valid
    /// `traceparent` (a new trace has no vendor state yet) and only when
    /// it is a valid list itself ([`valid_tracestate`]).
    pub fn from_caller(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        let parent = traceparent.map(|h| (TraceContext::parse(h), h));
        Self {
            traceparent: parent.map(|(p, _)| p.unwrap_or_else(TraceContext::new_root).header()),
            tracestate: match parent {
                Some((Some(_), _)) => tracestate.and_then(valid_tracestate).map(str::to_owned),
                _ => None,
            },
        }
    }
}

/// The longest `tracestate` Sagaflow carries, in bytes: the W3C
/// specification asks platforms to propagate at least 512 characters.
pub const TRACESTATE_MAX_LEN: usize = 512;

/// The most list members a `tracestate` may hold (W3C: 32).
const TRACESTATE_MAX_MEMBERS: usize = 32;

/// A `tracestate` header worth carrying: the vendor list itself, trimmed of
/// surrounding white space and otherwise unchanged, when it is at most
/// [`TRACESTATE_MAX_LEN`] bytes and reads as a comma-separated list of at
/// most 32 `key=value` members. Keys use the W3C key characters
/// (`a-z 0-9 _ - * / @`), values printable ASCII without `,` and `=`;
/// empty members are allowed, as the specification allows them.
///
/// `None` for an absent, empty or malformed list: a bad `tracestate` is
/// dropped, never an error, and never cut (a vendor list cut in the middle
/// would say something its writer did not).
pub fn valid_tracestate(header: &str) -> Option<&str> {
    let header = header.trim_matches([' ', '\t']);
    if header.is_empty() || header.len() > TRACESTATE_MAX_LEN {
        return None;
    }
    let key_char = |c: u8| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
    };
    let value_char = |c: u8| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=';
    let mut members = 0;
    for member in header.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=')?;
        if key.is_empty() || !key.bytes().all(key_char) {
            return None;
        }
        if value.is_empty() || !value.bytes().all(value_char) {
            return None;
        }
        members += 1;
    }
    (1..=TRACESTATE_MAX_MEMBERS)
        .contains(&members)
        .then_some(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_specification_example() {
        let c = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(c.flags, 1);
        assert_eq!(c.header(), EXAMPLE);
    }

    #[test]
    fn headers_are_what_the_format_specification_spells_and_parse_back() {
        for flags in 0..=255u8 {
            let c = TraceContext {
                flags,
                ..TraceContext::new_root()
            };
            let spelled: String = std::iter::once("00-".to_owned())
                .chain(c.trace_id.iter().map(|b| format!("{b:02x}")))
                .chain(std::iter::once("-".to_owned()))
                .chain(c.span_id.iter().map(|b| format!("{b:02x}")))
                .chain(std::iter::once(format!("-{flags:02x}")))
                .collect();
            assert_eq!(c.header(), spelled);
            assert_eq!(TraceContext::parse(&c.header()), Some(c));
        }
    }

    #[test]
    fn rejects_invalid_headers() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "not a traceparent",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?}");
        }
        // A future version with more fields is read by its first four.
        assert!(TraceContext::parse(&format!("01{}-future", &EXAMPLE[2..])).is_some());
    }

    #[test]
    fn children_keep_the_trace_and_get_new_span_ids() {
        let root = TraceContext::parse(EXAMPLE).unwrap();
        let a = root.child();
        let b = root.child();
        assert_eq!(a.trace_id, root.trace_id);
        assert_eq!(a.flags, root.flags);
        assert_ne!(a.span_id, root.span_id);
        assert_ne!(a.span_id, b.span_id);
        assert_eq!(TraceContext::parse(&a.header()), Some(a));
    }

    #[test]
    fn ids_drawn_on_many_threads_never_repeat() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..25_000).map(|_| random::<8>()).collect::<Vec<_>>()))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert_ne!(id, [0; 8]);
                assert!(seen.insert(id), "{id:?} drawn twice");
            }
        }
        assert_eq!(seen.len(), 100_000);
        // Trace ids take two draws: their halves differ.
        let t = random::<16>();
        assert_ne!(t[..8], t[8..]);
    }

    #[test]
    fn missing_or_invalid_parents_start_new_traces() {
        let a = TraceContext::continue_or_start(None);
        let b = TraceContext::continue_or_start(Some("garbage"));
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(a.flags, 1);
        let kept = TraceContext::continue_or_start(Some(EXAMPLE));
        assert_eq!(kept.header(), EXAMPLE);
        let child = TraceContext::parse(&child_header(Some(EXAMPLE))).unwrap();
        assert_eq!(child.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn callers_tracestate_travels_only_with_a_valid_traceparent() {
        let state = "rojo=00f067aa0ba902b7";
        let kept = TraceHeaders::from_caller(Some(EXAMPLE), Some(state));
        assert_eq!(kept.traceparent.as_deref(), Some(EXAMPLE));
        assert_eq!(kept.tracestate.as_deref(), Some(state));
        let replaced = TraceHeaders::from_caller(Some("00-bad-01"), Some(state));
        assert!(TraceContext::parse(replaced.traceparent.as_deref().unwrap()).is_some());
        assert_eq!(replaced.tracestate, None);
        assert_eq!(
            TraceHeaders::from_caller(None, Some(state)),
            TraceHeaders::default()
        );
        let invalid = TraceHeaders::from_caller(Some(EXAMPLE), Some("Not Valid"));
        assert_eq!(invalid.traceparent.as_deref(), Some(EXAMPLE));
        assert_eq!(invalid.tracestate, None);
    }

    #[test]
    fn tracestate_lists_are_kept_unchanged() {
        for good in [
            "congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE",
            "tenant@vendor=v 1,,a_b-c*d/e=x",
        ] {
            assert_eq!(valid_tracestate(good), Some(good), "{good:?}");
        }
        assert_eq!(valid_tracestate("  a=1\t"), Some("a=1"));
        let longest = format!("k={}", "v".repeat(TRACESTATE_MAX_LEN - 2));
        assert_eq!(valid_tracestate(&longest), Some(longest.as_str()));
        let many = (0..32)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(valid_tracestate(&many), Some(many.as_str()));
    }

    #[test]
    fn malformed_or_oversized_tracestate_lists_are_dropped() {
        let too_long = format!("k={}", "v".repeat(TRACESTATE_MAX_LEN - 1));
        let too_many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        for bad in [
            "",
            " , ",
            "novalue",
            "=v",
            "k=",
            "Upper=v",
            "k=v=w",
            "k=v\u{7f}",
            "k=caf\u{e9}",
            "a=1,broken",
            too_long.as_str(),
            too_many.as_str(),
        ] {
            assert_eq!(valid_tracestate(bad), None, "{bad:?}");
        }
    }
}
