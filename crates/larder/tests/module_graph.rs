//! The library's modules must not import each other in a cycle.
//!
//! The architecture is layered: a module may use the modules below it, never the ones that
//! use it, so every module can be read, tested and moved with only what it depends on. This
//! test checks that on the source itself, whatever the layout of `src/` at the time:
//!
//! - every `.rs` file under `src/` is a module, named by its path (`lib.rs` is `crate`,
//!   `a.rs` and `a/mod.rs` are `a`, `a/b.rs` is `a::b`);
//! - comments, string and character literals, and a trailing `#[cfg(test)] mod tests` are
//!   dropped (unit tests may use anything);
//! - every `crate::`, `super::` and `self::` path, every path through a child module, and
//!   every leaf of a `use` tree is a reference to the longest known module it names;
//! - a name taken from `lib.rs` or from a `mod.rs` (or any file with child modules) is
//!   followed through that file's `use` re-exports to the module that defines it; such a
//!   file is only a target when the item is defined in it, and `lib.rs` never is. Its
//!   `pub use` re-exports are hops, not references of its own; `mod x;` is no reference.
//!
//! The references make a directed graph, and any cycle in it fails the test with, for each
//! edge of the cycle, the file and line of one reference that creates it. Run with
//! `--nocapture` to see the whole graph as an adjacency list.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt::Write as _,
    fs,
    path::Path,
};

/// How many cycles the report lists at most.
const MAX_CYCLES: usize = 200;

/// Keywords whose next identifier is an item defined in the file.
const ITEM_KEYWORDS: &[&str] = &[
    "struct", "enum", "union", "trait", "fn", "type", "const", "static", "mod",
];

/// A module path: its segments below the crate root (the root itself is empty).
type ModPath = Vec<String>;

// ---------------------------------------------------------------------------------------
// The analysis.
// ---------------------------------------------------------------------------------------

/// One reference that creates an edge: where it is and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Site {
    file: String,
    line: usize,
    path: String,
}

/// The module graph: every module (by display name) and, for each, the modules it
/// references with the first reference to each.
#[derive(Debug, Default)]
struct Graph {
    modules: BTreeSet<String>,
    edges: BTreeMap<String, BTreeMap<String, Site>>,
}

/// A path into the crate found in a file, not yet resolved to a module.
#[derive(Debug)]
struct Reference {
    /// Made absolute: `super::x` in `a::b` is `a::x`.
    segments: ModPath,
    /// As written, for the report.
    written: String,
    line: usize,
    /// A `pub use` in a file with child modules: a re-export hop, not a reference.
    reexport: bool,
}

/// One leaf of a `use` tree: `use a::{b::C as D, e::*}` has the leaves `a::b::C` (bound
/// as `D`) and the glob `a::e::*`.
#[derive(Debug)]
struct UseLeaf {
    segments: Vec<String>,
    binding: Option<String>,
    glob: bool,
    line: usize,
}

/// What one file says about itself.
#[derive(Debug, Default)]
struct ModuleFacts {
    file: String,
    /// `lib.rs`, a `mod.rs`, or a file with child modules: names in it may be re-exports.
    container: bool,
    /// Items defined at the top level of the file.
    defined: HashSet<String>,
    /// Top-level `use` bindings: name to absolute path, `None` for another crate's item.
    imports: HashMap<String, Option<ModPath>>,
    /// Top-level glob imports of the crate's own modules.
    globs: Vec<ModPath>,
    references: Vec<Reference>,
}

