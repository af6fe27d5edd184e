//! Every reference to the design document resolves inside the repository.
//!
//! Module headers, protobuf comments, manifests and Markdown cite `docs/DESIGN.md section N`
//! (or link `DESIGN.md#n-title`). For every mention of a file named `DESIGN.md` in a text file
//! of the repository this checks that its path leads to `docs/DESIGN.md`, from the repository
//! root or from the mentioning file's directory (a bare `DESIGN.md` in `gateway/src` names a
//! file that is not there), and that the section it cites, by number or by Markdown anchor, is
//! a `## N. Title` heading of that file; and that every repository path the design document
//! names in backticks exists. Pure file reads, no build artefacts: it runs in a few
//! milliseconds.

use std::path::{Path, PathBuf};

/// The file every reference must lead to, relative to the repository root.
const DESIGN: &str = "docs/DESIGN.md";
/// What a reference mentions.
const NAME: &str = "DESIGN.md";
/// Directories never scanned: build output, git, fuzz inputs.
const SKIP_DIRS: &[&str] = &["target", ".git", "corpus", "artifacts"];
/// Files larger than this are not source or documentation.
const MAX_FILE: u64 = 1 << 20;

/// A numbered section of the design document: its number and its Markdown anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Section {
    number: u32,
    anchor: String,
}

/// The `## N. Title` headings of the design document, in order.
fn sections(text: &str) -> Vec<Section> {
    text.lines()
        .filter_map(|line| {
            let title = line.strip_prefix("## ")?;
            let (number, _) = title.split_once(". ")?;
            Some(Section {
                number: number.parse().ok()?,
                anchor: anchor(title),
            })
        })
        .collect()
}

/// The anchor GitHub gives a heading: lower case, punctuation other than `-` dropped, spaces
/// as `-` (`4. Trust and PKI` → `4-trust-and-pki`).
fn anchor(title: &str) -> String {
    title
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-')
}

/// Checks every mention of `DESIGN.md` in `text`, the contents of a file in `dir`. `root` is
/// the repository root; `design` the canonical path of the design document, `sections` its
/// headings. Returns one line per broken reference.
fn check_text(
    text: &str,
    dir: &Path,
    root: &Path,
    design: &Path,
    sections: &[Section],
) -> Vec<String> {
    let mut broken = Vec::new();
    for (at, _) in text.match_indices(NAME) {
        let end = at + NAME.len();
        let start = text[..at]
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_path_char(*c))
            .last()
            .map_or(at, |(i, _)| i);
        let path = &text[start..end];
        let line = text[..at].matches('\n').count() + 1;
        let leads_to_design = [root.join(path), dir.join(path)]
            .iter()
            .any(|p| p.canonicalize().is_ok_and(|p| p == design));
        if !leads_to_design {
            broken.push(format!("line {line}: {path:?} is not {DESIGN}"));
            continue;
        }
        let rest = &text[end..];
        if let Some(fragment) = rest.strip_prefix('#') {
            let fragment: String = fragment
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                .collect();
            if !sections.iter().any(|s| s.anchor == fragment) {
                broken.push(format!("line {line}: no section with anchor #{fragment}"));
            }
        } else if let Some(number) = rest.strip_prefix(" section ") {
            let digits: String = number.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse::<u32>()
                && !sections.iter().any(|s| s.number == n)
            {
                broken.push(format!("line {line}: no section {n}"));
            }
        }
    }
    broken
}

/// Text files under `dir`, outside [`SKIP_DIRS`], sorted.
fn text_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            if !SKIP_DIRS.iter().any(|s| entry.file_name() == *s) {
                text_files(&path, out)?;
            }
        } else if kind.is_file() && entry.metadata()?.len() <= MAX_FILE {
            out.push(path);
        }
    }
    Ok(())
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root")
        .canonicalize()
        .expect("the workspace root exists")
}

