//! W3C Trace Context (`traceparent`, <https://www.w3.org/TR/trace-context/>)
//! for Sagaflow's hops. A saga's trace starts with the trigger event's
//! `traceparent` (or fresh, when the publisher sent none or an invalid one);
//! every hop — the orchestrator issuing a command or lifecycle event, the
//! adapter handling a command, the adapter's HTTP call — is a child span:
//! same trace id, a new span id, so a tracing backend shows one tree per
//! saga.

use std::fmt;

/// One span's identity as carried in a `traceparent` header.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // Without an OS random source fall back to time and address bits: ids
    // must be unique, not secret.
    if getrandom::fill(&mut b).is_err() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ (&b as *const _ as usize as u128);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
    // All-zero ids are invalid; make sure one byte is set.
    if b.iter().all(|x| *x == 0) {
        b[N - 1] = 1;
    }
    b
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            self.span_id_hex(),
            self.flags
        )
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
}
