//! The temperature chart, as a self-contained SVG: the allowed band shaded green, each
//! excursion shaded red and labelled, the 5-minute minimum/maximum as a light area and the mean as
//! a line, with the daily axis below.

use std::fmt::Write as _;

use super::ReportData;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 50.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(super) fn render(data: &ReportData) -> String {
    let start = super::start_of(data.from).unix_timestamp() as f64;
    let end = (super::start_of(data.to) + time::Duration::DAY).unix_timestamp() as f64;
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in data
        .samples
        .iter()
        .flat_map(|s| [s.min, s.max])
        .chain(data.days.iter().flat_map(|d| [d.min, d.max]))
        .chain(data.low)
        .chain(data.high)
        .chain(data.excursions.iter().flat_map(|e| [e.min, e.max]))
    {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 10.0);
    }
    let pad = ((hi - lo) * 0.1).max(1.0);
    let (lo, hi) = ((lo - pad).floor(), (hi + pad).ceil());
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + (t - start) / (end - start) * plot_w;
    let y = |c: f64| TOP + (hi - c) / (hi - lo) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let range = match (data.low, data.high) {
        (Some(l), Some(h)) => format!(", allowed {l}–{h} °C"),
        _ => String::new(),
    };
    let profile = data
        .profile
        .as_deref()
        .map(|p| format!(" ({p})"))
        .unwrap_or_default();
    let _ = writeln!(
        svg,
        r#"<title>{}</title><text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}{}: {} to {}{}</text>"#,
        escape(&format!(
            "{} temperatures {} to {}",
            data.device, data.from, data.to
        )),
        escape(&data.device),
        escape(&profile),
        data.from,
        data.to,
        escape(&range)
    );
    let _ = writeln!(
        svg,
        r##"<rect id="plot" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#ffffff" stroke="#999999"/>"##
    );
    if let (Some(low), Some(high)) = (data.low, data.high) {
        let _ = writeln!(
            svg,
            r##"<rect id="band" class="band" x="{LEFT}" y="{:.1}" width="{plot_w}" height="{:.1}" fill="#2e9e44" fill-opacity="0.15"><title>allowed range {low}–{high} °C</title></rect>"##,
            y(high),
            y(low) - y(high)
        );
    }
    for e in &data.excursions {
        let (x0, x1) = (
            x((e.started.unix_timestamp() as f64).max(start)),
            x((e.ended.unix_timestamp() as f64).min(end)),
        );
        let label = format!(
            "{} {:?} {} → {} ({} min), min {:.1} max {:.1} °C, MKT {}",
            e.kind.as_str(),
            e.severity,
            crate::clock::rfc3339_seconds(e.started),
            crate::clock::rfc3339_seconds(e.ended),
            e.duration_s / 60,
            e.min,
            e.max,
            e.mkt
                .map(|m| format!("{m:.1} °C"))
                .unwrap_or_else(|| "-".to_owned())
        );
        let _ = writeln!(
            svg,
            r##"<rect class="excursion" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="#d62728" fill-opacity="0.25"><title>{}</title></rect>"##,
            (x1 - x0).max(2.0),
            escape(&label)
        );
        let _ = writeln!(
            svg,
            r##"<text class="excursion-label" x="{x0:.1}" y="{:.1}" fill="#d62728">excursion, max {:.1} °C</text>"##,
            TOP - 6.0,
            e.max
        );
    }
    if !data.samples.is_empty() {
        let mut area = String::new();
        for s in &data.samples {
            let _ = write!(area, "{:.1},{:.1} ", x(s.at as f64), y(s.max));
        }
        for s in data.samples.iter().rev() {
            let _ = write!(area, "{:.1},{:.1} ", x(s.at as f64), y(s.min));
        }
        let _ = writeln!(
            svg,
            r##"<polygon class="range" points="{}" fill="#1f77b4" fill-opacity="0.2" stroke="none"/>"##,
            area.trim_end()
        );
        let line: Vec<String> = data
            .samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.at as f64), y(s.mean)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline id="temperature" points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##,
            line.join(" ")
        );
    }
    // Temperature axis.
    let step = ((hi - lo) / 8.0).ceil().max(1.0);
    let mut c = lo;
    while c <= hi + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{c} °C</text>"##,
            LEFT + plot_w,
            y(c),
            y(c),
            LEFT - 6.0,
            y(c) + 4.0
        );
        c += step;
    }
    // Day axis.
    let days = ((end - start) / 86_400.0).round() as i64;
    let every = (days / 10).max(1);
    let mut date = data.from;
    for i in 0..=days {
        let at = start + i as f64 * 86_400.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{TOP}" y2="{1:.1}" stroke="#eeeeee"/>"##,
            x(at),
            TOP + plot_h
        );
        if i % every == 0 && i < days {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">{date}</text>"#,
                x(at) + 2.0,
                TOP + plot_h + 16.0
            );
        }
        date = date.next_day().unwrap_or(date);
    }
    svg.push_str("</svg>\n");
    svg
}
