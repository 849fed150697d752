//! Human-readable output: one run's table, and the summary of many RESULT
//! lines with ratios against the `studio` runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

fn num(v: &Value, path: &str) -> Option<f64> {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur.get(k)?;
    }
    cur.as_f64()
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    }
}

/// Compact number: 1234567 -> "1.23M".
fn h(x: Option<f64>) -> String {
    let Some(x) = x else { return "-".into() };
    let a = x.abs();
    if a >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else if a >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn ms(us: Option<f64>) -> String {
    us.map_or("-".into(), |u| {
        if u >= 10_000.0 {
            format!("{:.0}", u / 1000.0)
        } else {
            format!("{:.2}", u / 1000.0)
        }
    })
}

fn mib(kb: Option<f64>) -> String {
    kb.map_or("-".into(), |k| format!("{:.1}", k / 1024.0))
}

pub fn print_table(v: &Value) {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "== {} ({}) scenario={} clients={} ready={} agents={} payload={}B",
        s(v, "label"),
        s(v, "target"),
        s(v, "scenario"),
        s(v, "clients"),
        s(v, "ready"),
        s(v, "agents"),
        s(v, "payload_bytes")
    );
    let _ = writeln!(
        o,
        "  connect        {} s ({} conn/s), failed {}, disconnected later {}",
        s(v, "connect_s"),
        h(num(v, "connect_per_s")),
        s(v, "connect_failed"),
        s(v, "disconnected")
    );
    if v.get("published").is_some() {
        let _ = writeln!(
            o,
            "  published      {} in {} s ({} ev/s{})",
            s(v, "published"),
            s(v, "duration_s"),
            h(num(v, "publish_per_s")),
            num(v, "target_rate").map_or(String::new(), |r| format!(", target {r}"))
        );
        let _ = writeln!(
            o,
            "  delivered      {} of {} expected (lost {} = {}%), dup {}, out-of-order {}, wasted {}",
            s(v, "delivered"),
            s(v, "expected"),
            s(v, "lost"),
            s(v, "loss_pct"),
            s(v, "duplicates"),
            s(v, "out_of_order"),
            s(v, "wasted")
        );
        let _ = writeln!(
            o,
            "  rate           {} deliveries/s ({} frames/s incl. wasted) over {} s",
            h(num(v, "delivered_per_s")),
            h(num(v, "frames_per_s")),
            s(v, "deliver_s")
        );
    }
    if v.get("broadcast_received").is_some() {
        let _ = writeln!(
            o,
            "  idle RSS       {} -> {} MiB = {} KiB per connection (loadgen {} KiB/conn)",
            mib(num(v, "target_rss_before_kb")),
            mib(num(v, "target_rss_kb")),
            s(v, "target_rss_per_conn_kb"),
            s(v, "loadgen_rss_per_conn_kb")
        );
        let _ = writeln!(
            o,
            "  broadcast      reached {} of {} in {} s (all: {})",
            s(v, "broadcast_received"),
            s(v, "ready"),
            s(v, "broadcast_s"),
            s(v, "broadcast_all")
        );
    }
    let _ = writeln!(
        o,
        "  latency ms     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        ms(num(v, "latency_us.p50")),
        ms(num(v, "latency_us.p90")),
        ms(num(v, "latency_us.p99")),
        ms(num(v, "latency_us.p999")),
        ms(num(v, "latency_us.max"))
    );
    if v.get("target_cpu_s").is_some() {
        let _ = writeln!(
            o,
            "  target         CPU {} s ({}% of a core), {} us/event, {} ns/delivery; RSS {} MiB, peak {} MiB",
            s(v, "target_cpu_s"),
            s(v, "target_cpu_pct"),
            s(v, "target_cpu_us_per_event"),
            s(v, "target_cpu_ns_per_delivery"),
            mib(num(v, "target_rss_kb")),
            mib(num(v, "target_hwm_kb"))
        );
    } else if v.get("target_hwm_kb").is_some() {
        let _ = writeln!(
            o,
            "  target         peak RSS {} MiB",
            mib(num(v, "target_hwm_kb"))
        );
    }
    let _ = writeln!(
        o,
        "  loadgen        CPU {} s ({}% of a core), RSS {} MiB",
        s(v, "loadgen_cpu_s"),
        s(v, "loadgen_cpu_pct"),
        mib(num(v, "loadgen_rss_kb"))
    );
    if let (Some(t), Some(l)) = (num(v, "target_cpu_pct"), num(v, "loadgen_cpu_pct")) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if t + l > 85.0 * cores {
            let _ = writeln!(
                o,
                "  note           target + loadgen used {:.0}% of {:.0}% available: the machine is saturated, \
                 the loadgen's share limits the result",
                t + l,
                100.0 * cores
            );
        }
    }
    if let Some(Value::Object(e)) = v.get("errors") {
        for (k, n) in e {
            let _ = writeln!(o, "  error x{n}: {k}");
        }
    }
    print!("{o}");
}

