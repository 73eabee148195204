//! One line of the benchmark table, and the report that prints the table or the JSON array.

use serde::{Deserialize, Serialize};

/// Which way a ratio is good.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

/// One measured figure beside its baseline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// P1, P2, P3, P3b, P4 … P7 (issue 7); several rows may share an id.
    pub id: String,
    /// What was measured, e.g. "ingest 1 GiB as 1 MiB files".
    pub figure: String,
    pub ours: f64,
    pub baseline: f64,
    /// `ours / baseline`.
    pub ratio: f64,
    /// The goal as written in the issue, e.g. "<= 1.0x" or ">= 3000/s".
    pub goal: String,
    pub unit: String,
    /// Whether the goal is met.
    pub met: bool,
    /// Exactly what the baseline did.
    pub baseline_is: String,
}

impl Row {
    /// A row whose goal is a bound on the ratio.
    #[allow(clippy::too_many_arguments)] // one flat row per figure reads best at the call sites
    pub fn ratio_goal(
        id: &str,
        figure: impl Into<String>,
        unit: &str,
        ours: f64,
        baseline: f64,
        limit: f64,
        better: Better,
        baseline_is: &str,
    ) -> Row {
        let ratio = ratio(ours, baseline);
        let (goal, met) = match better {
            Better::Lower => (format!("<= {limit}x"), ratio <= limit),
            Better::Higher => (format!(">= {limit}x"), ratio >= limit),
        };
        Row::new(
            id,
            figure,
            unit,
            ours,
            baseline,
            ratio,
            goal,
            met,
            baseline_is,
        )
    }

    /// A row whose goal is a bound on Lockstep's own figure.
    #[allow(clippy::too_many_arguments)] // as above
    pub fn abs_goal(
        id: &str,
        figure: impl Into<String>,
        unit: &str,
        ours: f64,
        baseline: f64,
        limit: f64,
        better: Better,
        baseline_is: &str,
    ) -> Row {
        let (goal, met) = match better {
            Better::Lower => (format!("<= {} {unit}", fmt_num(limit)), ours <= limit),
            Better::Higher => (format!(">= {} {unit}", fmt_num(limit)), ours >= limit),
        };
        let r = ratio(ours, baseline);
        Row::new(id, figure, unit, ours, baseline, r, goal, met, baseline_is)
    }

    #[allow(clippy::too_many_arguments)] // a plain record constructor
    fn new(
        id: &str,
        figure: impl Into<String>,
        unit: &str,
        ours: f64,
        baseline: f64,
        ratio: f64,
        goal: String,
        met: bool,
        baseline_is: &str,
    ) -> Row {
        Row {
            id: id.into(),
            figure: figure.into(),
            ours,
            baseline,
            ratio,
            goal,
            unit: unit.into(),
            met,
            baseline_is: baseline_is.into(),
        }
    }

    /// Prints the row as one JSON line on stdout (the script collects them).
    pub fn emit(&self) {
        println!(
            "{}",
            serde_json::to_string(self).expect("a Row always serialises")
        );
    }
}

fn ratio(ours: f64, baseline: f64) -> f64 {
    if baseline == 0.0 {
        f64::NAN
    } else {
        ours / baseline
    }
}

/// Three significant figures, no exponent for everyday magnitudes.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    if a >= 1000.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Prints the rows as a table (and the baselines underneath) or as one JSON array.
pub fn report(rows: &[Row], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(rows).expect("rows always serialise")
        );
        return;
    }
    let header = [
        "id", "figure", "Lockstep", "baseline", "ratio", "goal", "met",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.figure.clone(),
                format!("{} {}", fmt_num(r.ours), r.unit),
                format!("{} {}", fmt_num(r.baseline), r.unit),
                format!("{}x", fmt_num(r.ratio)),
                r.goal.clone(),
                if r.met { "yes" } else { "NO" }.into(),
            ]
        })
        .collect();
    let mut w = header.map(str::len);
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::new();
        for (i, v) in c.iter().enumerate() {
            // Text columns left-aligned, numbers right-aligned.
            if (2..=4).contains(&i) {
                s.push_str(&format!("{v:>width$}  ", width = w[i]));
            } else {
                s.push_str(&format!("{v:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(&header.map(String::from));
    line(&w.map(|n| "-".repeat(n)));
    for c in &cells {
        line(c);
    }
    println!();
    println!("Baselines (measured in the same run):");
    let mut seen = std::collections::BTreeSet::new();
    for r in rows {
        if seen.insert((r.id.clone(), r.baseline_is.clone())) {
            println!("  {:<4} {}", r.id, r.baseline_is);
        }
    }
}
