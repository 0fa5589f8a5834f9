//! A run's reads second by second: how many were hits, bypasses (`Cache-Status: ...;
//! fwd=bypass`) and other misses, next to the run's events (the `outage` scenario's Redis
//! stop and restart), and when hits came back after Redis returned.
//!
//! Every time here is on one clock, the runner's monotonic `Instant`: a read's time is when
//! its request was sent, an event's is when the runner saw it done (the kill returned, the
//! restarted server answered `PING`), and both are counted from the run's epoch (when its
//! first load was due).

use std::{fmt::Write as _, time::Instant};

use serde::Serialize;

use crate::{
    record::{CacheOutcome, Kind, Sample},
    scenarios::outage,
};

/// Something that happened during a run.
#[derive(Debug, Clone)]
pub(crate) struct Mark {
    /// What (`redis stopped`, `redis running again`).
    pub(crate) label: &'static str,
    /// When the runner started doing it.
    pub(crate) began: Instant,
    /// When it was done (a restart waits until the server answers `PING`).
    pub(crate) at: Instant,
}

/// The reads whose requests were sent within one second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Second {
    /// From the epoch: this row counts reads sent in `[second, second + 1)`.
    pub(crate) second: u64,
    /// All reads.
    pub(crate) reads: usize,
    /// Served from the cache (fresh or stale).
    pub(crate) hits: usize,
    /// Forwarded without the cache (`fwd=bypass`: the store is away).
    pub(crate) bypasses: usize,
    /// Every other read: misses, collapsed, no `Cache-Status`.
    pub(crate) misses: usize,
    /// Reads that failed (also counted in one of the three above).
    pub(crate) failed: usize,
}

/// An event, in seconds from the epoch.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MarkFigures {
    /// What happened.
    pub(crate) label: &'static str,
    /// When the runner started doing it.
    pub(crate) began_s: f64,
    /// When it was done.
    pub(crate) at_s: f64,
}

/// The timeline of one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Timeline {
    /// How the times are taken.
    pub(crate) clock: &'static str,
    /// One row per second, from the epoch to the last read.
    pub(crate) seconds: Vec<Second>,
    /// The run's events.
    pub(crate) marks: Vec<MarkFigures>,
    /// Hits among the reads sent while Redis was away (from the start of its stop to the
    /// start of its restart).
    pub(crate) hits_while_away: usize,
    /// When the first hit sent after Redis's restart began was sent, from the epoch.
    pub(crate) first_hit_after_return_s: Option<f64>,
    /// That, from when Redis answered `PING` again (slightly negative if the hit came in
    /// between the restart's start and the runner seeing the `PING`).
    pub(crate) hits_resumed_after_s: Option<f64>,
    /// How long that first hit took, in ms.
    pub(crate) first_hit_latency_ms: Option<f64>,
    /// When the last bypass was sent, from when Redis answered `PING` again.
    pub(crate) last_bypass_after_return_s: Option<f64>,
}

fn secs(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64()
    } else {
        -from.duration_since(to).as_secs_f64()
    }
}

impl Timeline {
    /// The timeline of `samples`' reads, against `marks`, from `epoch`.
    pub(crate) fn of(samples: &[Sample], epoch: Instant, marks: &[Mark]) -> Timeline {
        let reads: Vec<&Sample> = samples.iter().filter(|s| s.kind == Kind::Read).collect();
        let last = reads
            .iter()
            .map(|s| s.sent.saturating_duration_since(epoch).as_secs())
            .max()
            .unwrap_or(0);
        let mut seconds: Vec<Second> = (0..=last)
            .map(|second| Second {
                second,
                ..Second::default()
            })
            .collect();
        for s in &reads {
            let row = &mut seconds[s.sent.saturating_duration_since(epoch).as_secs() as usize];
            row.reads += 1;
            match s.cache {
                c if c.is_hit() => row.hits += 1,
                CacheOutcome::Bypass => row.bypasses += 1,
                _ => row.misses += 1,
            }
            row.failed += usize::from(!s.ok);
        }
        let find = |label| marks.iter().find(|m| m.label == label);
        let (stopped, running) = (find(outage::STOPPED), find(outage::RUNNING));
        let hits_while_away = match stopped {
            Some(stopped) => reads
                .iter()
                .filter(|s| {
                    s.cache.is_hit()
                        && s.sent >= stopped.began
                        && running.is_none_or(|r| s.sent < r.began)
                })
                .count(),
            None => 0,
        };
        let (mut first_hit, mut last_bypass) = (None::<&Sample>, None::<&Sample>);
        if let Some(running) = running {
            for s in reads.iter().filter(|s| s.sent >= running.began) {
                if s.cache.is_hit() && first_hit.is_none_or(|f| s.sent < f.sent) {
                    first_hit = Some(s);
                }
                if s.cache == CacheOutcome::Bypass && last_bypass.is_none_or(|b| s.sent > b.sent) {
                    last_bypass = Some(s);
                }
            }
        }
        Timeline {
            clock: "each read at the instant its request was sent, each event when the runner saw it done (the kill returned; the restarted redis-server answered PING), both on the runner's monotonic clock, in seconds from when the run's first load was due",
            seconds,
            marks: marks
                .iter()
                .map(|m| MarkFigures {
                    label: m.label,
                    began_s: secs(epoch, m.began),
                    at_s: secs(epoch, m.at),
                })
                .collect(),
            hits_while_away,
            first_hit_after_return_s: first_hit.map(|s| secs(epoch, s.sent)),
            hits_resumed_after_s: running.and_then(|r| first_hit.map(|s| secs(r.at, s.sent))),
            first_hit_latency_ms: first_hit.map(|s| s.latency.as_secs_f64() * 1e3),
            last_bypass_after_return_s: running
                .and_then(|r| last_bypass.map(|s| secs(r.at, s.sent))),
        }
    }

