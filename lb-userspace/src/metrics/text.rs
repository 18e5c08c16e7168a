//! Prometheus text 0.0.4 from the OpenMetrics text prometheus-client writes.

/// OpenMetrics text as Prometheus text format 0.0.4: no `# EOF` or `# UNIT`, and a counter's
/// `# TYPE`/`# HELP` name its `_total` samples, as 0.0.4 parsers expect.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            (counters.contains(name) && !name.ends_with("_total"))
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_samples_and_drops_eof() {
        let om = "# HELP wklb_packets Every packet.\n# TYPE wklb_packets counter\nwklb_packets_total{reason=\"forwarded\"} 3\n# HELP wklb_flows Entries.\n# TYPE wklb_flows gauge\nwklb_flows 2\n# EOF\n";
        let t = to_prometheus_text(om);
        assert!(t.contains("# TYPE wklb_packets_total counter"), "{t}");
        assert!(t.contains("# HELP wklb_packets_total Every packet."), "{t}");
        assert!(t.contains("# TYPE wklb_flows gauge"), "{t}");
        assert!(!t.contains("EOF"), "{t}");
    }
}
