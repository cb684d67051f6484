//! Metric declarations: which metrics are sent, under which dimension sets, with which unit.
//!
//! With no declaration every metric is sent with one dimension set made of all its labels
//! (point attributes plus the resource attributes asked for as dimensions). With declarations,
//! only metrics that match one are sent (the others are counted in
//! `tidewater_emf_undeclared_points_total`), each under the declared dimension sets whose
//! labels the point has, plus the configured rollups.

use std::collections::BTreeMap;

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

/// CloudWatch refuses a dimension set of more than this many names.
pub const MAX_DIMENSIONS_PER_SET: usize = 30;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Declaration {
    /// Regular expressions matched against the whole metric name; empty matches every metric.
    pub metrics: Vec<String>,
    /// Only points whose attribute `key` matches the regular expression (whole value).
    pub match_attributes: BTreeMap<String, String>,
    /// Dimension sets, each a list of label names (at most 30); a set whose labels a point
    /// does not all have is skipped for that point. `[[]]` is the metric without dimensions.
    pub dimensions: Vec<Vec<String>>,
    /// CloudWatch unit ("Milliseconds", "Count", ...) instead of the one mapped from the
    /// metric's OTel unit; empty keeps the mapping.
    pub unit: String,
}

/// Extra dimension sets added to every metric, as in the OTel Collector's EMF exporter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rollup {
    #[default]
    None,
    /// One set per dimension name.
    Single,
    /// The metric without dimensions, and one set per dimension name.
    ZeroAndSingle,
}

/// What a declaration says about one point.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub sets: Vec<Vec<String>>,
    /// A declared CloudWatch unit, overriding the mapped one.
    pub unit: Option<String>,
}

struct Compiled {
    metrics: Option<RegexSet>,
    attributes: Vec<(String, Regex)>,
    dimensions: Vec<Vec<String>>,
    unit: Option<String>,
}

pub struct Declarations {
    declared: Vec<Compiled>,
    rollup: Rollup,
}

impl Declarations {
    pub fn new(declarations: &[Declaration], rollup: Rollup) -> Result<Self, String> {
        let whole = |r: &String| format!("^(?:{r})$");
        let mut declared = Vec::new();
        for (i, d) in declarations.iter().enumerate() {
            let at = format!("sinks.emf.declarations[{i}]");
            let metrics = if d.metrics.is_empty() {
                None
            } else {
                Some(
                    RegexSet::new(d.metrics.iter().map(whole))
                        .map_err(|e| format!("{at}.metrics: {e}"))?,
                )
            };
            let attributes = d
                .match_attributes
                .iter()
                .map(|(k, r)| {
                    Regex::new(&whole(r))
                        .map(|re| (k.clone(), re))
                        .map_err(|e| format!("{at}.match_attributes.{k}: {e}"))
                })
                .collect::<Result<_, _>>()?;
            if d.dimensions.is_empty() {
                return Err(format!(
                    "{at}.dimensions: at least one dimension set is needed (use [[]] for none)"
                ));
            }
            if let Some(set) = d
                .dimensions
                .iter()
                .find(|s| s.len() > MAX_DIMENSIONS_PER_SET)
            {
                return Err(format!(
                    "{at}.dimensions: a set has {} names; CloudWatch allows {MAX_DIMENSIONS_PER_SET}",
                    set.len()
                ));
            }
            if !d.unit.is_empty() && !UNITS.contains(&d.unit.as_str()) {
                return Err(format!(
                    "{at}.unit: {:?} is not a CloudWatch unit (one of {})",
                    d.unit,
                    UNITS.join(", ")
                ));
            }
            declared.push(Compiled {
                metrics,
                attributes,
                dimensions: d.dimensions.clone(),
                unit: (!d.unit.is_empty()).then(|| d.unit.clone()),
            });
        }
        Ok(Declarations { declared, rollup })
    }

