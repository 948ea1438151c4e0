//! The documentation holds together: every relative link in the README, ARCHITECTURE.md and
//! docs/ (and the plugin and fuzzing guides) reaches a file that exists, and every `#anchor`
//! a heading that exists, so moving a section cannot leave a link behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, Parser, Tag, TagEnd};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The pages checked: the front page, the architecture, every topic page, the guides.
fn pages() -> Vec<PathBuf> {
    let root = workspace();
    let mut pages = vec![
        root.join("README.md"),
        root.join("ARCHITECTURE.md"),
        root.join("plugins/README.md"),
        root.join("fuzz/README.md"),
    ];
    let docs = std::fs::read_dir(root.join("docs")).expect("read docs/");
    pages.extend(
        docs.map(|entry| entry.expect("a docs/ entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "md")),
    );
    pages
}

/// The anchors GitHub makes for a page's headings: lower case, punctuation dropped, spaces
/// as hyphens.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut heading: Option<String> = None;
    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::Heading { .. }) => {
                heading = Some(String::new());
            }
            Event::Text(text) | Event::Code(text) => {
                if let Some(heading) = &mut heading {
                    heading.push_str(&text);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let text = heading.take().unwrap_or_default();
                let slug: String = text
                    .to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect();
                anchors.insert(slug);
            }
            _ => {}
        }
    }
    anchors
}

/// The relative links of a page, as written.
fn links(markdown: &str) -> Vec<String> {
    Parser::new(markdown)
        .filter_map(|event| match event {
            Event::Start(Tag::Link { dest_url, .. }) => Some(dest_url.to_string()),
            _ => None,
        })
        .filter(|url| !url.contains("://") && !url.starts_with("mailto:"))
        .collect()
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("read a page");
        let dir = page.parent().expect("a page's folder");
        for link in links(&text) {
            checked += 1;
            let (path, anchor) = match link.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                page.clone()
            } else {
                dir.join(path)
            };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", page.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if target.extension().is_some_and(|ext| ext == "md") {
                let target_text = std::fs::read_to_string(&target).expect("read a linked page");
                if !anchors(&target_text).contains(anchor) {
                    broken.push(format!("{}: {link}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser reading the pages?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
