//! Line charts as hand-written SVG: a latency CDF, a drain's progress over time. No plotting
//! crate: a few axes, polylines and labels are all a reader needs.

use std::fmt::Write as _;

use crate::stats::{Summary, percentile_index};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 64.0;
const BOTTOM: f64 = 56.0;
/// Height of one lane of bands.
const LANE_HEIGHT: f64 = 12.0;

/// Colours that stay apart for colour-blind readers (Okabe–Ito).
pub const BLUE: &str = "#0072B2";
pub const ORANGE: &str = "#E69F00";
pub const GREEN: &str = "#009E73";
pub const PURPLE: &str = "#CC79A7";
pub const GREY: &str = "#777777";
pub const RED: &str = "#D55E00";

pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// A labelled point (a percentile, a target).
pub struct Marker {
    pub x: f64,
    pub y: f64,
    pub label: String,
    pub color: &'static str,
}

/// A dashed reference line across the plot (a target), vertical at `x` or horizontal at `y`.
pub struct Guide {
    pub x: Option<f64>,
    pub y: Option<f64>,
    pub label: String,
    pub color: &'static str,
}

impl Guide {
    /// The target as a red vertical line at `x`.
    pub fn target(x: f64, label: impl Into<String>) -> Self {
        Self {
            x: Some(x),
            y: None,
            label: label.into(),
            color: RED,
        }
    }

    /// The 99th percentile as a grey horizontal line on a CDF.
    pub fn p99() -> Self {
        Self {
            x: None,
            y: Some(99.0),
            label: "99%".into(),
            color: GREY,
        }
    }
}

/// A stretch of time in one lane above the curves (a fault's window; an instant when
/// `x0 == x1`).
pub struct Band {
    pub x0: f64,
    pub x1: f64,
    pub lane: usize,
    pub color: &'static str,
}

#[derive(Default)]
pub struct Chart {
    pub title: String,
    pub subtitle: String,
    pub x_label: String,
    pub y_label: String,
    /// Axis ranges start at 0 and end here.
    pub x_max: f64,
    pub y_max: f64,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
    pub guides: Vec<Guide>,
    /// Names of the lanes drawn at the top of the plot, first at the top; `bands` refer to them.
    pub lanes: Vec<String>,
    pub bands: Vec<Band>,
}

/// The empirical CDF of `values` as (value, % at or below) points, at most ~1,000 of them.
pub fn cdf_points(values: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return Vec::new();
    }
    v.sort_by(f64::total_cmp);
    let steps = v.len().min(1000);
    let mut points = vec![(v[0], 0.0)];
    for k in 1..=steps {
        let idx = percentile_index(v.len(), k as f64 / steps as f64);
        points.push((v[idx], 100.0 * (idx + 1) as f64 / v.len() as f64));
    }
    points
}

/// Labelled points at the given percentiles (50, 90 or 99) of a latency CDF, the value in ms
/// to `decimals` places.
pub fn percentile_markers(
    s: Option<Summary>,
    percentiles: &[u8],
    decimals: usize,
    color: &'static str,
) -> Vec<Marker> {
    let Some(s) = s else { return Vec::new() };
    percentiles
        .iter()
        .filter_map(|p| {
            let v = match p {
                50 => s.p50,
                90 => s.p90,
                99 => s.p99,
                _ => return None,
            };
            Some(Marker {
                x: v,
                y: f64::from(*p),
                label: format!("p{p} {v:.decimals$} ms"),
                color,
            })
        })
        .collect()
}

/// A running count over time: (0, 0), then (t, n) for the n-th of `times`, thinned to `max`
/// points.
pub fn cumulative(mut times: Vec<f64>, max: usize) -> Vec<(f64, f64)> {
    times.sort_by(f64::total_cmp);
    let points: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(times.iter().enumerate().map(|(i, t)| (*t, (i + 1) as f64)))
        .collect();
    thin(&points, max)
}

