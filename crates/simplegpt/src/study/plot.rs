//! The SVG figures of a report, drawn like a paper's: round ticks with a light grid, a
//! legend beside the axes, a y-range that shows where the curves differ, and the spread
//! over seeds as a shaded band.
//!
//! Hand-written rather than a plotting crate: it is a few hundred lines, a plotting crate
//! would add to a build that burn already makes long, and the rules below (the y-range,
//! non-finite points breaking a line) are ours either way. The file passes 500 lines only
//! with its tests (a third of it: the tick rules are worth testing one range at a time).
//!
//! The steps, in `svg_plot`'s order: map the data to plotted units (log10 on a log axis),
//! choose the ranges (`y_range`), the ticks (`linear_ticks`, `log_ticks`) and the margins
//! that fit their labels and the legend; then draw grid, bands, lines, axes, legend and
//! notes.

use std::fmt::Write;

/// The series colours, in order (matplotlib's first eight); the page draws with the same.
pub const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

/// One curve of a plot, and optionally a band around it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub name: String,
    /// (x, y); a non-finite point breaks the line.
    pub points: Vec<(f64, f64)>,
    /// (x, low, high), drawn as a translucent area in the line's colour (e.g. the spread
    /// over seeds); empty for none. A non-finite low or high breaks it.
    pub band: Vec<(f64, f64, f64)>,
}

impl Series {
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points, band: Vec::new() }
    }
}

/// What a figure says around its curves.
#[derive(Debug, Clone, Default)]
pub struct Figure<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// Plot log10 of the values on this axis.
    pub log_x: bool,
    pub log_y: bool,
    /// For curves over training steps: the untrained start does not set the top of the
    /// y-axis (see `y_range`).
    pub skip_start: bool,
    /// A line under the plot, e.g. what a band means.
    pub caption: Option<&'a str>,
}

/// The share of the x-range at the start of a curve that `skip_start` leaves out of the
/// top of the y-axis.
pub const START: f64 = 0.1;

/// The size of the axes' area in pixels; the margins around it grow to fit the labels.
const PLOT_W: f64 = 520.0;
const PLOT_H: f64 = 300.0;
/// Rough width of a character at the 12px font size, for sizing margins (a little wide:
/// too wide wastes a few pixels, too narrow cuts a name off).
const CHAR_W: f64 = 7.2;

