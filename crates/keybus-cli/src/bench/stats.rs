//! Per-run records, medians and spreads, and the table / JSON output.

use std::fmt::Write as _;

/// One phase run.
#[derive(Debug, Clone)]
pub struct PhaseRun {
    pub phase: &'static str,
    /// What the phase drove: `1 queue`, `8 queues`, `topic t (10 subs)`.
    pub target: String,
    /// Entities the phase drove (queues, or a topic's subscriptions for its receive side).
    pub queues: usize,
    pub rep: usize,
    /// Messages accepted (send) or completed (receive, latency). For the receive and latency
    /// phases of a topic: deliveries / subscriptions, i.e. published messages fully consumed.
    pub messages: u64,
    pub secs: f64,
    /// `messages` per second.
    pub rate: f64,
    /// Broker CPU time per message, µs.
    pub broker_cpu_us: Option<f64>,
    /// Topic receive and latency phases: subscriptions every message was delivered to, the
    /// deliveries completed, and their rate and broker CPU time per delivery. `None` for
    /// queues and topic sends.
    pub fanout: Option<Fanout>,
    /// This process's CPU time per message, µs.
    pub client_cpu_us: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Rejected sends / failed completions.
    pub errors: u64,
}

/// Per-delivery figures of a topic receive / latency run.
#[derive(Debug, Clone, Copy)]
pub struct Fanout {
    pub subscriptions: usize,
    pub deliveries: u64,
    pub rate: f64,
    pub broker_cpu_us: Option<f64>,
}

impl PhaseRun {
    pub fn one_line(&self) -> String {
        let mut s = format!(
            "{} {} run {}: {} msgs in {:.2}s = {:.0} msg/s",
            self.phase,
            self.target,
            self.rep + 1,
            self.messages,
            self.secs,
            self.rate
        );
        if let Some(f) = self.fanout {
            let _ = write!(
                s,
                " ({} deliveries = {:.0}/s over {} sub{})",
                f.deliveries,
                f.rate,
                f.subscriptions,
                if f.subscriptions == 1 { "" } else { "s" }
            );
        }
        if let Some(b) = self.broker_cpu_us {
            let _ = write!(s, ", broker {b:.1} µs/msg");
        }
        if let Some(b) = self.fanout.and_then(|f| f.broker_cpu_us) {
            let _ = write!(s, " = {b:.1} µs/delivery");
        }
        if let Some(c) = self.client_cpu_us {
            let _ = write!(s, ", client {c:.1} µs/msg");
        }
        if let (Some(p50), Some(p99)) = (self.p50_ms, self.p99_ms) {
            let _ = write!(s, ", p50 {p50:.2} ms, p99 {p99:.2} ms");
        }
        if self.errors > 0 {
            let _ = write!(s, ", {} errors", self.errors);
        }
        s
    }
}

/// Nearest-rank percentile of sorted data.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Median, min and max of some values.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl Iterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v.get(n / 2).copied().unwrap_or_default()
        } else {
            (v.get(n / 2 - 1).copied().unwrap_or_default()
                + v.get(n / 2).copied().unwrap_or_default())
                / 2.0
        };
        Some(Spread {
            median,
            min: v.first().copied().unwrap_or_default(),
            max: v.last().copied().unwrap_or_default(),
        })
    }
}

/// All runs of one (phase, queue count).
#[derive(Debug, Clone)]
pub struct Summary {
    pub phase: &'static str,
    pub target: String,
    pub queues: usize,
    pub runs: usize,
    pub messages: u64,
    pub rate: Option<Spread>,
    pub broker_cpu_us: Option<Spread>,
    /// Topic receive / latency phases: subscriptions, deliveries per second and broker CPU
    /// time per delivery.
    pub subscriptions: Option<usize>,
    pub delivery_rate: Option<Spread>,
    pub broker_cpu_us_per_delivery: Option<Spread>,
    pub client_cpu_us: Option<Spread>,
    pub p50_ms: Option<Spread>,
    pub p99_ms: Option<Spread>,
    pub max_ms: Option<Spread>,
    pub errors: u64,
}