/// At most `max` points of a curve, evenly picked (the last one kept).
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let step = (points.len() - 1) as f64 / (max - 1) as f64;
    (0..max)
        .map(|i| points[((i as f64 * step).round() as usize).min(points.len() - 1)])
        .collect()
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `ticks` intervals over `0..max`.
fn tick_step(max: f64, ticks: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / ticks;
    let magnitude = 10f64.powf(raw.log10().floor());
    let residual = raw / magnitude;
    let nice = if residual <= 1.0 {
        1.0
    } else if residual <= 2.0 {
        2.0
    } else if residual <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn tick_label(v: f64) -> String {
    if v >= 10_000.0 {
        crate::report::thousands(v)
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The plot area and its scales: data coordinates to pixels.
#[derive(Clone, Copy)]
struct Frame {
    plot_w: f64,
    plot_h: f64,
    x_max: f64,
    y_max: f64,
}

impl Frame {
    fn of(chart: &Chart) -> Self {
        Self {
            plot_w: WIDTH - LEFT - RIGHT,
            plot_h: HEIGHT - TOP - BOTTOM,
            x_max: if chart.x_max > 0.0 { chart.x_max } else { 1.0 },
            y_max: if chart.y_max > 0.0 { chart.y_max } else { 1.0 },
        }
    }

    fn sx(&self, x: f64) -> f64 {
        LEFT + (x.clamp(0.0, self.x_max) / self.x_max) * self.plot_w
    }

    fn sy(&self, y: f64) -> f64 {
        TOP + self.plot_h - (y.clamp(0.0, self.y_max) / self.y_max) * self.plot_h
    }
}

/// The chart as an SVG document, drawn in layers: grid, curves, guides, markers, lanes,
/// legend (later layers on top).
pub fn render(chart: &Chart) -> String {
    let f = Frame::of(chart);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>
<text x="{LEFT}" y="44" fill="{GREY}">{}</text>
"#,
        escape(&chart.title),
        escape(&chart.subtitle)
    );
    grid(&mut svg, chart, f);
    series(&mut svg, chart, f);
    guides(&mut svg, chart, f);
    markers(&mut svg, chart, f);
    lanes(&mut svg, chart, f);
    legend(&mut svg, chart, f);
    svg.push_str("</svg>\n");
    svg
}

/// The grid with its ticks, the plot's frame and the axis labels.
fn grid(svg: &mut String, chart: &Chart, f: Frame) {
    let Frame {
        plot_w,
        plot_h,
        x_max,
        y_max,
    } = f;
    let sx = |x: f64| f.sx(x);
    let sy = |y: f64| f.sy(y);
    // Grid and ticks.
    let xs = tick_step(x_max, 10.0);
    let mut x = 0.0;
    while x <= x_max + xs * 1e-6 {
        let px = sx(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eeeeee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            tick_label(x)
        );
        x += xs;
    }
    let ys = tick_step(y_max, 8.0);
    let mut y = 0.0;
    while y <= y_max + ys * 1e-6 {
        let py = sy(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eeeeee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 8.0,
            py + 4.0,
            tick_label(y)
        );
        y += ys;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333333"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>
<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0,
        escape(&chart.x_label),
        TOP + plot_h / 2.0,
        escape(&chart.y_label)
    );
}

/// The curves.
fn series(svg: &mut String, chart: &Chart, f: Frame) {
    let sx = |x: f64| f.sx(x);
    let sy = |y: f64| f.sy(y);
    for s in &chart.series {
        if s.points.is_empty() {
            continue;
        }
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            s.color,
            pts.join(" ")
        );
    }
}

/// The reference lines (targets, the 99% line).
fn guides(svg: &mut String, chart: &Chart, f: Frame) {
    let Frame { plot_w, plot_h, .. } = f;
    let sx = |x: f64| f.sx(x);
    let sy = |y: f64| f.sy(y);
    for g in &chart.guides {
        if let Some(x) = g.x {
            let px = sx(x);
            // The label goes left of the line, or right of it when the line is near the left edge.
            let (anchor, lx) = if px < LEFT + 160.0 {
                ("start", px + 4.0)
            } else {
                ("end", px - 4.0)
            };
            let _ = writeln!(
                svg,
                r#"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="{c}" stroke-dasharray="3 3"/><text x="{lx:.1}" y="{:.1}" text-anchor="{anchor}" fill="{c}">{}</text>"#,
                TOP + plot_h,
                TOP + plot_h - 6.0,
                escape(&g.label),
                c = g.color,
            );
        }
        if let Some(y) = g.y {
            let py = sy(y);
            let _ = writeln!(
                svg,
                r#"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="{c}" stroke-dasharray="3 3"/><text x="{:.1}" y="{:.1}" fill="{c}">{}</text>"#,
                LEFT + plot_w,
                LEFT + 4.0,
                py + 14.0,
                escape(&g.label),
                c = g.color,
            );
        }
    }
}

/// The labelled points.
fn markers(svg: &mut String, chart: &Chart, f: Frame) {
    let Frame { plot_w, plot_h, .. } = f;
    let sx = |x: f64| f.sx(x);
    let sy = |y: f64| f.sy(y);
    for m in &chart.markers {
        let (px, py) = (sx(m.x), sy(m.y));
        // Left of the point in the right third of the plot, below it near the top, so labels
        // stay inside and off the curve's flat top.
        let (anchor, dx) = if px > LEFT + plot_w * 0.66 {
            ("end", -7.0)
        } else {
            ("start", 7.0)
        };
        let dy = if py < TOP + plot_h * 0.08 { 16.0 } else { 4.0 };
        let _ = writeln!(
            svg,
            r#"<circle cx="{px:.1}" cy="{py:.1}" r="4" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="{anchor}" fill="{}">{}</text>"#,
            m.color,
            px + dx,
            py + dy,
            m.color,
            escape(&m.label)
        );
    }
}

/// The lanes of bands above the curves.
fn lanes(svg: &mut String, chart: &Chart, f: Frame) {
    let sx = |x: f64| f.sx(x);
    // Lanes at the top of the plot: the bands as translucent bars (at least 2 px wide, so an
    // instant shows), then each lane's name on a white halo so a bar under it stays readable.
    for b in &chart.bands {
        let y = TOP + 4.0 + LANE_HEIGHT * b.lane as f64;
        let (x0, x1) = (sx(b.x0), sx(b.x1.max(b.x0)));
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="0.7"/>"#,
            x0,
            y + 1.0,
            (x1 - x0).max(2.0),
            LANE_HEIGHT - 2.0,
            b.color
        );
    }
    for (i, name) in chart.lanes.iter().enumerate() {
        let y = TOP + 4.0 + LANE_HEIGHT * i as f64;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="9" fill="{GREY}" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
            LEFT + 4.0,
            y + LANE_HEIGHT - 3.0,
            escape(name)
        );
    }
}