fn group_key(v: &Value) -> String {
    let sc = s(v, "scenario");
    let mut k = format!("{sc} N={}", s(v, "clients"));
    if sc == "routed" {
        let _ = write!(k, " A={}", s(v, "agents"));
    }
    // A paced routed run has a target rate too: its own group.
    if !v["target_rate"].is_null() {
        let _ = write!(k, " {}ev/s", s(v, "target_rate"));
    }
    if sc != "idle" {
        let _ = write!(k, " {}B", s(v, "payload_bytes"));
    }
    k
}

/// One row's throughput, CPU, latency and RSS against another's.
fn ratios(a: &Value, b: &Value) -> String {
    format!(
        "deliv/s {}  cpu/delivery {}  cpu/event {}  p50 {}  p99 {}  peak RSS {}",
        ratio(num(a, "delivered_per_s"), num(b, "delivered_per_s")),
        ratio(
            num(a, "target_cpu_ns_per_delivery"),
            num(b, "target_cpu_ns_per_delivery")
        ),
        ratio(
            num(a, "target_cpu_us_per_event"),
            num(b, "target_cpu_us_per_event")
        ),
        ratio(num(a, "latency_us.p50"), num(b, "latency_us.p50")),
        ratio(num(a, "latency_us.p99"), num(b, "latency_us.p99")),
        ratio(num(a, "target_hwm_kb"), num(b, "target_hwm_kb")),
    )
}

/// The median of a field over several runs (the mean of the middle two
/// for an even count); None if no run has it.
fn median(runs: &[&Value], path: &str) -> Option<f64> {
    let mut xs: Vec<f64> = runs.iter().filter_map(|v| num(v, path)).collect();
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    Some(if xs.len() % 2 == 0 {
        (xs[m - 1] + xs[m]) / 2.0
    } else {
        xs[m]
    })
}