/// Analyses a crate given as (path relative to `src/`, source text) pairs.
fn analyze(files: &[(String, String)]) -> Graph {
    let paths: Vec<(ModPath, &str, &str)> = files
        .iter()
        .map(|(file, text)| (module_path(file), file.as_str(), text.as_str()))
        .collect();
    let mut modules: HashMap<ModPath, ModuleFacts> = HashMap::new();
    for (module, file, text) in &paths {
        // Children include directories without a file of their own (`a/b.rs` without
        // `a.rs` or `a/mod.rs`), so `use a::b::C` in the parent still resolves.
        let children: HashSet<&str> = paths
            .iter()
            .filter(|(m, _, _)| m.len() > module.len() && m.starts_with(module))
            .map(|(m, _, _)| m[module.len()].as_str())
            .collect();
        let container = module.is_empty() || file.ends_with("mod.rs") || !children.is_empty();
        let facts = scan_file(module, file, text, &children, container);
        modules.insert(module.clone(), facts);
    }

    let resolver = Resolver { modules: &modules };
    let mut graph = Graph::default();
    let mut sorted: Vec<&ModPath> = modules.keys().collect();
    sorted.sort();
    for module in sorted {
        let facts = &modules[module];
        let from = display(module);
        graph.modules.insert(from.clone());
        for reference in facts.references.iter().filter(|r| !r.reexport) {
            let Some(target) = resolver.resolve(&reference.segments, 0) else {
                continue;
            };
            if target.is_empty() || &target == module {
                continue;
            }
            graph
                .edges
                .entry(from.clone())
                .or_default()
                .entry(display(&target))
                .or_insert_with(|| Site {
                    file: format!("src/{}", facts.file),
                    line: reference.line,
                    path: reference.written.clone(),
                });
        }
    }
    graph
}

/// `lib.rs` is the root, `a.rs` and `a/mod.rs` are `a`, `a/b.rs` is `a::b`.
fn module_path(file: &str) -> ModPath {
    let stem = file.strip_suffix(".rs").unwrap_or(file);
    let mut segments: ModPath = stem.split('/').map(str::to_owned).collect();
    if segments.last().is_some_and(|s| s == "mod") || segments == ["lib"] {
        segments.pop();
    }
    segments
}

fn display(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

/// Follows paths to the module that defines what they name.
struct Resolver<'a> {
    modules: &'a HashMap<ModPath, ModuleFacts>,
}

impl Resolver<'_> {
    /// The module an absolute path refers to: its longest prefix that is a module, or, when
    /// that is a container and the next segment is not defined in it, wherever the
    /// container's imports lead. `None` for another crate's item or an unknown root name.
    fn resolve(&self, path: &[String], hops: usize) -> Option<ModPath> {
        if hops > 32 {
            return None;
        }
        let known = (0..=path.len())
            .rev()
            .find(|&k| self.modules.contains_key(&path[..k]))?;
        let (module, rest) = path.split_at(known);
        let facts = &self.modules[module];
        let Some(name) = rest.first() else {
            return Some(module.to_vec());
        };
        if !facts.container || facts.defined.contains(name) {
            return Some(module.to_vec());
        }
        if let Some(target) = facts.imports.get(name) {
            let mut next = target.clone()?;
            next.extend_from_slice(&rest[1..]);
            return self.resolve(&next, hops + 1);
        }
        for glob in &facts.globs {
            if self.provides(glob, name, hops + 1) {
                let mut next = glob.clone();
                next.extend_from_slice(rest);
                return self.resolve(&next, hops + 1);
            }
        }
        // Not found: a macro or something generated; the root is never a target.
        (!module.is_empty()).then(|| module.to_vec())
    }

    /// Whether the module `glob` defines or imports `name` (for `use glob::*`).
    fn provides(&self, glob: &[String], name: &str, hops: usize) -> bool {
        if hops > 32 {
            return false;
        }
        let Some(facts) = self.modules.get(glob) else {
            return false;
        };
        facts.defined.contains(name)
            || facts.imports.contains_key(name)
            || facts.globs.iter().any(|g| self.provides(g, name, hops + 1))
    }
}

