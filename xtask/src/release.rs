//! One version for everything a release ships: the workspace's (every crate inherits it, so every binary's
//! `--version`), the chart's `version` and `appVersion`, and the images' default tag (the chart's values
//! leave it empty so the appVersion is used). Only tests live here.

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::fs;

    use crate::run::workspace_root;

    fn read(path: &str) -> String {
        fs::read_to_string(workspace_root().join(path)).unwrap()
    }

    /// The value of the first `key: value` line (YAML or TOML style) after `section` (or anywhere).
    fn value_after(text: &str, section: Option<&str>, key: &str) -> String {
        let start = section.and_then(|s| text.find(s)).unwrap_or(0);
        text[start..]
            .lines()
            .find_map(|l| {
                let l = l.trim();
                l.strip_prefix(key).and_then(|rest| rest.trim_start().strip_prefix([':', '=']))
            })
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no {key} found"))
    }

    #[test]
    fn binaries_chart_and_images_share_one_version() {
        let workspace = value_after(&read("Cargo.toml"), Some("[workspace.package]"), "version");
        let chart = read("charts/ferrolb/Chart.yaml");
        assert_eq!(value_after(&chart, None, "version"), workspace, "the chart's version");
        assert_eq!(value_after(&chart, None, "appVersion"), workspace, "the chart's appVersion (the image tag)");
        let values = read("charts/ferrolb/values.yaml");
        assert_eq!(value_after(&values, Some("image:"), "tag"), "", "the image tag defaults to the appVersion");
        for member in ["controller", "speaker", "cli", "crds", "telemetry", "tests", "xtask", "lab-programs"] {
            let manifest = read(&format!("{member}/Cargo.toml"));
            assert!(manifest.contains("version.workspace = true"), "{member} has its own version");
        }
        for binary in ["controller/src/main.rs", "speaker/src/main.rs", "cli/src/main.rs"] {
            assert!(read(binary).contains(" version,"), "{binary} has no --version (clap's `version` in #[command])");
        }
        let changelog = read("CHANGELOG.md");
        assert!(changelog.contains(&format!("## {workspace} ")), "CHANGELOG.md has no entry for {workspace}");
        for (file, text) in [("README.md", read("README.md")), ("Dockerfile", read("Dockerfile"))] {
            for tag in text.match_indices("ghcr.io/ferrolb/ferrolb").map(|(i, _)| &text[i..]) {
                let reference = tag.split_whitespace().next().unwrap_or_default();
                if let Some((_, version)) = reference.split_once(':') {
                    assert_eq!(version.trim_end_matches(['.', ',', '`']), workspace, "{file}: {reference}");
                }
            }
        }
        assert!(read("LICENSE").contains("Apache License") && read("LICENSE").contains("Version 2.0"));
    }
}
