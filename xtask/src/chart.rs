//! The chart of a bench run: requests per second of each case, with the
//! ceiling it was paired with, as a PNG beside `results.json`.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Debian's fonts-dejavu-core; `.ci/run` installs it where it is missing.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One bar: a case at a concurrency, its median req/s and its ceiling's.
pub struct Bar {
    pub label: String,
    pub rps: f64,
    pub ceiling_rps: f64,
    /// The median of the runs' ratios to their ceilings, in percent.
    pub percent_of_ceiling: f64,
}

/// Draws `bars` to `path` (PNG).
pub fn draw(bars: &[Bar], title: &str, path: &Path) -> Result<()> {
    let font = std::fs::read(FONT).with_context(|| {
        format!("no font at {FONT} for the chart: apt-get install fonts-dejavu-core")
    })?;
    // plotters keeps registered fonts for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;

    let top = bars
        .iter()
        .map(|b| b.rps.max(b.ceiling_rps))
        .fold(0.0_f64, f64::max)
        * 1.45;
    let n = bars.len();
    // Horizontal bars, first case at the top: row i of `bars` is drawn at n-1-i.
    let row = |i: usize| n - 1 - i;
    let root = BitMapBackend::new(path, (1100, 80 + 44 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(250)
        .build_cartesian_2d(0.0..top.max(1.0), (0..n).into_segmented())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .x_desc("requests per second (median)")
        .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(r) => n
                .checked_sub(1 + *r)
                .and_then(|i| bars.get(i))
                .map(|b| b.label.clone())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let case_colour = RGBColor(52, 101, 164);
    let ceiling_colour = RGBColor(204, 0, 0);
    chart
        .draw_series(bars.iter().enumerate().map(|(i, bar)| {
            let mut rectangle = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row(i))),
                    (bar.rps, SegmentValue::Exact(row(i) + 1)),
                ],
                case_colour.filled(),
            );
            rectangle.set_margin(7, 7, 0, 0);
            rectangle
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("the case")
        .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], case_colour.filled()));
    chart
        .draw_series(bars.iter().enumerate().map(|(i, bar)| {
            PathElement::new(
                vec![
                    (bar.ceiling_rps, SegmentValue::Exact(row(i))),
                    (bar.ceiling_rps, SegmentValue::Exact(row(i) + 1)),
                ],
                ceiling_colour.stroke_width(3),
            )
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("its ceiling: GET /health/live, run just before")
        .legend(move |(x, y)| {
            PathElement::new(
                vec![(x + 8, y - 7), (x + 8, y + 7)],
                ceiling_colour.stroke_width(3),
            )
        });
    chart
        .draw_series(bars.iter().enumerate().map(|(i, bar)| {
            Text::new(
                format!("  {:.0} %", bar.percent_of_ceiling),
                (bar.rps, SegmentValue::CenterOf(row(i))),
                ("sans-serif", 14).into_font(),
            )
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
