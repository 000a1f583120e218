//! The plain-text line format of stderr and `--log-file` when they have no colours: byte for
//! byte what tracing-subscriber's default `Full` format writes (timestamp, level, spans with
//! their fields, message, fields), in a fraction of its instructions. Every session logs two
//! lines, so on the connection path (open, handshake, one echo, close) the stock formatter's
//! layers of `fmt::write` (a timestamp put together from seven `{:02}`s, each field name
//! "painted" through a no-op style, the message escaped one `char` at a time) were a quarter of
//! all the instructions. Here the timestamp is built in a stack buffer, strings are written in
//! runs and integers by hand; what is rare (errors as fields, `r#` names) goes to the stock
//! visitor. Coloured output (a terminal) keeps the stock formatter.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format: `TIMESTAMP LEVEL span{fields}:span{fields}: message fields`, or without
/// the timestamp and level (`stamped: false`, for syslog, whose header carries both).
pub struct TextFormat {
    /// Whether lines start with the timestamp and level.
    pub stamped: bool,
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.stamped {
            if Timestamp.format_time(&mut writer).is_err() {
                writer.write_str("<unknown time>")?;
            }
            writer.write_str(match *event.metadata().level() {
                Level::TRACE => " TRACE ",
                Level::DEBUG => " DEBUG ",
                Level::INFO => "  INFO ",
                Level::WARN => "  WARN ",
                Level::ERROR => " ERROR ",
            })?;
        }
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// `2026-12-04T17:32:57.058162Z`: UTC to the microsecond, as tracing-subscriber's `SystemTime`.
pub struct Timestamp;

impl FormatTime for Timestamp {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = SystemTime::now();
        let Ok(since) = now.duration_since(UNIX_EPOCH) else {
            return tracing_subscriber::fmt::time::SystemTime.format_time(w);
        };
        match rfc3339_micros(since.as_secs(), since.subsec_micros()) {
            Some(stamp) => w.write_str(std::str::from_utf8(&stamp).map_err(|_| fmt::Error)?),
            // Beyond year 9999 the stock formatter's `+YEAR` form applies.
            None => tracing_subscriber::fmt::time::SystemTime.format_time(w),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` for `secs` after the epoch, or None after year 9999.
fn rfc3339_micros(secs: u64, micros: u32) -> Option<[u8; 27]> {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    if year > 9999 {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut out[0..4], year);
    put_digits(&mut out[5..7], month);
    put_digits(&mut out[8..10], day);
    put_digits(&mut out[11..13], of_day / 3600);
    put_digits(&mut out[14..16], of_day / 60 % 60);
    put_digits(&mut out[17..19], of_day % 60);
    put_digits(&mut out[20..26], u64::from(micros));
    Some(out)
}

/// Writes `value` into `out` as decimal digits, zero-padded on the left to its length.
fn put_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        // `value % 10` is below 10, so the cast cannot truncate.
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// (year, month, day) of the proleptic Gregorian calendar for `days` after 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A duration written as its `Debug` writes it (`1.5s`, `39.473809ms`, `12µs`, `7ns`: the
/// largest unit under it, exact, trailing zeros dropped), by hand: log it as `%Elapsed(d)`.
pub struct Elapsed(pub Duration);

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        // (whole units, the rest in nanoseconds, nanoseconds per unit, the unit)
        let (whole, rest, per_unit, unit) = match (secs, nanos) {
            (1.., _) => (secs, nanos, 1_000_000_000, "s"),
            (0, 1_000_000..) => (
                u64::from(nanos / 1_000_000),
                nanos % 1_000_000,
                1_000_000,
                "ms",
            ),
            (0, 1_000..) => (u64::from(nanos / 1_000), nanos % 1_000, 1_000, "µs"),
            (0, _) => (u64::from(nanos), 0, 1, "ns"),
        };
        let mut text = [0u8; 40];
        let mut number = itoa::Buffer::new();
        let digits = number.format(whole).as_bytes();
        text[..digits.len()].copy_from_slice(digits);
        let mut len = digits.len();
        if rest > 0 {
            text[len] = b'.';
            len += 1;
            let mut rest = rest;
            let mut place = per_unit / 10;
            while rest > 0 && place > 0 {
                // `rest / place` is a single digit: `rest` stays below `place * 10`.
                text[len] = b'0' + (rest / place) as u8;
                len += 1;
                rest %= place;
                place /= 10;
            }
        }
        for &byte in unit.as_bytes() {
            text[len] = byte;
            len += 1;
        }
        f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)
    }
}

/// The field format: `message name=value name=value`, as tracing-subscriber's `DefaultFields`
/// without colours (strings quoted as `Debug` does, `%` values displayed, the message with
/// terminal control characters escaped).
#[derive(Default)]
pub struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.finish()
    }
}

/// Writes the fields it visits; the first error stops it.
struct TextVisitor<'w> {
    writer: Writer<'w>,
    is_empty: bool,
    result: fmt::Result,
}

impl TextVisitor<'_> {
    /// Starts a field: false if an earlier write failed; else writes the separating space and,
    /// unless it is the message, `name=`.
    fn begin(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        let pad = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        let name = field.name();
        self.result = if name == "message" {
            self.writer.write_str(pad)
        } else {
            self.writer
                .write_str(pad)
                .and_then(|()| self.writer.write_str(name))
                .and_then(|()| self.writer.write_char('='))
        };
        self.result.is_ok()
    }

    /// Whether `field` takes the stock visitor's path: `log.*` fields (already in the line's
    /// metadata) and raw identifiers `r#name`, which it prints without the `r#`.
    fn unusual(field: &Field) -> bool {
        let name = field.name();
        name.starts_with("log.") || name.starts_with("r#")
    }

    /// Hands one field to tracing-subscriber's own visitor.
    fn stock(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // It skips `log.*` fields without writing a separator.
        if !field.name().starts_with("log.") {
            self.is_empty = false;
        }
    }

    fn write_u64(&mut self, field: &Field, value: u64, negative: bool) {
        if self.begin(field) {
            let mut number = itoa::Buffer::new();
            let sign = if negative { "-" } else { "" };
            self.result = self
                .writer
                .write_str(sign)
                .and_then(|()| self.writer.write_str(number.format(value)));
        }
    }
}

impl Visit for TextVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if Self::unusual(field) {
            self.stock(field, |visitor| visitor.record_u64(field, value));
        } else {
            self.write_u64(field, value, false);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if Self::unusual(field) {
            self.stock(field, |visitor| visitor.record_i64(field, value));
        } else {
            self.write_u64(field, value.unsigned_abs(), value < 0);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if Self::unusual(field) {
            self.stock(field, |visitor| visitor.record_bool(field, value));
        } else if self.begin(field) {
            self.result = self.writer.write_str(if value { "true" } else { "false" });
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if Self::unusual(field) {
            self.stock(field, |visitor| visitor.record_str(field, value));
        } else if self.begin(field) {
            self.result = if field.name() == "message" {
                Escaping(&mut self.writer).write_str(value)
            } else if value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                && !value.contains(['"', '\\'])
            {
                // What `Debug` writes for printable ASCII without quotes or backslashes.
                self.writer
                    .write_char('"')
                    .and_then(|()| self.writer.write_str(value))
                    .and_then(|()| self.writer.write_char('"'))
            } else {
                write!(self.writer, "{value:?}")
            };
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.stock(field, |visitor| visitor.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if Self::unusual(field) {
            self.stock(field, |visitor| visitor.record_debug(field, value));
        } else if self.begin(field) {
            self.result = if field.name() == "message" {
                write!(Escaping(&mut self.writer), "{value:?}")
            } else {
                write!(self.writer, "{value:?}")
            };
        }
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

/// Writes through, escaping what could drive a terminal (ESC, BEL, BS, FF, DEL and the C1
/// controls U+0080..U+009F) as tracing-subscriber's message sanitising does, but in runs
/// rather than one `char` at a time.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let bytes = text.as_bytes();
        // Most text is printable ASCII: one pass without branches to tell, then one write.
        if !bytes
            .iter()
            .fold(false, |odd, &b| odd | !(0x20..0x7f).contains(&b))
        {
            return self.0.write_str(text);
        }
        let mut start = 0;
        let mut at = 0;
        while at < bytes.len() {
            let (escape, len): (Option<&str>, usize) = match bytes[at] {
                0x1b => (Some("\\x1b"), 1),
                0x07 => (Some("\\x07"), 1),
                0x08 => (Some("\\x08"), 1),
                0x0c => (Some("\\x0c"), 1),
                0x7f => (Some("\\x7f"), 1),
                // U+0080..U+009F are 0xC2 0x80..0x9F in UTF-8.
                0xc2 if bytes.get(at + 1).is_some_and(|b| (0x80..=0x9f).contains(b)) => (None, 2),
                _ => {
                    at += 1;
                    continue;
                }
            };
            self.0.write_str(&text[start..at])?;
            match escape {
                Some(escape) => self.0.write_str(escape)?,
                None => {
                    let code = bytes.get(at + 1).map_or(0, |b| u32::from(b & 0x3f) | 0x80);
                    write!(self.0, "\\u{{{code:x}}}")?;
                }
            }
            at += len;
            start = at;
        }
        self.0.write_str(&text[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn elapsed_is_written_as_debug_writes_a_duration() {
        let nanos = [
            0,
            1,
            7,
            999,
            1_000,
            1_500,
            12_000,
            999_999,
            1_000_000,
            39_473_809,
            39_473_000,
            100_000_000,
            999_999_999,
            1_000_000_000,
            1_500_000_000,
            1_000_000_001,
            61_250_000_000,
            u64::MAX,
        ];
        for n in nanos {
            let duration = Duration::from_nanos(n);
            assert_eq!(Elapsed(duration).to_string(), format!("{duration:?}"));
        }
        let longest = Duration::new(u64::MAX, 999_999_999);
        assert_eq!(Elapsed(longest).to_string(), format!("{longest:?}"));
    }

    #[test]
    fn timestamps_match_the_stock_format() {
        for (secs, micros, text) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 7, "2000-02-29T00:00:00.000007Z"),
            (1_796_405_577, 58_162, "2026-12-04T17:32:57.058162Z"),
            (4_107_542_399, 999_999, "2100-02-28T23:59:59.999999Z"),
            (253_402_300_799, 1, "9999-12-31T23:59:59.000001Z"),
        ] {
            let stamp = rfc3339_micros(secs, micros).unwrap();
            assert_eq!(std::str::from_utf8(&stamp).unwrap(), text);
        }
        assert!(rfc3339_micros(253_402_300_800, 0).is_none());
    }

    /// A writer both formats can write to.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Failure;

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("it \x1bfailed")
        }
    }

    impl std::error::Error for Failure {}

    /// What a run of events writes, without the timestamps (the only part that differs),
    /// by the stock formatter or ours, `stamped` or as for syslog.
    fn lines(stock: bool, stamped: bool) -> Vec<String> {
        let out = Captured::default();
        let writer = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(false)
            .with_writer(move || writer.clone());
        let format = tracing_subscriber::fmt::format()
            .with_target(false)
            .with_level(stamped);
        let subscriber: Box<dyn Subscriber + Send + Sync> = match (stock, stamped) {
            (true, true) => Box::new(tracing_subscriber::registry().with(layer)),
            (true, false) => Box::new(
                tracing_subscriber::registry().with(layer.event_format(format.without_time())),
            ),
            (false, _) => Box::new(
                tracing_subscriber::registry().with(
                    layer
                        .fmt_fields(TextFields)
                        .event_format(TextFormat { stamped }),
                ),
            ),
        };
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("conn", id = 7, client = tracing::field::Empty);
            span.record("client", tracing::field::display("127.0.0.1:5000"));
            span.in_scope(|| {
                let target = "localhost:5900";
                tracing::info!(
                    path = %"/websockify?token=a b",
                    protocol = "binary",
                    websocket = "rfc6455",
                    target = %target,
                    "ws:// WebSocket connection, connecting to {target}"
                );
                tracing::info!(
                    duration = ?Duration::from_micros(39_473),
                    to_target = 32u64,
                    to_client = 0u64,
                    code = 1000u16,
                    delta = -5i64,
                    open = true,
                    quoted = "say \"hi\"\t\u{301}é",
                    "session closed: {}",
                    "client closed \x1b[31m \u{85} \u{9f}\u{a0} \x07\x08\x0c\x7f done"
                );
                tracing::info_span!("inner", r#type = "x").in_scope(|| {
                    tracing::warn!(error = &Failure as &(dyn std::error::Error + 'static), "e");
                    tracing::error!(r#loop = 3, "{}", "x");
                });
                tracing::debug!("plain");
            });
            tracing::info!(ratio = 0.5, "outside");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| match stamped {
                true => line.split_once(' ').unwrap().1.to_owned(),
                false => line.to_owned(),
            })
            .collect()
    }

    #[test]
    fn lines_are_the_stock_formatters_byte_for_byte() {
        for stamped in [true, false] {
            let ours = lines(false, stamped);
            assert_eq!(ours.len(), 6, "{ours:#?}");
            assert_eq!(ours, lines(true, stamped));
        }
    }
}
