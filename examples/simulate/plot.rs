//! `--plot FILE.svg`: minute by minute, for both clients, what the provider
//! admitted (requests and tokens) against its limits, the client's queue
//! depth, and the breakers' state.

use std::path::Path;

use plotters::prelude::*;
use tower::BoxError;

use crate::report::{Minute, Report};

const NAIVE: RGBColor = RGBColor(214, 39, 40);
const SLUICE: RGBColor = RGBColor(31, 119, 180);
const LIMIT: RGBColor = RGBColor(90, 90, 90);

/// One panel: a series per client, and optionally the limit as a line.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    report: &Report,
    value: fn(&Minute) -> u64,
    limit: Option<(&str, u64)>,
) -> Result<(), BoxError> {
    let minutes = report
        .naive
        .series
        .len()
        .max(report.sluice.series.len())
        .max(1) as u32;
    let top = [&report.naive, &report.sluice]
        .iter()
        .flat_map(|r| r.series.iter().map(value))
        .chain(limit.map(|(_, l)| l))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..minutes, 0u64..top + top / 10 + 1)?;
    chart
        .configure_mesh()
        .x_desc("minute")
        .light_line_style(WHITE)
        .draw()?;
    if let Some((name, l)) = limit {
        chart
            .draw_series(LineSeries::new(
                [(0, l), (minutes, l)],
                LIMIT.stroke_width(1),
            ))?
            .label(name)
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], LIMIT));
    }
    for (run, color) in [(&report.naive, NAIVE), (&report.sluice, SLUICE)] {
        let points = run
            .series
            .iter()
            .enumerate()
            .map(|(i, m)| (i as u32, value(m)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(run.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Writes the chart to `path`.
pub fn write(path: &Path, report: &Report) -> Result<(), BoxError> {
    let root = SVGBackend::new(path, (1100, 1300)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((4, 1));
    panel(
        &panels[0],
        "requests admitted by the provider per minute",
        report,
        |m| m.admitted,
        Some(("limit (RPM, all keys)", report.limit_rpm)),
    )?;
    panel(
        &panels[1],
        "tokens charged by the provider per minute",
        report,
        |m| m.tokens,
        Some(("limit (TPM, all keys)", report.limit_tpm)),
    )?;
    panel(
        &panels[2],
        "requests waiting in the client (most per minute)",
        report,
        |m| m.queue_depth,
        None,
    )?;
    panel(
        &panels[3],
        "tenants with a breaker open or half-open (most per minute)",
        report,
        |m| m.breakers_open,
        Some(("tenants", report.tenants)),
    )?;
    root.present()?;
    Ok(())
}
