//! Writes the CRD YAML generated from ferrolb-crds' types into a directory (`cargo xtask crds` passes
//! `charts/ferrolb/crds`), or with `--check` fails when the files there differ from what the types generate.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut check = false;
    let mut dir = None;
    for arg in args.by_ref() {
        match arg.as_str() {
            "--check" => check = true,
            _ => dir = Some(PathBuf::from(arg)),
        }
    }
    let Some(dir) = dir else {
        eprintln!("usage: crdgen [--check] DIR");
        return ExitCode::from(2);
    };
    let rendered = match ferrolb_crds::rendered_crds() {
        Ok(rendered) => rendered,
        Err(e) => {
            eprintln!("crdgen: cannot render the CRDs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = Vec::new();
    for (name, yaml) in rendered {
        let path = dir.join(&name);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == yaml {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
        } else if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, yaml)) {
            eprintln!("crdgen: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            eprintln!("crdgen: wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        eprintln!("crdgen: stale CRD YAML (run `cargo xtask crds`): {}", stale.join(", "));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
