//! Logs (text or JSON, filtered by `RUST_LOG`), traces (OpenTelemetry,
//! exported over OTLP when an endpoint is set) and Prometheus metrics.
//!
//! Every span gets a W3C trace and span id whether or not traces are
//! exported, so log lines always name the trace they belong to and a
//! `traceparent` from a caller is passed on; only the export is switched on
//! by [`Tracing::otlp_endpoint`].

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_SCHEDULE_DELAY,
    ParentBasedSampler, Sampler, SdkTracerProvider, ShouldSample,
};
use serde::Deserialize;
use tracing::Level;
use tracing::Subscriber;
use tracing::dispatcher::WeakDispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::{Format, Full, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with span fields, for log collectors.
    Json,
}

/// Where traces go.
#[derive(Debug, Clone)]
pub struct Tracing {
    /// The OTLP/HTTP endpoint (`http://127.0.0.1:4318`; `/v1/traces` is
    /// added unless the path already names it). `None`: nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of this process's spans.
    pub service_name: String,
    /// Share of new traces kept, from 0 to 1. A trace that arrives with a
    /// caller's `traceparent` follows the caller's decision.
    pub sample_ratio: f64,
}

impl Tracing {
    /// Spans get ids (for logs and propagation) but are not exported.
    pub fn off(service_name: &str) -> Self {
        Self {
            otlp_endpoint: None,
            service_name: service_name.to_owned(),
            sample_ratio: 1.0,
        }
    }
}

/// The installed tracing pipeline; [`Telemetry::shutdown`] sends the spans
/// still buffered before the process exits.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends what is buffered and stops exporting (waits at most a few
    /// seconds for an unreachable collector).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(%error, "traces buffered at shutdown were not all sent");
        }
    }
}

/// How long one export may take before it is given up (the spans are
/// dropped, the platform goes on).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the global subscriber: log lines to standard error (`filter`
/// applies when `RUST_LOG` is unset) and spans with trace context, exported
/// when `tracing` names an endpoint. Calling it again (as tests do) keeps the
/// first subscriber, and returns a [`Telemetry`] with nothing to shut down.
pub fn init(format: LogFormat, filter: &str, tracing: &Tracing) -> anyhow::Result<Telemetry> {
    let provider = provider(tracing)?;
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let installed = subscriber(format, log_filter, &provider, std::io::stderr)
        .try_init()
        .is_ok();
    Ok(Telemetry {
        provider: (installed && tracing.otlp_endpoint.is_some()).then_some(provider),
    })
}

/// Log lines through `writer`, spans through `provider`.
fn subscriber<W>(
    format: LogFormat,
    log_filter: EnvFilter,
    provider: &SdkTracerProvider,
    writer: W,
) -> impl Subscriber + Send + Sync + for<'a> LookupSpan<'a>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    // Lines are written plain: the trace ids go into each line after it is
    // formatted, which colours would not survive.
    let dispatch = Arc::new(OnceLock::new());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .event_format(WithTraceIds {
            format: format.into(),
            dispatch: Arc::clone(&dispatch),
        })
        .fmt_fields(JsonOrText::from(format))
        .with_filter(log_filter);
    // Spans at info and above, whatever the log filter says, except those of
    // the HTTP and database clients (the exporter's own requests included)
    // and of probes; warnings and errors become events of their span.
    let span_filter = filter_fn(|metadata| {
        let level = *metadata.level();
        let wanted = if metadata.is_span() {
            level <= Level::INFO
        } else {
            level <= Level::WARN
        };
        wanted
            && !UNTRACED
                .iter()
                .any(|prefix| within(metadata.target(), prefix))
    });
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("orders-platform"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(span_filter);
    tracing_subscriber::registry()
        .with(spans)
        .with(logs)
        .with(KnowsItsDispatch(dispatch))
}

