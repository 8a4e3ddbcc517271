//! The SVG figures of a report.

use std::fmt::Write;

/// The series colours, in order (matplotlib's first eight); the page draws with the same.
pub const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

/// A line plot as a standalone SVG. Non-finite points break a line; `log_x`/`log_y` plot
/// log10 of the values.
pub fn svg_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
    log_y: bool,
) -> String {
    let (w, h, l, r, t, b) = (720.0, 420.0, 70.0, 180.0, 36.0, 48.0);
    let tx = |x: f64| if log_x { x.log10() } else { x };
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, y)| (tx(x), ty(y))))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        w / 2.0,
        escape(title)
    );
    if pts.is_empty() {
        svg.push_str("<text x=\"50%\" y=\"50%\" text-anchor=\"middle\">no finite data</text>\n</svg>\n");
        return svg;
    }
    let (mut x0, mut x1, mut y0, mut y1) =
        pts.iter().fold((f64::MAX, f64::MIN, f64::MAX, f64::MIN), |(a, b, c, d), &(x, y)| {
            (a.min(x), b.max(x), c.min(y), d.max(y))
        });
    if x1 - x0 < 1e-12 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| t + (1.0 - (y - y0) / (y1 - y0)) * (h - t - b);
    let _ = writeln!(svg, "<path d=\"M{l} {t} V{} H{}\" stroke=\"#888\" fill=\"none\"/>", h - b, w - r);
    for i in 0..=4 {
        let (fx, fy) = (x0 + (x1 - x0) * i as f64 / 4.0, y0 + (y1 - y0) * i as f64 / 4.0);
        let label = |v: f64, log: bool, span: f64| match (log, span >= 10.0) {
            (true, _) => format!("{:.0e}", 10f64.powf(v)),
            (false, true) => format!("{v:.0}"),
            (false, false) => format!("{v:.3}"),
        };
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            px(fx),
            h - b + 16.0,
            label(fx, log_x, x1 - x0)
        );
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            l - 6.0,
            py(fy) + 4.0,
            label(fy, log_y, y1 - y0)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        l + (w - l - r) / 2.0,
        h - 8.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>",
        h / 2.0,
        h / 2.0,
        escape(y_label)
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut d = String::new();
        let mut pen_down = false;
        for &(x, y) in points {
            let (x, y) = (tx(x), ty(y));
            if !(x.is_finite() && y.is_finite()) {
                pen_down = false;
                continue;
            }
            let _ = write!(d, "{}{:.1} {:.1} ", if pen_down { "L" } else { "M" }, px(x), py(y));
            pen_down = true;
        }
        let _ = writeln!(svg, "<path d=\"{d}\" stroke=\"{color}\" stroke-width=\"1.5\" fill=\"none\"/>");
        for &(x, y) in points
            .iter()
            .filter(|(x, y)| tx(*x).is_finite() && ty(*y).is_finite())
            .take(if points.len() <= 12 { 12 } else { 0 })
        {
            let _ =
                writeln!(svg, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"/>", px(tx(x)), py(ty(y)));
        }
        let ly = t + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"3\" fill=\"{color}\"/>",
            w - r + 12.0,
            ly - 4.0
        );
        let _ = writeln!(svg, "<text x=\"{}\" y=\"{ly}\">{}</text>", w - r + 30.0, escape(name));
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_path_per_series_and_survives_nan() {
        let s = svg_plot(
            "t",
            "x",
            "y",
            &[
                ("a".into(), vec![(0.0, 1.0), (1.0, 0.8), (2.0, f64::NAN), (3.0, 0.5), (4.0, 0.4)]),
                ("b".into(), vec![]),
            ],
            false,
            true,
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
}