impl Summary {
    pub fn of(runs: &[PhaseRun]) -> Vec<Summary> {
        let mut keys: Vec<(&str, &'static str)> = Vec::new();
        for r in runs {
            if !keys.contains(&(r.target.as_str(), r.phase)) {
                keys.push((r.target.as_str(), r.phase));
            }
        }
        keys.into_iter()
            .map(|(target, phase)| {
                let rs: Vec<&PhaseRun> = runs
                    .iter()
                    .filter(|r| r.target == target && r.phase == phase)
                    .collect();
                Summary {
                    phase,
                    target: target.to_string(),
                    queues: rs.first().map_or(0, |r| r.queues),
                    runs: rs.len(),
                    messages: rs.iter().map(|r| r.messages).sum::<u64>() / rs.len().max(1) as u64,
                    rate: Spread::of(rs.iter().map(|r| r.rate)),
                    broker_cpu_us: Spread::of(rs.iter().filter_map(|r| r.broker_cpu_us)),
                    subscriptions: rs.iter().find_map(|r| r.fanout).map(|f| f.subscriptions),
                    delivery_rate: Spread::of(rs.iter().filter_map(|r| r.fanout).map(|f| f.rate)),
                    broker_cpu_us_per_delivery: Spread::of(
                        rs.iter()
                            .filter_map(|r| r.fanout)
                            .filter_map(|f| f.broker_cpu_us),
                    ),
                    client_cpu_us: Spread::of(rs.iter().filter_map(|r| r.client_cpu_us)),
                    p50_ms: Spread::of(rs.iter().filter_map(|r| r.p50_ms)),
                    p99_ms: Spread::of(rs.iter().filter_map(|r| r.p99_ms)),
                    max_ms: Spread::of(rs.iter().filter_map(|r| r.max_ms)),
                    errors: rs.iter().map(|r| r.errors).sum(),
                }
            })
            .collect()
    }
}

/// Settings echoed in the output.
#[derive(Debug, Clone)]
pub struct Config {
    pub size: usize,
    pub messages: u64,
    pub connections: usize,
    pub inflight: u32,
    pub credit: u32,
    pub rate: u32,
    pub latency_secs: u64,
    pub repeat: usize,
    pub broker_pid: Option<u32>,
    pub note: String,
}

fn phase_label(phase: &str, rate: u32) -> String {
    match phase {
        "send" => "send (durable)".into(),
        "receive" => "receive + complete".into(),
        "latency" => format!("latency @ {rate} msg/s"),
        other => other.into(),
    }
}

pub fn fmt_spread(s: Option<Spread>, decimals: usize, with_range: bool) -> String {
    match s {
        None => "-".into(),
        Some(s) if with_range && s.max > s.min => {
            format!(
                "{:.d$} ({:.d$}–{:.d$})",
                s.median,
                s.min,
                s.max,
                d = decimals
            )
        }
        Some(s) => format!("{:.d$}", s.median, d = decimals),
    }
}

/// Human-readable table.
pub fn table(cfg: &Config, sums: &[Summary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "keybus bench: {}-byte messages, {} msgs per send/receive phase, {} connection(s), \
         {} in flight per sender link, credit {} per receiver link, latency {} msg/s for {} s, {} run(s) each",
        cfg.size,
        cfg.messages,
        cfg.connections,
        cfg.inflight,
        cfg.credit,
        cfg.rate,
        cfg.latency_secs,
        cfg.repeat
    );
    let _ = writeln!(out, "{}", cfg.note);
    let multi = cfg.repeat > 1;
    let _ = writeln!(
        out,
        "values are medians{}",
        if multi {
            " (min–max over the runs)"
        } else {
            ""
        }
    );
    let _ = writeln!(out);
    let headers = [
        "phase",
        "target",
        "msg/s",
        "deliveries/s",
        "broker µs/msg",
        "broker µs/delivery",
        "client µs/msg",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
    ];
    let rows: Vec<Vec<String>> = sums
        .iter()
        .map(|s| {
            vec![
                phase_label(s.phase, cfg.rate),
                s.target.clone(),
                fmt_spread(s.rate, 0, multi),
                fmt_spread(s.delivery_rate, 0, multi),
                fmt_spread(s.broker_cpu_us, 1, multi),
                fmt_spread(s.broker_cpu_us_per_delivery, 1, multi),
                fmt_spread(s.client_cpu_us, 1, multi),
                fmt_spread(s.p50_ms, 2, multi),
                fmt_spread(s.p99_ms, 2, multi),
                s.max_ms
                    .map_or_else(|| "-".to_string(), |m| format!("{:.2}", m.max)),
                s.errors.to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w.saturating_sub(c.chars().count());
            if i == 0 {
                let _ = write!(l, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(l, "  {}{c}", " ".repeat(pad));
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(
        out,
        "{}",
        line(headers.iter().map(|h| h.to_string()).collect())
    );
    let _ = writeln!(
        out,
        "{}",
        line(widths.iter().map(|&w| "-".repeat(w)).collect())
    );
    for r in rows {
        let _ = writeln!(out, "{}", line(r));
    }
    out
}

fn jnum(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{}", (x * 1000.0).round() / 1000.0),
        _ => "null".into(),
    }
}

pub fn jstr(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn jspread(s: Option<Spread>) -> String {
    match s {
        Some(s) => format!(
            "{{\"median\":{},\"min\":{},\"max\":{}}}",
            jnum(Some(s.median)),
            jnum(Some(s.min)),
            jnum(Some(s.max))
        ),
        None => "null".into(),
    }
}

/// Machine-readable output.
pub fn json(cfg: &Config, runs: &[PhaseRun], sums: &[Summary]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"config\":{{\"size\":{},\"messages\":{},\"connections\":{},\"inflight\":{},\"credit\":{},\"rate\":{},\"latency_secs\":{},\"repeat\":{},\"broker_pid\":{},\"note\":{}}},",
        cfg.size,
        cfg.messages,
        cfg.connections,
        cfg.inflight,
        cfg.credit,
        cfg.rate,
        cfg.latency_secs,
        cfg.repeat,
        cfg.broker_pid.map_or("null".to_string(), |p| p.to_string()),
        jstr(&cfg.note)
    );
    let rs: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{{\"phase\":{},\"target\":{},\"queues\":{},\"run\":{},\"messages\":{},\"secs\":{},\"msg_per_s\":{},\"broker_cpu_us_per_msg\":{},\"subscriptions\":{},\"deliveries\":{},\"deliveries_per_s\":{},\"broker_cpu_us_per_delivery\":{},\"client_cpu_us_per_msg\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"errors\":{}}}",
                jstr(r.phase),
                jstr(&r.target),
                r.queues,
                r.rep + 1,
                r.messages,
                jnum(Some(r.secs)),
                jnum(Some(r.rate)),
                jnum(r.broker_cpu_us),
                r.fanout
                    .map_or("null".to_string(), |f| f.subscriptions.to_string()),
                r.fanout
                    .map_or("null".to_string(), |f| f.deliveries.to_string()),
                jnum(r.fanout.map(|f| f.rate)),
                jnum(r.fanout.and_then(|f| f.broker_cpu_us)),
                jnum(r.client_cpu_us),
                jnum(r.p50_ms),
                jnum(r.p99_ms),
                jnum(r.max_ms),
                r.errors
            )
        })
        .collect();
    let _ = write!(out, "\"runs\":[{}],", rs.join(","));
    let ss: Vec<String> = sums
        .iter()
        .map(|s| {
            format!(
                "{{\"phase\":{},\"target\":{},\"queues\":{},\"runs\":{},\"messages\":{},\"msg_per_s\":{},\"broker_cpu_us_per_msg\":{},\"subscriptions\":{},\"deliveries_per_s\":{},\"broker_cpu_us_per_delivery\":{},\"client_cpu_us_per_msg\":{},\"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"errors\":{}}}",
                jstr(s.phase),
                jstr(&s.target),
                s.queues,
                s.runs,
                s.messages,
                jspread(s.rate),
                jspread(s.broker_cpu_us),
                s.subscriptions
                    .map_or("null".to_string(), |n| n.to_string()),
                jspread(s.delivery_rate),
                jspread(s.broker_cpu_us_per_delivery),
                jspread(s.client_cpu_us),
                jspread(s.p50_ms),
                jspread(s.p99_ms),
                jspread(s.max_ms),
                s.errors
            )
        })
        .collect();
    let _ = write!(out, "\"summary\":[{}]}}", ss.join(","));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    fn run(phase: &'static str, target: &str, rep: usize, fanout: Option<Fanout>) -> PhaseRun {
        PhaseRun {
            phase,
            target: target.into(),
            queues: fanout.map_or(1, |f| f.subscriptions),
            rep,
            messages: 1000,
            secs: 1.0,
            rate: 1000.0 + rep as f64,
            broker_cpu_us: Some(20.0),
            fanout,
            client_cpu_us: Some(1.0),
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
            errors: 0,
        }
    }

    #[test]
    fn topic_rows_report_deliveries() {
        let fan = |rep: usize| Fanout {
            subscriptions: 10,
            deliveries: 10_000,
            rate: 10_000.0 + rep as f64 * 10.0,
            broker_cpu_us: Some(2.0),
        };
        let runs = vec![
            run("receive", "1 queue", 0, None),
            run("receive", "topic t (10 subs)", 0, Some(fan(0))),
            run("receive", "topic t (10 subs)", 1, Some(fan(1))),
        ];
        let sums = Summary::of(&runs);
        assert_eq!(sums.len(), 2);
        assert!(sums[0].delivery_rate.is_none() && sums[0].subscriptions.is_none());
        assert_eq!(sums[1].subscriptions, Some(10));
        assert_eq!(sums[1].delivery_rate.map(|s| s.median), Some(10_005.0));
        let cfg = Config {
            size: 1024,
            messages: 1000,
            connections: 2,
            inflight: 1000,
            credit: 1000,
            rate: 500,
            latency_secs: 10,
            repeat: 2,
            broker_pid: None,
            note: String::new(),
        };
        let t = table(&cfg, &sums);
        assert!(
            t.contains("deliveries/s") && t.contains("10005 (10000–10010)"),
            "{t}"
        );
        let j = json(&cfg, &runs, &sums);
        assert!(
            j.contains("\"subscriptions\":10,\"deliveries\":10000"),
            "{j}"
        );
        assert!(
            j.contains("\"subscriptions\":null,\"deliveries\":null"),
            "{j}"
        );
        assert!(
            j.contains("\"broker_cpu_us_per_delivery\":{\"median\":2"),
            "{j}"
        );
    }

    #[test]
    fn spread() {
        let s = Spread::of([3.0, 1.0, 2.0, 10.0].into_iter()).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
    }
}
