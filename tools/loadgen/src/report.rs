//! Prints both benchmarks and their ratio as a table, CSV or JSON.

use serde_json::json;

use crate::stats::Summary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

fn errors(s: &Summary) -> String {
    if s.errors.is_empty() {
        "0".to_owned()
    } else {
        s.errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub fn render(format: Format, rows: &[Summary], ratio: Option<f64>, context: &str) -> String {
    match format {
        Format::Table => {
            let mut out = format!(
                "{:<34} {:>5} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}  errors\n",
                "benchmark",
                "conc",
                "ok",
                "secs",
                "per_sec",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "max_ms"
            );
            for s in rows {
                out.push_str(&format!(
                    "{:<34} {:>5} {:>9} {:>8.1} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {}\n",
                    s.name,
                    s.concurrency,
                    s.ok,
                    s.seconds,
                    s.per_second,
                    s.p50_ms,
                    s.p90_ms,
                    s.p99_ms,
                    s.max_ms,
                    errors(s)
                ));
            }
            if let Some(r) = ratio {
                out.push_str(&format!(
                    "\naccepted payments/s ÷ pgbench inserts/s = {r:.3} ({:.1} single-row inserts' worth of work per payment)\n",
                    if r > 0.0 { 1.0 / r } else { 0.0 }
                ));
            }
            out.push_str(&format!("{context}\n"));
            out
        }
        Format::Csv => {
            let mut out = String::from(
                "benchmark,concurrency,ok,seconds,per_second,p50_ms,p90_ms,p99_ms,max_ms,errors\n",
            );
            for s in rows {
                out.push_str(&format!(
                    "\"{}\",{},{},{:.3},{:.2},{:.3},{:.3},{:.3},{:.3},\"{}\"\n",
                    s.name,
                    s.concurrency,
                    s.ok,
                    s.seconds,
                    s.per_second,
                    s.p50_ms,
                    s.p90_ms,
                    s.p99_ms,
                    s.max_ms,
                    errors(s)
                ));
            }
            if let Some(r) = ratio {
                out.push_str(&format!("\"ratio ingress/pgbench\",,,,{r:.4},,,,,\n"));
            }
            out
        }
        Format::Json => {
            let value = json!({
                "benchmarks": rows,
                "ratio_ingress_to_pgbench": ratio,
                "context": context,
            });
            format!(
                "{}\n",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            )
        }
    }
}
