//! Result tables for people: aligned plain text for a terminal, and Markdown for reports.

use crate::MetricReport;

/// Format one cell: 4 decimals, `-` for a metric the report lacks.
fn cell(report: &MetricReport, name: &str) -> String {
    match report.get(name) {
        Some(v) => format!("{v:.4}"),
        None => "-".to_owned(),
    }
}

fn header_and_cells(
    rows: &[(String, &MetricReport)],
    metric_names: &[&str],
) -> (Vec<String>, Vec<Vec<String>>) {
    let header: Vec<String> = std::iter::once("name".to_owned())
        .chain(metric_names.iter().map(|s| (*s).to_owned()))
        .collect();
    let cells = rows
        .iter()
        .map(|(label, report)| {
            std::iter::once(label.clone())
                .chain(metric_names.iter().map(|m| cell(report, m)))
                .collect()
        })
        .collect();
    (header, cells)
}

/// An aligned plain-text table: one row per `(label, report)`, one column per metric name,
/// values with 4 decimals (labels left-aligned, numbers right-aligned, a dashed rule under the
/// header). A metric missing from a report shows as `-`.
///
/// ```text
/// name       ndcg@10  recall@10
/// ---------  -------  ---------
/// pop         0.0123     0.0456
/// ```
pub fn format_table(rows: &[(String, &MetricReport)], metric_names: &[&str]) -> String {
    let (header, cells) = header_and_cells(rows, metric_names);
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .chain(std::iter::once(header[c].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |row: &[String]| -> String {
        let parts: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c == 0 {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        parts.join("  ").trim_end().to_owned()
    };
    let mut out = line(&header);
    out.push('\n');
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    out.push_str(&rule.join("  "));
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// The same table in GitHub Markdown (numbers right-aligned). `|` in labels is escaped.
pub fn format_markdown_table(rows: &[(String, &MetricReport)], metric_names: &[&str]) -> String {
    let (header, cells) = header_and_cells(rows, metric_names);
    let esc = |s: &str| s.replace('|', "\\|");
    let mut out = String::new();
    out.push_str(&format!(
        "| {} |\n",
        header
            .iter()
            .map(|s| esc(s))
            .collect::<Vec<_>>()
            .join(" | ")
    ));
    let align: Vec<&str> = (0..header.len())
        .map(|c| if c == 0 { "---" } else { "---:" })
        .collect();
    out.push_str(&format!("|{}|\n", align.join("|")));
    for row in &cells {
        out.push_str(&format!(
            "| {} |\n",
            row.iter().map(|s| esc(s)).collect::<Vec<_>>().join(" | ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn report(pairs: &[(&str, f64)]) -> MetricReport {
        MetricReport {
            n_evaluated: 1,
            n_skipped: 0,
            metrics: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect::<BTreeMap<_, _>>(),
            per_user: None,
            seconds: 0.0,
        }
    }

    #[test]
    fn plain_table_is_aligned() {
        let a = report(&[("ndcg@10", 0.123456), ("recall@10", 0.5)]);
        let b = report(&[("ndcg@10", 0.04)]);
        let rows = vec![("multvae".to_owned(), &a), ("pop".to_owned(), &b)];
        let t = format_table(&rows, &["ndcg@10", "recall@10"]);
        let expected = "\
name     ndcg@10  recall@10
-------  -------  ---------
multvae   0.1235     0.5000
pop       0.0400          -
";
        assert_eq!(t, expected);
    }

    #[test]
    fn markdown_table() {
        let a = report(&[("hit@10", 1.0)]);
        let rows = vec![("a|b".to_owned(), &a)];
        let t = format_markdown_table(&rows, &["hit@10"]);
        assert_eq!(t, "| name | hit@10 |\n|---|---:|\n| a\\|b | 1.0000 |\n");
    }
}
