//! `wake rules check FILE…` and `wake rules test FILE…`: promtool's `check rules` and
//! `test rules` for Wake's rule files (Prometheus' format, plus the group field `lang`).

use std::path::PathBuf;

use wake_query::rules::{Lang, check_expression, file, unittest};

/// Subcommands of `wake rules`.
#[derive(clap::Subcommand, Debug)]
pub enum RulesCommand {
    /// Check rule files as `promtool check rules` does: syntax, expressions, names, templates.
    Check(CheckArgs),
    /// Run rule unit-test files in Prometheus' format, as `promtool test rules` does.
    Test(TestArgs),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Rule files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Check them as Loki rule files: every expression is LogQL.
    #[arg(long)]
    pub loki: bool,
}

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Unit-test files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs the subcommand; `Ok(false)` when a file failed (exit status 1, as promtool).
pub fn run(command: RulesCommand) -> anyhow::Result<bool> {
    match command {
        RulesCommand::Check(args) => Ok(check(&args)),
        RulesCommand::Test(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(runtime.block_on(test(&args)))
        }
    }
}

fn check(args: &CheckArgs) -> bool {
    let lang = if args.loki { Lang::Logql } else { Lang::Promql };
    let mut all_ok = true;
    for path in &args.files {
        println!("Checking {}", path.display());
        match file::load_file(path, lang, &check_expression) {
            Ok(groups) => {
                let rules: usize = groups.iter().map(|g| g.rules.len()).sum();
                println!("  SUCCESS: {rules} rules found\n");
            }
            Err(error) => {
                all_ok = false;
                println!("  FAILED:");
                for problem in &error.problems {
                    println!("{}: {problem}", path.display());
                }
                println!();
            }
        }
    }
    all_ok
}

async fn test(args: &TestArgs) -> bool {
    let mut all_ok = true;
    for path in &args.files {
        println!("Unit Testing:  {}", path.display());
        let outcome = unittest::run_file(path, &check_expression).await;
        if outcome.errors.is_empty() {
            println!("  SUCCESS\n");
        } else {
            all_ok = false;
            for error in &outcome.errors {
                println!("{error}");
            }
            println!();
        }
    }
    all_ok
}
