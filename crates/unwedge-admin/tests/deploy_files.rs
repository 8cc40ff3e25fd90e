//! deploy/: the Prometheus rules refer to metrics that exist and pass their promtool unit
//! tests; the Kubernetes manifest's probes and grace period agree with the supervisor's flags.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::Command;

use common::{have, output, skip};
use unwedge_admin::{HangKind, Metrics, RestartReason};

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

/// Every YAML document of `file`, as JSON, read by PyYAML; `None` (after printing why)
/// without python3 or PyYAML.
async fn yaml(file: &str) -> Option<Vec<serde_json::Value>> {
    if !have("python3") {
        skip("python3 not found (apt-get install python3)");
        return None;
    }
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import sys, json\ntry:\n import yaml\nexcept ImportError:\n sys.exit(3)\n\
         print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
    ])
    .arg(deploy(file));
    let out = output(cmd, None).await;
    if out.status.code() == Some(3) {
        skip("python3 cannot import yaml (pip install pyyaml)");
        return None;
    }
    assert!(
        out.status.success(),
        "{file} is not valid YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The metric names a scrape can contain (with `_total`, `_bucket`, … suffixes).
fn exported_names() -> BTreeSet<String> {
    let m = Metrics::new("t");
    m.record_restart(RestartReason::Hang);
    m.record_panic("/");
    m.record_hang(HangKind::Probe);
    m.record_alert_failed("webhook");
    m.record_alert_sent("webhook");
    m.record_alert_dropped("duplicate");
    m.record_crash_to_ready(Duration::from_millis(1));
    m.record_report_written(false);
    m.observe_status(&unwedge_admin::StatusView::new(
        unwedge_admin::SupervisorInfo::new("t", 1),
    ));
    let text = m.encode();
    let mut names: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    // Families with no sample in this scrape (per-worker series without workers) are declared
    // by their `# TYPE` line.
    for l in text.lines() {
        let mut w = l.split(' ').skip(2);
        let (Some(family), Some(kind)) = (w.next(), w.next()) else {
            continue;
        };
        if !l.starts_with("# TYPE ") {
            continue;
        }
        match kind {
            "counter" => names.insert(format!("{family}_total")),
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| names.insert(format!("{family}{s}")))
                .fold(false, |a, b| a | b),
            "info" => names.insert(format!("{family}_info")),
            _ => names.insert(family.to_owned()),
        };
    }
    names
}

#[tokio::test]
async fn prometheus_rules_use_real_metrics_and_pass_promtool() {
    let Some(docs) = yaml("prometheus-rules.yml").await else {
        return;
    };
    let names = exported_names();
    let rules = docs[0]["groups"][0]["rules"]
        .as_array()
        .expect("groups[0].rules");
    assert!(rules.len() >= 5);
    let mut seen = BTreeSet::new();
    for rule in rules {
        let alert = rule["alert"].as_str().expect("every rule is an alert");
        assert!(seen.insert(alert), "duplicate alert {alert}");
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["warning", "critical"].contains(&severity),
            "{alert}: severity {severity:?}"
        );
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{alert}: no summary"
        );
        let expr = rule["expr"].as_str().unwrap();
        for (i, _) in expr.match_indices("unwedge_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                names.contains(&name),
                "{alert} uses {name}, which is not exported: {names:?}"
            );
        }
    }
    // Giving up shows as the supervisor restarting (its uptime resets): it exits within
    // moments, so no scrape sees `unwedge_gave_up 1` and no rule may wait for one.
    for topic in ["CrashLoop", "Hung", "Tainted", "SupervisorRestarting"] {
        assert!(
            seen.iter().any(|a| a.contains(topic)),
            "no alert about {topic}"
        );
    }

    if !have("promtool") {
        skip("promtool not found (apt-get install prometheus): rules not unit-tested");
        return;
    }
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "rules"])
        .arg(deploy("prometheus-rules.yml"));
    let check = output(cmd, None).await;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let mut cmd = Command::new("promtool");
    cmd.args(["test", "rules", "prometheus-rules.test.yml"])
        .current_dir(deploy(""));
    let test = output(cmd, None).await;
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

fn flag(args: &[serde_json::Value], name: &str) -> Option<String> {
    args.iter()
        .filter_map(|a| a.as_str())
        .find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

#[tokio::test]
async fn kubernetes_probes_and_grace_period_match_the_flags() {
    let Some(docs) = yaml("kubernetes/deployment.yaml").await else {
        return;
    };
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args = c["args"].as_array().unwrap();

    let admin = flag(args, "--admin").expect("--admin set");
    let port: u16 = admin.rsplit(':').next().unwrap().parse().unwrap();
    let admin_port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("a port named admin");
    assert_eq!(admin_port["containerPort"], port);
    assert!(
        !admin.starts_with("127.") && !admin.starts_with("[::1]"),
        "probes come from outside the pod: --admin must not be loopback"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");

    let stop =
        humantime::parse_duration(&flag(args, "--stop-timeout").expect("--stop-timeout set"))
            .unwrap();
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("preStop sleep");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    // After --stop-timeout the supervisor still flushes its alerts (5 s at most): the kubelet
    // must not SIGKILL it while it says which workers did not drain.
    assert!(
        grace > pre_stop + stop.as_secs() + 5,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop}s + --stop-timeout {stop:?} + 5 s of alert flush"
    );
    assert!(
        args.iter().any(|a| a == "--"),
        "the worker command follows --"
    );

    // The Dockerfile's defaults agree with the manifest.
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/unwedge", "run"]"#));
    assert!(dockerfile.contains(&format!(r#""--admin", "{admin}""#)));
    assert!(dockerfile.contains(&format!(
        r#""--stop-timeout", "{}""#,
        flag(args, "--stop-timeout").unwrap()
    )));

    // Schema check against the Kubernetes API, when the validator is installed
    // (pip install kubernetes-validate).
    if have("kubernetes-validate") {
        let mut cmd = Command::new("kubernetes-validate");
        cmd.args(["--strict", "-k", "1.30.0"])
            .arg(deploy("kubernetes/deployment.yaml"));
        let out = output(cmd, None).await;
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        skip("kubernetes-validate not installed (pip install kubernetes-validate): schema not checked");
    }
}

/// deploy/grafana/unwedge-dashboard.json: valid JSON Grafana can import, every query on
/// metrics the supervisor exports, every query valid PromQL (checked by promtool as recording
/// rules, when installed).
#[tokio::test]
async fn grafana_dashboard_queries_real_metrics_in_valid_promql() {
    let text = std::fs::read_to_string(deploy("grafana/unwedge-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dash["uid"], "unwedge-supervisor");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance"]);
    let names = exported_names();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("a title");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            for prefix in ["unwedge_", "process_"] {
                for (i, _) in expr.match_indices(prefix) {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(names.contains(&name), "{title}: {name} is not exported");
                }
            }
            for var in expr.split('$').skip(1) {
                let var: String = var
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    vars.contains(&var.as_str()) || var == "__rate_interval",
                    "{title}: ${var} is not defined"
                );
            }
            exprs.push(
                expr.replace("$__rate_interval", "5m")
                    .replace("$job", "unwedge")
                    .replace("$instance", ".*"),
            );
        }
    }

    if !have("promtool") {
        skip("promtool not found (apt-get install prometheus): PromQL not checked");
        return;
    }
    // Each query as a recording rule: `promtool check rules` parses it.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "rules"]).arg(&file);
    let check = output(cmd, None).await;
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
