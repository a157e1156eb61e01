//! The README's commands, so that they cannot go stale: every `just` recipe it names exists, every
//! `scalelong` command it shows parses (its subcommand exists and takes each `--flag` given), every
//! run folder it names is one its sweep makes, every source path it names exists, and the commands
//! of its fenced blocks that run offline in seconds (`--help`, `--list`, `params`) are run as
//! written and must succeed.

use scalelong_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lies in the repository").to_path_buf()
}

fn readme() -> String {
    std::fs::read_to_string(repository().join("README.md")).expect("README.md")
}

/// The README split into the lines of its fenced code blocks (comments removed) and the inline
/// code spans of the rest (whitespace runs made one space: a span may wrap a line).
fn fenced_lines_and_spans(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut fenced, mut prose) = (Vec::new(), String::new());
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if in_block {
            fenced.push(without_comment(line).to_string());
        } else {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    let spans = prose.split('`').skip(1).step_by(2).map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "));
    (fenced, spans.collect())
}

/// A shell line up to its comment: `#` at the start or after a space.
fn without_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    line.find(" #").map_or(line, |at| &line[..at])
}

/// Every `<program> ...` command in `text` up to a shell separator, the program name standing
/// alone (not `scalelong-report`, not `cargo build -p scalelong`) and followed by a lower-case
/// word (a subcommand or recipe) or a flag.
fn commands_of(program: &str, text: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(program) {
        let before = &rest[..at];
        let after = &rest[at + program.len()..];
        rest = after;
        let standalone = before.chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '-' || c == '_'));
        // `cargo build -p scalelong ...` names the package, not the command.
        let package = before.trim_end().ends_with("-p");
        if !standalone || package || !after.starts_with(' ') {
            continue;
        }
        let end = after.find(['|', ';', '&', ')', '\'', '"', '\n', '`']).unwrap_or(after.len());
        let words: Vec<String> = after[..end].split_whitespace().map(String::from).collect();
        if words.first().is_some_and(|w| w.starts_with(|c: char| c.is_ascii_lowercase()) || w.starts_with("--")) {
            found.push(words);
        }
    }
    found
}