/// Targets whose spans are not traced: clients whose requests would
/// otherwise appear inside every span (or, for the exporter, trace itself),
/// and [`PROBE_TARGET`].
const UNTRACED: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "reqwest",
    "tower",
    "sqlx",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry-otlp",
    "opentelemetry_http",
    "opentelemetry-http",
    PROBE_TARGET,
];

/// The target of spans that are logged but never traced: health checks and
/// metric scrapes, which would otherwise be most of the traces.
pub const PROBE_TARGET: &str = "probe";

/// Whether `target` is `prefix` or a module under it.
fn within(target: &str, prefix: &str) -> bool {
    target
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// Tells [`WithTraceIds`] the subscriber it is part of, whose OpenTelemetry
/// layer holds each span's ids. (The dispatcher current while an event is
/// written is not reachable from inside it when it is a scoped one.)
struct KnowsItsDispatch(Arc<OnceLock<WeakDispatch>>);

impl<S: Subscriber> Layer<S> for KnowsItsDispatch {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.0.set(subscriber.downgrade());
    }
}

/// Installs the global subscriber with traces not exported; see [`init`].
pub fn init_logging(format: LogFormat, filter: &str) {
    let _ = init(format, filter, &Tracing::off("orders"));
}

/// The tracer provider: ids for every span, a batch exporter when an
/// endpoint is set.
fn provider(tracing: &Tracing) -> anyhow::Result<SdkTracerProvider> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&tracing.sample_ratio),
        "the trace sample ratio is {}: it must be between 0 and 1",
        tracing.sample_ratio
    );
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler(tracing.sample_ratio))
        .with_resource(
            Resource::builder_empty()
                .with_service_name(tracing.service_name.clone())
                .build(),
        );
    if let Some(endpoint) = &tracing.otlp_endpoint {
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(Default::default())
            .build()
            .context("building the OTLP span exporter")?;
        // Spans go out within a second (the SDK's default is 5 s, long for
        // someone who just sent an order), and a burst may queue a few
        // thousand; OTEL_BSP_* in the environment say otherwise.
        let mut batch = BatchConfigBuilder::default();
        if std::env::var_os(OTEL_BSP_SCHEDULE_DELAY).is_none() {
            batch = batch.with_scheduled_delay(Duration::from_secs(1));
        }
        if std::env::var_os(OTEL_BSP_MAX_QUEUE_SIZE).is_none() {
            batch = batch.with_max_queue_size(8192);
        }
        builder = builder.with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch.build())
                .build(),
        );
    }
    Ok(builder.build())
}

/// Which traces are kept: a child of a span in this process follows it;
/// anything else is decided by its trace id and the ratio, whatever a
/// parent from elsewhere says. Every process deciding the same way on the
/// same id keeps or drops a trace whole, and a caller's "sampled" flag
/// cannot make the platform trace more than its ratio.
fn sampler(ratio: f64) -> ParentBasedSampler {
    let by_ratio = || -> Box<dyn ShouldSample> { Box::new(Sampler::TraceIdRatioBased(ratio)) };
    ParentBasedSampler::new(by_ratio())
        .with_remote_parent_sampled(by_ratio())
        .with_remote_parent_not_sampled(by_ratio())
}

/// The OTLP/HTTP traces URL for an endpoint: `http(s)://host:port[/path]`,
/// with `/v1/traces` added unless it is there.
pub fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"));
    let valid = rest.is_some_and(|rest| {
        let host = rest.split('/').next().unwrap_or_default();
        !host.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'@'))
    });
    anyhow::ensure!(
        valid,
        "the OTLP endpoint {endpoint:?} is not an http:// or https:// URL such as http://127.0.0.1:4318"
    );
    Ok(if endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{endpoint}/v1/traces")
    })
}

