//! Rule files (`wake rules check`, the ruler's loads and reloads), their Go templates run on a
//! sample alert, and the series notation of rule unit tests. Rule files come from operators,
//! not clients, but a reload must never take the server down: parsing, checking, and expanding
//! every template of any file must return, not panic, and stay within its bounds.
#![no_main]

mod common;

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wake_query::rules::file::{self, Lang, RuleDef};
use wake_query::rules::template::{self, TemplateData};
use wake_query::rules::{check_expression, unittest};

fuzz_target!(init: common::tolerate_parser_panics(), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    common::set_input(data);
    let labels = [("__name__", "up"), ("instance", "a:80"), ("job", "api")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let external = [("cluster".to_string(), "eu1".to_string())].into_iter().collect();
    let alert = TemplateData { labels: &labels, external_labels: &external, external_url: "http://wake", value: 1234.5 };
    for lang in [Lang::Promql, Lang::Logql, Lang::Sql] {
        let Ok(groups) = file::parse(Path::new("fuzz.yml"), text, lang, &check_expression) else { continue };
        for group in groups {
            for rule in group.rules {
                if let RuleDef::Alerting { labels: rule_labels, annotations, .. } = rule {
                    for text in rule_labels.values().chain(annotations.values()) {
                        let expanded = template::expand_or_error_text("__alert_fuzz", text, &alert);
                        assert!(expanded.len() <= 2 * template::MAX_OUTPUT_BYTES, "output past its bound");
                    }
                }
            }
        }
    }
    // The text as a template on its own, and as a unit test's series and values.
    let _ = template::check(text);
    let _ = template::expand("__alert_fuzz", text, &alert);
    let _ = unittest::parse_series(text);
    let _ = unittest::expand_values(text);
});
