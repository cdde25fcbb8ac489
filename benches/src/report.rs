//! Result rows, the machine description, the table printed to stdout and the
//! JSON written by `--json` (by hand: the format is small and flat, and the
//! workspace has no JSON crate).

use std::fmt::Write as _;
use std::time::Duration;

use crate::ctxsw::CtxSwitches;

/// Prefix of the raw Unix-socket floors: `floor_uds/<case>` is the twin of
/// every `<case>/<link>` row (see [`attach_uds_twins`]).
pub const UDS_PREFIX: &str = "floor_uds/";

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
    /// The raw Unix-socket floor of the same workload (`floor_uds/<case>`),
    /// if this pass measured one.
    pub uds_floor: Option<String>,
    /// `p50 / uds floor p50`, read like [`Row::ratio_to_floor`].
    pub ratio_to_uds: Option<f64>,
    /// Context switches per call over the measured calls, where counted.
    pub ctx: Option<CtxSwitches>,
    /// The p50 of each repetition of the pinned pass, in run order, when
    /// it ran more than once (`--repeat`); this row is the repetition with
    /// the median p50.
    pub repeat_p50s: Vec<f64>,
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
            uds_floor: None,
            ratio_to_uds: None,
            ctx: None,
            repeat_p50s: Vec::new(),
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
            uds_floor: None,
            ratio_to_uds: None,
            ctx: None,
            repeat_p50s: Vec::new(),
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

    /// Sets the context switches per call.
    pub fn with_ctx(mut self, ctx: Option<CtxSwitches>) -> Row {
        self.ctx = ctx;
        self
    }

    /// The case part of the name: `add_rtt` for `add_rtt/shm`.
    pub fn case(&self) -> &str {
        self.name.split_once('/').map_or(&self.name, |(c, _)| c)
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
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.name,
            self.unit,
            self.p50,
            self.p99,
            self.floor.as_deref().unwrap_or(""),
            self.ratio_to_floor.map_or(String::new(), |r| r.to_string()),
            self.uds_floor.as_deref().unwrap_or(""),
            self.ratio_to_uds.map_or(String::new(), |r| r.to_string()),
            self.ctx.map_or(String::new(), |c| c.to_field()),
            self.repeat_p50s
                .iter()
                .map(f64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            self.pinned,
            self.note.replace(['\t', '\n'], " ")
        )
    }

    /// Parses [`Row::to_line`]'s output.
    pub fn from_line(line: &str) -> Option<Row> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 12 {
            return None;
        }
        let opt_f64 = |x: &str| -> Option<Option<f64>> {
            if x.is_empty() {
                Some(None)
            } else {
                x.parse().ok().map(Some)
            }
        };
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
            ratio_to_floor: opt_f64(f[5])?,
            uds_floor: (!f[6].is_empty()).then(|| f[6].to_string()),
            ratio_to_uds: opt_f64(f[7])?,
            ctx: if f[8].is_empty() {
                None
            } else {
                Some(CtxSwitches::from_field(f[8])?)
            },
            repeat_p50s: if f[9].is_empty() {
                Vec::new()
            } else {
                f[9].split(',').map(str::parse).collect::<Result<_, _>>().ok()?
            },
            pinned: f[10] == "true",
            note: f[11].to_string(),
        })
    }
}

/// Gives every row that is not itself a floor the ratio to its raw
/// Unix-socket twin measured in the same pass: `add_rtt/shm` (and
/// `add_rtt/unix`, `add_rtt/memory`) against `floor_uds/add_rtt`,
/// `add_cold/shm` against `floor_uds/add_cold`, and so on.
pub fn attach_uds_twins(rows: &mut [Row]) {
    let twins: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r.name.starts_with(UDS_PREFIX))
        .map(|r| (r.name.clone(), r.p50))
        .collect();
    for r in rows.iter_mut().filter(|r| !r.name.starts_with("floor_")) {
        let twin = format!("{UDS_PREFIX}{}", r.case());
        if let Some((name, p50)) = twins.iter().find(|(n, _)| *n == twin) {
            r.uds_floor = Some(name.clone());
            r.ratio_to_uds = (*p50 > 0.0).then(|| r.p50 / p50);
        }
    }
}