/// The log line format, with the trace id and span id of the span the event
/// happened in (when it has them) added: as two more fields of the JSON
/// object, or at the end of the text line.
struct WithTraceIds {
    format: LineFormat,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

enum LineFormat {
    Text(Format<Full>),
    Json(Format<Json>),
}

impl From<LogFormat> for LineFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => Self::Text(Format::default()),
            LogFormat::Json => Self::Json(Format::default().json().with_span_list(false)),
        }
    }
}

/// Field formatting to go with [`WithTraceIds`].
#[derive(Debug)]
enum JsonOrText {
    Text(tracing_subscriber::fmt::format::DefaultFields),
    Json(JsonFields),
}

impl From<LogFormat> for JsonOrText {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => Self::Text(Default::default()),
            LogFormat::Json => Self::Json(JsonFields::new()),
        }
    }
}

impl<'writer> FormatFields<'writer> for JsonOrText {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        match self {
            Self::Text(text) => text.format_fields(writer, fields),
            Self::Json(json) => json.format_fields(writer, fields),
        }
    }

    fn add_fields(
        &self,
        current: &'writer mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Both formats keep a span's fields as the text of its formatter;
        // appending recorded fields differs between them.
        match self {
            Self::Text(_) => {
                let mut text = std::mem::take(&mut current.fields);
                if !text.is_empty() {
                    text.push(' ');
                }
                let mut writer = Writer::new(&mut text);
                tracing_subscriber::fmt::format::DefaultFields::new()
                    .format_fields(writer.by_ref(), fields)?;
                current.fields = text;
                Ok(())
            }
            Self::Json(_) => {
                let mut json = tracing_subscriber::fmt::FormattedFields::<JsonFields>::new(
                    std::mem::take(&mut current.fields),
                );
                JsonFields::new().add_fields(&mut json, fields)?;
                current.fields = json.fields;
                Ok(())
            }
        }
    }
}

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let ids = self
            .dispatch
            .get()
            .and_then(WeakDispatch::upgrade)
            .and_then(|dispatch| traced_ids(event, &dispatch));
        let mut line = String::with_capacity(256);
        match &self.format {
            LineFormat::Text(format) => {
                format.format_event(ctx, Writer::new(&mut line), event)?;
                line = one_text_line(&line);
            }
            LineFormat::Json(format) => {
                format.format_event(ctx, Writer::new(&mut line), event)?;
                line = bounded_json_line(line);
            }
        }
        let Some((trace_id, span_id)) = ids else {
            return writer.write_str(&line);
        };
        match &self.format {
            LineFormat::Text(_) => {
                let body = line.trim_end_matches('\n');
                writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}")
            }
            LineFormat::Json(_) => match line.strip_prefix('{') {
                Some(rest) => write!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
                ),
                None => writer.write_str(&line),
            },
        }
    }
}

/// Longest log line written, in bytes, before its trace ids: a line that
/// would be longer is cut (text) or has its long strings cut (JSON).
pub const MAX_LINE_BYTES: usize = 4096;
/// Longest string value of a JSON line that had to be bounded.
const MAX_JSON_STRING_BYTES: usize = 512;

/// A formatted text line as one line, whatever its fields and message held:
/// line breaks and other control characters (a caller's text may carry
/// them: a path, a token's header, a reason) are escaped, so that no one
/// can write a line of their own into the log, and the line is cut at
/// [`MAX_LINE_BYTES`]. Ends with one line break.
fn one_text_line(formatted: &str) -> String {
    let body = formatted.strip_suffix('\n').unwrap_or(formatted);
    let clean = body.len() <= MAX_LINE_BYTES && !body.chars().any(breaks_lines);
    if clean {
        return format!("{body}\n");
    }
    let mut line = String::with_capacity(body.len().min(MAX_LINE_BYTES) + 64);
    let mut written = 0;
    for (at, c) in body.char_indices() {
        if line.len() >= MAX_LINE_BYTES {
            written = at;
            break;
        }
        written = at + c.len_utf8();
        if breaks_lines(c) {
            match c {
                '\n' => line.push_str("\\n"),
                '\r' => line.push_str("\\r"),
                other => line.push_str(&format!("\\u{{{:x}}}", u32::from(other))),
            }
        } else {
            line.push(c);
        }
    }
    if written < body.len() {
        line.push_str(&format!(" [{} more bytes cut]", body.len() - written));
    }
    line.push('\n');
    line
}