/// Cases run more than once (`compare.sh --repeat N`): each label's
/// medians, then studio against every other label round by round, the
/// k-th run of one beside the k-th of the other (the rounds interleave
/// the labels, so a pair shares the box's state of the moment). On a
/// shared box one run's ratio is within the noise; the count of rounds
/// is what can be trusted.
fn print_repeats(groups: &BTreeMap<String, Vec<&Value>>) {
    let mut header = false;
    for (g, vs) in groups {
        // Labels in the order first seen, each with its runs in file order.
        let mut labels: Vec<(String, Vec<&Value>)> = Vec::new();
        for v in vs.iter().filter(|v| s(v, "scenario") != "idle") {
            let l = s(v, "label");
            match labels.iter_mut().find(|(k, _)| *k == l) {
                Some((_, runs)) => runs.push(v),
                None => labels.push((l, vec![v])),
            }
        }
        let Some((_, studio)) = labels.iter().find(|(l, _)| l == "studio") else {
            continue;
        };
        if studio.len() < 2 {
            continue;
        }
        if !header {
            println!();
            println!("Repeated cases (medians over the runs; then studio against each other label, round by round)");
            header = true;
        }
        for (l, runs) in &labels {
            println!(
                "  {g:<30} {l:<16} n={}  deliv/s {}  p50 {} ms  p99 {} ms  cpu/delivery {} ns",
                runs.len(),
                h(median(runs, "delivered_per_s")),
                ms(median(runs, "latency_us.p50")),
                ms(median(runs, "latency_us.p99")),
                median(runs, "target_cpu_ns_per_delivery")
                    .map_or("-".into(), |x| format!("{x:.0}")),
            );
        }
        for (l, runs) in labels.iter().filter(|(l, _)| l != "studio") {
            let pairs: Vec<(&Value, &Value)> =
                studio.iter().copied().zip(runs.iter().copied()).collect();
            let rounds = |path: &str, studio_better: fn(f64, f64) -> bool| {
                pairs
                    .iter()
                    .filter(|(a, b)| match (num(a, path), num(b, path)) {
                        (Some(x), Some(y)) => studio_better(x, y),
                        _ => false,
                    })
                    .count()
            };
            let n = pairs.len();
            println!(
                "  {g:<30} studio vs {l:<16} p99 at or under in {}/{n} rounds, cpu/delivery at or under in {}/{n}, deliv/s at or over in {}/{n}",
                rounds("latency_us.p99", |x, y| x <= y),
                rounds("target_cpu_ns_per_delivery", |x, y| x <= y),
                rounds("delivered_per_s", |x, y| x >= y),
            );
        }
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

pub fn summarize(files: &[PathBuf]) -> Result<()> {
    let mut rows = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for line in text.lines() {
            if let Some(j) = line.strip_prefix("RESULT ") {
                rows.push(
                    serde_json::from_str::<Value>(j)
                        .with_context(|| format!("bad RESULT line in {}", f.display()))?,
                );
            }
        }
    }
    if rows.is_empty() {
        println!("no RESULT lines");
        return Ok(());
    }
    println!(
        "{:<16} {:<30} {:>8} {:>9} {:>8} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8} {:>7}",
        "label",
        "case",
        "pub/s",
        "deliv/s",
        "loss%",
        "dup",
        "ooo",
        "wasted",
        "p50ms",
        "p99ms",
        "maxms",
        "cpu%",
        "us/event",
        "ns/deliv",
        "peakMiB",
        "lg-cpu%"
    );
    for v in &rows {
        if s(v, "scenario") == "idle" {
            println!(
                "{:<16} {:<30} rss/conn {} KiB, rss {} MiB (peak {}), broadcast reached {}/{} in {} s, p99 {} ms, connect {} s",
                s(v, "label"),
                group_key(v),
                s(v, "target_rss_per_conn_kb"),
                mib(num(v, "target_rss_kb")),
                mib(num(v, "target_hwm_kb")),
                s(v, "broadcast_received"),
                s(v, "ready"),
                s(v, "broadcast_s"),
                ms(num(v, "latency_us.p99")),
                s(v, "connect_s"),
            );
            continue;
        }
        println!(
            "{:<16} {:<30} {:>8} {:>9} {:>8} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8} {:>7}",
            s(v, "label"),
            group_key(v),
            h(num(v, "publish_per_s")),
            h(num(v, "delivered_per_s")),
            s(v, "loss_pct"),
            s(v, "duplicates"),
            s(v, "out_of_order"),
            h(num(v, "wasted")),
            ms(num(v, "latency_us.p50")),
            ms(num(v, "latency_us.p99")),
            ms(num(v, "latency_us.max")),
            s(v, "target_cpu_pct"),
            s(v, "target_cpu_us_per_event"),
            s(v, "target_cpu_ns_per_delivery"),
            mib(num(v, "target_hwm_kb")),
            s(v, "loadgen_cpu_pct"),
        );
    }

    // Ratios: studio against every other label in the same case (with
    // --repeat, the first round's; the repeated section has the rest).
    let mut groups: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for v in &rows {
        groups.entry(group_key(v)).or_default().push(v);
    }
    println!();
    println!("Ratios (studio / other; deliveries/s: higher is better for studio when > 1; CPU, latency, RSS: lower is better when < 1)");
    for (g, vs) in &groups {
        let Some(base) = vs.iter().find(|v| s(v, "label") == "studio") else {
            continue;
        };
        for o in vs.iter().filter(|v| s(v, "label") != "studio") {
            if s(base, "scenario") == "idle" {
                println!(
                    "  {g:<30} vs {:<16} rss/conn {}  peak RSS {}",
                    s(o, "label"),
                    ratio(
                        num(base, "target_rss_per_conn_kb"),
                        num(o, "target_rss_per_conn_kb")
                    ),
                    ratio(num(base, "target_hwm_kb"), num(o, "target_hwm_kb")),
                );
                continue;
            }
            println!("  {g:<30} vs {:<16} {}", s(o, "label"), ratios(base, o));
        }
        // The one-thread relay against Redis's one thread as well.
        let one = vs.iter().find(|v| s(v, "label") == "studio-1w");
        let redis = vs.iter().find(|v| s(v, "label") == "redis");
        if let (Some(a), Some(b)) = (one, redis) {
            println!("  {g:<30} studio-1w vs redis    {}", ratios(a, b));
        }
    }

    print_repeats(&groups);

    // TLS cost: the same case over wss:// against plain ws://.
    for (g, vs) in &groups {
        let plain = vs.iter().find(|v| s(v, "label") == "studio");
        let tls = vs.iter().find(|v| s(v, "label") == "studio-tls");
        let (Some(plain), Some(tls)) = (plain, tls) else {
            continue;
        };
        println!(
            "  {g:<30} TLS cost (studio-tls / studio): deliv/s {}  cpu/delivery {} ({} vs {} ns)  cpu/event {}",
            ratio(num(tls, "delivered_per_s"), num(plain, "delivered_per_s")),
            ratio(
                num(tls, "target_cpu_ns_per_delivery"),
                num(plain, "target_cpu_ns_per_delivery")
            ),
            s(tls, "target_cpu_ns_per_delivery"),
            s(plain, "target_cpu_ns_per_delivery"),
            ratio(
                num(tls, "target_cpu_us_per_event"),
                num(plain, "target_cpu_us_per_event")
            ),
        );
    }

    // Routed scaling: relay CPU per published event, bigger run vs smaller.
    // (With --repeat, each case's first run.)
    let mut routed: Vec<&Value> = Vec::new();
    for v in rows
        .iter()
        .filter(|v| s(v, "label") == "studio" && s(v, "scenario") == "routed")
    {
        if !routed.iter().any(|r| group_key(r) == group_key(v)) {
            routed.push(v);
        }
    }
    if routed.len() >= 2 {
        let mut sorted = routed.clone();
        sorted.sort_by(|a, b| {
            num(a, "clients")
                .partial_cmp(&num(b, "clients"))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let small = sorted[0];
        for big in &sorted[1..] {
            println!(
                "  studio routed scaling: {} vs {}: cpu/event {} ({} vs {} us), cpu/delivery {}",
                group_key(big),
                group_key(small),
                ratio(
                    num(big, "target_cpu_us_per_event"),
                    num(small, "target_cpu_us_per_event")
                ),
                s(big, "target_cpu_us_per_event"),
                s(small, "target_cpu_us_per_event"),
                ratio(
                    num(big, "target_cpu_ns_per_delivery"),
                    num(small, "target_cpu_ns_per_delivery")
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn median_of_odd_even_and_missing() {
        let runs = [json!({"a": 3.0}), json!({"a": 1.0}), json!({"a": 2.0})];
        let refs: Vec<&Value> = runs.iter().collect();
        assert_eq!(median(&refs, "a"), Some(2.0));
        assert_eq!(median(&refs[..2], "a"), Some(2.0), "mean of the middle two");
        let gaps = [json!({"a": 5.0}), json!({"b": 1.0})];
        let refs: Vec<&Value> = gaps.iter().collect();
        assert_eq!(
            median(&refs, "a"),
            Some(5.0),
            "runs without it are left out"
        );
        assert_eq!(median(&refs, "c"), None);
    }
}
