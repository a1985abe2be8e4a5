//! Every committed corpus entry and every committed crash, through its
//! target: a crash that was found and fixed stays fixed, and the seeds the
//! fuzzer starts from are all accepted without a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use remedy_fuzz::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_entry_and_regression_runs_through_its_target_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut panicked = Vec::new();
    let mut replayed = 0;
    for target in TARGETS {
        let corpus = inputs(&root.join("corpus").join(target.name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{} holds no seeds", target.name);
        let regressions = inputs(&root.join("regressions").join(target.name));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if catch_unwind(AssertUnwindSafe(|| (target.run)(&data))).is_err() {
                panicked.push(format!("{}: {}", target.name, path.display()));
            }
            replayed += 1;
        }
        println!("{}: {} corpus entries, {} regressions", target.name, corpus.len(), regressions.len());
    }
    assert!(panicked.is_empty(), "inputs that panic ({} of {replayed}):\n{}", panicked.len(), panicked.join("\n"));
}