/// Collects the items, imports and references of one file.
fn scan_file(
    module: &[String],
    file: &str,
    text: &str,
    children: &HashSet<&str>,
    container: bool,
) -> ModuleFacts {
    let code = strip_comments_and_literals(text);
    let tokens = tokenize(cut_unit_tests(&code));
    let mut facts = ModuleFacts {
        file: file.to_owned(),
        container,
        ..ModuleFacts::default()
    };
    let absolute = |segments: &[String]| absolutize(module, segments, children);

    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i].text.as_str();
        match token {
            "{" => depth += 1,
            "}" => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth == 0 {
            let defined = if ITEM_KEYWORDS.contains(&token) {
                tokens.get(i + 1)
            } else if token == "macro_rules" && text_at(&tokens, i + 1) == "!" {
                tokens.get(i + 2)
            } else {
                None
            };
            if let Some(name) = defined.filter(|t| is_ident(&t.text)) {
                facts.defined.insert(name.text.clone());
            }
        }

        if token == "use" {
            let public = is_pub_before(&tokens, i);
            let mut j = i + 1;
            let mut leaves = Vec::new();
            parse_use_tree(&tokens, &mut j, Vec::new(), &mut leaves);
            for leaf in leaves {
                let path = absolute(&leaf.segments);
                if depth == 0 && container {
                    if leaf.glob {
                        if let Some(glob) = &path {
                            facts.globs.push(glob.clone());
                        }
                    } else if let Some(binding) = leaf.binding.filter(|b| b != "_") {
                        facts.imports.insert(binding, path.clone());
                    }
                }
                if let Some(segments) = path {
                    facts.references.push(Reference {
                        segments,
                        written: leaf.segments.join("::"),
                        line: leaf.line,
                        reexport: public && container,
                    });
                }
            }
            i = j.max(i + 1);
            continue;
        }

        if starts_path(&tokens, i, children) {
            let line = tokens[i].line;
            let mut segments = vec![token.to_owned()];
            let mut j = i + 1;
            while text_at(&tokens, j) == "::" && is_ident(text_at(&tokens, j + 1)) {
                segments.push(tokens[j + 1].text.clone());
                j += 2;
            }
            if let Some(absolute) = absolute(&segments) {
                facts.references.push(Reference {
                    segments: absolute,
                    written: segments.join("::"),
                    line,
                    reexport: false,
                });
            }
            i = j;
            continue;
        }
        i += 1;
    }
    facts
}

/// A path as written, made absolute from `module`: `None` unless it starts with `crate`,
/// `super`, `self` or a child module (any other start is another crate).
fn absolutize(module: &[String], segments: &[String], children: &HashSet<&str>) -> Option<ModPath> {
    let first = segments.first()?.as_str();
    let mut base: ModPath;
    let rest: &[String];
    match first {
        "crate" => {
            base = Vec::new();
            rest = &segments[1..];
        }
        "self" => {
            base = module.to_vec();
            rest = &segments[1..];
        }
        "super" => {
            base = module.to_vec();
            let supers = segments.iter().take_while(|s| *s == "super").count();
            for _ in 0..supers {
                base.pop()?;
            }
            rest = &segments[supers..];
        }
        child if children.contains(child) => {
            base = module.to_vec();
            rest = segments;
        }
        _ => return None,
    }
    base.extend_from_slice(rest);
    Some(base)
}

/// Whether token `i` starts a path into the crate (not the middle of a longer path, a
/// method call, or the `in crate::x` of a visibility).
fn starts_path(tokens: &[Token], i: usize, children: &HashSet<&str>) -> bool {
    let token = tokens[i].text.as_str();
    let anchored = matches!(token, "crate" | "super" | "self") || children.contains(token);
    if !anchored || text_at(tokens, i + 1) != "::" {
        return false;
    }
    let before = |k: usize| i.checked_sub(k).map_or("", |j| tokens[j].text.as_str());
    let mid_path = matches!(before(1), "::" | ".");
    let visibility = before(1) == "in" && before(2) == "(";
    !mid_path && !visibility
}

/// Whether the `use` at `i` is `pub use` or `pub(...) use`.
fn is_pub_before(tokens: &[Token], i: usize) -> bool {
    let mut k = i;
    if k > 0 && tokens[k - 1].text == ")" {
        k -= 1;
        while k > 0 && tokens[k].text != "(" {
            k -= 1;
        }
    }
    k > 0 && tokens[k - 1].text == "pub"
}

/// Parses one use tree from `*j`, pushing its leaves with `prefix` before their paths.
fn parse_use_tree(tokens: &[Token], j: &mut usize, prefix: Vec<String>, out: &mut Vec<UseLeaf>) {
    let line = tokens.get(*j).map_or(0, |t| t.line);
    let mut segments = prefix;
    if text_at(tokens, *j) == "::" {
        // `::name` is always another crate.
        segments.push("::".to_owned());
        *j += 1;
    }
    loop {
        match text_at(tokens, *j) {
            "{" => {
                *j += 1;
                loop {
                    if text_at(tokens, *j) == "}" {
                        *j += 1;
                        return;
                    }
                    parse_use_tree(tokens, j, segments.clone(), out);
                    match text_at(tokens, *j) {
                        "," => *j += 1,
                        "}" => {}
                        // Not a use tree after all: give up on this one.
                        _ => return,
                    }
                }
            }
            "*" => {
                *j += 1;
                out.push(UseLeaf {
                    segments,
                    binding: None,
                    glob: true,
                    line,
                });
                return;
            }
            word if is_ident(word) => {
                segments.push(word.to_owned());
                *j += 1;
                if text_at(tokens, *j) != "::" {
                    break;
                }
                *j += 1;
            }
            _ => return,
        }
    }
    if segments.last().is_some_and(|s| s == "self") {
        segments.pop();
    }
    let mut binding = segments.last().cloned();
    if text_at(tokens, *j) == "as" {
        binding = Some(text_at(tokens, *j + 1).to_owned());
        *j += 2;
    }
    out.push(UseLeaf {
        segments,
        binding,
        glob: false,
        line,
    });
}