/// Characters a log line must not hold as they are: controls (but the tab)
/// and the Unicode line and paragraph separators.
fn breaks_lines(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}')
}

/// A JSON line bounded in length: past [`MAX_LINE_BYTES`], every string in
/// it longer than [`MAX_JSON_STRING_BYTES`] is cut (JSON escapes line
/// breaks itself, and the Unicode line separators are escaped here).
fn bounded_json_line(line: String) -> String {
    // JSON leaves the Unicode line separators as they are; some readers of
    // logs break lines at them.
    let line = if line.contains(['\u{2028}', '\u{2029}']) {
        line.replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029")
    } else {
        line
    };
    if line.len() <= MAX_LINE_BYTES {
        return line;
    }
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&line) else {
        return one_text_line(&line);
    };
    cut_strings(&mut value);
    let mut bounded = value.to_string();
    bounded.push('\n');
    bounded
}

fn cut_strings(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) if text.len() > MAX_JSON_STRING_BYTES => {
            let mut end = MAX_JSON_STRING_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let cut = text.len() - end;
            text.truncate(end);
            text.push_str(&format!(" [{cut} more bytes cut]"));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(cut_strings),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(cut_strings),
        _ => {}
    }
}

/// The trace and span id of the innermost traced span the event happened
/// in, looked up in the registry rather than through the log layer, whose
/// filter may hide the spans (`RUST_LOG=warn` hides the info spans every
/// request runs in, yet its warnings should name their trace).
fn traced_ids(
    event: &tracing::Event<'_>,
    dispatch: &tracing::Dispatch,
) -> Option<(String, String)> {
    let registry = dispatch.downcast_ref::<Registry>()?;
    let id = if event.is_contextual() {
        registry.current_span().id().cloned()
    } else {
        event.parent().cloned()
    }?;
    let span = registry.span(&id)?;
    span.scope().find_map(|span| ids_of(&span.id(), dispatch))
}

/// The trace and span id of a span, if the OpenTelemetry layer gave it some.
fn ids_of(id: &tracing::span::Id, dispatch: &tracing::Dispatch) -> Option<(String, String)> {
    let context = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = context.span();
    let context = span.span_context();
    context.is_valid().then(|| {
        (
            format!("{:032x}", context.trace_id()),
            format!("{:016x}", context.span_id()),
        )
    })
}

