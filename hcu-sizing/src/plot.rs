//! The plot: machines per role for the whole service against users, as a hand-written SVG.

use std::fmt::Write as _;

use crate::model::{plan, ROLES};
use crate::profile::{Capacity, Workload};
use crate::Error;

/// Points per line: enough to show every HCU step at the 1999 scale.
const SAMPLES: u64 = 480;
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
/// Dash patterns, so roles with the same count (one ustore and one mserv per HCU) stay visible.
const DASHES: [&str; 5] = ["none", "none", "none", "7 5", "none"];

/// The service's machines per role at each sampled number of users, from `max_users / SAMPLES`
/// (at least 1) to `max_users`. The workload keeps its per-user rates at every size.
pub fn series(w: &Workload, c: &Capacity, max_users: u64) -> Result<Vec<(u64, [u64; 5])>, Error> {
    let samples = SAMPLES.min(max_users);
    let mut points = Vec::with_capacity(samples as usize);
    for i in 1..=samples {
        let users = (max_users as u128 * i as u128 / samples as u128).max(1) as u64;
        let p = plan(&w.scaled_to(users as f64), c)?;
        let m = p.service_machines.entries().map(|(_, n)| n);
        points.push((users, m));
    }
    Ok(points)
}

/// A tick step of 1, 2 or 5 × 10^k giving at most about `count` ticks up to `max`.
pub fn tick_step(max: f64, count: f64) -> f64 {
    let raw = (max / count).max(f64::MIN_POSITIVE);
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|k| k * base)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * base)
}

/// A users axis label: `0`, `500K`, `10M`, `1.5M`.
fn users_label(v: f64) -> String {
    let (scaled, unit) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "K")
    } else {
        (v, "")
    };
    let text = format!("{scaled:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{unit}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG document: axes with ticks and labels, a legend, and one polyline per role.
pub fn svg(w: &Workload, c: &Capacity, max_users: u64, title: &str) -> Result<String, Error> {
    if max_users == 0 {
        return Err(Error::Impossible("--max-users must be > 0".to_string()));
    }
    let points = series(w, c, max_users)?;
    let y_max_data = points
        .iter()
        .flat_map(|(_, m)| m.iter())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y_step = tick_step(y_max_data, 8.0).max(1.0);
    let y_max = (y_max_data / y_step).ceil() * y_step;
    let x_step = tick_step(max_users as f64, 8.0);
    let x_max = max_users as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + v / x_max * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and ticks.
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            v
        );
        v += y_step;
    }
    let mut v = 0.0;
    while v <= x_max * (1.0 + 1e-9) {
        let xx = x(v);
        let _ = writeln!(
            o,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="black"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 5.0,
            TOP + plot_h + 19.0,
            users_label(v)
        );
        v += x_step;
    }
    // Axes and their labels.
    let _ = writeln!(
        o,
        r#"<path class="axis" d="M {LEFT} {TOP} V {:.1} H {:.1}" fill="none" stroke="black"/>"#,
        TOP + plot_h,
        LEFT + plot_w
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">users (whole service)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        o,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">machines (whole service)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // One line per role, and the legend.
    for (i, role) in ROLES.iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .map(|(u, m)| format!("{:.1},{:.1}", x(*u as f64), y(m[i] as f64)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline class="role" data-role="{role}" points="{}" fill="none" stroke="{}" stroke-width="2" stroke-dasharray="{}"/>"#,
            pts.join(" "),
            COLOURS[i],
            DASHES[i]
        );
        let ly = TOP + 14.0 + i as f64 * 20.0;
        let lx = LEFT + plot_w + 16.0;
        let last = points.last().map_or(0, |(_, m)| m[i]);
        let _ = writeln!(
            o,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3" stroke-dasharray="{}"/><text x="{:.1}" y="{:.1}">{role} ({last})</text>"#,
            lx + 22.0,
            COLOURS[i],
            DASHES[i],
            lx + 28.0,
            ly + 4.0
        );
    }
    let _ = writeln!(o, "</svg>");
    Ok(o)
}
