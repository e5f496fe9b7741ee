//! W3C trace context (`traceparent`) for `tracing` spans: what a span hands
//! on to the next hop (an HTTP header, an event's metadata, a Kafka header),
//! and how a span takes up the context a hop brought.
//!
//! Spans are `tracing` spans; the OpenTelemetry layer that
//! [`crate::telemetry::init`] installs gives each a trace and span id. Without
//! that layer (a test's subscriber, say) spans have no context: these
//! functions then hand nothing on and take nothing up.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The HTTP header (and Kafka header, and metadata key) of the context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` that makes the next hop a child of `span`; `None` when
/// the span has no trace (no OpenTelemetry layer, or a disabled span).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span = context.span();
    format(span.span_context())
}

/// The `traceparent` of a span context, if it is valid.
pub fn format(context: &SpanContext) -> Option<String> {
    context.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()
        )
    })
}

/// Reads a `traceparent` header value: version `00` (or a later version,
/// read as far as version 00 goes), lower-case hex, neither id all zeros.
/// Anything else is `None`: a bad header starts a new trace rather than
/// failing the request.
pub fn parse(header: &str) -> Option<SpanContext> {
    let header = header.trim();
    let mut parts = header.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2) || version == "ff" || !lower_hex(trace_id, 32) {
        return None;
    }
    if !lower_hex(span_id, 16) || !lower_hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four parts; a later one may add more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// Makes `span` a child of the span `traceparent` names (from another
/// process, or stored). Call it before the span is first entered; a missing
/// or unreadable context leaves the span where it is (a new trace, or the
/// child of the span current when it was created).
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(parse) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// [`follow`] for a header's raw value (HTTP, Kafka): a value that is not
/// text is no context.
pub fn follow_header(span: &tracing::Span, value: Option<&[u8]>) {
    follow(
        span,
        value.and_then(|value| std::str::from_utf8(value).ok()),
    );
}

/// Links a span that does work for many traces at once (a batch) to each
/// of them, once per trace and to at most [`MAX_LINKS`] traces (what the
/// SDK keeps), so that each trace finds the batch through its link.
pub fn link_all<'a>(span: &tracing::Span, traceparents: impl IntoIterator<Item = &'a str>) {
    if span.is_disabled() {
        return;
    }
    let mut linked = std::collections::HashSet::new();
    for other in traceparents.into_iter().filter_map(parse) {
        if linked.len() == MAX_LINKS {
            break;
        }
        if linked.insert(other.trace_id()) {
            span.add_link(other);
        }
    }
}

/// Links one span keeps at most (the SDK's default span limit).
pub const MAX_LINKS: usize = 128;

/// The trace id of `span`, as Jaeger and the `traceparent` write it.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span = context.span();
    let context = span.span_context();
    context
        .is_valid()
        .then(|| format!("{:032x}", context.trace_id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_header_reads_back_as_itself() {
        let context = parse(HEADER).unwrap();
        assert!(context.is_remote());
        assert!(context.is_sampled());
        assert_eq!(format(&context).as_deref(), Some(HEADER));
    }

    #[test]
    fn an_unsampled_header_stays_unsampled() {
        let header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let context = parse(header).unwrap();
        assert!(!context.is_sampled());
        assert_eq!(format(&context).as_deref(), Some(header));
    }

    #[test]
    fn bad_headers_are_ignored() {
        for header in [
            "",
            "00",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse(header).is_none(), "{header:?} was read");
        }
    }

    #[test]
    fn a_later_version_is_read_as_far_as_version_00_goes() {
        let header = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-what-next";
        let context = parse(header).unwrap();
        // Flags other than "sampled" are not passed on.
        assert_eq!(format(&context).as_deref(), Some(HEADER));
    }

    #[test]
    fn spans_without_a_tracing_layer_hand_nothing_on() {
        let span = tracing::info_span!("untraced");
        follow(&span, Some(HEADER));
        assert_eq!(traceparent(&span), None);
        assert_eq!(trace_id(&span), None);
    }
}
