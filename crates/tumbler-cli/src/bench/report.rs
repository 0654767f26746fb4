//! The printed table: one row per scenario run.

use std::fmt::Write as _;
use std::time::Duration;

use crate::scenarios::Outcome;

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// What ran, e.g. `distinct` or `pgbench hot`.
    pub scenario: String,
    /// Against what, e.g. `memory`, `sqlite`, `http://127.0.0.1:7878`.
    pub target: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Pairs per second, for rate scenarios.
    pub pairs_per_sec: Option<f64>,
    /// Median latency (of a pair, or of a hand-off).
    pub p50: Option<Duration>,
    /// 99th-percentile latency.
    pub p99: Option<Duration>,
    /// Pairs or hand-offs measured.
    pub samples: u64,
}

impl Row {
    /// The row of a scenario's outcome.
    pub fn of(scenario: &str, target: &str, outcome: &Outcome) -> Row {
        let measured = outcome.count > 0;
        Row {
            scenario: scenario.to_owned(),
            target: target.to_owned(),
            clients: outcome.clients,
            pairs_per_sec: outcome.pairs_per_sec(),
            p50: measured.then(|| outcome.quantile(0.50)),
            p99: measured.then(|| outcome.quantile(0.99)),
            samples: outcome.count,
        }
    }
}

/// The rows as an aligned text table: scenario, target, clients, pairs/s, p50, p99, n.
pub fn table(rows: &[Row]) -> String {
    let header = ["scenario", "target", "clients", "pairs/s", "p50", "p99", "n"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.clone(),
                r.target.clone(),
                r.clients.to_string(),
                r.pairs_per_sec.map_or_else(|| "-".to_owned(), |p| format!("{p:.0}")),
                r.p50.map_or_else(|| "-".to_owned(), latency),
                r.p99.map_or_else(|| "-".to_owned(), latency),
                r.samples.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            // Text columns left-aligned, figures right-aligned.
            let _ = if i < 2 { write!(out, "{cell:<width$}  ") } else { write!(out, "{cell:>width$}  ") };
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &cells {
        line(row);
    }
    out
}

/// A latency for people: `850 ns`, `42.1 µs`, `1.23 ms`, `2.50 s`.
pub fn latency(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos < 1_000 {
        format!("{nanos} ns")
    } else if nanos < 1_000_000 {
        format!("{:.1} µs", nanos as f64 / 1e3)
    } else if nanos < 1_000_000_000 {
        format!("{:.2} ms", nanos as f64 / 1e6)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_pick_a_readable_unit() {
        assert_eq!(latency(Duration::from_nanos(850)), "850 ns");
        assert_eq!(latency(Duration::from_nanos(42_149)), "42.1 µs");
        assert_eq!(latency(Duration::from_micros(1_234)), "1.23 ms");
        assert_eq!(latency(Duration::from_millis(2_500)), "2.50 s");
    }

    #[test]
    fn table_aligns_columns_and_shows_missing_figures_as_dashes() {
        let rows = [
            Row {
                scenario: "distinct".into(),
                target: "memory".into(),
                clients: 64,
                pairs_per_sec: Some(12345.6),
                p50: Some(Duration::from_micros(900)),
                p99: Some(Duration::from_millis(3)),
                samples: 123_456,
            },
            Row {
                scenario: "pgbench hot".into(),
                target: "postgresql".into(),
                clients: 64,
                pairs_per_sec: Some(999.0),
                p50: None,
                p99: None,
                samples: 9_990,
            },
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("scenario     target"), "{text}");
        assert!(lines[1].contains("12346") && lines[1].contains("900.0 µs") && lines[1].contains("3.00 ms"), "{text}");
        assert!(lines[2].contains("  -  "), "{text}");
    }
}
