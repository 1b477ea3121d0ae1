//! FRR's configuration as a tree of lines, read from `show running-config` and compared, with no I/O.
//!
//! FRR prints its running configuration in a canonical form: one command per line, a block's children
//! indented one space deeper than its header, closed by `exit` (or `exit-address-family`), `!` as
//! decoration. The renderer ([`super::render`]) writes exactly that form, so the difference between what
//! runs and what should run is a difference of lines, turned into the vty commands that remove what is no
//! longer wanted and add what is missing, never a reload.

use std::collections::HashMap;
use std::fmt;

/// One line of configuration: a plain command, or the header of a block (which may be empty: a BFD
/// profile at FRR's defaults prints as its header and `exit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    pub block: bool,
    pub children: Vec<Line>,
}

impl Line {
    pub fn command(text: impl Into<String>) -> Self {
        Line { text: text.into(), block: false, children: Vec::new() }
    }

    pub fn block(text: impl Into<String>, children: Vec<Line>) -> Self {
        Line { text: text.into(), block: true, children }
    }

    fn is_block(&self) -> bool {
        self.block || !self.children.is_empty()
    }

    /// The command that leaves this block's node (FRR names it after the block).
    fn exit(&self) -> &'static str {
        if self.text.starts_with("address-family ") { "exit-address-family" } else { "exit" }
    }
}

/// A daemon's configuration: its top-level lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub lines: Vec<Line>,
}

impl fmt::Display for Config {
    /// FRR's own layout, as `show running-config` prints it (and as a daemon's config file may hold it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn write(f: &mut fmt::Formatter<'_>, line: &Line, depth: usize) -> fmt::Result {
            writeln!(f, "{:depth$}{}", "", line.text)?;
            if line.is_block() {
                for child in &line.children {
                    write(f, child, depth + 1)?;
                }
                writeln!(f, "{:depth$}{}", "", line.exit())?;
            }
            Ok(())
        }
        for line in &self.lines {
            write(f, line, 0)?;
        }
        Ok(())
    }
}

/// Reads `show running-config` output (or a config file) into a tree, keeping only the top-level lines
/// `keep` accepts (with their blocks). Decoration (`!`, `exit`, `end`, the banner) is dropped. Never fails:
/// a line it cannot place is attached where its indentation says, or at the top.
pub fn parse(text: &str, keep: impl Fn(&str) -> bool) -> Config {
    let mut lines: Vec<Line> = Vec::new();
    // The indentation of each line along the path of last lines, outermost first: the blocks still open.
    let mut open: Vec<usize> = Vec::new();
    for raw in text.lines() {
        let trimmed = raw.trim_end();
        let text = trimmed.trim_start();
        let depth = trimmed.len() - text.len();
        if text.is_empty()
            || text == "!"
            || text == "end"
            || text.starts_with("exit")
            || text == "Building configuration..."
            || text == "Current configuration:"
        {
            if text.starts_with("exit") {
                // Closes the innermost block at this indentation or deeper; the line it closes is a block
                // even with nothing in it.
                let mut closed = None;
                while open.last().is_some_and(|d| *d >= depth) {
                    closed = open.pop();
                }
                if closed == Some(depth)
                    && let Some(header) = children_at(&mut lines, open.len()).last_mut()
                {
                    header.block = true;
                }
            }
            continue;
        }
        while open.last().is_some_and(|d| *d >= depth) {
            open.pop();
        }
        let parent = children_at(&mut lines, open.len());
        parent.push(Line::command(without_sequence(text)));
        open.push(depth);
    }
    lines.retain(|line| keep(&line.text));
    mark_blocks(&mut lines);
    Config { lines }
}

/// A line with lines under it is a block, whether or not its `exit` was printed.
fn mark_blocks(lines: &mut [Line]) {
    for line in lines {
        line.block |= !line.children.is_empty();
        mark_blocks(&mut line.children);
    }
}

/// A prefix-list entry without the sequence number FRR gave it (the renderer writes none: an entry added
/// or removed never renumbers the others, and `no ip prefix-list NAME permit PREFIX` finds it).
fn without_sequence(text: &str) -> String {
    let is_prefix_list = text.starts_with("ip prefix-list ") || text.starts_with("ipv6 prefix-list ");
    let mut words: Vec<&str> = text.split(' ').collect();
    if is_prefix_list
        && let Some(at) = words.iter().position(|w| *w == "seq")
        && words.get(at + 1).is_some_and(|n| n.parse::<u32>().is_ok())
    {
        words.drain(at..at + 2);
        return words.join(" ");
    }
    text.to_string()
}

/// The children list `levels` deep along the last lines of `lines`.
fn children_at(lines: &mut Vec<Line>, levels: usize) -> &mut Vec<Line> {
    let mut current = lines;
    for _ in 0..levels {
        if current.is_empty() {
            break;
        }
        let last = current.len() - 1;
        current = &mut current[last].children;
    }
    current
}

/// The vty commands (in configure mode) that turn `running` into `wanted`.
///
/// Two passes, so that nothing is removed while something still needs it or added before what it needs:
/// first every removal, deepest first and in reverse order within a block (a neighbour's address-family
/// lines and options before the neighbour itself); then every addition, in the order rendered (a neighbour
/// before its options and its address-family lines). A block gone as a whole is removed by `no HEADER`
/// alone; a new one is entered, filled and left; a changed one is entered only to change what changed.
pub fn commands(running: &Config, wanted: &Config) -> Vec<String> {
    let mut out = removals(&running.lines, &wanted.lines);
    out.extend(additions(&running.lines, &wanted.lines));
    out
}

fn is_address_family(line: &Line) -> bool {
    line.text.starts_with("address-family ")
}

/// A level's lines by text (a daemon's prefix-lists run to one line per announced VIP).
fn index(lines: &[Line]) -> HashMap<&str, &Line> {
    lines.iter().map(|l| (l.text.as_str(), l)).collect()
}

/// `inner` inside `block`'s node, if there is anything to do there.
fn inside(block: &Line, inner: Vec<String>, out: &mut Vec<String>) {
    if !inner.is_empty() {
        out.push(block.text.clone());
        out.extend(inner);
        out.push(block.exit().to_string());
    }
}

fn removals(running: &[Line], wanted: &[Line]) -> Vec<String> {
    let mut out = Vec::new();
    let wanted = index(wanted);
    for line in running.iter().rev() {
        match wanted.get(line.text.as_str()) {
            // FRR has no `no address-family ...`: a family goes when its last line does.
            None if is_address_family(line) => inside(line, removals(&line.children, &[]), &mut out),
            None => out.push(format!("no {}", line.text)),
            // A block that became a plain line or the other way round is not the same line.
            Some(kept) if kept.is_block() != line.is_block() => out.push(format!("no {}", line.text)),
            Some(kept) => inside(line, removals(&line.children, &kept.children), &mut out),
        }
    }
    out
}

fn additions(running: &[Line], wanted: &[Line]) -> Vec<String> {
    let mut out = Vec::new();
    let running = index(running);
    for line in wanted {
        match running.get(line.text.as_str()).filter(|current| current.is_block() == line.is_block()) {
            None if line.is_block() => {
                out.push(line.text.clone());
                out.extend(additions(&[], &line.children));
                out.push(line.exit().to_string());
            }
            None => out.push(line.text.clone()),
            Some(current) => inside(line, additions(&current.children, &line.children), &mut out),
        }
    }
    out
}

#[cfg(test)]
#[path = "frr_config_tests.rs"]
mod tests;