/// Latency buckets in seconds, from 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide metrics recorder; installed on first use. Every metric
/// recorded through the `metrics` macros shows up in [`PrometheusHandle::render`].
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (only possible in odd test setups):
            // keep a detached one so rendering still works.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Spans through `provider`, no log lines.
    fn quiet(provider: &SdkTracerProvider) -> impl Subscriber + Send + Sync + 'static {
        subscriber(
            LogFormat::Text,
            EnvFilter::new("off"),
            provider,
            std::io::sink,
        )
    }

    /// What `format` writes for one event in a span and one outside any.
    fn logged(format: LogFormat) -> (Vec<String>, String, String) {
        let lines = Lines::default();
        let provider = provider(&Tracing::off("test")).unwrap();
        let writer = lines.clone();
        let subscriber = subscriber(format, EnvFilter::new("info"), &provider, move || {
            writer.clone()
        });
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "r-1");
            span.in_scope(|| tracing::info!(status = 201, "answered"));
            tracing::info!("outside");
            let context = crate::trace::traceparent(&span).unwrap();
            let parts: Vec<&str> = context.split('-').collect();
            (parts[1].to_owned(), parts[2].to_owned())
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        (text.lines().map(str::to_owned).collect(), trace_id, span_id)
    }

    #[test]
    fn text_lines_end_with_the_trace_and_span_of_their_span() {
        let (lines, trace_id, span_id) = logged(LogFormat::Text);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].ends_with(&format!(" trace_id={trace_id} span_id={span_id}")),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("answered") && lines[0].contains("request_id=\"r-1\""));
        assert!(
            !lines[0].contains('\u{1b}'),
            "no colour codes: {}",
            lines[0]
        );
        assert!(!lines[1].contains("trace_id="), "{}", lines[1]);
    }

    #[test]
    fn json_lines_carry_the_trace_and_span_as_fields() {
        let (lines, trace_id, span_id) = logged(LogFormat::Json);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let inside: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(inside["trace_id"], trace_id.as_str());
        assert_eq!(inside["span_id"], span_id.as_str());
        assert_eq!(inside["fields"]["message"], "answered");
        assert_eq!(inside["span"]["request_id"], "r-1");
        let outside: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert!(outside.get("trace_id").is_none(), "{outside}");
    }

    /// The lines `format` writes for events carrying `text` (a caller's),
    /// in a field, a displayed field, the message and a span's field.
    fn lines_with(format: LogFormat, text: &str) -> Vec<String> {
        let lines = Lines::default();
        let provider = provider(&Tracing::off("test")).unwrap();
        let writer = lines.clone();
        let subscriber = subscriber(format, EnvFilter::new("info"), &provider, move || {
            writer.clone()
        });
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", path = %text);
            span.in_scope(|| {
                tracing::info!(reason = text, "as a field");
                tracing::info!(reason = %text, "displayed");
                tracing::warn!("no problem type {text}");
            });
        });
        let written = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        written.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_callers_text_cannot_start_a_line_of_its_own() {
        let forged =
            "x\n2026-12-07T00:00:00.000000Z  INFO orders: admin granted\r\u{2028}\u{1b}[31m";
        for format in [LogFormat::Text, LogFormat::Json] {
            let lines = lines_with(format, forged);
            assert_eq!(lines.len(), 3, "{format:?}: {lines:#?}");
            for line in &lines {
                assert!(!line.starts_with("2026-12-07T00:00:00"), "{line}");
                assert!(
                    !line.contains('\u{1b}') && !line.contains('\u{2028}'),
                    "{line}"
                );
                if format == LogFormat::Json {
                    let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert!(parsed.is_object(), "{line}");
                }
            }
            if format == LogFormat::Text {
                assert!(lines[1].contains("x\\n2026-12-07"), "{}", lines[1]);
            }
        }
    }

    #[test]
    fn a_callers_long_text_is_cut_in_every_format() {
        let long = "é".repeat(20_000);
        for format in [LogFormat::Text, LogFormat::Json] {
            let lines = lines_with(format, &long);
            assert_eq!(lines.len(), 3, "{format:?}");
            for line in &lines {
                assert!(
                    line.len() <= MAX_LINE_BYTES + 200,
                    "{format:?}: {} bytes",
                    line.len()
                );
                assert!(line.contains("more bytes cut"), "{format:?}: {line}");
                if format == LogFormat::Json {
                    let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert!(parsed.is_object(), "{line}");
                }
            }
        }
    }

    #[test]
    fn a_span_takes_up_a_callers_context_and_hands_on_its_own() {
        let provider = provider(&Tracing::off("test")).unwrap();
        let subscriber = quiet(&provider);
        tracing::subscriber::with_default(subscriber, || {
            let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let span = tracing::info_span!("request");
            crate::trace::follow(&span, Some(caller));
            let own = crate::trace::traceparent(&span).unwrap();
            assert!(
                own.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                "{own}"
            );
            assert!(
                !own.contains("b7ad6b7169203331"),
                "a span of its own: {own}"
            );
            let child = span.in_scope(|| tracing::info_span!("child"));
            let child_context = crate::trace::traceparent(&child).unwrap();
            assert!(child_context.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
            // A new trace when the caller's context is unreadable.
            let fresh = tracing::info_span!("request");
            crate::trace::follow(&fresh, Some("00-not-a-context-01"));
            assert!(
                !crate::trace::traceparent(&fresh)
                    .unwrap()
                    .contains("0af7651916cd43dd")
            );
        });
    }

    #[test]
    fn warnings_name_their_trace_when_the_log_filter_hides_their_spans() {
        let lines = Lines::default();
        let provider = provider(&Tracing::off("test")).unwrap();
        let writer = lines.clone();
        let subscriber = subscriber(
            LogFormat::Text,
            EnvFilter::new("warn"),
            &provider,
            move || writer.clone(),
        );
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request");
            // A debug span the traces never see, inside a traced one.
            let detail = request.in_scope(|| tracing::debug_span!("detail"));
            detail.in_scope(|| tracing::warn!("slow"));
            let context = crate::trace::traceparent(&request).unwrap();
            let parts: Vec<&str> = context.split('-').collect();
            (parts[1].to_owned(), parts[2].to_owned())
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.trim_end()
                .ends_with(&format!("slow trace_id={trace_id} span_id={span_id}")),
            "{text}"
        );
    }

    #[test]
    fn endpoints_are_http_urls_and_get_the_traces_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://collector.example/otlp/").unwrap(),
            "https://collector.example/otlp/v1/traces"
        );
        assert_eq!(
            traces_url("http://jaeger:4318/v1/traces").unwrap(),
            "http://jaeger:4318/v1/traces"
        );
        for bad in [
            "",
            "127.0.0.1:4318",
            "ftp://x",
            "http://",
            "http://a b",
            "http://u@h",
        ] {
            assert!(traces_url(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn a_collector_that_never_answers_costs_spans_never_time() {
        // Accepts connections (the kernel does) and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tracing = Tracing {
            otlp_endpoint: Some(format!("http://{}", silent.local_addr().unwrap())),
            service_name: "test".into(),
            sample_ratio: 1.0,
        };
        let provider = provider(&tracing).unwrap();
        let subscriber = quiet(&provider);
        let started = std::time::Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            // More than the export queue holds: the rest are dropped.
            for step in 0..20_000 {
                let span = tracing::info_span!("step", step);
                span.in_scope(|| tracing::warn!("inside"));
            }
        });
        let spans_took = started.elapsed();
        let started = std::time::Instant::now();
        let _ = provider.shutdown_with_timeout(Duration::from_secs(2));
        let shutdown_took = started.elapsed();
        // Bounds far above what either takes, far below a hang.
        assert!(spans_took < Duration::from_secs(20), "{spans_took:?}");
        assert!(shutdown_took < Duration::from_secs(20), "{shutdown_took:?}");
    }

    #[test]
    fn a_callers_sampled_flag_does_not_override_the_ratio() {
        let mut tracing = Tracing::off("test");
        tracing.sample_ratio = 0.0;
        let provider = provider(&tracing).unwrap();
        let subscriber = quiet(&provider);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            crate::trace::follow(
                &span,
                Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            );
            let handed_on = crate::trace::traceparent(&span).unwrap();
            assert!(handed_on.ends_with("-00"), "{handed_on}");
            // Within the process, children follow their parent.
            let child = span.in_scope(|| tracing::info_span!("child"));
            assert!(crate::trace::traceparent(&child).unwrap().ends_with("-00"));
        });
    }

    #[test]
    fn sample_ratios_outside_0_to_1_are_refused() {
        let mut tracing = Tracing::off("test");
        tracing.sample_ratio = 1.5;
        assert!(provider(&tracing).is_err());
        tracing.sample_ratio = -0.1;
        assert!(provider(&tracing).is_err());
    }
}
