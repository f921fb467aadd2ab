//! SECURITY.md names the tests that attack each promise; this keeps those
//! names true. A name is `module::test` for a scenario in `tests/it/`, or
//! `path/to/file.rs::test` for a test elsewhere in the workspace.

use std::path::Path;

/// Every backticked `a::b` name in the text whose first part is a scenario
/// module or a `.rs` path.
fn test_names(doc: &str, root: &Path) -> Vec<(String, std::path::PathBuf, String)> {
    let mut out = Vec::new();
    for (i, part) in doc.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let Some((file, name)) = part.rsplit_once("::") else { continue };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            continue;
        }
        let path = if file.ends_with(".rs") {
            root.join(file)
        } else if file.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            let scenario = root.join("tests/tests/it").join(format!("{file}.rs"));
            if !scenario.exists() {
                continue; // a code path such as `broker::trust`, not a test
            }
            scenario
        } else {
            continue;
        };
        out.push((part.to_owned(), path, name.to_owned()));
    }
    out
}

#[test]
fn every_test_security_md_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let doc = std::fs::read_to_string(root.join("SECURITY.md")).unwrap();
    let table_start = doc.find("## Promises and the tests that attack them").expect("the promise table");
    let table_end = table_start + doc[table_start..].find("\n## ").expect("a section after the table");
    let table = &doc[table_start..table_end];
    let rows = table
        .lines()
        .filter(|l| l.starts_with("| ") && l.split('|').nth(1).is_some_and(|c| c.trim().parse::<u32>().is_ok()));
    let mut promises = 0;
    for row in rows {
        promises += 1;
        let attacked_by = row.rsplit('|').nth(1).unwrap();
        assert!(!test_names(attacked_by, root).is_empty(), "a promise without an attacking test: {row}");
    }
    assert!(promises >= 20, "the table lists {promises} promises");

    let names = test_names(&doc, root);
    assert!(names.len() >= 60, "found only {} test names", names.len());
    let mut missing = Vec::new();
    for (quoted, path, name) in names {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{quoted}: {}: {e}", path.display()));
        if !text.contains(&format!("fn {name}(")) {
            missing.push(quoted);
        }
    }
    assert!(missing.is_empty(), "SECURITY.md names tests that do not exist: {missing:?}");
}
