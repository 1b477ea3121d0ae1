//! The documentation's links: every relative link in the README and `docs/` points at a file that exists
//! (and, with a `#fragment`, at a heading in it). Only tests live here.

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use crate::run::workspace_root;

    /// `](target)` links of a Markdown text.
    fn links(text: &str) -> Vec<&str> {
        text.match_indices("](").filter_map(|(i, _)| text[i + 2..].split_once(')').map(|(target, _)| target)).collect()
    }

    /// GitHub's anchor for a heading: lower case, spaces to dashes, punctuation dropped.
    fn anchor(heading: &str) -> String {
        heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    }

    #[test]
    fn every_relative_link_in_the_docs_resolves() {
        let root = workspace_root();
        let mut files = vec![root.join("README.md")];
        for entry in std::fs::read_dir(root.join("docs")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for target in links(&text) {
                if target.starts_with("http") || target.starts_with('#') || target.starts_with("mailto:") {
                    continue;
                }
                let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
                let linked = file.parent().unwrap_or(Path::new(".")).join(path);
                assert!(linked.exists(), "{}: link to {target} does not resolve", file.display());
                if !fragment.is_empty() {
                    let linked_text = std::fs::read_to_string(&linked).unwrap();
                    let anchors: Vec<String> = linked_text
                        .lines()
                        .filter_map(|l| l.strip_prefix('#'))
                        .map(|h| anchor(h.trim_start_matches('#')))
                        .collect();
                    assert!(
                        anchors.contains(&fragment.to_string()),
                        "{}: no heading #{fragment} in {path}",
                        file.display()
                    );
                }
            }
        }
    }
}
