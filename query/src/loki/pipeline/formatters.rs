//! The formatter stages `label_format` and `decolorize`; `line_format` is a [`Template`] that
//! `Pipeline::process` renders in place.

use logql::LabelFormatValue;

use super::labels::{is_valid_label_name, set_error};
use super::template::Template;
use super::{ERROR_LABEL, Labels, PipelineError, TEMPLATE_ERROR};

// ---------------------------------------------------------------------------------------------
// decolorize

/// ANSI escape sequences, as Loki strips them (the pattern of github.com/acarl005/stripansi).
pub(super) const ANSI_PATTERN: &str = concat!(
    r"[\x1b\x{9b}][\[\]()#;?]*(?:(?:(?:[a-zA-Z0-9]*(?:;[a-zA-Z0-9]*)*)?\x07)",
    r"|(?:(?:[0-9]{1,4}(?:;[0-9]{0,4})*)?[0-9A-PRZcf-ntqry=><~]))"
);

// ---------------------------------------------------------------------------------------------
// label_format

#[derive(Debug)]
pub(super) enum LabelFormatOp {
    Rename(String),
    Template(Template),
}

pub(super) fn compile_label_format(
    formats: &[logql::LabelFormat],
) -> Result<Vec<(String, LabelFormatOp)>, PipelineError> {
    let invalid = |message: String| PipelineError::InvalidStage { stage: "label_format", message };
    let mut compiled: Vec<(String, LabelFormatOp)> = Vec::new();
    for format in formats {
        if format.dst == ERROR_LABEL {
            return Err(invalid(format!("{ERROR_LABEL} cannot be formatted")));
        }
        if !is_valid_label_name(&format.dst) {
            return Err(invalid(format!("invalid label name '{}'", format.dst)));
        }
        // Renaming and rewriting the same label in one stage would depend on order: Loki refuses it.
        if compiled.iter().any(|(dst, _)| *dst == format.dst) {
            return Err(invalid(format!(
                "multiple label name '{}' not allowed in a single format operation",
                format.dst
            )));
        }
        let op = match &format.value {
            LabelFormatValue::Rename(source) => LabelFormatOp::Rename(source.clone()),
            LabelFormatValue::Template(template) => LabelFormatOp::Template(Template::compile(template)?),
            other => return Err(PipelineError::Unsupported(format!("label_format value {other:?}"))),
        };
        compiled.push((format.dst.clone(), op));
    }
    Ok(compiled)
}