/// A line plot as a standalone SVG. Non-finite points break a line (and a band) and are
/// never written as coordinates; on a log axis, points at or below zero count as
/// non-finite.
pub fn svg_plot(fig: &Figure, series: &[Series]) -> String {
    // 1. Every finite point in plotted units, bands included, to fit the ranges to.
    let tx = |x: f64| if fig.log_x { x.log10() } else { x };
    let ty = |y: f64| if fig.log_y { y.log10() } else { y };
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| {
            let band = s.band.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]);
            s.points.iter().copied().chain(band)
        })
        .map(|(x, y)| (tx(x), ty(y)))
        .filter(finite)
        .collect();

    // 2. Ranges and ticks. The x-range holds every point; the y-range follows `y_range`.
    let (x0, x1) = widen(pts.iter().map(|p| p.0).fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x))));
    let (x0, x1) = (x0 - 0.03 * (x1 - x0), x1 + 0.03 * (x1 - x0));
    let y = y_range(&pts, fig.skip_start);
    let ticks = |lo, hi, log| if log { log_ticks(lo, hi) } else { linear_ticks(lo, hi) };
    let (x_ticks, y_ticks) = (ticks(x0, x1, fig.log_x), ticks(y.lo, y.hi, fig.log_y));

    // 3. Notes under the plot: the caller's caption, and what the y-range cut off.
    let mut notes: Vec<String> = fig.caption.iter().map(|c| c.to_string()).collect();
    if let Some(reach) = y.cut_above {
        let un = |v: f64, log: bool| if log { 10f64.powf(v) } else { v };
        notes.push(format!(
            "y-axis cut at {} to show where the curves differ; before {} {} they reach {}.",
            short(un(y.hi, fig.log_y)),
            fig.x_label,
            short(un(y.start_end, fig.log_x)),
            short(un(reach, fig.log_y))
        ));
    }

    // 4. Margins that fit the y tick labels (left), the legend (right) and the notes.
    let longest = |labels: &mut dyn Iterator<Item = usize>| labels.max().unwrap_or(0) as f64;
    let l = 34.0 + 6.5 * longest(&mut y_ticks.iter().map(|t| t.label.len()));
    let r = 60.0 + CHAR_W * longest(&mut series.iter().map(|s| s.name.chars().count()));
    let (t, b) = (40.0, 50.0 + 16.0 * notes.len() as f64);
    let area = Area { l, t, x0, x1, y0: y.lo, y1: y.hi };
    let (w, h) = (l + PLOT_W + r, t + PLOT_H + b);

    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" font-size=\"14\" text-anchor=\"middle\">{}</text>\n",
        l + PLOT_W / 2.0,
        escape(fig.title)
    );
    if pts.is_empty() {
        let _ = writeln!(svg, "<text x=\"50%\" y=\"50%\" text-anchor=\"middle\">no finite data</text>\n</svg>");
        return svg;
    }

    // 5. Grid and tick labels, under the data.
    draw_ticks(&mut svg, &area, &x_ticks, &y_ticks);

    // 6. The data, clipped to the axes' area so that what lies above a cut y-axis runs to
    // the top edge. The clip's id names its rectangle, so two figures inlined in one page
    // that share an id also share the rectangle.
    let clip = format!("area-{l}-{t}");
    let _ = writeln!(
        svg,
        "<clipPath id=\"{clip}\"><rect x=\"{l}\" y=\"{t}\" width=\"{PLOT_W}\" height=\"{PLOT_H}\"/></clipPath>\n\
         <g clip-path=\"url(#{clip})\">"
    );
    let proj = |x: f64, y: f64| (area.px(tx(x)), area.py(ty(y)));
    for (i, s) in series.iter().enumerate() {
        draw_band(&mut svg, &s.band, COLORS[i % COLORS.len()], proj);
    }
    for (i, s) in series.iter().enumerate() {
        draw_line(&mut svg, &s.points, COLORS[i % COLORS.len()], proj);
    }
    svg.push_str("</g>\n");

    // 7. Axes on top: a frame around the area; then the labels, legend and notes.
    let _ =
        writeln!(svg, "<path d=\"M{l} {t} H{} V{} H{l} Z\" stroke=\"#333\" fill=\"none\"/>", l + PLOT_W, t + PLOT_H);
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        l + PLOT_W / 2.0,
        t + PLOT_H + 38.0,
        escape(fig.x_label)
    );
    let (lx, ly) = (16.0, t + PLOT_H / 2.0);
    let _ = writeln!(
        svg,
        "<text x=\"{lx}\" y=\"{ly}\" transform=\"rotate(-90 {lx} {ly})\" text-anchor=\"middle\">{}</text>",
        escape(fig.y_label)
    );
    draw_legend(&mut svg, l + PLOT_W + 16.0, t + 8.0, series);
    for (i, note) in notes.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<text x=\"{l}\" y=\"{}\" font-size=\"11\" fill=\"#555\">{}</text>",
            t + PLOT_H + 62.0 + 16.0 * i as f64,
            escape(note)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The axes' area on the page and the data ranges it shows (in plotted units).
struct Area {
    l: f64,
    t: f64,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

/// Pixel coordinates are kept within this distance of the page: a point far outside the
/// area is clipped from view anyway, and a loss of 1e30 would otherwise print 30 digits.
const FAR: f64 = 1e5;

impl Area {
    fn px(&self, x: f64) -> f64 {
        (self.l + (x - self.x0) / (self.x1 - self.x0) * PLOT_W).clamp(-FAR, FAR)
    }
    fn py(&self, y: f64) -> f64 {
        (self.t + (1.0 - (y - self.y0) / (self.y1 - self.y0)) * PLOT_H).clamp(-FAR, FAR)
    }
}

/// A plotted y-range: `lo` to `hi` (in plotted units); `cut_above`: how high the points
/// above `hi` reach, if any are; `start_end`: the first x of the points that set the top
/// (every point before it lies in the start that `skip_start` leaves out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YRange {
    pub lo: f64,
    pub hi: f64,
    pub cut_above: Option<f64>,
    pub start_end: f64,
}

