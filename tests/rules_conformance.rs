//! `wake rules test` and `wake rules check` against Prometheus' `promtool` (Debian's
//! `prometheus` package, 2.42) as the oracle, side by side on the corpus in `tests/rules/`:
//! every unit-test file passes under both, every check file gets the same verdict from both,
//! and a test that should fail fails under both.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn corpus(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rules").join(sub)
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

fn promtool(args: &[&str], file: &Path) -> Output {
    let binary = std::env::var_os("WAKE_TEST_PROMTOOL").unwrap_or_else(|| "promtool".into());
    Command::new(&binary)
        .args(args)
        .arg(file.file_name().unwrap())
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap_or_else(|e| {
            panic!("running promtool: {e}; run scripts/test.sh (which installs Debian's `prometheus`) or set WAKE_TEST_PROMTOOL")
        })
}

fn wake(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wake"))
        .args(args)
        .arg(file.file_name().unwrap())
        .current_dir(file.parent().unwrap())
        .env_remove("WAKE_CONFIG")
        .output()
        .expect("running wake")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn every_unit_test_file_passes_under_promtool_and_wake() {
    let tests = files(&corpus("unit"), "_test.yml");
    assert!(tests.len() >= 3, "the corpus has unit-test files: {tests:?}");
    let mut cases = 0;
    let mut failures = Vec::new();
    for file in &tests {
        let source = std::fs::read_to_string(file).unwrap();
        cases += source.matches("eval_time:").count();
        let oracle = promtool(&["test", "rules"], file);
        assert!(oracle.status.success(), "promtool refuses {}:\n{}", file.display(), text(&oracle));
        let ours = wake(&["rules", "test"], file);
        if !ours.status.success() {
            failures.push(format!("{}:\n{}", file.display(), text(&ours)));
        }
    }
    assert!(cases >= 30, "at least 30 cases, found {cases}");
    assert!(failures.is_empty(), "wake rules test disagrees with promtool on:\n{}", failures.join("\n"));
}

#[test]
fn check_verdicts_agree_with_promtool() {
    let mut disagreements = Vec::new();
    let mut checked = 0;
    for (dir, valid) in [("check/valid", true), ("check/invalid", false)] {
        for file in files(&corpus(dir), ".yml") {
            checked += 1;
            let oracle = promtool(&["check", "rules"], &file);
            assert_eq!(
                oracle.status.success(),
                valid,
                "promtool's verdict on {} moved:\n{}",
                file.display(),
                text(&oracle)
            );
            let ours = wake(&["rules", "check"], &file);
            if ours.status.success() != valid {
                disagreements.push(format!("{} (promtool: {valid}):\n{}", file.display(), text(&ours)));
            }
            if !valid {
                // Refusals name the file, and a line where the file has positions to give.
                let name = file.file_name().unwrap().to_string_lossy().to_string();
                assert!(text(&ours).contains(&format!("{name}: ")), "{name}: {}", text(&ours));
            }
        }
    }
    assert!(checked >= 30, "the corpus has check files: {checked}");
    assert!(disagreements.is_empty(), "wake rules check disagrees with promtool on:\n{}", disagreements.join("\n"));
}

#[test]
fn a_wrong_expectation_fails_under_both() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n- name: g\n  rules:\n  - alert: Down\n    expr: up == 0\n    for: 2m\n",
    )
    .unwrap();
    let test = dir.path().join("wrong_test.yml");
    // The alert is still pending at 1m: expecting it firing is wrong.
    std::fs::write(
        &test,
        "rule_files: [rules.yml]\ntests:\n- interval: 1m\n  input_series:\n  - series: up{job=\"a\"}\n    values: 0x5\n  \
         alert_rule_test:\n  - eval_time: 1m\n    alertname: Down\n    exp_alerts:\n    - exp_labels: {job: a}\n",
    )
    .unwrap();
    assert!(!promtool(&["test", "rules"], &test).status.success());
    let ours = wake(&["rules", "test"], &test);
    assert!(!ours.status.success(), "{}", text(&ours));
    assert!(text(&ours).contains("alertname: Down, time: 1m"), "{}", text(&ours));
}

#[test]
fn wake_only_group_fields_are_accepted_by_wake() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wake.yml");
    std::fs::write(
        &file,
        "groups:\n- name: logs\n  lang: logql\n  query_offset: 30s\n  rules:\n  - alert: Panics\n    \
         expr: sum by (k8s_namespace_name) (count_over_time({k8s_namespace_name=\"prod\"} |= \"panic\" [5m])) > 0\n\
         - name: sql\n  lang: sql\n  rules:\n  - record: pods:errors\n    expr: SELECT k8s_pod_name AS pod, count(*) AS value FROM logs GROUP BY 1\n",
    )
    .unwrap();
    let ours = wake(&["rules", "check"], &file);
    assert!(ours.status.success(), "{}", text(&ours));
    assert!(text(&ours).contains("SUCCESS: 2 rules found"), "{}", text(&ours));
    // promtool does not know these fields.
    assert!(!promtool(&["check", "rules"], &file).status.success());
    // A LogQL log query is not a rule expression.
    std::fs::write(&file, "groups:\n- name: logs\n  lang: logql\n  rules:\n  - alert: A\n    expr: '{app=\"a\"}'\n")
        .unwrap();
    let ours = wake(&["rules", "check"], &file);
    assert!(!ours.status.success());
    assert!(
        text(&ours).contains("wake.yml: 5: group \"logs\", rule 1, \"A\": could not parse expression"),
        "{}",
        text(&ours)
    );
}

#[test]
fn loki_rule_files_check_as_logql() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("loki.yml");
    std::fs::write(
        &file,
        "groups:\n- name: loki\n  rules:\n  - alert: Panics\n    expr: sum(count_over_time({app=\"a\"} |= \"panic\" [5m])) > 0\n",
    )
    .unwrap();
    assert!(!wake(&["rules", "check"], &file).status.success(), "not PromQL");
    let ours = wake(&["rules", "check", "--loki"], &file);
    assert!(ours.status.success(), "{}", text(&ours));
}