/// Merges the rows of repeated passes (each a whole process run) into one
/// row per name, in first-seen order: the repetition with the median p50,
/// carrying every repetition's p50 in [`Row::repeat_p50s`]. With one
/// repetition the rows come back unchanged.
pub fn merge_repetitions(reps: Vec<Vec<Row>>) -> Vec<Row> {
    if reps.len() <= 1 {
        return reps.into_iter().flatten().collect();
    }
    let mut names: Vec<String> = Vec::new();
    for r in reps.iter().flatten() {
        if !names.contains(&r.name) {
            names.push(r.name.clone());
        }
    }
    names
        .into_iter()
        .map(|name| {
            let mut same: Vec<&Row> = reps
                .iter()
                .filter_map(|rows| rows.iter().find(|r| r.name == name))
                .collect();
            let p50s: Vec<f64> = same.iter().map(|r| r.p50).collect();
            let missing = reps.len() - same.len();
            same.sort_by(|a, b| a.p50.total_cmp(&b.p50));
            let mut row = same[(same.len() - 1) / 2].clone();
            row.repeat_p50s = p50s;
            if missing > 0 {
                row = row.note(&format!("missing from {missing} of {} repetitions", reps.len()));
            }
            row
        })
        .collect()
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
        o.push_str(", \"uds_floor\": ");
        match &r.uds_floor {
            Some(f) => json_str(&mut o, f),
            None => o.push_str("null"),
        }
        o.push_str(", \"ratio_to_uds\": ");
        match r.ratio_to_uds {
            Some(x) => json_num(&mut o, x),
            None => o.push_str("null"),
        }
        o.push_str(", \"ctx_switches_per_call\": ");
        match &r.ctx {
            Some(c) => {
                o.push_str("{\"total\": ");
                json_num(&mut o, c.total());
                for (k, v) in [
                    ("host_voluntary", c.host_voluntary),
                    ("host_involuntary", c.host_involuntary),
                    ("peer_voluntary", c.peer_voluntary),
                    ("peer_involuntary", c.peer_involuntary),
                ] {
                    let _ = write!(o, ", \"{k}\": ");
                    json_num(&mut o, v);
                }
                o.push('}');
            }
            None => o.push_str("null"),
        }
        o.push_str(", \"repeat_p50s\": [");
        for (i, x) in r.repeat_p50s.iter().enumerate() {
            if i > 0 {
                o.push_str(", ");
            }
            json_num(&mut o, *x);
        }
        o.push(']');
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

/// The readable table: `ratio` against the floor named in `floor`,
/// `vs uds` against the row's `floor_uds/<case>` twin, `cs/call` the
/// context switches per call (host + peer, all threads), and for a repeated
/// pinned pass each repetition's p50 after the note.
pub fn table(rows: &[Row]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<26} {:<8} {:>13} {:>13}  {:<22} {:>8} {:>7} {:>7}  note",
        "case/link", "cpus", "p50|median", "p99|lowest", "floor", "ratio", "vs uds", "cs/call"
    );
    let ratio = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |x| format!("{x:.2}"));
    for r in rows {
        let mut note = r.note.clone();
        if !r.repeat_p50s.is_empty() {
            let reps: Vec<String> = r.repeat_p50s.iter().map(|&x| human(r.unit, x)).collect();
            let _ = write!(note, "; p50 per repetition: {}", reps.join(", "));
        }
        let _ = writeln!(
            o,
            "{:<26} {:<8} {:>13} {:>13}  {:<22} {:>8} {:>7} {:>7}  {}",
            r.name,
            if r.pinned { "pinned" } else { "unpinned" },
            human(r.unit, r.p50),
            human(r.unit, r.p99),
            r.floor.as_deref().unwrap_or("-"),
            ratio(r.ratio_to_floor),
            ratio(r.ratio_to_uds),
            r.ctx
                .map_or_else(|| "-".to_string(), |c| format!("{:.2}", c.total())),
            note
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
        let mut full = r.clone().with_ctx(Some(CtxSwitches {
            host_voluntary: 1.0,
            host_involuntary: 0.5,
            peer_voluntary: 2.0,
            peer_involuntary: 0.0,
        }));
        full.repeat_p50s = vec![3.0, 4.5];
        full.uds_floor = Some("floor_uds/add_rtt".into());
        full.ratio_to_uds = Some(0.5);
        assert_eq!(Row::from_line(&full.to_line()), Some(full.clone()));
        let j = to_json(&Machine::default(), &[r, full]);
        assert!(j.contains("\"name\": \"add_rtt/shm\""), "{j}");
        assert!(j.contains("\"ratio_to_uds\": 0.5"), "{j}");
        assert!(j.contains("\"repeat_p50s\": [3, 4.5]"), "{j}");
    }

    #[test]
    fn twins_and_repetitions() {
        let lat = |name: &str, ns: u64| Row::latency(name, &mut [Duration::from_nanos(ns)], true);
        let mut rows = vec![
            lat("floor_uds/add_rtt", 10),
            lat("add_rtt/shm", 30),
            lat("echo_64k/shm", 5),
        ];
        attach_uds_twins(&mut rows);
        assert_eq!(rows[0].ratio_to_uds, None);
        assert_eq!(rows[1].uds_floor.as_deref(), Some("floor_uds/add_rtt"));
        assert_eq!(rows[1].ratio_to_uds, Some(3.0));
        assert_eq!(rows[2].ratio_to_uds, None);

        let reps = vec![
            vec![lat("a/shm", 1), lat("b/shm", 7)],
            vec![lat("a/shm", 9)],
            vec![lat("a/shm", 5), lat("b/shm", 8)],
        ];
        let merged = merge_repetitions(reps);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].p50, 5.0);
        assert_eq!(merged[0].repeat_p50s, vec![1.0, 9.0, 5.0]);
        assert_eq!(merged[1].repeat_p50s, vec![7.0, 8.0]);
        assert!(merged[1].note.contains("missing from 1 of 3"));
    }
}