#[test]
fn every_design_reference_names_an_existing_section() {
    let root = repository_root();
    let design = root
        .join(DESIGN)
        .canonicalize()
        .expect("docs/DESIGN.md exists");
    let text = std::fs::read_to_string(&design).expect("docs/DESIGN.md reads");
    let sections = sections(&text);
    let numbers: Vec<u32> = sections.iter().map(|s| s.number).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]) && !numbers.is_empty(),
        "docs/DESIGN.md sections must be numbered in increasing order: {numbers:?}"
    );

    let this_file = root.join(file!()).canonicalize().ok();
    let mut files = Vec::new();
    text_files(&root, &mut files).expect("the repository reads");
    let (mut references, mut broken) = (0, Vec::new());
    for file in files {
        // this file's tests hold broken references on purpose
        if Some(&file) == this_file.as_ref() {
            continue;
        }
        // binary files are not references
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        references += text.matches(NAME).count();
        let dir = file.parent().unwrap_or(&root);
        for problem in check_text(&text, dir, &root, &design, &sections) {
            let shown = file.strip_prefix(&root).unwrap_or(&file);
            broken.push(format!("{}: {problem}", shown.display()));
        }
    }
    assert!(
        references > 0,
        "no reference to {DESIGN} found: is the scan broken?"
    );
    assert!(
        broken.is_empty(),
        "references to {DESIGN} that do not resolve:\n{}",
        broken.join("\n")
    );
}

/// The repository paths `text` names in backticks (`gateway/src/dns.rs`, `deploy/k8s/`) that do
/// not exist under `root`. A token counts as a path when its first component is a directory at
/// the root; tokens with placeholders or globs (`gateway/<org>/<site>`, `*.proto`) are skipped.
fn missing_paths(text: &str, root: &Path) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|token| !token.contains(['<', '*', ' ']))
        .filter(|token| {
            token
                .split_once('/')
                .is_some_and(|(top, _)| !top.is_empty() && root.join(top).is_dir())
        })
        .filter(|token| !root.join(token).exists())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_path_the_design_names_exists() {
    let root = repository_root();
    let text = std::fs::read_to_string(root.join(DESIGN)).expect("docs/DESIGN.md reads");
    let missing = missing_paths(&text, &root);
    assert!(
        missing.is_empty(),
        "{DESIGN} names paths the repository does not have: {missing:?}"
    );
}

#[test]
fn the_check_refuses_missing_sections_anchors_and_paths() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().canonicalize().expect("tempdir path");
    std::fs::create_dir_all(root.join("docs")).expect("docs");
    std::fs::create_dir_all(root.join("src")).expect("src");
    std::fs::write(
        root.join(DESIGN),
        "# t\n\n## 4. Trust and PKI\n\ntext\n\n## 8. Data plane\n",
    )
    .expect("write");
    let design = root.join(DESIGN).canonicalize().expect("design");
    let text = std::fs::read_to_string(&design).expect("read");
    let sections = sections(&text);
    assert_eq!(
        sections,
        [
            Section {
                number: 4,
                anchor: "4-trust-and-pki".into()
            },
            Section {
                number: 8,
                anchor: "8-data-plane".into()
            },
        ]
    );
    let check =
        |text: &str, dir: &str| check_text(text, &root.join(dir), &root, &design, &sections);

    // resolving references: from the root, relative to the file, by number or by anchor
    assert!(check("//! PKI (docs/DESIGN.md section 4).", "src").is_empty());
    assert!(check("# see ../docs/DESIGN.md section 8", "src").is_empty());
    assert!(check("[design](DESIGN.md#8-data-plane)", "docs").is_empty());
    assert!(check("the contract lives in docs/DESIGN.md.", "src").is_empty());

    // a section that does not exist
    let broken = check("//! Rendering (docs/DESIGN.md section 9).", "src");
    assert_eq!(broken, ["line 1: no section 9"]);
    let broken = check("x\n[design](DESIGN.md#9-rendering)", "docs");
    assert_eq!(broken, ["line 2: no section with anchor #9-rendering"]);
    // a file outside the repository, or a path that leads elsewhere
    let broken = check("//! Joining (DESIGN.md section 4).", "src");
    assert_eq!(broken, ["line 1: \"DESIGN.md\" is not docs/DESIGN.md"]);
    let broken = check("see ../DESIGN.md section 4", "docs");
    assert_eq!(broken, ["line 1: \"../DESIGN.md\" is not docs/DESIGN.md"]);

    // paths the design names: existing ones pass, placeholders and other tokens are not paths
    let named = "`docs/DESIGN.md`, `src/`, `src/gone.rs`, `src/<org>/x`, `kind/org/name`";
    assert_eq!(missing_paths(named, &root), ["src/gone.rs"]);
}