/// The y-range of finite points (x, y): from the lowest point to the highest, plus 5% of
/// that span on each side. With `skip_start`, the highest point is taken only among the
/// points past the first `START` (10%) of the x-range: a loss curve's untrained start is
/// far above where the variants differ and would squash them into a few pixels. What lies
/// above is cut off at the top edge, and `cut_above` says how high it reaches. Nothing is
/// cut without `skip_start`, and the bottom is never cut.
pub fn y_range(pts: &[(f64, f64)], skip_start: bool) -> YRange {
    let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let threshold = x0 + START * (x1 - x0);
    let start_end = pts.iter().map(|p| p.0).filter(|&x| x >= threshold).fold(f64::MAX, f64::min);
    let max = |keep: &dyn Fn(f64) -> bool| pts.iter().filter(|p| keep(p.0)).map(|p| p.1).fold(f64::MIN, f64::max);
    let all_max = max(&|_| true);
    let top = if skip_start { max(&|x| x >= start_end) } else { all_max };
    let (lo, hi) = widen((pts.iter().map(|p| p.1).fold(f64::MAX, f64::min), top));
    let pad = 0.05 * (hi - lo);
    let (lo, hi) = (lo - pad, hi + pad);
    YRange { lo, hi, cut_above: (all_max > hi).then_some(all_max), start_end }
}

/// A range of zero width (one value) widened to show that value in the middle; an empty
/// one (no points) made 0 to 1.
fn widen((lo, hi): (f64, f64)) -> (f64, f64) {
    if lo > hi {
        (0.0, 1.0)
    } else if hi - lo < 1e-12 * hi.abs().max(1e-300) {
        let d = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
        (lo - d, hi + d)
    } else {
        (lo, hi)
    }
}

/// A tick on an axis: where it is, in plotted units (log10 of the value on a log axis), and
/// its label.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub at: f64,
    pub label: String,
}

/// At most about this many intervals between the ticks of an axis.
const MAX_INTERVALS: f64 = 8.0;

/// Round ticks from `lo` to `hi`: the multiples of the smallest 1-2-5 step (…, 0.1, 0.2,
/// 0.5, 1, 2, 5, 10, …) that leaves at most `MAX_INTERVALS` intervals, labelled with as
/// many decimals as the step has (3.8, 4.0, 4.2; 0, 500, 1000).
pub fn linear_ticks(lo: f64, hi: f64) -> Vec<Tick> {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return Vec::new();
    }
    let mag = 10f64.powf((span / MAX_INTERVALS).log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].map(|m| m * mag).into_iter().find(|s| span / s <= MAX_INTERVALS + 1e-9);
    let step = step.unwrap_or(10.0 * mag);
    let decimals = (-step.log10() - 1e-9).ceil().max(0.0) as usize;
    // Tick k is at k * step, a multiple (not a running sum, whose rounding errors add up).
    let (first, last) = ((lo / step - 1e-9).ceil() as i64, (hi / step + 1e-9).floor() as i64);
    (first..=last)
        .map(|k| {
            let at = k as f64 * step + 0.0; // + 0.0: no "-0.0"
            Tick { at, label: format!("{at:.decimals$}") }
        })
        .collect()
}

