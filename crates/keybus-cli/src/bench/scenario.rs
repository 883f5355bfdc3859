//! Records of the scenario phases (`idle`, `depth`, `first-receive`): named figures of the
//! broker (CPU share, resident memory, times), summarised over `--repeat` runs as median and
//! min–max, printed as a table or JSON.

use std::fmt::Write as _;

use super::stats::{Spread, fmt_spread, jspread, jstr};

/// One figure of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    pub scenario: &'static str,
    pub metric: &'static str,
    pub unit: &'static str,
    pub rep: usize,
    pub value: f64,
}

/// All runs of one (scenario, metric).
#[derive(Debug, Clone)]
pub struct MeasureSummary {
    pub scenario: &'static str,
    pub metric: &'static str,
    pub unit: &'static str,
    pub runs: usize,
    pub spread: Option<Spread>,
}

/// Summaries in the order the (scenario, metric) pairs first appear.
pub fn summarise(measures: &[Measure]) -> Vec<MeasureSummary> {
    let mut keys: Vec<(&'static str, &'static str, &'static str)> = Vec::new();
    for m in measures {
        if !keys.iter().any(|k| k.0 == m.scenario && k.1 == m.metric) {
            keys.push((m.scenario, m.metric, m.unit));
        }
    }
    keys.into_iter()
        .map(|(scenario, metric, unit)| {
            let values: Vec<f64> = measures
                .iter()
                .filter(|m| m.scenario == scenario && m.metric == metric)
                .map(|m| m.value)
                .collect();
            MeasureSummary {
                scenario,
                metric,
                unit,
                runs: values.len(),
                spread: Spread::of(values.into_iter()),
            }
        })
        .collect()
}

/// Human-readable table: median (min–max) of each figure.
pub fn table(note: &str, sums: &[MeasureSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {note}");
    let _ = writeln!(out, "| scenario | figure | median (min–max) | runs |");
    let _ = writeln!(out, "|---|---|---:|---:|");
    for s in sums {
        let _ = writeln!(
            out,
            "| {} | {} ({}) | {} | {} |",
            s.scenario,
            s.metric,
            s.unit,
            fmt_spread(s.spread, 2, true),
            s.runs
        );
    }
    out
}

/// Machine-readable output: every run's figures and the summaries.
pub fn json(note: &str, measures: &[Measure], sums: &[MeasureSummary]) -> String {
    let runs: Vec<String> = measures
        .iter()
        .map(|m| {
            format!(
                "{{\"scenario\":{},\"figure\":{},\"unit\":{},\"run\":{},\"value\":{}}}",
                jstr(m.scenario),
                jstr(m.metric),
                jstr(m.unit),
                m.rep + 1,
                if m.value.is_finite() {
                    m.value.to_string()
                } else {
                    "null".into()
                }
            )
        })
        .collect();
    let summaries: Vec<String> = sums
        .iter()
        .map(|s| {
            format!(
                "{{\"scenario\":{},\"figure\":{},\"unit\":{},\"runs\":{},\"value\":{}}}",
                jstr(s.scenario),
                jstr(s.metric),
                jstr(s.unit),
                s.runs,
                jspread(s.spread)
            )
        })
        .collect();
    format!(
        "{{\"note\":{},\"runs\":[{}],\"summaries\":[{}]}}",
        jstr(note),
        runs.join(","),
        summaries.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(metric: &'static str, rep: usize, value: f64) -> Measure {
        Measure {
            scenario: "idle",
            metric,
            unit: "%",
            rep,
            value,
        }
    }

    #[test]
    fn summaries_are_median_and_range_per_figure_in_first_seen_order() {
        let ms = [
            m("cpu", 0, 0.5),
            m("rss", 0, 100.0),
            m("cpu", 1, 0.9),
            m("rss", 1, 120.0),
            m("cpu", 2, 0.7),
            m("rss", 2, 110.0),
        ];
        let sums = summarise(&ms);
        assert_eq!(sums.len(), 2);
        let cpu = sums
            .first()
            .and_then(|s| s.spread)
            .map(|s| (s.median, s.min, s.max));
        assert_eq!(cpu, Some((0.7, 0.5, 0.9)));
        assert_eq!(sums.get(1).map(|s| (s.metric, s.runs)), Some(("rss", 3)));
        let t = table("note", &sums);
        assert!(
            t.contains("| idle | cpu (%) | 0.70 (0.50–0.90) | 3 |"),
            "{t}"
        );
    }
}
