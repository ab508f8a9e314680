//! Inline SVG pictures: stacked columns over time, horizontal bars and burn
//! meters. Plain shapes with `<title>` tooltips; no script.
use std::fmt::Write;

use crate::html::escape;

/// Length of `value` on an axis where `max` takes `extent` pixels (0 when
/// `max` is 0; never beyond `extent`, never negative).
pub fn scale(value: f64, max: f64, extent: f64) -> f64 {
    if max.is_nan() || max <= 0.0 || !value.is_finite() || value <= 0.0 {
        return 0.0;
    }
    (value / max * extent).min(extent)
}

/// One stacked series.
pub struct Series<'a> {
    pub label: &'a str,
    pub color: &'a str,
    /// One value per column.
    pub values: Vec<u64>,
}

const CHART_WIDTH: f64 = 960.0;
const CHART_HEIGHT: f64 = 220.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 22.0;

/// The opening `<svg>` of a chart `width` by `height`, labelled `title`.
fn open_chart(title: &str, width: f64, height: f64) -> String {
    format!(
        "<svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {width} {height}\" width=\"100%\" \
         style=\"max-width:{width}px;background:#fff\" xmlns=\"http://www.w3.org/2000/svg\">",
        escape(title)
    )
}

/// Columns (one per time bucket), each stacking every series' value.
pub fn stacked_columns(title: &str, columns: &[String], series: &[Series<'_>]) -> String {
    let totals: Vec<u64> = (0..columns.len())
        .map(|i| series.iter().map(|s| s.values[i]).sum())
        .collect();
    let max = totals.iter().copied().max().unwrap_or(0) as f64;
    let plot = CHART_HEIGHT - BOTTOM - 8.0;
    let step = (CHART_WIDTH - LEFT) / columns.len().max(1) as f64;
    let mut out = open_chart(title, CHART_WIDTH, CHART_HEIGHT);
    let _ = write!(
        out,
        "<text x=\"4\" y=\"14\" font-size=\"11\" fill=\"#5b6475\">{}</text>\
         <line x1=\"{LEFT}\" y1=\"{plot_bottom}\" x2=\"{CHART_WIDTH}\" y2=\"{plot_bottom}\" stroke=\"#8a93a5\"/>",
        max as u64,
        plot_bottom = CHART_HEIGHT - BOTTOM
    );
    for (i, label) in columns.iter().enumerate() {
        let x = LEFT + i as f64 * step + step * 0.1;
        let mut y = CHART_HEIGHT - BOTTOM;
        for s in series {
            let value = s.values[i];
            let height = scale(value as f64, max, plot);
            if height > 0.0 {
                y -= height;
                let _ = write!(
                    out,
                    "<rect class=\"bar\" data-series=\"{}\" data-value=\"{value}\" x=\"{x:.1}\" y=\"{y:.1}\" \
                     width=\"{:.1}\" height=\"{height:.1}\" fill=\"{}\"><title>{} {}: {value}</title></rect>",
                    escape(s.label),
                    step * 0.8,
                    s.color,
                    escape(label),
                    escape(s.label)
                );
            }
        }
        // Every fourth label, so they do not overlap.
        if i % 4 == 0 {
            let _ = write!(
                out,
                "<text x=\"{x:.1}\" y=\"{}\" font-size=\"10\" fill=\"#5b6475\">{}</text>",
                CHART_HEIGHT - 6.0,
                escape(label)
            );
        }
    }
    out.push_str("</svg><p class=\"note\">");
    for s in series {
        let _ = write!(
            out,
            "<span style=\"display:inline-block;width:10px;height:10px;background:{}\"></span> {} &nbsp; ",
            s.color,
            escape(s.label)
        );
    }
    out.push_str("</p>");
    out
}

/// Horizontal bars, longest value full width: one row per `(label, value)`.
pub fn horizontal_bars(title: &str, rows: &[(String, u64)], color: &str) -> String {
    let row_height = 22.0;
    let label_width = 260.0;
    let width = 960.0;
    let height = row_height * rows.len() as f64 + 4.0;
    let max = rows.iter().map(|(_, v)| *v).max().unwrap_or(0) as f64;
    let mut out = open_chart(title, width, height);
    for (i, (label, value)) in rows.iter().enumerate() {
        let y = i as f64 * row_height + 2.0;
        let length = scale(*value as f64, max, width - label_width - 60.0);
        let _ = write!(
            out,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"12\">{}</text>\
             <rect class=\"bar\" data-value=\"{value}\" x=\"{label_width}\" y=\"{y:.1}\" width=\"{length:.1}\" \
             height=\"{:.1}\" fill=\"{color}\"><title>{}: {value}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{value}</text>",
            y + 14.0,
            escape(label),
            row_height - 6.0,
            escape(label),
            label_width + length + 6.0,
            y + 14.0
        );
    }
    out.push_str("</svg>");
    out
}

/// A burn meter: how much of a limit is used. Green below 80 %, amber up to
/// the limit, red at or beyond it (the bar is capped at the full width).
pub fn meter(used: f64, limit: f64, caption: &str) -> String {
    let width = 220.0;
    let fraction = if limit > 0.0 { used / limit } else { 0.0 };
    let length = scale(used, limit, width);
    let color = if fraction >= 1.0 {
        "#c62d3f"
    } else if fraction >= 0.8 {
        "#d98e04"
    } else {
        "#2f9e55"
    };
    // A few requests against a large limit are still use: never "0 %".
    let percent = if fraction > 0.0 && fraction < 0.005 {
        "&lt;1&nbsp;%".to_string()
    } else {
        format!("{:.0}&nbsp;%", fraction * 100.0)
    };
    format!(
        "<svg role=\"img\" aria-label=\"{caption}\" class=\"meter\" data-fraction=\"{fraction}\" viewBox=\"0 0 {width} 14\" \
         width=\"{width}\" height=\"14\" xmlns=\"http://www.w3.org/2000/svg\">\
         <rect x=\"0\" y=\"0\" width=\"{width}\" height=\"14\" fill=\"#e3e6eb\"/>\
         <rect class=\"bar\" x=\"0\" y=\"0\" width=\"{length:.1}\" height=\"14\" fill=\"{color}\"/>\
         <title>{caption}</title></svg> {percent}",
        caption = escape(caption)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_share_of_a_limit_is_shown_as_use() {
        // A quarter token of 1024: the attribute keeps the exact fraction
        // and the label does not round it away.
        let svg = meter(0.25, 1024.0, "tokens");
        assert!(svg.contains("data-fraction=\"0.000244140625\""), "{svg}");
        assert!(svg.ends_with("&lt;1&nbsp;%"), "{svg}");
        assert!(meter(0.0, 5.0, "cost").ends_with(" 0&nbsp;%"));
        assert!(meter(2.5, 5.0, "cost").ends_with(" 50&nbsp;%"));
    }

    #[test]
    fn values_scale_linearly_and_are_capped() {
        assert_eq!(scale(50.0, 100.0, 200.0), 100.0);
        assert_eq!(scale(150.0, 100.0, 200.0), 200.0);
        assert_eq!(scale(5.0, 0.0, 200.0), 0.0);
        assert_eq!(scale(-1.0, 10.0, 200.0), 0.0);
        assert_eq!(scale(f64::NAN, 10.0, 200.0), 0.0);
    }

    #[test]
    fn the_tallest_column_fills_the_plot_and_others_scale_with_it() {
        let svg = stacked_columns(
            "t",
            &["a".into(), "b".into()],
            &[Series {
                label: "Allow",
                color: "#0a0",
                values: vec![10, 5],
            }],
        );
        let plot = CHART_HEIGHT - BOTTOM - 8.0;
        assert!(svg.contains(&format!(
            "data-value=\"10\" x=\"{:.1}\"",
            LEFT + 0.0 + (CHART_WIDTH - LEFT) / 2.0 * 0.1
        )));
        assert!(svg.contains(&format!("height=\"{plot:.1}\"")));
        assert!(svg.contains(&format!("height=\"{:.1}\"", plot / 2.0)));
    }

    #[test]
    fn a_meter_turns_red_at_the_limit() {
        assert!(meter(50.0, 100.0, "x").contains("#2f9e55"));
        assert!(meter(85.0, 100.0, "x").contains("#d98e04"));
        let over = meter(130.0, 100.0, "x");
        assert!(over.contains("#c62d3f") && over.contains("width=\"220.0\""));
        assert!(over.contains("130&nbsp;%"));
    }
}
