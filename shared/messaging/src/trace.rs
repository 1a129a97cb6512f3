//! W3C trace context carried in Kafka headers, so that one payment is one trace across services.

use rand::Rng;

/// A fresh `traceparent` (version 00, sampled).
pub fn new_traceparent() -> String {
    let mut rng = rand::rng();
    format!(
        "00-{:032x}-{:016x}-01",
        rng.random::<u128>(),
        rng.random::<u64>() | 1
    )
}

/// The child of `parent`: same trace id, new span id. Falls back to a new trace when the parent
/// is malformed, because a broken header from one producer must not break the chain for good.
pub fn child_traceparent(parent: Option<&str>) -> String {
    match parent.and_then(trace_id) {
        Some(trace) => format!("00-{trace}-{:016x}-01", rand::rng().random::<u64>() | 1),
        None => new_traceparent(),
    }
}

/// The 32-hex trace id of a traceparent, if well formed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    let valid = trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_keeps_the_trace_id() {
        let parent = new_traceparent();
        let child = child_traceparent(Some(&parent));
        assert_eq!(trace_id(&parent), trace_id(&child));
        assert_ne!(parent, child);
        assert!(trace_id(&child_traceparent(Some("garbage"))).is_some());
    }
}