/// The legend of the curves.
fn legend(svg: &mut String, chart: &Chart, f: Frame) {
    let Frame { plot_w, plot_h, .. } = f;
    // Legend, bottom right of the plot, on white so a curve passing behind it stays readable.
    let legend_y = TOP + plot_h - 14.0 - 18.0 * chart.series.len() as f64;
    if !chart.series.is_empty() {
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="326" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#cccccc"/>"##,
            LEFT + plot_w - 336.0,
            legend_y - 14.0,
            18.0 * chart.series.len() as f64 + 10.0
        );
    }
    for (i, s) in chart.series.iter().enumerate() {
        let y = legend_y + 18.0 * i as f64;
        let x = LEFT + plot_w - 330.0;
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 24.0,
            s.color,
            x + 30.0,
            y + 4.0,
            escape(&s.name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_ends_at_100_percent() {
        let v: Vec<f64> = (1..=5000).map(f64::from).collect();
        let p = cdf_points(&v);
        assert!(p.len() <= 1001);
        assert_eq!(p.last().copied(), Some((5000.0, 100.0)));
        assert_eq!(p.first().copied(), Some((1.0, 0.0)));
        assert!(cdf_points(&[]).is_empty());
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(tick_step(1000.0, 10.0), 100.0);
        assert_eq!(tick_step(1300.0, 10.0), 200.0);
        assert_eq!(tick_step(100.0, 8.0), 20.0);
        assert_eq!(tick_step(0.0, 8.0), 1.0);
    }

    #[test]
    fn renders_well_formed_svg() {
        let chart = Chart {
            title: "a < b & c".into(),
            subtitle: String::new(),
            x_label: "ms".into(),
            y_label: "%".into(),
            x_max: 1200.0,
            y_max: 100.0,
            series: vec![Series {
                name: "observed".into(),
                color: BLUE,
                points: cdf_points(&[100.0, 200.0, 300.0]),
                dashed: false,
            }],
            markers: vec![Marker {
                x: 300.0,
                y: 99.0,
                label: "p99".into(),
                color: BLUE,
            }],
            guides: vec![Guide {
                x: Some(1000.0),
                y: None,
                label: "target".into(),
                color: RED,
            }],
            lanes: vec!["outage".into()],
            bands: vec![Band {
                x0: 100.0,
                x1: 300.0,
                lane: 0,
                color: ORANGE,
            }],
        };
        let svg = render(&chart);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt; b &amp; c"));
        assert!(svg.contains("<polyline") && svg.contains("target"));
        assert_eq!(thin(&[(0.0, 0.0); 10], 3).len(), 3);
    }
}
