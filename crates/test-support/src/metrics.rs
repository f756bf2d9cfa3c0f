//! Reading Prometheus metrics as a test sees them: scrape a `/metrics`
//! URL (or take exposition text), sum a series by name and labels, and
//! wait, bounded, until a series reaches a value.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One sample line of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether every `(label, value)` pair of `labels` is on this sample.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).is_some_and(|have| have == v))
    }
}

/// The samples of exposition `text` (comments and unreadable lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(sample).collect()
}

fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line[i..].starts_with('{') => {
            let close = label_end(&line[i..])? + i;
            (&line[..i], labels(&line[i + 1..close])?, &line[close + 1..])
        }
        Some(i) => (&line[..i], BTreeMap::new(), &line[i..]),
        None => return None,
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Index of the `}` closing the label set that `s` opens, outside quotes.
fn label_end(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// `a="x",b="y\"z"` → {a: x, b: y"z}.
fn labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.is_empty() {
            return Some(out);
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        let mut value = String::new();
        let body = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut chars = body.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.insert(key, value);
        s = &body[end + 1..];
    }
}

/// Sum of the samples of `name` carrying every pair of `labels` (0 if none).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse(text)
        .iter()
        .filter(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
        .sum()
}

/// The same sum, or `None` when no sample of `name` carries `labels`.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<f64> = parse(text)
        .iter()
        .filter(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
        .collect();
    (!hits.is_empty()).then(|| hits.iter().sum())
}

/// The exposition text at `url` (e.g. `http://127.0.0.1:9000/metrics`).
pub async fn scrape(url: &str) -> Result<String, String> {
    crate::install_crypto_provider();
    let response = reqwest::get(url)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
    if status.is_success() {
        Ok(text)
    } else {
        Err(format!("GET {url}: {status}: {text}"))
    }
}

/// Scrapes `url` every 200 ms until `ok` holds for its text, and returns
/// that text; after `timeout`, the last text seen (or the last error) as
/// the error, for the test to show.
pub async fn wait_until(
    url: &str,
    timeout: Duration,
    ok: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match scrape(url).await {
            Ok(text) if ok(&text) => return Ok(text),
            Ok(text) => text,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "not seen at {url} within {timeout:?}; last:\n{last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the sum of `name{labels}` at `url` is at least `at_least`,
/// and returns that sum.
pub async fn wait_for_sum(
    url: &str,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
    timeout: Duration,
) -> Result<f64, String> {
    let text = wait_until(url, timeout, |t| sum(t, name, labels) >= at_least)
        .await
        .map_err(|e| format!("{name}{labels:?} never reached {at_least}: {e}"))?;
    Ok(sum(&text, name, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP sagaflow_inputs_total Inputs.
# TYPE sagaflow_inputs_total counter
sagaflow_inputs_total{input="reply",outcome="applied"} 3
sagaflow_inputs_total{input="event",outcome="applied"} 2
sagaflow_inputs_total{input="event",outcome="parked"} 1
sagaflow_inputs_total_extra 100
sagaflow_owned_partitions 4
sagaflow_odd{reason="a \"quoted\", {braced} one",x="y"} 7 1700000000000
sagaflow_latency_bucket{le="+Inf"} +Inf
"#;

    #[test]
    fn sums_a_series_by_exact_name_and_labels() {
        assert_eq!(sum(TEXT, "sagaflow_inputs_total", &[]), 6.0);
        assert_eq!(
            sum(TEXT, "sagaflow_inputs_total", &[("input", "event")]),
            3.0
        );
        assert_eq!(
            sum(
                TEXT,
                "sagaflow_inputs_total",
                &[("input", "event"), ("outcome", "parked")]
            ),
            1.0
        );
        assert_eq!(sum(TEXT, "sagaflow_owned_partitions", &[]), 4.0);
        assert_eq!(sum(TEXT, "sagaflow_missing", &[]), 0.0);
        assert_eq!(value(TEXT, "sagaflow_missing", &[]), None);
        assert_eq!(
            value(TEXT, "sagaflow_inputs_total", &[("input", "x")]),
            None
        );
        assert_eq!(value(TEXT, "sagaflow_owned_partitions", &[]), Some(4.0));
    }

    #[test]
    fn quoted_label_values_and_timestamps_are_read() {
        let odd = sum(
            TEXT,
            "sagaflow_odd",
            &[("reason", "a \"quoted\", {braced} one"), ("x", "y")],
        );
        assert_eq!(odd, 7.0);
        assert_eq!(
            value(TEXT, "sagaflow_latency_bucket", &[("le", "+Inf")]),
            Some(f64::INFINITY)
        );
        assert_eq!(parse(TEXT).len(), 7);
    }

    #[tokio::test]
    async fn waits_on_a_real_endpoint_and_gives_up_in_time() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move { format!("ticks_total {n}\n") }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let got = wait_for_sum(&url, "ticks_total", &[], 3.0, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(got >= 3.0);
        assert!(hits.load(Ordering::SeqCst) >= 3);
        let never = wait_for_sum(&url, "ticks_total", &[], 1e9, Duration::from_millis(300)).await;
        assert!(never.unwrap_err().contains("never reached"));
    }
}
