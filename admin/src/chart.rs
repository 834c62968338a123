//! The dashboard's spend chart: an SVG of spend per day over a month, drawn on the server.

use std::fmt::Write;

use domain::Money;
use time::Date;

/// Width and height of the drawing area, in SVG units (the SVG scales to its container).
const WIDTH: u32 = 620;
const HEIGHT: u32 = 160;
const MARGIN_BOTTOM: u32 = 18;

/// Draws one bar per day of the month starting at `first_day`, `n_days` long.
pub fn daily_spend_svg(first_day: Date, n_days: u8, spend: &[(Date, Money)]) -> String {
    let max = spend
        .iter()
        .map(|(_, money)| money.nanos())
        .max()
        .unwrap_or(0)
        .max(1);
    let slot = WIDTH / u32::from(n_days.max(1));
    let bar_width = slot.saturating_sub(2).max(1);
    let plot_height = HEIGHT - MARGIN_BOTTOM;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="spend per day this month" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(
        svg,
        r#"<line x1="0" y1="{plot_height}" x2="{WIDTH}" y2="{plot_height}" class="axis"/>"#
    );
    for day in 0..n_days {
        let date = first_day + time::Duration::days(i64::from(day));
        let nanos = spend
            .iter()
            .find(|(d, _)| *d == date)
            .map(|(_, m)| m.nanos())
            .unwrap_or(0);
        let x = u32::from(day) * slot + 1;
        // Integer arithmetic: a bar's height is its share of the tallest day.
        let height = ((i128::from(nanos) * i128::from(plot_height)) / i128::from(max)) as u32;
        let y = plot_height - height;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{y}" width="{bar_width}" height="{height}" class="bar"><title>{date}: {}</title></rect>"#,
            Money::from_nanos(nanos)
        );
        if day == 0 || (day + 1) % 5 == 0 {
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" class="label">{}</text>"#,
                x,
                HEIGHT - 4,
                day + 1
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn tallest_day_fills_the_plot_and_empty_days_are_flat() {
        let svg = daily_spend_svg(
            date!(2026 - 11 - 01),
            30,
            &[
                (date!(2026 - 11 - 02), Money::from_nanos(500)),
                (date!(2026 - 11 - 03), Money::from_nanos(1_000)),
            ],
        );
        assert_eq!(svg.matches("<rect").count(), 30);
        assert!(
            svg.contains(r#"height="142" class="bar"><title>2026-11-03: $0.000001</title>"#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"height="71" class="bar"><title>2026-11-02"#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"height="0" class="bar"><title>2026-11-01: $0.00</title>"#),
            "{svg}"
        );
    }
}
