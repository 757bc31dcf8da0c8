//! A small SVG line chart (no dependencies): series of (x, y) points over shared axes, with
//! ticks, named axes, a title and a legend, for `steer eval` plots.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Style {
    /// A measured line: solid, with a dot per point.
    #[default]
    Measured,
    /// A reference level (a prompting baseline, a random control): dashed, no dots.
    Baseline,
    /// The line the others are read against (the unsteered one): black, dashed, drawn on top.
    Reference,
}

/// What a chart says around its lines.
pub struct Chart<'a> {
    pub title: &'a str,
    /// A second line under the title (the prompts, hook and prompt of the sweep).
    pub subtitle: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// Ticks only at whole numbers (layers).
    pub integer_x: bool,
}

const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Round tick values covering `lo..=hi` (whole numbers only when `integer`).
fn ticks(lo: f64, hi: f64, integer: bool) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= 7.0).unwrap_or(10.0 * mag);
    let step = if integer { step.max(1.0).round() } else { step };
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    // k * step, rounded to the step's decimals (0.6, not 0.6000000000000001).
    let decimals = (-step.log10().floor()).max(0.0) as i32 + 1;
    let round = |v: f64| (v * 10f64.powi(decimals)).round() / 10f64.powi(decimals);
    (first..=last).map(|k| round(k as f64 * step)).collect()
}

fn label(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v }; // no "-0"
    if v == v.trunc() && v.abs() < 1e6 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Charts stacked top to bottom in one SVG document.
pub fn stack(charts: &[String]) -> String {
    let (w, h) = (760.0, 440.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" viewBox="0 0 {w} {}">"#,
        h * charts.len() as f64,
        h * charts.len() as f64
    );
    s.push('\n');
    for (i, c) in charts.iter().enumerate() {
        s.push_str(&c.replacen("<svg ", &format!(r#"<svg y="{}" "#, h * i as f64), 1));
    }
    s.push_str("</svg>\n");
    s
}

/// The chart as an SVG document.
pub fn line_chart(chart: &Chart, series: &[Series]) -> String {
    let Chart { title, subtitle, x_label, y_label, integer_x } = *chart;
    let (w, h, left, right, top, bottom) = (760.0, 440.0, 70.0, 200.0, if subtitle.is_empty() { 40.0 } else { 56.0 }, 55.0);
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    if y1 - y0 < 1e-12 {
        // A flat line (every count 0, say): a unit range around it, not ticks 1e-9 apart.
        (y0, y1) = (y0 - 1.0, y1 + 1.0);
    }
    let pad = (y1 - y0) * 0.08;
    (y0, y1) = (y0 - pad, y1 + pad);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text class="title" x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#, left + pw / 2.0, esc(title));
    if !subtitle.is_empty() {
        let _ = writeln!(s, r##"<text class="subtitle" x="{}" y="40" text-anchor="middle" fill="#444">{}</text>"##, left + pw / 2.0, esc(subtitle));
    }
    for t in ticks(x0, x1, integer_x) {
        let x = sx(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 16.0,
            label(t)
        );
    }
    for t in ticks(y0, y1, false) {
        let y = sy(t);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            label(t)
        );
    }
    let _ = writeln!(s, r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##);
    let _ = writeln!(s, r#"<text class="x-label" x="{}" y="{}" text-anchor="middle">{}</text>"#, left + pw / 2.0, h - 12.0, esc(x_label));
    let _ =
        writeln!(s, r#"<text class="y-label" transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#, top + ph / 2.0, esc(y_label));
    // The reference line last, so that no other line hides it.
    let mut order: Vec<usize> = (0..series.len()).collect();
    order.sort_by_key(|&i| series[i].style == Style::Reference);
    for i in order {
        let se = &series[i];
        let color = if se.style == Style::Reference { "#000" } else { COLORS[i % COLORS.len()] };
        let dash = if se.style == Style::Measured { "" } else { r#" stroke-dasharray="6 4""# };
        let path: Vec<String> =
            se.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = writeln!(s, r#"<polyline class="series" fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#, path.join(" "));
        if se.style != Style::Baseline {
            for p in &path {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
            }
        }
        let ly = top + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            left + pw + 12.0,
            left + pw + 32.0,
            left + pw + 38.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_its_axes_and_draws_every_series() {
        let chart = Chart { title: "t", subtitle: "+\"a\" -\"b\"", x_label: "layer", y_label: "perplexity ratio", integer_x: true };
        let s = line_chart(
            &chart,
            &[
                Series { name: "a<b".into(), points: vec![(0.0, 1.0), (1.0, 0.5), (2.0, 0.75)], style: Style::Measured },
                Series { name: "unsteered".into(), points: vec![(0.0, 1.0), (2.0, 1.0)], style: Style::Reference },
                Series { name: "prompting".into(), points: vec![(0.0, 0.9), (2.0, 0.9)], style: Style::Baseline },
            ],
        );
        assert!(s.contains(r#"class="x-label""#) && s.contains(">layer</text>") && s.contains(">perplexity ratio</text>"));
        assert!(s.contains(r#"class="subtitle""#) && s.contains("+&quot;a&quot; -&quot;b&quot;"));
        assert_eq!(s.matches("<polyline").count(), 3);
        assert!(s.contains("a&lt;b"));
        // The reference line is drawn last (on top), black and dashed; baselines dashed, without dots.
        let last = s.rfind("<polyline").unwrap();
        assert!(s[last..].starts_with(r##"<polyline class="series" fill="none" stroke="#000" stroke-width="2" stroke-dasharray"##));
        assert_eq!(s.matches("<circle").count(), 3 + 2);
        assert_eq!(ticks(0.0, 1.0, false), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(ticks(3.0, 47.0, true), vec![10.0, 20.0, 30.0, 40.0]);
        assert_eq!(ticks(0.0, 2.0, true), vec![0.0, 1.0, 2.0], "layers: no 0.5 or 1.5");
        assert_eq!(ticks(0.0, 2.0, false), vec![0.0, 0.5, 1.0, 1.5, 2.0]);
        // A flat line gets a readable range: distinct tick labels, no "-0".
        let flat = line_chart(&chart, &[Series { name: "zero".into(), points: vec![(0.0, 0.0), (3.0, 0.0)], style: Style::Measured }]);
        assert!(flat.contains(">-1</text>") && flat.contains(">1</text>") && !flat.contains(">-0</text>"), "{flat}");
    }
}