    /// The event that happened in `second`, if any, as `<- label at N.Ns`.
    fn marks_in(&self, second: u64) -> String {
        self.marks
            .iter()
            .filter(|m| m.at_s >= second as f64 && m.at_s < (second + 1) as f64)
            .map(|m| format!("  <- {} at {:.2}s", m.label, m.at_s))
            .collect()
    }

    /// The console form: one line per second, with a bar (`#` hits, `b` bypasses, `.`
    /// other misses) and the events beside the second they happened in; then when hits
    /// resumed.
    pub(crate) fn render(&self) -> String {
        const BAR: usize = 40;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "timeline of the reads, per second (by when each request was sent, from when the first load was due; the events on the same clock): bar # hit, b bypass (fwd=bypass), . other miss"
        );
        let _ = writeln!(
            out,
            "{:>5} | {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} | bar",
            "t", "reads", "hit", "bypass", "miss", "failed", "hit%"
        );
        let widest = self
            .seconds
            .iter()
            .map(|s| s.reads)
            .max()
            .unwrap_or(0)
            .max(1);
        for s in &self.seconds {
            let cells = |n: usize| (n * BAR).div_ceil(widest);
            let (h, b) = (cells(s.hits), cells(s.bypasses));
            let m = cells(s.reads).saturating_sub(h + b).min(cells(s.misses));
            let bar = format!("{}{}{}", "#".repeat(h), "b".repeat(b), ".".repeat(m));
            let rate = if s.reads == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}%", s.hits as f64 * 100.0 / s.reads as f64)
            };
            let _ = writeln!(
                out,
                "{:>4}s | {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} | {bar:<BAR$}{}",
                s.second,
                s.reads,
                s.hits,
                s.bypasses,
                s.misses,
                s.failed,
                rate,
                self.marks_in(s.second)
            );
        }
        for m in &self.marks {
            let _ = writeln!(
                out,
                "event: {} at {:.2}s (the runner began it at {:.2}s)",
                m.label, m.at_s, m.began_s
            );
        }
        if let Some(line) = self.resumed_line() {
            let _ = writeln!(out, "{line}");
        }
        out
    }

    /// `hits resumed N.N s after Redis returned (...)`, when Redis was restarted.
    pub(crate) fn resumed_line(&self) -> Option<String> {
        let running = self.marks.iter().find(|m| m.label == outage::RUNNING)?;
        let tail = format!(
            "; hits while Redis was away: {}; last bypass {}",
            self.hits_while_away,
            self.last_bypass_after_return_s.map_or_else(
                || "before it returned".to_owned(),
                |s| format!("sent {s:.2} s after it returned")
            )
        );
        Some(
            match (self.hits_resumed_after_s, self.first_hit_after_return_s) {
                (Some(after), Some(at)) => format!(
                    "hits resumed {after:.1} s after Redis returned (the first hit's request was sent at {at:.2}s and answered in {:.2} ms; Redis answered PING again at {:.2}s){tail}",
                    self.first_hit_latency_ms.unwrap_or(0.0),
                    running.at_s
                ),
                _ => format!(
                    "hits resumed: never (no read sent after Redis returned at {:.2}s was a hit){tail}",
                    running.at_s
                ),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn read(epoch: Instant, ms: u64, cache: CacheOutcome) -> Sample {
        Sample {
            name: "profile",
            kind: Kind::Read,
            iteration: 0,
            sent: epoch + Duration::from_millis(ms),
            latency: Duration::from_millis(1),
            first_byte: Duration::from_millis(1),
            cache,
            ok: true,
            error: None,
        }
    }

    #[test]
    fn reads_are_counted_per_second_and_hits_resume_after_the_restart() {
        let epoch = Instant::now();
        let at = |ms| epoch + Duration::from_millis(ms);
        let samples = vec![
            read(epoch, 100, CacheOutcome::Hit),
            read(epoch, 900, CacheOutcome::Miss),
            read(epoch, 1_200, CacheOutcome::Bypass),
            read(epoch, 1_500, CacheOutcome::Collapsed),
            read(epoch, 2_300, CacheOutcome::Bypass),
            read(epoch, 3_100, CacheOutcome::Miss),
            read(epoch, 3_400, CacheOutcome::Stale),
            read(epoch, 3_800, CacheOutcome::Hit),
        ];
        let marks = [
            Mark {
                label: outage::STOPPED,
                began: at(1_000),
                at: at(1_010),
            },
            Mark {
                label: outage::RUNNING,
                began: at(2_900),
                at: at(3_000),
            },
        ];
        let t = Timeline::of(&samples, epoch, &marks);
        assert_eq!(t.seconds.len(), 4);
        assert_eq!((t.seconds[0].hits, t.seconds[0].misses), (1, 1));
        assert_eq!((t.seconds[1].bypasses, t.seconds[1].misses), (1, 1));
        assert_eq!(t.seconds[2].bypasses, 1);
        assert_eq!((t.seconds[3].reads, t.seconds[3].hits), (3, 2));
        assert_eq!(t.hits_while_away, 0);
        // The stale hit at 3.4 s is the first after the restart (done at 3.0 s).
        assert!((t.hits_resumed_after_s.unwrap() - 0.4).abs() < 1e-9);
        assert!(t.last_bypass_after_return_s.is_none());
        let text = t.render();
        assert!(text.contains("<- redis stopped at 1.01s"), "{text}");
        assert!(
            text.contains("hits resumed 0.4 s after Redis returned"),
            "{text}"
        );

        let t = Timeline::of(&samples[..6], epoch, &marks);
        assert!(t.hits_resumed_after_s.is_none());
        assert!(t.render().contains("hits resumed: never"));
    }
}