pub(super) fn label_format(formats: &[(String, LabelFormatOp)], labels: &mut Labels, line: &str) {
    // Templates see the labels as they were when the first template ran, not each other's output.
    let mut snapshot: Option<Labels> = None;
    for (dst, op) in formats {
        match op {
            LabelFormatOp::Rename(source) => {
                if source == dst {
                    continue;
                }
                if let Some(value) = labels.remove(source) {
                    labels.insert(dst.clone(), value);
                }
            }
            LabelFormatOp::Template(template) => {
                let data = snapshot.get_or_insert_with(|| labels.clone());
                match template.render(data, line) {
                    Ok(value) => {
                        labels.insert(dst.clone(), value);
                    }
                    Err(details) => set_error(labels, TEMPLATE_ERROR, Some(details)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loki::pipeline::tests::{compile, labels, run};

    #[test]
    fn decolorize_strips_ansi_sequences() {
        let (out, _) = run(r#"{a="b"} | decolorize"#, &[], "\u{1b}[31mred\u{1b}[0m plain \u{1b}[1;32mbold\u{1b}[m");
        assert_eq!(out.as_deref(), Some("red plain bold"));
        let (out, _) = run(r#"{a="b"} | decolorize |= "red plain""#, &[], "\u{1b}[31mred\u{1b}[0m plain");
        assert_eq!(out.as_deref(), Some("red plain"));
    }

    #[test]
    fn line_format_renders_templates() {
        let q = r#"{app="a"} | logfmt | line_format "{{.level | ToUpper}} {{ .msg }} [{{.missing}}] {{ToLower .level}} {{ default \"none\" .user }} {{printf \"%05d|%-4s|%q\" 42 .level .msg}} {{__line__ | len3}}""#;
        assert!(matches!(compile(q), Err(PipelineError::InvalidTemplate { .. })), "unknown function");
        let q = r#"{app="a"} | logfmt | line_format "{{.level | ToUpper}} {{ .msg }} [{{.missing}}] {{ToLower .level}} {{ default \"none\" .user }} {{printf \"%05d|%-4s|%q\" 42 .level .msg}}""#;
        let (out, l) = run(q, &[("app", "a")], "level=Info msg=hi");
        assert_eq!(out.as_deref(), Some(r#"INFO hi [] info none 00042|Info|"hi""#));
        assert_eq!(l["level"], "Info", "line_format leaves labels alone");

        let (out, _) = run(r#"{a="b"} | line_format "{{__line__}}!""#, &[], "raw");
        assert_eq!(out.as_deref(), Some("raw!"));
        let (out, _) = run(
            r#"{a="b"} | logfmt | line_format "{{ .a | trunc 3 }}-{{ substr 1 3 .a }}-{{ .a | replace \"c\" \"C\" | title }}""#,
            &[],
            "a=abcdef",
        );
        assert_eq!(out.as_deref(), Some("abc-bc-AbCdef"));
        let (out, _) = run(r#"{a="b"} | line_format "a {{- \" b \" -}} c {{/* comment */}}d""#, &[], "x");
        assert_eq!(out.as_deref(), Some("a b c d"));
        let (out, _) = run(r#"{a="b"} | line_format `{{ upper (printf "%s-%s" .a "x") }}`"#, &[("a", "q")], "x");
        assert_eq!(out.as_deref(), Some("Q-X"));

        // Go reports a type error while rendering: the line is kept as it was, marked.
        let (out, l) = run(r#"{a="b"} | line_format "{{ trunc .a .a }}""#, &[("a", "q")], "orig");
        assert_eq!(out.as_deref(), Some("orig"));
        assert_eq!(l[ERROR_LABEL], TEMPLATE_ERROR);

        for bad in [
            r#""{{ .a ""#,
            r#""{{ if .a }}x{{ end }}""#,
            r#""{{ __timestamp__ }}""#,
            r#""{{ ToUpper }}""#,
            r#""{{ .a .b }}""#,
            r#""{{ .a | .b }}""#,
            r#""{{ . }}""#,
            r#""{{ .a.b }}""#,
            r#""{{ $x }}""#,
            r#""{{}}""#,
        ] {
            let query = format!(r#"{{a="b"}} | line_format {bad}"#);
            assert!(matches!(compile(&query), Err(PipelineError::InvalidTemplate { .. })), "{query}");
        }
    }

    #[test]
    fn label_format_renames_and_templates() {
        let q = r#"{app="a"} | logfmt | label_format dst=src, combo="{{.src}}-{{.other}}", app="{{.app | ToUpper}}""#;
        let (out, l) = run(q, &[("app", "a")], "src=1 other=2");
        assert_eq!(out.as_deref(), Some("src=1 other=2"));
        // Templates see the labels as they were before the stage's own templates, after the renames before them.
        assert_eq!(l, labels(&[("app", "A"), ("dst", "1"), ("combo", "-2"), ("other", "2")]));
        // Renaming a missing label does nothing.
        let (_, l) = run(r#"{a="b"} | label_format x=nope"#, &[("k", "v")], "line");
        assert_eq!(l, labels(&[("k", "v")]));
        let (_, l) = run(r#"{a="b"} | label_format line="{{__line__}}""#, &[], "the line");
        assert_eq!(l, labels(&[("line", "the line")]));

        assert!(matches!(compile(r#"{a="b"} | label_format a=b, a="x""#), Err(PipelineError::InvalidStage { .. })));
        assert!(matches!(compile(r#"{a="b"} | label_format __error__="x""#), Err(PipelineError::InvalidStage { .. })));
        assert!(matches!(
            compile(r#"{a="b"} | label_format a="{{nope .b}}""#),
            Err(PipelineError::InvalidTemplate { .. })
        ));
    }
}