/// The justfile's recipe names: lines `name ...:` at the start of a line (not `name :=`).
fn recipes() -> BTreeSet<String> {
    let justfile = std::fs::read_to_string(repository().join("justfile")).expect("justfile");
    justfile
        .lines()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_lowercase()) && !line.contains(":="))
        .filter_map(|line| {
            line.split_once(':').map(|(head, _)| head.split_whitespace().next().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn every_just_recipe_the_readme_names_exists() {
    let (fenced, spans) = fenced_lines_and_spans(&readme());
    let recipes = recipes();
    let named: Vec<String> = fenced
        .iter()
        .chain(&spans)
        .flat_map(|text| commands_of("just", text))
        .filter_map(|words| words.first().cloned())
        .collect();
    assert!(named.len() >= 10, "too few `just` commands found: {named:?}");
    let missing: Vec<&String> = named.iter().filter(|name| !recipes.contains(*name)).collect();
    assert!(missing.is_empty(), "README names recipes the justfile lacks: {missing:?} (recipes: {recipes:?})");
}

#[test]
fn every_scalelong_command_the_readme_shows_parses() {
    let (fenced, spans) = fenced_lines_and_spans(&readme());
    // `just scalelong ARGS` is the same command line.
    let commands: Vec<Vec<String>> =
        fenced.iter().chain(&spans).flat_map(|text| commands_of("scalelong", text)).collect();
    assert!(commands.len() >= 10, "too few `scalelong` commands found: {commands:?}");
    let mut help: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();
    for words in &commands {
        let subcommand = if words[0].starts_with("--") { String::new() } else { words[0].clone() };
        let text = help.entry(subcommand.clone()).or_insert_with(|| {
            let args: Vec<&str> = [subcommand.as_str(), "--help"].into_iter().filter(|a| !a.is_empty()).collect();
            let output = scalelong(&args, &repository());
            if output.status.success() { String::from_utf8_lossy(&output.stdout).into_owned() } else { String::new() }
        });
        if text.is_empty() {
            problems.push(format!("`scalelong {}`: no such command", words.join(" ")));
            continue;
        }
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap_or(flag);
            if !text.contains(&format!("{flag} ")) && !text.contains(&format!("{flag}\n")) {
                problems.push(format!("`scalelong {}`: {subcommand} takes no {flag}", words.join(" ")));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_readme_s_quick_commands_run_as_written() {
    let (fenced, _) = fenced_lines_and_spans(&readme());
    let quick: Vec<Vec<String>> = fenced
        .iter()
        .flat_map(|line| commands_of("scalelong", line))
        .filter(|words| words.iter().any(|w| w == "--help" || w == "--list") || words == &["params"])
        .collect();
    assert!(quick.len() >= 4, "{quick:?}");
    for words in quick {
        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        let output = scalelong(&args, &repository());
        assert!(output.status.success(), "`scalelong {}` failed:\n{}", words.join(" "), stderr(&output));
        assert!(!output.stdout.is_empty(), "`scalelong {}` printed nothing", words.join(" "));
    }
}

/// `runs/<sweep>/<run>` where `<sweep>` is the name of a sweep in experiments/: `<run>` is one of
/// its runs (their folders are named after their grid values).
#[test]
fn every_run_folder_the_readme_names_is_one_its_sweep_makes() {
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(repository().join("experiments")).unwrap() {
        let path = entry.unwrap().path();
        let is_sweep = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sweep-"));
        if !is_sweep {
            continue;
        }
        let output = scalelong(&["sweep", path.to_str().unwrap(), "--list"], &repository());
        assert!(output.status.success(), "{}: {}", path.display(), stderr(&output));
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let out = line.split(" --out ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap();
            let mut parts = out.trim_matches('\'').splitn(3, '/').skip(1);
            let (sweep, run) = (parts.next().unwrap().to_string(), parts.next().unwrap().to_string());
            folders.entry(sweep).or_default().insert(run);
        }
    }
    assert!(folders.contains_key("stability"), "{folders:?}");
    let text = readme();
    let mut wrong = Vec::new();
    for token in text.split(|c: char| c.is_whitespace() || "`()\"',;".contains(c)) {
        let mut parts = token.split('/');
        if let (Some("runs"), Some(sweep), Some(run)) = (parts.next(), parts.next(), parts.next())
            && let Some(runs) = folders.get(sweep)
            && !run.is_empty()
            && !runs.contains(run)
        {
            wrong.push(format!("{token}: sweep {sweep:?} has no run {run:?} (its runs: {runs:?})"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every source file the README names in code spans: a path from the repository's root exists,
/// and a bare file name (`train.rs`) or partial path names a file somewhere in it.
#[test]
fn every_source_path_the_readme_names_exists() {
    let root = repository();
    let mut files = Vec::new();
    collect_files(&root, &root, &mut files);
    let (_, spans) = fenced_lines_and_spans(&readme());
    let looks_like_file = |span: &str| {
        span.rsplit_once('.').is_some_and(|(stem, ext)| {
            ["rs", "toml", "md", "py", "sh", "txt"].contains(&ext)
                && !stem.is_empty()
                && stem.chars().all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        })
    };
    let mut missing = Vec::new();
    for span in spans.iter().filter(|s| looks_like_file(s)) {
        let exists = root.join(span).is_file() || files.iter().any(|f| f == span || f.ends_with(&format!("/{span}")));
        // Files a user writes (the examples' own configs) are not in the repository.
        let users_own = ["edits.toml"].contains(&span.as_str());
        if !exists && !users_own {
            missing.push(span.clone());
        }
    }
    assert!(missing.is_empty(), "README names files that do not exist: {missing:?}");
}

/// Repository files as `/`-separated paths from `root`, without build outputs, data and runs.
fn collect_files(root: &Path, dir: &Path, files: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && !["target", "data", "runs", "reports", "node_modules"].contains(&name.as_str())
            {
                collect_files(root, &path, files);
            }
        } else if let Ok(relative) = path.strip_prefix(root) {
            files.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}
