//! The latency chart: the distribution of every read's latency in each run (and the cached
//! run's hits and misses apart), and of whole dashboard loads, as cumulative curves on a
//! logarithmic time axis, written as SVG.

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
