//! The HTML report: one self-contained page (inline CSS and SVG plots drawn with plotters, no scripts,
//! no network) with the verdict, the tables of `report.json` and plots of latency distribution,
//! throughput, connections, live latency, CPU and memory over time.
//!
//! plotters' text needs a font: with the `ab_glyph` feature nothing is found on the system, so the
//! embedded DejaVu Sans is registered once before drawing (otherwise drawing fails with
//! `FontUnavailable`).

use crate::report::{Pcts, Report, TimePoint};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::fmt::Write as _;
use std::sync::Once;

const W: u32 = 900;
const H: u32 = 340;
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Axis labels without needless decimals: 120k, 1.5M, 0.25.
fn compact(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    if a >= 1e6 {
        trim(format!("{:.2}", v / 1e6)) + "M"
    } else if a >= 1e4 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.3}"))
    }
}

/// A named line of (x, y) points.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Draw lines on one chart; `log_y` for latency. Returns the SVG text, or a note when there is no data.
fn line_chart(title: &str, x_desc: &str, y_desc: &str, lines: &[Line], log_y: bool) -> String {
    let all: Vec<(f64, f64)> = lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .collect();
    if all.is_empty() {
        return format!("<p class=\"note\">{}: no data</p>", esc(title));
    }
    let xmin = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let mut xmax = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    let ymax = all.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9);
    let mut svg = String::new();
    let r = draw(
        &mut svg,
        title,
        x_desc,
        y_desc,
        lines,
        (xmin, xmax),
        ymax,
        log_y,
        None,
    );
    match r {
        Ok(()) => svg,
        Err(e) => format!(
            "<p class=\"note\">{}: could not draw ({})</p>",
            esc(title),
            esc(&e)
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn draw(
    svg: &mut String,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
    (xmin, xmax): (f64, f64),
    ymax: f64,
    log_y: bool,
    x_fmt: Option<&dyn Fn(&f64) -> String>,
) -> Result<(), String> {
    register_font();
    let root = SVGBackend::with_string(svg, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            {
                let mut mesh = chart.configure_mesh();
                mesh.x_desc(x_desc)
                    .y_desc(y_desc)
                    .label_style((FONT, 12))
                    .light_line_style(RGBAColor(0, 0, 0, 0.03))
                    .bold_line_style(RGBAColor(0, 0, 0, 0.15))
                    .y_label_formatter(&|v: &f64| compact(*v));
                match x_fmt {
                    Some(f) => mesh.x_label_formatter(f),
                    None => mesh.x_label_formatter(&|v: &f64| compact(*v)),
                };
                mesh.draw().map_err(|e| e.to_string())?;
            }
            for (i, l) in lines.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                chart
                    .draw_series(LineSeries::new(
                        l.points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?
                    .label(l.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
            }
            if lines.len() > 1 || !lines[0].name.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .label_font((FONT, 12))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.4))
                    .draw()
                    .map_err(|e| e.to_string())?;
            }
        }};
    }
    if log_y {
        let ymin = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min)
            .min(ymax)
            .max(1e-3);
        finish!(
            builder
                .build_cartesian_2d(xmin..xmax, (ymin * 0.8..ymax * 1.25).log_scale())
                .map_err(|e| e.to_string())?
        );
    } else {
        finish!(
            builder
                .build_cartesian_2d(xmin..xmax, 0.0..ymax * 1.1)
                .map_err(|e| e.to_string())?
        );
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// Latency by percentile, x on a "nines" scale (90 → 1, 99 → 2, 99.9 → 3 …).
fn latency_chart(report: &Report) -> String {
    let nines = |p: f64| -(1.0 - (p / 100.0).min(0.999_999_9)).log10();
    let lines = vec![Line {
        name: "all deliveries".into(),
        points: report
            .latency_distribution
            .iter()
            .map(|&(p, ms)| (nines(p), ms.max(1e-3)))
            .collect(),
    }];
    if lines[0].points.is_empty() {
        return "<p class=\"note\">latency distribution: no deliveries</p>".into();
    }
    let xmax = lines[0]
        .points
        .iter()
        .map(|p| p.0)
        .fold(0.0, f64::max)
        .max(1.0);
    let ymax = lines[0]
        .points
        .iter()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1e-3);
    let fmt = |x: &f64| {
        let p = 100.0 * (1.0 - 10f64.powf(-x));
        if p < 99.0 {
            format!("p{p:.0}")
        } else {
            format!(
                "p{}",
                format!("{p:.4}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
            )
        }
    };
    let mut svg = String::new();
    match draw(
        &mut svg,
        "Commit → client latency by percentile",
        "percentile",
        "ms (log)",
        &lines,
        (0.0, xmax),
        ymax,
        true,
        Some(&fmt),
    ) {
        Ok(()) => svg,
        Err(e) => format!("<p class=\"note\">latency chart: {}</p>", esc(&e)),
    }
}

fn series(tl: &[TimePoint], f: impl Fn(&TimePoint) -> Option<f64>) -> Vec<(f64, f64)> {
    tl.iter().filter_map(|p| f(p).map(|v| (p.t, v))).collect()
}

/// One line per process, of `f(sample)`.
fn per_process(
    tl: &[TimePoint],
    f: impl Fn(&crate::sampler::ProcSample) -> Option<f64>,
) -> Vec<Line> {
    let mut names: Vec<String> = Vec::new();
    for p in tl {
        for s in &p.procs {
            if !names.contains(&s.name) {
                names.push(s.name.clone());
            }
        }
    }
    names
        .into_iter()
        .map(|n| Line {
            points: tl
                .iter()
                .filter_map(|p| {
                    let s = p.procs.iter().find(|s| s.name == n)?;
                    f(s).map(|v| (p.t, v))
                })
                .collect(),
            name: n,
        })
        .filter(|l| !l.points.is_empty())
        .collect()
}

fn pct_row(name: &str, p: &Pcts) -> String {
    format!(
        "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
        esc(name),
        p.count,
        p.p50,
        p.p90,
        p.p99,
        p.p999,
        p.max
    )
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn mb(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.1}", v / 1e6))
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>loadtest {scenario}: {verdict}</title>
<style>
body{{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:2em auto;max-width:960px;color:#222}}
h1{{font-size:1.5em}} h2{{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}}
table{{border-collapse:collapse;margin:.5em 0}} td,th{{border:1px solid #ddd;padding:.25em .6em;text-align:right}}
td:first-child,th:first-child{{text-align:left}} .verdict{{padding:.6em 1em;border-radius:6px;font-weight:bold;font-size:1.2em}}
.pass{{background:#e3f6e3;color:#145214}} .fail{{background:#fde2e2;color:#8a1010}} .note{{color:#777}}
pre{{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.85em}} svg{{max-width:100%;height:auto}}
</style></head><body>
<h1>loadtest — scenario <code>{scenario}</code></h1>
<div class="verdict {cls}">{verdict}</div>
"#,
        scenario = esc(&r.scenario),
        verdict = verdict,
        cls = if r.passed { "pass" } else { "fail" },
    );
    if !r.failures.is_empty() {
        h.push_str("<ul>");
        for f in &r.failures {
            let _ = write!(h, "<li>{}</li>", esc(f));
        }
        h.push_str("</ul>");
    }
    let _ = write!(
        h,
        "<p>Run {} against {} · {} client process(es) · {:.1} s wall time.</p>",
        r.run_id,
        esc(&r.urls.join(", ")),
        r.client_processes,
        r.wall_seconds
    );

    // Correctness.
    let t = &r.delivery.tally;
    let _ = write!(
        h,
        "<h2>Correctness</h2><table><tr><th>subscriptions</th><th>expected</th><th>delivered</th><th>optional</th><th>missing</th><th>duplicated</th><th>out of order</th><th>unexpected</th></tr>
<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        t.subscriptions, t.expected, t.delivered, t.delivered_optional, t.missing, t.duplicated, t.out_of_order, t.unexpected
    );
    if !r.delivery.examples.is_empty() {
        h.push_str("<p>Examples:</p><pre>");
        for e in &r.delivery.examples {
            let _ = writeln!(
                h,
                "{} {} writer {} seq {}",
                esc(&e.kind),
                esc(&e.filter),
                e.writer,
                e.seq
            );
        }
        h.push_str("</pre>");
    }

    // Throughput and latency.
    let _ = write!(
        h,
        "<h2>Throughput and latency</h2><p>Writes: {} committed via {} ({:.0}/s over {:.1} s, {} failed, fell behind {}×); commit times from <code>{}</code>.<br>Delivered: {:.0} rows/s (peak {:.0}/s); drain after the last write {:.2} s.</p>
<table><tr><th>latency (ms)</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>{}{}{}{}</table>",
        r.writes.committed,
        esc(&r.writes.via),
        r.writes.per_second,
        r.writes.seconds,
        r.writes.failed,
        r.writes.fell_behind,
        esc(&r.writes.commit_time_source),
        r.delivery.per_second,
        r.delivery.peak_per_second,
        r.delivery.drain_seconds,
        pct_row("commit → client", &r.latency_ms),
        pct_row("connect (TCP + upgrade)", &r.connections.connect_ms),
        pct_row("auth", &r.connections.auth_ms),
        pct_row("subscribe → init", &r.connections.subscribe_ms),
    );
    if !r.steps.is_empty() {
        h.push_str("<table><tr><th>step</th><th>target/s</th><th>writes/s</th><th>delivered/s</th><th>live p99</th><th>p50</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
        for s in &r.steps {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
                s.index,
                s.target_rate,
                s.writes_per_second,
                s.delivered_per_second,
                opt(s.live_p99_ms, 1),
                s.latency_ms.p50,
                s.latency_ms.p99,
                s.latency_ms.p999,
                s.latency_ms.max
            );
        }
        h.push_str("</table>");
    }
    if let Some(k) = &r.knee {
        let _ = write!(
            h,
            "<p><b>Knee:</b> last good rate {} writes/s; stopped at {:.0}/s — {}.</p>",
            opt(k.last_good_rate, 0),
            k.stopped_at_rate,
            esc(&k.reason)
        );
    }
    h.push_str(&latency_chart(r));
    let tl = &r.timeline;
    h.push_str(&line_chart(
        "Delivered rows per second",
        "seconds",
        "rows/s",
        &[Line {
            name: String::new(),
            points: series(tl, |p| Some(p.delivered_per_second)),
        }],
        false,
    ));
    h.push_str(&line_chart(
        "Writes per second",
        "seconds",
        "writes/s",
        &[
            Line {
                name: "committed".into(),
                points: series(tl, |p| Some(p.writes_per_second)),
            },
            Line {
                name: "target".into(),
                points: series(tl, |p| Some(p.target_rate)),
            },
        ],
        false,
    ));
    h.push_str(&line_chart(
        "Live latency (write start → client) per sample",
        "seconds",
        "ms",
        &[
            Line {
                name: "p50".into(),
                points: series(tl, |p| p.live_p50_ms),
            },
            Line {
                name: "p99".into(),
                points: series(tl, |p| p.live_p99_ms),
            },
        ],
        false,
    ));

    // Connections.
    let c = &r.connections;
    let _ = write!(
        h,
        "<h2>Connections</h2><table><tr><th></th><th>ok</th><th>failed</th><th>success</th></tr>
<tr><td>connect</td><td>{}</td><td>{}</td><td>{:.2} %</td></tr>
<tr><td>auth</td><td>{}</td><td>{}</td><td>{:.2} %</td></tr>
<tr><td>subscribe</td><td>{}</td><td>{}</td><td>{:.2} %</td></tr></table>
<p>Planned: {} connections, {} subscriptions; sessions {} ({:.1}/s while writing); closed by the server while live: {}.</p>",
        c.counters.connects_ok,
        c.counters.connects_failed,
        100.0 * c.connect_success_rate,
        c.counters.auth_ok,
        c.counters.auth_failed,
        100.0 * c.auth_success_rate,
        c.counters.subs_ok,
        c.counters.subs_failed,
        100.0 * c.subscribe_success_rate,
        c.planned,
        c.subscriptions_planned,
        c.sessions,
        c.sessions_per_second,
        c.counters.server_closed
    );
    if !c.errors.is_empty() {
        h.push_str("<pre>");
        for (k, v) in &c.errors {
            let _ = writeln!(h, "{v:>8} × {}", esc(k));
        }
        h.push_str("</pre>");
    }
    h.push_str(&line_chart(
        "Connections over time",
        "seconds",
        "open connections",
        &[Line {
            name: "open (client side)".into(),
            points: series(tl, |p| Some(p.open_connections as f64)),
        }],
        false,
    ));

    // Resources.
    let m = &r.memory;
    let _ = write!(
        h,
        "<h2>Resources</h2><p>Gateway memory ({}): {} MB before connecting, {} MB with {} idle connections → <b>{} bytes per connection</b> (user-space RSS; the kernel's socket memory is not included).</p>",
        esc(&m.source),
        mb(m.gateway_rss_before),
        mb(m.gateway_rss_idle),
        m.connections_idle,
        opt(m.bytes_per_connection, 0)
    );
    h.push_str("<table><tr><th>process</th><th>role</th><th>CPU mean (cores)</th><th>CPU max</th><th>RSS start (MB)</th><th>RSS end</th><th>RSS max</th></tr>");
    for p in &r.resources {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            esc(&p.role),
            opt(p.cpu_cores_mean, 2),
            opt(p.cpu_cores_max, 2),
            mb(p.rss_start_bytes),
            mb(p.rss_end_bytes),
            mb(p.rss_max_bytes)
        );
    }
    h.push_str("</table>");
    h.push_str(&line_chart(
        "CPU over time",
        "seconds",
        "cores",
        &per_process(tl, |s| s.cpu_cores),
        false,
    ));
    h.push_str(&line_chart(
        "Memory over time",
        "seconds",
        "RSS (MB)",
        &per_process(tl, |s| s.rss_bytes.map(|b| b / 1e6)),
        false,
    ));

    let _ = writeln!(
        h,
        "<h2>Configuration</h2><pre>{}</pre></body></html>",
        esc(&serde_json::to_string_pretty(&r.config).unwrap_or_default())
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_labels() {
        assert_eq!(compact(120_000.0), "120k");
        assert_eq!(compact(1_500_000.0), "1.5M");
        assert_eq!(compact(42.0), "42");
        assert_eq!(compact(0.25), "0.25");
        assert_eq!(compact(2.0), "2");
    }

    #[test]
    fn charts_render_with_text() {
        let lines = [
            Line {
                name: "a".into(),
                points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)],
            },
            Line {
                name: "b <&>".into(),
                points: vec![(0.0, 0.5), (2.0, 0.7)],
            },
        ];
        let svg = line_chart("t", "x", "y", &lines, false);
        assert!(svg.starts_with("<svg"), "{svg:.200}");
        assert!(svg.contains("<text"), "labels are drawn");
        let svg = line_chart("t", "x", "y", &lines, true);
        assert!(svg.starts_with("<svg"), "{svg:.200}");
        assert!(line_chart("t", "x", "y", &[], false).contains("no data"));
    }
}