/// Ticks on a log axis from 10^`lo` to 10^`hi`: powers of ten, or every second (third, …)
/// power where there are more than eight; with 2 and 5 between them where the powers alone
/// would be fewer than four (a grid line per decade is too sparse to read a value off); over less than a decade, `linear_ticks` of the values
/// (2.0, 2.5, 3.0 on a loss axis). Labels like 0.001 where every exponent is within ±3,
/// else like 1e-5.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<Tick> {
    if hi - lo < 1.0 {
        let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
        return linear_ticks(a, b).into_iter().filter(|t| t.at > 0.0).map(|t| Tick { at: t.at.log10(), ..t }).collect();
    }
    // (mantissa, exponent) of each tick in the range.
    let in_range = |mantissas: &[f64], every: i32| -> Vec<(f64, i32)> {
        let exponents = (lo.floor() as i32..=hi.ceil() as i32).filter(|e| e.rem_euclid(every) == 0);
        let ticks = exponents.flat_map(|e| mantissas.iter().map(move |&m| (m, e)));
        ticks.filter(|&(m, e)| (lo - 1e-9..=hi + 1e-9).contains(&(m.log10() + e as f64))).collect()
    };
    let every = ((hi - lo) / 8.0).ceil().max(1.0) as i32;
    let mut ticks = in_range(&[1.0], every);
    if ticks.len() < 4 {
        ticks = in_range(&[1.0, 2.0, 5.0], 1);
    }
    let plain = ticks.iter().all(|&(_, e)| (-3..=3).contains(&e));
    let label = |m: f64, e: i32| {
        if plain { format!("{:.*}", (-e).max(0) as usize, m * 10f64.powi(e)) } else { format!("{m}e{e}") }
    };
    ticks.into_iter().map(|(m, e)| Tick { at: m.log10() + e as f64, label: label(m, e) }).collect()
}

/// A number in a note: three significant digits at most.
fn short(v: f64) -> String {
    // Rounded in decimal (through text), so that 1e30 stays 1e30 and 4.17 stays 4.17.
    let rounded: f64 = format!("{v:.2e}").parse().expect("a number");
    // Rust prints 1e30 with all its digits unless asked for an exponent.
    if v == 0.0 || (1e-3..1e5).contains(&v.abs()) { format!("{rounded}") } else { format!("{rounded:e}") }
}

/// Light grid lines across the area at each tick, short tick marks outside it, and the
/// tick labels. Lines, not paths: a figure's paths are its axes and its curves.
fn draw_ticks(svg: &mut String, a: &Area, x_ticks: &[Tick], y_ticks: &[Tick]) {
    let (r, b) = (a.l + PLOT_W, a.t + PLOT_H);
    let grid = "stroke=\"#e6e6e6\" stroke-width=\"1\"";
    let mark = "stroke=\"#333\" stroke-width=\"1\"";
    for tick in x_ticks {
        let x = a.px(tick.at);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{b}\" {grid}/>\n\
             <line x1=\"{x:.1}\" y1=\"{b}\" x2=\"{x:.1}\" y2=\"{}\" {mark}/>\n\
             <text x=\"{x:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            a.t,
            b + 4.0,
            b + 17.0,
            tick.label
        );
    }
    for tick in y_ticks {
        let y = a.py(tick.at);
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{r}\" y2=\"{y:.1}\" {grid}/>\n\
             <line x1=\"{}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" {mark}/>\n\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            a.l,
            a.l - 4.0,
            a.l,
            a.l - 7.0,
            y + 4.0,
            tick.label
        );
    }
}

/// A band as one translucent polygon per unbroken run of finite (x, low, high): along the
/// highs left to right, back along the lows.
fn draw_band(svg: &mut String, band: &[(f64, f64, f64)], color: &str, proj: impl Fn(f64, f64) -> (f64, f64)) {
    let pieces = band.split(|&(x, lo, hi)| {
        let ((a, b), (_, c)) = (proj(x, lo), proj(x, hi));
        !(a.is_finite() && b.is_finite() && c.is_finite())
    });
    for piece in pieces.filter(|p| p.len() >= 2) {
        let highs = piece.iter().map(|&(x, _, hi)| proj(x, hi));
        let lows = piece.iter().rev().map(|&(x, lo, _)| proj(x, lo));
        let points: Vec<String> = highs.chain(lows).map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            svg,
            "<polygon points=\"{}\" fill=\"{color}\" fill-opacity=\"0.2\" stroke=\"none\"/>",
            points.join(" ")
        );
    }
}

