//! The two Prometheus exposition formats `/metrics` speaks: OpenMetrics text, which
//! `prometheus-client` writes and Prometheus asks for, and the older Prometheus text format
//! (`text/plain; version=0.0.4`), which `promtool check metrics`, many agents and a plain
//! `curl` get, as from every official Prometheus client library.

use std::fmt::Write;

/// The content type of OpenMetrics text ([`Metrics::encode`](crate::Metrics::encode)).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the Prometheus text format
/// ([`Metrics::encode_text`](crate::Metrics::encode_text)).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` header prefers OpenMetrics (as Prometheus's does:
/// `application/openmetrics-text;version=1.0.0,…,text/plain;version=0.0.4;q=0.5,…`): it names
/// it with a quality above zero and at least that of `text/plain` (or `*/*`, `text/*`).
/// Otherwise (`*/*`, `text/plain`, no header) the answer is the Prometheus text format.
///
/// ```
/// use unwedge_admin::exposition::wants_openmetrics;
/// let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
///                   version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// assert!(wants_openmetrics(Some(prometheus)));
/// assert!(!wants_openmetrics(Some("*/*")));
/// assert!(!wants_openmetrics(Some("application/openmetrics-text;Q=0")));
/// assert!(!wants_openmetrics(Some("text/plain;q=1, application/openmetrics-text;q=0.1")));
/// assert!(!wants_openmetrics(None));
/// ```
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    // The best quality given to each format.
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let kind = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().ok())?
            })
            .unwrap_or(1.0);
        match kind.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// OpenMetrics text, as `prometheus-client` writes it, in the Prometheus text format: a
/// counter family `x` becomes `x_total` (the name its samples have), an info family `x`
/// becomes gauge `x_info`, `unknown` becomes `untyped`; `# UNIT` and `# EOF` lines,
/// `_created` samples and exemplars go (that format has none of them). The samples are
/// otherwise the same lines.
///
/// ```
/// let om = concat!(
///     "# HELP jobs Jobs done.\n# TYPE jobs counter\njobs_total 3\n",
///     "# HELP build Build.\n# TYPE build info\nbuild_info{v=\"1\"} 1\n# EOF\n",
/// );
/// assert_eq!(
///     unwedge_admin::exposition::openmetrics_to_text(om),
///     concat!(
///         "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total 3\n",
///         "# HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{v=\"1\"} 1\n",
///     )
/// );
/// ```
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The last HELP line, written with the TYPE line that follows it (which may rename it).
    let mut help: Option<(&str, &str)> = None;
    // The current family's name, to know its `_created` samples.
    let mut family = "";
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            family = name;
            let (shown, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_owned(), "gauge"),
                "gaugehistogram" => (name.to_owned(), "histogram"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(h, _)| *h == name) {
                // OpenMetrics escapes `"` in HELP too; the text format only `\` and `\n`.
                let text = text.replace("\\\"", "\"");
                let _ = writeln!(out, "# HELP {shown} {text}");
            }
            let _ = writeln!(out, "# TYPE {shown} {kind}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue; // `# UNIT`, `# EOF`
        }
        // An exemplar (` # {…} value`) follows the value: look for it after the labels,
        // whose quoted values may hold ` # ` themselves.
        let values_at = labels_end(line);
        let sample = match line[values_at..].find(" # ") {
            Some(at) => &line[..values_at + at],
            None => line,
        };
        let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
        if sample[..name_end]
            .strip_prefix(family)
            .is_some_and(|suffix| suffix == "_created")
        {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// Where a sample line's label set ends (just past its `}`), or its name if it has none.
fn labels_end(line: &str) -> usize {
    let Some(open) = line
        .find(['{', ' '])
        .filter(|&i| line[i..].starts_with('{'))
    else {
        return line.find(' ').unwrap_or(line.len());
    };
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return open + i + 1,
            _ => {}
        }
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_samples_exemplars_and_units_are_left_out() {
        let om = concat!(
            "# HELP req Requests, \\\"all\\\".\n",
            "# TYPE req counter\n",
            "# UNIT req requests\n",
            "req_total{a=\"x # y\"} 7 # {trace_id=\"abc\"} 1.0\n",
            "req_created 1.7e9\n",
            "# TYPE odd unknown\n",
            "odd 1\n",
            "# TYPE lat histogram\n",
            "lat_bucket{le=\"+Inf\"} 2\n",
            "lat_count 2\n",
            "lat_sum 0.5\n",
            "lat_created 1.7e9\n",
            "# EOF\n",
        );
        assert_eq!(
            openmetrics_to_text(om),
            concat!(
                "# HELP req_total Requests, \"all\".\n",
                "# TYPE req_total counter\n",
                "req_total{a=\"x # y\"} 7\n",
                "# TYPE odd untyped\n",
                "odd 1\n",
                "# TYPE lat histogram\n",
                "lat_bucket{le=\"+Inf\"} 2\n",
                "lat_count 2\n",
                "lat_sum 0.5\n",
            )
        );
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A label value holding what a route may (`{`, `}`, ` # `, `_created`, escaped
        /// quotes and backslashes, multibyte characters): the sample is kept whole, its
        /// exemplar left out.
        #[test]
        fn any_label_value_keeps_its_sample_whole(
            value in proptest::collection::vec(
                prop::sample::select(&[
                    "a", " ", "{", "}", " # ", "#", "=", ",", "\\\"", "\\\\", "\\n", "_created", "é",
                    "日本", "🦀",
                ][..]),
                0..16,
            )
            .prop_map(|p| p.concat()),
            exemplar in any::<bool>(),
        ) {
            let sample = format!("req_total{{route=\"{value}\"}} 7");
            let om = format!(
                "# HELP req Requests.\n# TYPE req counter\n{sample}{}\nreq_created 1.7e9\n# EOF\n",
                if exemplar { " # {trace_id=\"abc\"} 1.0" } else { "" },
            );
            let text = openmetrics_to_text(&om);
            prop_assert_eq!(
                text,
                format!("# HELP req_total Requests.\n# TYPE req_total counter\n{sample}\n")
            );
        }
    }
}
