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
    /// `null` in JSON when the figure was not measured (see `skipped`).
    #[serde(with = "nullable")]
    pub ours: f64,
    #[serde(with = "nullable")]
    pub baseline: f64,
    /// `ours / baseline`.
    #[serde(with = "nullable")]
    pub ratio: f64,
    /// The goal as written in the issue, e.g. "<= 1.0x" or ">= 3000/s".
    pub goal: String,
    pub unit: String,
    /// Whether the goal is met; `null` when the figure was skipped.
    pub met: Option<bool>,
    /// Exactly what the baseline did.
    pub baseline_is: String,
    /// Why the figure was not measured in this run (no number is made up for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Non-finite numbers (a skipped figure) as JSON `null`, and back.
mod nullable {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
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

    /// A row for a figure this run did not measure, saying why.
    pub fn skipped(
        id: &str,
        figure: impl Into<String>,
        unit: &str,
        ratio_limit: f64,
        why: &str,
        baseline_is: &str,
    ) -> Row {
        let mut r = Row::new(
            id,
            figure,
            unit,
            f64::NAN,
            f64::NAN,
            f64::NAN,
            format!("<= {ratio_limit}x"),
            false,
            baseline_is,
        );
        r.met = None;
        r.skipped = Some(why.into());
        r
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
            met: Some(met),
            baseline_is: baseline_is.into(),
            skipped: None,
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
        .map(|r| match &r.skipped {
            Some(_) => [
                r.id.clone(),
                r.figure.clone(),
                "skipped".into(),
                "skipped".into(),
                "-".into(),
                r.goal.clone(),
                "skipped".into(),
            ],
            None => [
                r.id.clone(),
                r.figure.clone(),
                format!("{} {}", fmt_num(r.ours), r.unit),
                format!("{} {}", fmt_num(r.baseline), r.unit),
                format!("{}x", fmt_num(r.ratio)),
                r.goal.clone(),
                if r.met == Some(true) { "yes" } else { "NO" }.into(),
            ],
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
    let skipped: Vec<&Row> = rows.iter().filter(|r| r.skipped.is_some()).collect();
    if !skipped.is_empty() {
        println!();
        for r in skipped {
            println!(
                "  {:<4} skipped: {}",
                r.id,
                r.skipped.as_deref().unwrap_or_default()
            );
        }
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