/// A curve as one path, lifting the pen at each non-finite point; and small dots at the
/// points when there are few of them (a line through 5 points hides where they are).
fn draw_line(svg: &mut String, points: &[(f64, f64)], color: &str, proj: impl Fn(f64, f64) -> (f64, f64)) {
    let finite: Vec<Option<(f64, f64)>> =
        points.iter().map(|&(x, y)| Some(proj(x, y)).filter(|(a, b)| a.is_finite() && b.is_finite())).collect();
    let mut d = String::new();
    let mut pen_down = false;
    for p in &finite {
        match p {
            Some((x, y)) => {
                let _ = write!(d, "{}{x:.1} {y:.1} ", if pen_down { "L" } else { "M" });
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    let _ = writeln!(
        svg,
        "<path d=\"{}\" stroke=\"{color}\" stroke-width=\"1.8\" stroke-linejoin=\"round\" fill=\"none\"/>",
        d.trim_end()
    );
    if points.len() <= 12 {
        for (x, y) in finite.iter().flatten() {
            let _ = writeln!(svg, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"/>");
        }
    }
}

/// The legend, in a column right of the axes (it can never cover a curve): a line in each
/// series' colour, over a shaded box where the series has a band.
fn draw_legend(svg: &mut String, x: f64, top: f64, series: &[Series]) {
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let y = top + 18.0 * i as f64;
        if !s.band.is_empty() {
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{}\" width=\"24\" height=\"12\" fill=\"{color}\" fill-opacity=\"0.2\"/>",
                y - 6.0
            );
        }
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{color}\" stroke-width=\"2\"/>\n\
             <text x=\"{}\" y=\"{}\">{}</text>",
            x + 24.0,
            x + 30.0,
            y + 4.0,
            escape(&s.name)
        );
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ticks: &[Tick]) -> Vec<&str> {
        ticks.iter().map(|t| t.label.as_str()).collect()
    }

    #[test]
    fn svg_has_a_path_per_series_and_survives_nan() {
        let fig = Figure { title: "t", x_label: "x", y_label: "y", log_y: true, ..Default::default() };
        let s = svg_plot(
            &fig,
            &[
                Series::line("a", vec![(0.0, 1.0), (1.0, 0.8), (2.0, f64::NAN), (3.0, 0.5), (4.0, 0.4)]),
                Series::line("b", vec![]),
            ],
        );
        assert_eq!(s.matches("<path").count(), 1 + 2, "axes + one per series");
        assert!(s.contains(">a</text>") && s.contains(">b</text>"));
        assert!(!s.contains("NaN") && !s.contains("inf"), "no non-finite coordinate written: {s}");
        // Series a's line breaks at its NaN: two pieces of two points, each a move and a line.
        let d = |color: &str| {
            let at = s.find(&format!("stroke=\"{color}\" stroke-width")).unwrap();
            let start = s[..at].rfind("d=\"").unwrap() + 3;
            s[start..at].trim_end().trim_end_matches('"').trim().to_string()
        };
        let a = d(COLORS[0]);
        assert_eq!((a.matches('M').count(), a.matches('L').count()), (2, 2), "{a}");
        assert!(a.starts_with('M') && a.find('L') < a.rfind('M'), "{a}");
        assert_eq!(d(COLORS[1]), "", "series b has no points");
    }

    #[test]
    fn linear_ticks_are_round_and_labelled_with_just_enough_decimals() {
        assert_eq!(labels(&linear_ticks(3.7, 4.3)), ["3.7", "3.8", "3.9", "4.0", "4.1", "4.2", "4.3"]);
        assert_eq!(labels(&linear_ticks(3.75, 4.45)), ["3.8", "3.9", "4.0", "4.1", "4.2", "4.3", "4.4"]);
        assert_eq!(labels(&linear_ticks(1.9, 3.11)), ["2.0", "2.2", "2.4", "2.6", "2.8", "3.0"]);
        assert_eq!(labels(&linear_ticks(-30.0, 1030.0)), ["0", "200", "400", "600", "800", "1000"]);
        assert_eq!(labels(&linear_ticks(0.0, 2000.0)), ["0", "500", "1000", "1500", "2000"]);
        // A tiny range: as many decimals as the step needs, no more.
        assert_eq!(labels(&linear_ticks(2.00011, 2.00039)), ["2.00015", "2.00020", "2.00025", "2.00030", "2.00035"]);
        // Across zero: no "-0.0".
        assert_eq!(labels(&linear_ticks(-0.26, 0.31)), ["-0.2", "-0.1", "0.0", "0.1", "0.2", "0.3"]);
        // Ticks lie at their labels' values, inside the range.
        for t in linear_ticks(3.75, 4.45) {
            assert!((t.at - t.label.parse::<f64>().unwrap()).abs() < 1e-12 && (3.75..=4.45).contains(&t.at));
        }
    }

    #[test]
    fn log_ticks_are_powers_of_ten_with_2_and_5_on_short_ranges() {
        let lg = |a: f64, b: f64| log_ticks(a.log10(), b.log10());
        // Learning rates over three decades: the powers, written plainly within ±3.
        assert_eq!(labels(&lg(1e-4, 1e-1)), ["1e-4", "1e-3", "1e-2", "1e-1"]);
        // Two decades and a bit: too few powers alone, so 2 and 5 between them.
        assert_eq!(labels(&lg(0.03, 13.0)), ["0.05", "0.1", "0.2", "0.5", "1", "2", "5", "10"]);
        assert_eq!(labels(&lg(1.5e-3, 0.3)), ["0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2"]);
        assert_eq!(labels(&lg(0.8e-3, 1.2)), ["0.001", "0.01", "0.1", "1"]);
        // Many decades: every second power.
        assert_eq!(labels(&lg(1e-12, 1e4)), ["1e-12", "1e-10", "1e-8", "1e-6", "1e-4", "1e-2", "1e0", "1e2", "1e4"]);
        // Less than a decade (a loss on a log axis): round values where they fall.
        let t = lg(1.9, 4.3);
        assert_eq!(labels(&t), ["2.0", "2.5", "3.0", "3.5", "4.0"]);
        assert!((t[2].at - 3f64.log10()).abs() < 1e-12);
    }

    #[test]
    fn the_untrained_start_does_not_set_the_top_and_the_cut_is_noted() {
        // A loss from 4.2 at step 0 to 2.0 at step 1000.
        let curve: Vec<(f64, f64)> =
            (0..=100).map(|i| (i as f64 * 10.0, 2.0 + 2.2 * (-(i as f64) / 8.0).exp())).collect();
        let r = y_range(&curve, true);
        assert!(r.hi < 3.0 && r.lo < 2.0, "{r:?}");
        assert!((r.cut_above.unwrap() - 4.2).abs() < 1e-12, "{r:?}");
        // Without skip_start every point is inside.
        let all = y_range(&curve, false);
        assert!(all.hi > 4.2 && all.cut_above.is_none());

        let fig = Figure { title: "loss", x_label: "step", y_label: "loss", skip_start: true, ..Default::default() };
        let s = svg_plot(&fig, &[Series::line("a", curve)]);
        assert!(s.contains("y-axis cut at 2.6") && s.contains("before step 100 they reach 4.2"), "{s}");
        assert!(s.contains("clip-path="), "the cut part runs to the edge, clipped, not dropped");
        assert!(!s.contains("NaN") && !s.contains("inf"));
        // A spike of 1e30 at the start is cut too, and written as a short coordinate.
        let spike = vec![(0.0, 1e30), (10.0, 3.0), (500.0, 2.5), (1000.0, 2.0)];
        let s = svg_plot(&fig, &[Series::line("a", spike)]);
        assert!(s.contains("they reach 1e30") && !s.contains("00000000"), "{s}");
        let s = svg_plot(&Figure { skip_start: false, ..fig }, &[Series::line("a", vec![(0.0, 4.2), (10.0, 2.0)])]);
        assert!(!s.contains("y-axis cut"));
    }

    #[test]
    fn a_band_is_a_polygon_broken_at_non_finite_values() {
        let band = vec![(0.0, 3.0, 3.4), (1.0, 2.5, 2.7), (2.0, f64::NAN, 2.0), (3.0, 1.8, 2.0), (4.0, 1.7, 1.9)];
        let s = Series { band, ..Series::line("a", vec![(0.0, 3.2), (1.0, 2.6), (3.0, 1.9), (4.0, 1.8)]) };
        let svg = svg_plot(&Figure::default(), &[s]);
        assert_eq!(svg.matches("<polygon").count(), 2);
        assert_eq!(svg.matches("<path").count(), 2, "the band adds no path");
        assert!(!svg.contains("NaN"));
        let plain = svg_plot(&Figure::default(), &[Series::line("a", vec![(0.0, 3.2), (1.0, 2.6)])]);
        assert!(!plain.contains("<polygon"));
    }
}