    /// The dimension sets (and unit) for a point of `metric` with `labels`; `None` when
    /// declarations exist and none selects it.
    pub fn select(&self, metric: &str, labels: &BTreeMap<String, String>) -> Option<Selection> {
        let mut sets: Vec<Vec<String>> = Vec::new();
        let mut unit = None;
        if self.declared.is_empty() {
            // Every label, in sets of at most 30: more labels than that are split across
            // sets rather than dropped.
            let names: Vec<String> = labels.keys().cloned().collect();
            if names.is_empty() {
                sets.push(Vec::new());
            }
            sets.extend(names.chunks(MAX_DIMENSIONS_PER_SET).map(<[String]>::to_vec));
        } else {
            for d in &self.declared {
                if d.metrics.as_ref().is_some_and(|m| !m.is_match(metric)) {
                    continue;
                }
                if !d
                    .attributes
                    .iter()
                    .all(|(k, re)| labels.get(k).is_some_and(|v| re.is_match(v)))
                {
                    continue;
                }
                let before = sets.len();
                for set in &d.dimensions {
                    if set.iter().all(|k| labels.contains_key(k)) {
                        push_unique(&mut sets, set.clone());
                    }
                }
                if sets.len() > before && unit.is_none() {
                    unit = d.unit.clone();
                }
            }
            if sets.is_empty() {
                return None;
            }
        }
        let mut names: Vec<String> = sets.iter().flatten().cloned().collect();
        names.sort();
        names.dedup();
        if self.rollup == Rollup::ZeroAndSingle {
            push_unique(&mut sets, Vec::new());
        }
        if self.rollup != Rollup::None {
            for n in names {
                push_unique(&mut sets, vec![n]);
            }
        }
        Some(Selection { sets, unit })
    }
}

/// Adds `set` unless one with the same names is there.
fn push_unique(sets: &mut Vec<Vec<String>>, set: Vec<String>) {
    let mut sorted = set.clone();
    sorted.sort();
    let same = |s: &Vec<String>| {
        let mut t = s.clone();
        t.sort();
        t == sorted
    };
    if !sets.iter().any(same) {
        sets.push(set);
    }
}

