//! Result rows, the machine description, the table printed to stdout and the
//! JSON written by `--json` (by hand: the format is small and flat, and the
//! workspace has no JSON crate).

use std::fmt::Write as _;
use std::time::Duration;

/// One measured figure: a latency (p50/p99) or a rate (median/lowest).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `case/link`, e.g. `add_rtt/shm`.
    pub name: String,
    /// `ns`, `GB/s`, `calls/s` or `ms/s`.
    pub unit: &'static str,
    /// Median: of the latencies, or of the rates of repeated runs.
    pub p50: f64,
    /// 99th percentile latency; for rates, the lowest rate seen.
    pub p99: f64,
    /// The row this one is compared against, if any.
    pub floor: Option<String>,
    /// `p50 / floor p50`: above 1 is slower for latencies; for rates, the
    /// fraction of the floor's rate reached.
    pub ratio_to_floor: Option<f64>,
    /// Whether the whole run (host, cells, floor peers) was pinned to CPU 0.
    pub pinned: bool,
    /// Samples behind the figure and anything a reader needs to know.
    pub note: String,
}

impl Row {
    /// A latency row from unsorted samples (needs at least one).
    pub fn latency(name: impl Into<String>, samples: &mut [Duration], pinned: bool) -> Row {
        samples.sort_unstable();
        Row {
            name: name.into(),
            unit: "ns",
            p50: percentile(samples, 0.50).as_nanos() as f64,
            p99: percentile(samples, 0.99).as_nanos() as f64,
            floor: None,
            ratio_to_floor: None,
            pinned,
            note: format!("n={}", samples.len()),
        }
    }

    /// A rate row from the rates of repeated runs (needs at least one).
    pub fn rate(name: impl Into<String>, unit: &'static str, rates: &mut [f64], pinned: bool) -> Row {
        rates.sort_unstable_by(f64::total_cmp);
        Row {
            name: name.into(),
            unit,
            p50: rates[(rates.len() - 1) / 2],
            p99: rates[0],
            floor: None,
            ratio_to_floor: None,
            pinned,
            note: format!("runs={}", rates.len()),
        }
    }

    /// Sets the floor this row is compared against, and the ratio of the
    /// p50s (`floor_p50` in this row's unit).
    pub fn against(mut self, floor: &str, floor_p50: f64) -> Row {
        self.floor = Some(floor.to_string());
        self.ratio_to_floor = (floor_p50 > 0.0).then(|| self.p50 / floor_p50);
        self
    }

    /// Appends to the note.
    pub fn note(mut self, extra: &str) -> Row {
        if !self.note.is_empty() {
            self.note.push_str("; ");
        }
        self.note.push_str(extra);
        self
    }

    /// One tab-separated line (the pinned pass hands its rows to the parent
    /// this way); notes and names never contain tabs or newlines.
    pub fn to_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.name,
            self.unit,
            self.p50,
            self.p99,
            self.floor.as_deref().unwrap_or(""),
            self.ratio_to_floor.map_or(String::new(), |r| r.to_string()),
            self.pinned,
            self.note.replace(['\t', '\n'], " ")
        )
    }

    /// Parses [`Row::to_line`]'s output.
    pub fn from_line(line: &str) -> Option<Row> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 8 {
            return None;
        }
        let unit = match f[1] {
            "ns" => "ns",
            "GB/s" => "GB/s",
            "calls/s" => "calls/s",
            "ms/s" => "ms/s",
            _ => return None,
        };
        Some(Row {
            name: f[0].to_string(),
            unit,
            p50: f[2].parse().ok()?,
            p99: f[3].parse().ok()?,
            floor: (!f[4].is_empty()).then(|| f[4].to_string()),
            ratio_to_floor: if f[5].is_empty() {
                None
            } else {
                Some(f[5].parse().ok()?)
            },
            pinned: f[6] == "true",
            note: f[7].to_string(),
        })
    }
}

/// The `p`-quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What the run ran on.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// Online CPUs.
    pub cpus: usize,
    /// CPUs this process may run on when started.
    pub allowed_cpus: usize,
    /// `uname -srm`.
    pub kernel: String,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Total memory, from `/proc/meminfo`.
    pub mem_total_kib: u64,
    /// Whether `--quick` was given.
    pub quick: bool,
    /// Seconds since the Unix epoch at the start of the run.
    pub started_unix: u64,
}

