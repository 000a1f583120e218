//! Summarising repeated log lines: at most one line per second for each reason, then one line
//! saying how many more there were, so a flood of refused handshakes costs a few log lines a
//! second instead of one per handshake.
//!
//! ```text
//! t=0.0  admit() -> true     the caller logs "refused: Token not found ..."
//! t=0.1  admit() -> false    counted                                     \
//! t=0.9  admit() -> false    counted                                      } the same window
//! t=1.0  (timer)             "2 more like this in the last second (token not found)"
//! t=3.0  admit() -> true     a new window: the caller logs again
//! ```
//!
//! The summary comes from a tokio timer armed by the first line held back in a window, so it is
//! written when the window ends even if no other line of that reason follows. Outside a runtime
//! it comes with the next admitted line instead.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Level;

/// How long a window lasts: one line per reason per window.
const WINDOW: Duration = Duration::from_secs(1);

/// A rate limit for one kind of log line, kept in a `static` beside the code that logs it:
///
/// ```
/// use websockify::logging::Throttle;
/// static NOT_FOUND: Throttle = Throttle::new("token not found", tracing::Level::INFO);
/// if NOT_FOUND.admit() {
///     tracing::info!("refused WebSocket connection: Token not found");
/// }
/// ```
pub struct Throttle {
    reason: &'static str,
    level: Level,
    window: Mutex<Window>,
}

struct Window {
    /// When the current window opened (with a line let through); None before the first line.
    opened: Option<Instant>,
    /// Lines held back in the current window.
    held: u64,
}

impl Throttle {
    /// `reason` names the kind of line in the summary; `level` is the summary's level (that of
    /// the lines it stands for).
    pub const fn new(reason: &'static str, level: Level) -> Throttle {
        Throttle {
            reason,
            level,
            window: Mutex::new(Window {
                opened: None,
                held: 0,
            }),
        }
    }

    /// True when the caller should log its line now; false when the line is counted into the
    /// summary instead. One short lock, no I/O.
    pub fn admit(&'static self) -> bool {
        let now = Instant::now();
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        match window.opened {
            Some(opened) if now < opened + WINDOW => {
                window.held += 1;
                if window.held == 1 {
                    self.summarise_at_end_of(opened);
                }
                false
            }
            _ => {
                // Normally the timer has taken these already; not outside a runtime.
                let late = std::mem::take(&mut window.held);
                window.opened = Some(now);
                drop(window);
                self.summarise(late);
                true
            }
        }
    }

    /// Arms a timer that writes the summary of the window opened at `opened`.
    fn summarise_at_end_of(&'static self, opened: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            tokio::time::sleep_until(opened + WINDOW).await;
            let held = {
                let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
                // A new window has opened meanwhile: `admit` wrote the summary itself.
                if window.opened != Some(opened) {
                    return;
                }
                std::mem::take(&mut window.held)
            };
            self.summarise(held);
        });
    }

    fn summarise(&self, held: u64) {
        if held == 0 {
            return;
        }
        let reason = self.reason;
        // `tracing`'s macros need the level as a constant.
        match self.level {
            Level::ERROR => {
                tracing::error!(
                    reason,
                    held,
                    "{held} more like this in the last second ({reason})"
                )
            }
            Level::WARN => {
                tracing::warn!(
                    reason,
                    held,
                    "{held} more like this in the last second ({reason})"
                )
            }
            Level::INFO => {
                tracing::info!(
                    reason,
                    held,
                    "{held} more like this in the last second ({reason})"
                )
            }
            Level::DEBUG => {
                tracing::debug!(
                    reason,
                    held,
                    "{held} more like this in the last second ({reason})"
                )
            }
            Level::TRACE => {
                tracing::trace!(
                    reason,
                    held,
                    "{held} more like this in the last second ({reason})"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::Arc;

    /// Log output the test can read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_owned).collect()
        }
    }

    /// Logs with a subscriber on this thread (the current-thread runtime runs the timers here).
    fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    fn throttle(reason: &'static str) -> &'static Throttle {
        Box::leak(Box::new(Throttle::new(reason, Level::INFO)))
    }

    /// The caller's side: a line when admitted.
    fn refuse(throttle: &'static Throttle) {
        if throttle.admit() {
            tracing::info!("refused");
        }
    }

    /// Lets the runtime run the timers that are due.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_line_per_second_then_a_summary_when_the_second_ends() {
        let (log, _guard) = capture();
        let t = throttle("token not found");
        for _ in 0..1000 {
            refuse(t);
        }
        assert_eq!(log.lines(), [" INFO refused"]);
        tokio::time::advance(Duration::from_millis(999)).await;
        settle().await;
        assert_eq!(log.lines().len(), 1, "summary before the second ended");
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(
            log.lines(),
            [
                " INFO refused",
                " INFO 999 more like this in the last second (token not found) \
                 reason=\"token not found\" held=999",
            ]
        );
        // Quiet since: the next one is logged at once, with no summary behind it.
        tokio::time::advance(Duration::from_secs(5)).await;
        refuse(t);
        settle().await;
        assert_eq!(log.lines().len(), 3);
        assert_eq!(log.lines()[2], " INFO refused");
    }

    #[tokio::test(start_paused = true)]
    async fn reasons_are_limited_separately() {
        let (log, _guard) = capture();
        let (a, b) = (throttle("a"), throttle("b"));
        for _ in 0..3 {
            refuse(a);
            refuse(b);
        }
        tokio::time::advance(WINDOW).await;
        settle().await;
        let lines = log.lines();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("2 more like this in the last second (a)"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("2 more like this in the last second (b)"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_thousand_refusals_in_ten_seconds_give_at_most_two_lines_a_second() {
        let (log, _guard) = capture();
        let t = throttle("flood");
        for _ in 0..100_000 {
            refuse(t);
            tokio::time::advance(Duration::from_micros(100)).await;
        }
        tokio::time::advance(WINDOW).await;
        settle().await;
        let lines = log.lines();
        assert!(lines.len() <= 2 * 11, "{} lines", lines.len());
        // Every refusal is accounted for: logged, or counted in a summary.
        let logged = lines.iter().filter(|l| l.ends_with("refused")).count() as u64;
        let held: u64 = lines
            .iter()
            .filter_map(|l| {
                l.rsplit_once("held=")
                    .map(|(_, n)| n.parse::<u64>().unwrap())
            })
            .sum();
        assert_eq!(logged + held, 100_000);
    }

    #[test]
    fn outside_a_runtime_the_summary_comes_with_the_next_line() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .finish();
        let t = throttle("sync");
        tracing::subscriber::with_default(subscriber, || {
            refuse(t);
            refuse(t);
            refuse(t);
            // Pretend the window is over.
            t.window.lock().unwrap().opened = Some(Instant::now() - WINDOW);
            refuse(t);
        });
        let lines = captured.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[1].contains("2 more like this in the last second (sync)"));
        assert_eq!(lines[2], " INFO refused");
    }
}
