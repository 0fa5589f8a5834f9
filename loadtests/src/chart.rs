//! The charts, written as SVG: the latency chart (the distribution of every read's latency
//! in each run, the cached run's hits and misses apart, and of whole dashboard loads, as
//! cumulative curves on a logarithmic time axis), and the `outage` scenario's timeline
//! (reads per second as hits, bypasses and other misses, with the Redis events).

use std::{path::Path, time::Duration};

use plotters::prelude::*;

use crate::record::{Kind, Sample};

/// One curve: a label and its latencies.
pub(crate) struct Series {
    /// The legend.
    pub(crate) label: String,
    /// Latencies in ms, any order.
    pub(crate) ms: Vec<f64>,
    /// Which panel: reads (false) or whole loads (true).
    pub(crate) loads: bool,
    /// Index into the palette (the same run keeps its colour in both panels).
    pub(crate) color: usize,
}

impl Series {
    /// The curve of the samples of `kind` in `samples` that `keep` keeps.
    pub(crate) fn of(
        label: impl Into<String>,
        color: usize,
        samples: &[Sample],
        kind: Kind,
        keep: impl Fn(&Sample) -> bool,
    ) -> Series {
        Series {
            label: label.into(),
            ms: samples
                .iter()
                .filter(|s| s.kind == kind && keep(s))
                .map(|s| ms(s.latency))
                .collect(),
            loads: kind == Kind::Load,
            color,
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).max(0.01)
}

const COLORS: [RGBColor; 5] = [
    RGBColor(200, 60, 40),
    RGBColor(30, 100, 200),
    RGBColor(40, 160, 80),
    RGBColor(230, 150, 20),
    RGBColor(120, 60, 170),
];

/// Draws `series` into an SVG at `path`: reads on the left, whole loads on the right.
pub(crate) fn draw(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let panels = root.split_evenly((1, 2));
    for (panel, loads) in panels.iter().zip([false, true]) {
        let mine: Vec<&Series> = series
            .iter()
            .filter(|s| s.loads == loads && !s.ms.is_empty())
            .collect();
        let max = mine
            .iter()
            .flat_map(|s| s.ms.iter().copied())
            .fold(1.0_f64, f64::max)
            * 1.2;
        let min = mine
            .iter()
            .flat_map(|s| s.ms.iter().copied())
            .fold(max, f64::min)
            .max(0.01)
            * 0.8;
        let caption = if loads {
            "whole dashboard loads (from when due)"
        } else {
            "each read (to the last byte)"
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((min..max).log_scale(), 0.0..100.0)?;
        chart
            .configure_mesh()
            .x_desc("latency, ms (log scale)")
            .y_desc("% of requests at most")
            .draw()?;
        for s in mine {
            let mut sorted = s.ms.clone();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len() as f64;
            // At most ~2,000 points per curve, always keeping the tail.
            let step = (sorted.len() / 2000).max(1);
            let points: Vec<(f64, f64)> = sorted
                .iter()
                .enumerate()
                .filter(|(k, _)| k % step == 0 || *k + 1 == sorted.len())
                .map(|(k, v)| (*v, (k + 1) as f64 / n * 100.0))
                .collect();
            let color = COLORS[s.color % COLORS.len()];
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(format!("{} (n={})", s.label, s.ms.len()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Draws `timeline` into an SVG at `path`: per second, the reads stacked as hits, bypasses
/// and other misses, with a dashed vertical line at each event (when it was done).
pub(crate) fn draw_timeline(
    path: &Path,
    title: &str,
    timeline: &crate::timeline::Timeline,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let seconds = timeline.seconds.len().max(1) as f64;
    let top = timeline
        .seconds
        .iter()
        .map(|s| s.reads)
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.4;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..seconds, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds from when the first load was due (each read counted when its request was sent)")
        .y_desc("reads per second")
        .disable_x_mesh()
        .draw()?;
    let (hit, bypass, miss) = (COLORS[2], COLORS[3], COLORS[0]);
    // Stacked from the bottom: hits, bypasses, other misses; one bar per second.
    type Count = fn(&crate::timeline::Second) -> usize;
    let layers: [(&str, RGBColor, Count); 3] = [
        ("hits", hit, |s| s.hits),
        ("bypasses (fwd=bypass)", bypass, |s| s.bypasses),
        ("other misses", miss, |s| s.misses),
    ];
    for (k, &(label, color, count)) in layers.iter().enumerate() {
        let below = |s: &crate::timeline::Second| -> usize {
            layers[..k].iter().map(|layer| (layer.2)(s)).sum()
        };
        let total: usize = timeline.seconds.iter().map(count).sum();
        chart
            .draw_series(timeline.seconds.iter().map(|s| {
                let from = below(s) as f64;
                let x = s.second as f64;
                Rectangle::new(
                    [(x + 0.08, from), (x + 0.92, from + count(s) as f64)],
                    color.filled(),
                )
            }))?
            .label(format!("{label} (n={total})"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    for (k, mark) in timeline.marks.iter().enumerate() {
        let x = mark.at_s.clamp(0.0, seconds);
        chart.draw_series(DashedLineSeries::new(
            [(x, 0.0), (x, top)],
            6,
            4,
            BLACK.stroke_width(2),
        ))?;
        // Staggered so that two close events stay readable.
        let y = top * (0.97 - 0.06 * k as f64);
        chart.draw_series(std::iter::once(Text::new(
            format!(" {} ({:.2}s)", mark.label, mark.at_s),
            (x, y),
            ("sans-serif", 14),
        )))?;
    }
    // Above the bars (the tallest reaches 70% of the height).
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