impl Machine {
    /// Describes this machine.
    pub fn probe(quick: bool) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(String::new, |(_, v)| v.trim().to_string());
        let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Machine {
            cpus: crate::sys::online_cpus(),
            allowed_cpus: crate::sys::allowed_cpus(),
            kernel: crate::sys::uname(),
            cpu_model,
            mem_total_kib,
            quick,
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_num(out: &mut String, x: f64) {
    if x.is_finite() {
        let _ = write!(out, "{x}");
    } else {
        out.push_str("null");
    }
}

/// The `--json` document: `{"machine": {...}, "results": [...]}`.
pub fn to_json(machine: &Machine, rows: &[Row]) -> String {
    let mut o = String::from("{\n  \"machine\": {");
    let _ = write!(
        o,
        "\"cpus\": {}, \"allowed_cpus\": {}, \"kernel\": ",
        machine.cpus, machine.allowed_cpus
    );
    json_str(&mut o, &machine.kernel);
    o.push_str(", \"cpu_model\": ");
    json_str(&mut o, &machine.cpu_model);
    let _ = write!(
        o,
        ", \"mem_total_kib\": {}, \"quick\": {}, \"started_unix\": {}}},\n  \"results\": [",
        machine.mem_total_kib, machine.quick, machine.started_unix
    );
    for (i, r) in rows.iter().enumerate() {
        o.push_str(if i == 0 { "\n    {" } else { ",\n    {" });
        o.push_str("\"name\": ");
        json_str(&mut o, &r.name);
        o.push_str(", \"unit\": ");
        json_str(&mut o, r.unit);
        o.push_str(", \"p50\": ");
        json_num(&mut o, r.p50);
        o.push_str(", \"p99\": ");
        json_num(&mut o, r.p99);
        o.push_str(", \"floor\": ");
        match &r.floor {
            Some(f) => json_str(&mut o, f),
            None => o.push_str("null"),
        }
        o.push_str(", \"ratio_to_floor\": ");
        match r.ratio_to_floor {
            Some(x) => json_num(&mut o, x),
            None => o.push_str("null"),
        }
        let _ = write!(o, ", \"pinned\": {}, \"note\": ", r.pinned);
        json_str(&mut o, &r.note);
        o.push('}');
    }
    o.push_str("\n  ]\n}\n");
    o
}

fn human(unit: &str, x: f64) -> String {
    match unit {
        "ns" if x >= 1e6 => format!("{:.2} ms", x / 1e6),
        "ns" if x >= 1e3 => format!("{:.2} µs", x / 1e3),
        "ns" => format!("{x:.0} ns"),
        "GB/s" => format!("{x:.2} GB/s"),
        "calls/s" => format!("{x:.0}/s"),
        "ms/s" => format!("{x:.3} ms/s"),
        _ => format!("{x}"),
    }
}

/// The readable table.
pub fn table(rows: &[Row]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<26} {:<8} {:>13} {:>13}  {:<22} {:>8}  note",
        "case/link", "cpus", "p50|median", "p99|lowest", "floor", "ratio"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:<26} {:<8} {:>13} {:>13}  {:<22} {:>8}  {}",
            r.name,
            if r.pinned { "pinned" } else { "unpinned" },
            human(r.unit, r.p50),
            human(r.unit, r.p99),
            r.floor.as_deref().unwrap_or("-"),
            r.ratio_to_floor
                .map_or_else(|| "-".to_string(), |x| format!("{x:.2}")),
            r.note
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_round_trip() {
        let mut s = [Duration::from_nanos(5), Duration::from_nanos(1)];
        let r = Row::latency("add_rtt/shm", &mut s, true)
            .against("pingpong_adaptive", 2.0)
            .note("x");
        assert_eq!(Row::from_line(&r.to_line()), Some(r.clone()));
        let j = to_json(&Machine::default(), &[r]);
        assert!(j.contains("\"name\": \"add_rtt/shm\""), "{j}");
    }
}