// ---------------------------------------------------------------------------------------
// Lexing, roughly: enough to find paths and not be fooled by comments and literals.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Token {
    text: String,
    line: usize,
}

fn text_at(tokens: &[Token], i: usize) -> &str {
    tokens.get(i).map_or("", |t| t.text.as_str())
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident(s: &str) -> bool {
    s.chars().next().is_some_and(is_ident_start)
        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// The source with comments and string, byte-string, raw-string and character literals
/// replaced by a space (their line breaks kept, so line numbers still hold).
fn strip_comments_and_literals(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let at = |k: usize| chars.get(k).copied();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, skipped: &[char]| {
        out.push(' ');
        out.extend(skipped.iter().filter(|&&c| c == '\n'));
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && at(i + 1) == Some('*') {
            let start = i;
            let mut depth = 0usize;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == Some('*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == Some('/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            blank(&mut out, &chars[start..i]);
            continue;
        }
        if is_ident_start(c) {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let end = match (word.as_str(), at(i)) {
                ("r" | "br" | "cr", Some('"' | '#')) => raw_string_end(&chars, i),
                ("b" | "c", Some('"')) => Some(string_end(&chars, i)),
                ("b", Some('\'')) => char_literal_end(&chars, i),
                _ => None,
            };
            match end {
                Some(end) => {
                    blank(&mut out, &chars[start..end]);
                    i = end;
                }
                None => out.push_str(&word),
            }
            continue;
        }
        let end = match c {
            '"' => Some(string_end(&chars, i)),
            '\'' => char_literal_end(&chars, i),
            _ => None,
        };
        match end {
            Some(end) => {
                blank(&mut out, &chars[i..end]);
                i = end;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The index after the string literal whose opening `"` is at `open`.
fn string_end(chars: &[char], open: usize) -> usize {
    let mut k = open + 1;
    while k < chars.len() {
        match chars[k] {
            '\\' => k += 2,
            '"' => return k + 1,
            _ => k += 1,
        }
    }
    chars.len()
}

/// The index after the raw string whose `#`s or `"` start at `open`, if it is one (`r#x`
/// is a raw identifier, not a string).
fn raw_string_end(chars: &[char], open: usize) -> Option<usize> {
    let hashes = chars[open..].iter().take_while(|&&c| c == '#').count();
    if chars.get(open + hashes) != Some(&'"') {
        return None;
    }
    let mut k = open + hashes + 1;
    while k < chars.len() {
        let closing = chars.get(k + 1..k + 1 + hashes);
        if chars[k] == '"' && closing.is_some_and(|c| c.iter().all(|&c| c == '#')) {
            return Some(k + 1 + hashes);
        }
        k += 1;
    }
    Some(chars.len())
}

/// The index after the character literal whose `'` is at `open`, or `None` for a lifetime
/// or a label.
fn char_literal_end(chars: &[char], open: usize) -> Option<usize> {
    match chars.get(open + 1) {
        Some('\\') => {
            let mut k = open + 3;
            while k < chars.len() && chars[k] != '\'' {
                k += 1;
            }
            Some((k + 1).min(chars.len()))
        }
        Some(_) if chars.get(open + 2) == Some(&'\'') => Some(open + 3),
        _ => None,
    }
}

/// Everything before a line `#[cfg(test)]` followed (after blank lines or other
/// attributes) by `mod tests`.
fn cut_unit_tests(code: &str) -> &str {
    let mut offset = 0;
    let mut pending: Option<usize> = None;
    for line in code.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed == "#[cfg(test)]" {
            pending.get_or_insert(offset);
        } else if pending.is_some() && (trimmed.is_empty() || trimmed.starts_with("#[")) {
            // Still between the attribute and its item.
        } else if let Some(start) = pending.take() {
            let mut words = trimmed
                .split_whitespace()
                .skip_while(|w| w.starts_with("pub"));
            if words.next() == Some("mod")
                && words.next().map(|w| w.trim_end_matches('{')) == Some("tests")
            {
                return &code[..start];
            }
        }
        offset += line.len();
    }
    code
}

fn tokenize(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token {
                text: chars[start..i].iter().collect(),
                line,
            });
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push(Token {
                text: "::".to_owned(),
                line,
            });
            i += 2;
        } else {
            tokens.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    tokens
}

// ---------------------------------------------------------------------------------------
// Cycles and reports.
// ---------------------------------------------------------------------------------------

impl Graph {
    fn targets(&self, module: &str) -> impl Iterator<Item = &String> {
        self.edges.get(module).into_iter().flat_map(|m| m.keys())
    }

    fn reachable(&self, from: &str) -> HashSet<&String> {
        let mut seen = HashSet::new();
        let mut stack: Vec<&String> = self.targets(from).collect();
        while let Some(next) = stack.pop() {
            if seen.insert(next) {
                stack.extend(self.targets(next));
            }
        }
        seen
    }

    /// The groups of modules that all reach each other (strongly connected components of
    /// more than one module), each sorted, in order.
    fn tangles(&self) -> Vec<Vec<String>> {
        let reach: HashMap<&String, HashSet<&String>> = self
            .modules
            .iter()
            .map(|m| (m, self.reachable(m)))
            .collect();
        let mut tangles: Vec<Vec<String>> = Vec::new();
        for module in &self.modules {
            if tangles.iter().any(|t| t.contains(module)) {
                continue;
            }
            let tangle: Vec<String> = self
                .modules
                .iter()
                .filter(|m| reach[module].contains(m) && reach[*m].contains(module))
                .cloned()
                .collect();
            if tangle.len() > 1 {
                tangles.push(tangle);
            }
        }
        tangles
    }

    /// Every elementary cycle (up to `MAX_CYCLES`), each starting at its smallest module,
    /// shortest first.
    fn cycles(&self) -> Vec<Vec<String>> {
        let mut cycles = Vec::new();
        for tangle in self.tangles() {
            for (n, start) in tangle.iter().enumerate() {
                // Only modules after the start, so each cycle is found once, from its
                // smallest module.
                let allowed: HashSet<&String> = tangle[n..].iter().collect();
                let mut path = vec![start.clone()];
                self.walk(start, &allowed, &mut path, &mut cycles);
            }
        }
        cycles.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        cycles
    }

    fn walk(
        &self,
        start: &String,
        allowed: &HashSet<&String>,
        path: &mut Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        let current = path.last().cloned().unwrap_or_default();
        for next in self.targets(&current) {
            if out.len() >= MAX_CYCLES {
                return;
            }
            if next == start {
                out.push(path.clone());
            } else if allowed.contains(next) && !path.contains(next) {
                path.push(next.clone());
                self.walk(start, allowed, path, out);
                path.pop();
            }
        }
    }

    /// `module -> a, b`, one line per module, sorted.
    fn adjacency(&self) -> String {
        let mut out = String::from("module graph (module -> modules it references):\n");
        for module in &self.modules {
            let targets: Vec<&str> = self.targets(module).map(String::as_str).collect();
            let targets = if targets.is_empty() {
                "(none)".to_owned()
            } else {
                targets.join(", ")
            };
            let _ = writeln!(out, "  {module} -> {targets}");
        }
        out
    }

    /// Each cycle as `a -> b -> a`, with one reference for each of its edges.
    fn describe_cycles(&self, cycles: &[Vec<String>]) -> String {
        let mut out = format!(
            "the library's modules import each other in {} cycle(s){}; break each one by \
             moving the shared item down or depending on an abstraction:\n",
            cycles.len(),
            if cycles.len() >= MAX_CYCLES {
                " (listing stopped there)"
            } else {
                ""
            },
        );
        for tangle in self.tangles() {
            let _ = writeln!(out, "modules caught in cycles: {}", tangle.join(", "));
        }
        for (n, cycle) in cycles.iter().enumerate() {
            let mut names: Vec<&str> = cycle.iter().map(String::as_str).collect();
            names.push(&cycle[0]);
            let _ = writeln!(out, "\ncycle {}: {}", n + 1, names.join(" -> "));
            for pair in names.windows(2) {
                let site = &self.edges[pair[0]][pair[1]];
                let _ = writeln!(
                    out,
                    "  {} -> {}: {}:{} `{}`",
                    pair[0], pair[1], site.file, site.line, site.path
                );
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

/// Every `.rs` file under `dir`, as (path relative to `root` with `/`, text), sorted.
fn read_sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_sources(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("under src/");
            let relative: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            out.push((relative.join("/"), text));
        }
    }
}

#[test]
fn library_modules_have_no_import_cycles() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = Vec::new();
    read_sources(src, src, &mut files);
    assert!(
        files.iter().any(|(path, _)| path == "lib.rs"),
        "no src/lib.rs under {}",
        src.display()
    );

    let graph = analyze(&files);
    println!("{}", graph.adjacency());
    let cycles = graph.cycles();
    assert!(cycles.is_empty(), "{}", graph.describe_cycles(&cycles));
}

#[test]
fn the_checker_finds_cycles_and_ignores_what_is_not_a_reference() {
    let files: Vec<(String, String)> = [
        (
            "lib.rs",
            "//! `crate::c::Z` in a doc comment.\n\
             mod a;\nmod b;\nmod c;\nmod d;\nmod f;\nmod g;\n\
             pub use b::Thing;\n\
             pub use d::{E as Renamed, T};\n",
        ),
        (
            "a.rs",
            "use crate::{b::X};\n\
             pub struct Y;\n\
             pub fn id<'a>(x: &'a X) -> &'a X { x }\n",
        ),
        (
            "b.rs",
            "pub struct X;\n\
             pub struct Thing;\n\
             pub fn y() -> super::a::Y { super::a::Y }\n\
             /* crate::c::Z in a /* nested */ block comment */\n\
             /// crate::c::Z in a doc comment\n\
             pub const S: &str = \"crate::c::Z \\\" crate::c::Z\";\n\
             pub const R: &str = r#\"crate::c::Z \"quoted\" crate::c::Z\"#;\n\
             pub const B: &[u8] = b\"crate::c::Z\";\n\
             #[cfg(test)]\n\
             \n\
             mod tests {\n    use crate::c::Z;\n}\n",
        ),
        (
            "c.rs",
            "const QUOTE: char = '\"';\n\
             pub struct Z<'a>(pub &'a str);\n\
             use crate::Thing;\n\
             const ESCAPED: char = '\\'';\n",
        ),
        ("d/mod.rs", "mod e;\npub use e::E;\npub trait T {}\n"),
        ("d/e.rs", "use super::T;\npub struct E;\nimpl T for E {}\n"),
        // The other layout: `g.rs` with its child in `g/h.rs`.
        ("g.rs", "mod h;\npub use h::H;\npub struct G;\n"),
        ("g/h.rs", "use super::G;\npub struct H(G);\n"),
        (
            "f.rs",
            "use crate::Renamed;\n\
             pub fn g(_: crate::d::E, _: &dyn crate::T) {}\n\
             pub(in crate::a) fn h() {}\n\
             pub fn k(_: crate::g::H) {}\n",
        ),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_owned(), text.to_owned()))
    .collect();

    let graph = analyze(&files);
    let adjacency: BTreeMap<&str, Vec<&str>> = graph
        .modules
        .iter()
        .map(|m| (m.as_str(), graph.targets(m).map(String::as_str).collect()))
        .collect();
    let expected: BTreeMap<&str, Vec<&str>> = [
        ("crate", vec![]),
        ("a", vec!["b"]),
        ("b", vec!["a"]),
        ("c", vec!["b"]),
        ("d", vec![]),
        ("d::e", vec!["d"]),
        ("f", vec!["d", "d::e", "g::h"]),
        ("g", vec![]),
        ("g::h", vec!["g"]),
    ]
    .into_iter()
    .collect();
    assert_eq!(adjacency, expected, "\n{}", graph.adjacency());

    let cycles = graph.cycles();
    assert_eq!(cycles, [["a", "b"]]);
    let report = graph.describe_cycles(&cycles);
    assert!(report.contains("cycle 1: a -> b -> a"), "{report}");
    assert!(
        report.contains("a -> b: src/a.rs:1 `crate::b::X`"),
        "{report}"
    );
    assert!(
        report.contains("b -> a: src/b.rs:3 `super::a::Y`"),
        "{report}"
    );
}