/// The units CloudWatch knows.
pub const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// The CloudWatch unit for an OTel (UCUM) unit; empty when CloudWatch has no equivalent
/// (nanoseconds, dimensionless "1", custom units).
pub fn cloudwatch_unit(otel: &str) -> &'static str {
    match otel {
        "s" => "Seconds",
        "ms" => "Milliseconds",
        "us" => "Microseconds",
        "By" => "Bytes",
        "kBy" | "KBy" => "Kilobytes",
        "MBy" => "Megabytes",
        "GBy" => "Gigabytes",
        "TBy" => "Terabytes",
        "bit" => "Bits",
        "kbit" => "Kilobits",
        "Mbit" => "Megabits",
        "Gbit" => "Gigabits",
        "%" => "Percent",
        "By/s" => "Bytes/Second",
        "bit/s" => "Bits/Second",
        "1/s" => "Count/Second",
        u if u.starts_with('{') && u.ends_with("}/s") => "Count/Second",
        // Annotations such as {request} count things.
        u if u.starts_with('{') && u.ends_with('}') => "Count",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sets(s: &[&[&str]]) -> Vec<Vec<String>> {
        s.iter()
            .map(|set| set.iter().map(|n| n.to_string()).collect())
            .collect()
    }

    #[test]
    fn without_declarations_every_label_is_a_dimension() {
        let d = Declarations::new(&[], Rollup::None).unwrap();
        let l = labels(&[("service.name", "checkout"), ("route", "/a")]);
        assert_eq!(
            d.select("x", &l),
            Some(Selection {
                sets: sets(&[&["route", "service.name"]]),
                unit: None
            })
        );
        assert_eq!(d.select("x", &labels(&[])).unwrap().sets, sets(&[&[]]));
    }

    #[test]
    fn more_than_thirty_labels_are_split_across_sets() {
        let d = Declarations::new(&[], Rollup::None).unwrap();
        let names: Vec<String> = (0..45).map(|i| format!("k{i:02}")).collect();
        let l: BTreeMap<String, String> = names.iter().map(|n| (n.clone(), "v".into())).collect();
        let s = d.select("x", &l).unwrap().sets;
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].len(), s[1].len()), (30, 15));
        assert_eq!(s.concat(), names);
    }

    #[test]
    fn declarations_select_metrics_sets_and_units() {
        let decls = vec![
            Declaration {
                metrics: vec!["app\\..*".into()],
                dimensions: vec![
                    vec!["service.name".into(), "route".into()],
                    vec!["service.name".into(), "missing".into()],
                ],
                unit: "Milliseconds".into(),
                ..Default::default()
            },
            Declaration {
                metrics: vec!["app.requests".into()],
                match_attributes: [("route".to_string(), "/check.*".to_string())].into(),
                dimensions: vec![
                    vec!["route".into()],
                    vec!["route".into(), "service.name".into()],
                ],
                ..Default::default()
            },
        ];
        let d = Declarations::new(&decls, Rollup::None).unwrap();
        let l = labels(&[
            ("service.name", "checkout"),
            ("route", "/checkout"),
            ("extra", "x"),
        ]);
        assert_eq!(
            d.select("app.requests", &l),
            Some(Selection {
                sets: sets(&[&["service.name", "route"], &["route"]]),
                unit: Some("Milliseconds".into())
            })
        );
        // Whole-name match: "app" alone and "xapp.requests" are not selected.
        assert_eq!(d.select("app", &l), None);
        assert_eq!(d.select("xapp.requests", &l), None);
        // The attribute matcher filters the second declaration only.
        let other = labels(&[("service.name", "checkout"), ("route", "/pay")]);
        assert_eq!(
            d.select("app.requests", &other).unwrap().sets,
            sets(&[&["service.name", "route"]])
        );
    }

    #[test]
    fn rollups_add_zero_and_single_dimension_sets() {
        let decls = vec![Declaration {
            dimensions: vec![vec!["a".into(), "b".into()]],
            ..Default::default()
        }];
        let l = labels(&[("a", "1"), ("b", "2")]);
        let single = Declarations::new(&decls, Rollup::Single).unwrap();
        assert_eq!(
            single.select("m", &l).unwrap().sets,
            sets(&[&["a", "b"], &["a"], &["b"]])
        );
        let zero = Declarations::new(&decls, Rollup::ZeroAndSingle).unwrap();
        assert_eq!(
            zero.select("m", &l).unwrap().sets,
            sets(&[&["a", "b"], &[], &["a"], &["b"]])
        );
    }

    #[test]
    fn bad_declarations_are_refused_with_the_key() {
        let bad = |d: Declaration| Declarations::new(&[d], Rollup::None).err().unwrap();
        assert!(bad(Declaration {
            metrics: vec!["(".into()],
            dimensions: vec![vec![]],
            ..Default::default()
        })
        .contains("declarations[0].metrics"));
        assert!(bad(Declaration {
            dimensions: vec![(0..31).map(|i| i.to_string()).collect()],
            ..Default::default()
        })
        .contains("30"));
        assert!(bad(Declaration {
            dimensions: vec![vec![]],
            unit: "ms".into(),
            ..Default::default()
        })
        .contains("not a CloudWatch unit"));
        assert!(bad(Declaration::default()).contains("at least one dimension set"));
    }

    #[test]
    fn otel_units_map_to_cloudwatch_units() {
        assert_eq!(cloudwatch_unit("ms"), "Milliseconds");
        assert_eq!(cloudwatch_unit("{request}"), "Count");
        assert_eq!(cloudwatch_unit("By/s"), "Bytes/Second");
        assert_eq!(cloudwatch_unit("1"), "");
        assert_eq!(cloudwatch_unit("ns"), "");
    }
}
