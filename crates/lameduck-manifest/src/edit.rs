//! Editing a manifest in place: set a field, append to a list, replace a scalar, and leave
//! every other byte of the text alone (comments, quoting, key order, blank lines).
//!
//! Written here because the YAML crates we can use either re-emit a whole document (losing
//! comments and layout) or only parse. Positions come from saphyr's parser; the edits are text
//! splices. Block style is edited line by line at the indentation the file already uses; flow
//! style (and JSON, which is flow YAML) is edited with JSON fragments.
//!
//! Every edit is checked: the text is parsed again and every document must read back exactly
//! as intended (the edited one with the change applied to its tree, the others unchanged). When
//! the layout-keeping splice does not give that (a layout it does not handle), the edited node
//! is rewritten in flow style (JSON) instead, which any YAML layout accepts; only if that fails
//! too is the edit refused. So an edit can lose a node's layout, never its meaning.
//! Files with CRLF line ends are edited as LF and written back with CRLF.

use std::borrow::Cow;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::Value;

/// Why an edit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The text is not valid YAML (before, or after an edit: a bug).
    #[error("line {line}: invalid YAML: {message}")]
    Syntax {
        /// Line, from 1.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// The path does not lead to a node of the expected shape.
    #[error("`{path}`: {why}")]
    Path {
        /// The path, as given.
        path: String,
        /// What was found instead.
        why: String,
    },
    /// Neither a layout-keeping edit nor a flow rewrite read back as intended (a bug).
    #[error("`{path}`: the edited text does not read back as intended")]
    Unverified {
        /// The path edited.
        path: String,
    },
}

/// One change to a document's tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Set `key` in the mapping at the path (add it, or replace its value).
    Set(String, String, Value),
    /// Append to the sequence at the path.
    Push(String, Value),
    /// Replace the scalar at the path.
    Replace(String, Value),
}

impl Op {
    fn path(&self) -> &str {
        match self {
            Op::Set(p, _, _) | Op::Push(p, _) | Op::Replace(p, _) => p,
        }
    }

    /// Applies the change to a document's JSON tree.
    fn apply(&self, doc: &mut Value) -> Result<(), EditError> {
        let path = self.path();
        let missing = |why: String| EditError::Path {
            path: path.to_owned(),
            why,
        };
        let node = json_at(doc, path).ok_or_else(|| missing("no such node".into()))?;
        match (self, node) {
            (Op::Set(_, key, v), Value::Object(map)) => {
                map.insert(key.clone(), v.clone());
            }
            (Op::Push(_, v), Value::Array(items)) => items.push(v.clone()),
            (Op::Replace(_, v), node) if !node.is_object() && !node.is_array() => *node = v.clone(),
            (Op::Set(..), _) => return Err(missing("not a mapping".into())),
            (Op::Push(..), _) => return Err(missing("not a sequence".into())),
            (Op::Replace(..), _) => return Err(missing("not a scalar".into())),
        }
        Ok(())
    }
}

/// The node at `path` of a JSON tree.
fn json_at<'v>(mut v: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    for step in steps(path) {
        v = match (step, v) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(&k)?,
            (Step::Index(i), Value::Array(a)) => a.get_mut(i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Every document of a text as JSON (`Null` for an empty one), read as the loader reads them.
fn read_docs(text: &str) -> Result<Vec<Value>, EditError> {
    let docs = crate::yaml::parse(text, 0).map_err(|e| EditError::Syntax {
        line: e.line,
        message: e.message,
    })?;
    Ok(docs.into_iter().map(|d| d.value).collect())
}

/// Marks, in [`Editor::rewritten`], that multi-line flow collections were re-indented before
/// editing.
pub const RELAXED: &str = "(multi-line flow lists re-indented)";

/// One step of a path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Parses `spec.containers[0].ports` (keys may not contain `.` or `[`).
fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                out.push(Step::Key(rest[..i].to_owned()));
            }
            rest = &rest[i..];
            while let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').unwrap_or(r.len());
                if let Ok(n) = r[..end].parse() {
                    out.push(Step::Index(n));
                }
                rest = r.get(end + 1..).unwrap_or("");
            }
        } else {
            out.push(Step::Key(rest.to_owned()));
        }
    }
    out
}

/// A replacement of a byte range.
type Splice = (usize, usize, String);

/// A manifest's text, edited in place.
#[derive(Debug, Clone)]
pub struct Editor {
    text: String,
    /// The input had CRLF line ends throughout: they are restored on output.
    crlf: bool,
    /// Edits that fell back to a flow rewrite (the path of each), for a warning.
    rewritten: Vec<String>,
}

/// Layout conventions of the text, read from it.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// Indentation of a block mapping under its key.
    step: usize,
    /// Indentation of a block sequence's dashes under its key (0 or 2, kubectl uses 0).
    seq: usize,
}

fn key_text(node: &MarkedYaml<'_>) -> Option<String> {
    match &node.data {
        YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
        YamlData::Representation(s, _, _) => Some(s.to_string()),
        YamlData::Value(s) => Some(format!("{s:?}")),
        _ => None,
    }
}

/// The inner node of a tagged one.
fn untag<'a, 'b>(node: &'a MarkedYaml<'b>) -> &'a MarkedYaml<'b> {
    match &node.data {
        YamlData::Tagged(_, inner) => untag(inner),
        _ => node,
    }
}

impl Editor {
    /// Starts from `text`.
    pub fn new(text: impl Into<String>) -> Self {
        let text: String = text.into();
        let crlf = text.contains("\r\n") && !text.replace("\r\n", "").contains('\n');
        let text = if crlf {
            text.replace("\r\n", "\n")
        } else {
            text
        };
        let mut rewritten = Vec::new();
        // Edited as the loader reads it (see `lenient`).
        let text = match MarkedYaml::load_from_str(&text) {
            Err(e) if e.info().starts_with("invalid indentation") => {
                match crate::lenient::relax_flow_indentation(&text) {
                    Some(r) if MarkedYaml::load_from_str(&r).is_ok() => {
                        rewritten.push(RELAXED.to_owned());
                        r
                    }
                    _ => text,
                }
            }
            _ => text,
        };
        Editor {
            text,
            crlf,
            rewritten,
        }
    }

    /// The text as edited so far.
    pub fn text(&self) -> Cow<'_, str> {
        if self.crlf {
            Cow::Owned(self.text.replace('\n', "\r\n"))
        } else {
            Cow::Borrowed(&self.text)
        }
    }

    /// Paths whose node had to be rewritten in flow style (its comments and layout lost).
    pub fn rewritten(&self) -> &[String] {
        &self.rewritten
    }

    /// Sets `key` in the mapping at `path` of document `doc` to `value`: replaces the value if
    /// the key exists, otherwise adds the entry after the mapping's last one.
    pub fn set(
        &mut self,
        doc: usize,
        path: &str,
        key: &str,
        value: &Value,
    ) -> Result<(), EditError> {
        self.edit(doc, Op::Set(path.to_owned(), key.to_owned(), value.clone()))
    }

    /// Appends `value` to the sequence at `path` of document `doc`.
    pub fn push(&mut self, doc: usize, path: &str, value: &Value) -> Result<(), EditError> {
        self.edit(doc, Op::Push(path.to_owned(), value.clone()))
    }

    /// Replaces the scalar at `path` of document `doc` with `value` (a scalar), keeping the
    /// rest of its line.
    pub fn replace(&mut self, doc: usize, path: &str, value: &Value) -> Result<(), EditError> {
        self.edit(doc, Op::Replace(path.to_owned(), value.clone()))
    }

    /// Applies `op` to document `doc`, keeping the layout where the result reads back as
    /// intended, rewriting the edited node in flow style where it does not.
    pub fn edit(&mut self, doc: usize, op: Op) -> Result<(), EditError> {
        let mut expected = read_docs(&self.text)?;
        let target = expected.get_mut(doc).ok_or_else(|| EditError::Path {
            path: op.path().to_owned(),
            why: format!("there is no document {doc}"),
        })?;
        op.apply(target)?;
        let primary = match &op {
            Op::Set(p, k, v) => Self::plan_set(&self.text, doc, p, k, v),
            Op::Push(p, v) => Self::plan_push(&self.text, doc, p, v),
            Op::Replace(p, v) => Self::plan_replace(&self.text, doc, p, v),
        };
        if let Ok(splice) = primary
            && let Some(text) = Self::verified(&self.text, splice, &expected)
        {
            self.text = text;
            return Ok(());
        }
        // The node the change is in, rewritten whole in flow style.
        let rewrite_path = match &op {
            Op::Set(p, _, _) | Op::Push(p, _) => p.clone(),
            Op::Replace(p, _) => parent_path(p),
        };
        let mut new_node = expected[doc].clone();
        let new_node = json_at(&mut new_node, &rewrite_path)
            .cloned()
            .ok_or_else(|| EditError::Unverified {
                path: op.path().to_owned(),
            })?;
        let splice = Self::plan_flow(&self.text, doc, &rewrite_path, &new_node)?;
        match Self::verified(&self.text, splice, &expected) {
            Some(text) => {
                self.text = text;
                self.rewritten.push(rewrite_path);
                Ok(())
            }
            None => Err(EditError::Unverified {
                path: op.path().to_owned(),
            }),
        }
    }

    /// The text after `splice`, if every document then reads back as `expected`.
    fn verified(text: &str, (a, b, new): Splice, expected: &[Value]) -> Option<String> {
        let mut edited = text.to_owned();
        edited.replace_range(a..b, &new);
        (read_docs(&edited).ok()?.as_slice() == expected).then_some(edited)
    }

    /// Replaces the node at `path` (with the text that introduces it) by `value` in flow
    /// style: the whole document, an entry's value after its `key:`, or a sequence item after
    /// its `- `. Inside a flow collection, the outermost one is rewritten.
    fn plan_flow(text: &str, doc: usize, path: &str, value: &Value) -> Result<Splice, EditError> {
        let view = View::parse(text)?;
        let all = steps(path);
        // The outermost flow collection on the way (or the node itself).
        for n in 0..=all.len() {
            let prefix = join_steps(&all[..n]);
            if let Ok(node) = view.find(doc, &prefix)
                && view.is_flow(node)
            {
                let mut whole = read_docs(text)?.swap_remove(doc);
                let replaced =
                    json_at(&mut whole, &prefix).ok_or_else(|| EditError::Unverified {
                        path: path.to_owned(),
                    })?;
                let mut sub = replaced.clone();
                if let Some(slot) = json_at(&mut sub, &join_steps(&all[n..])) {
                    *slot = value.clone();
                }
                let (a, b) = view.flow_extent(node);
                return Ok((a, b, json(&sub)));
            }
        }
        if all.is_empty() {
            let root = view.docs.get(doc).ok_or_else(|| EditError::Path {
                path: path.to_owned(),
                why: format!("there is no document {doc}"),
            })?;
            let a = view.byte(root.span.start.index());
            let b = view.document_end(a);
            return Ok((a, b, json(value)));
        }
        let parent = join_steps(&all[..all.len() - 1]);
        let parent_node = view.find(doc, &parent)?;
        match (&all[all.len() - 1], &parent_node.data) {
            (Step::Key(k), YamlData::Mapping(entries)) => {
                let (key, v) = entries
                    .iter()
                    .find(|(key, _)| key_text(key).as_deref() == Some(k))
                    .ok_or_else(|| EditError::Unverified {
                        path: path.to_owned(),
                    })?;
                let key_end = view.byte(key.span.end.index());
                let colon = text[key_end..]
                    .find(':')
                    .map_or(key_end, |i| key_end + i + 1);
                let end = view.entry_end(key, untag(v));
                Ok((colon, end, format!(" {}", json(value))))
            }
            (Step::Index(i), YamlData::Sequence(items)) => {
                let item = untag(items.get(*i).ok_or_else(|| EditError::Unverified {
                    path: path.to_owned(),
                })?);
                let dash = view.dash_col(parent_node);
                let start = view.byte(item.span.start.index());
                let end = view.item_end(item, dash);
                // From right after the item's `- ` (a block collection's span may start
                // elsewhere on that line).
                let a = text[..start].rfind('-').map_or(start, |d| d + 1);
                Ok((a, end, format!(" {}", json(value))))
            }
            _ => Err(EditError::Unverified {
                path: path.to_owned(),
            }),
        }
    }

    /// Sets `key` in the mapping at `path` of document `doc` to `value`: replaces the value if
    /// the key exists, otherwise adds the entry after the mapping's last one.
    fn plan_set(
        text: &str,
        doc: usize,
        path: &str,
        key: &str,
        value: &Value,
    ) -> Result<Splice, EditError> {
        let view = View::parse(text)?;
        let map = view.find(doc, path)?;
        let YamlData::Mapping(entries) = &map.data else {
            return Err(view.not(path, map, "a mapping"));
        };
        if view.is_flow(map) {
            if let Some((_, v)) = entries
                .iter()
                .find(|(k, _)| key_text(k).as_deref() == Some(key))
            {
                let (a, b) = view.flow_extent(v);
                return Ok((a, b, json(value)));
            }
            let close = view.byte(map.span.end.index());
            let sep = if entries.is_empty() { "" } else { ", " };
            let text = format!("{sep}{}: {}", json(&Value::String(key.into())), json(value));
            return Ok((close, close, text));
        }
        let col = entries
            .iter()
            .next()
            .map(|(k, _)| k.span.start.col())
            .unwrap_or(0);
        let style = view.style();
        if let Some((k, v)) = entries
            .iter()
            .find(|(k, _)| key_text(k).as_deref() == Some(key))
        {
            let v = untag(v);
            // A scalar or flow value stays on its line: replace just the value when the new one
            // fits there, keeping any comment after it.
            if !view.is_block_collection(v) && is_inline(value) {
                let (a, b) = view.flow_extent(v);
                return Ok((a, b, inline(value)));
            }
            if view.is_flow(v) {
                let (a, b) = view.flow_extent(v);
                return Ok((a, b, json(value)));
            }
            let start = view.byte(k.span.start.index());
            let end = view.entry_end(k, v);
            let text = render_entry(key, value, col, style);
            return Ok((start, end, text));
        }
        let end = match entries.iter().next_back() {
            Some((k, v)) => view.entry_end(k, untag(v)),
            None => view.byte(map.span.end.index()),
        };
        let text = format!(
            "\n{}{}",
            " ".repeat(col),
            render_entry(key, value, col, style)
        );
        Ok((end, end, text))
    }

    /// Appends `value` to the sequence at `path` of document `doc`.
    fn plan_push(text: &str, doc: usize, path: &str, value: &Value) -> Result<Splice, EditError> {
        let view = View::parse(text)?;
        let seq = view.find(doc, path)?;
        let YamlData::Sequence(items) = &seq.data else {
            return Err(view.not(path, seq, "a sequence"));
        };
        if view.is_flow(seq) {
            let close = view.byte(seq.span.end.index());
            let sep = if items.is_empty() { "" } else { ", " };
            return Ok((close, close, format!("{sep}{}", json(value))));
        }
        let Some(last) = items.last() else {
            return Err(view.not(path, seq, "a non-empty sequence"));
        };
        let dash = view.dash_col(seq);
        let end = view.item_end(untag(last), dash);
        let text = format!(
            "\n{}{}",
            " ".repeat(dash),
            render_item(value, dash, view.style())
        );
        Ok((end, end, text))
    }

    /// Replaces the scalar at `path` of document `doc` with `value` (a scalar), keeping the
    /// rest of its line.
    fn plan_replace(
        text: &str,
        doc: usize,
        path: &str,
        value: &Value,
    ) -> Result<Splice, EditError> {
        let view = View::parse(text)?;
        let node = untag(view.find(doc, path)?);
        if view.is_block_collection(node) || view.is_flow(node) {
            return Err(view.not(path, node, "a scalar"));
        }
        let (a, b) = view.flow_extent(node);
        let text = if view.in_flow(doc, path) {
            json(value)
        } else {
            inline(value)
        };
        Ok((a, b, text))
    }
}

/// The path of a node's parent.
fn parent_path(path: &str) -> String {
    let all = steps(path);
    join_steps(&all[..all.len().saturating_sub(1)])
}

/// Steps back to a path (`spec.containers[0]`).
fn join_steps(steps: &[Step]) -> String {
    let mut out = String::new();
    for s in steps {
        match s {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The text parsed, with the positions of its nodes.
struct View<'t> {
    text: &'t str,
    docs: Vec<MarkedYaml<'t>>,
    /// Byte offset of each char, when the text is not ASCII.
    bytes: Option<Vec<usize>>,
}

impl<'t> View<'t> {
    fn parse(text: &'t str) -> Result<Self, EditError> {
        let docs = MarkedYaml::load_from_str(text).map_err(|e| EditError::Syntax {
            line: e.marker().line(),
            message: e.info().to_owned(),
        })?;
        let bytes = (!text.is_ascii()).then(|| {
            let mut v: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            v.push(text.len());
            v
        });
        Ok(View { text, docs, bytes })
    }

    /// Byte offset of char index `i`.
    fn byte(&self, i: usize) -> usize {
        match &self.bytes {
            Some(v) => v.get(i).copied().unwrap_or(self.text.len()),
            None => i.min(self.text.len()),
        }
    }

    fn not(&self, path: &str, node: &MarkedYaml<'_>, want: &str) -> EditError {
        EditError::Path {
            path: path.to_owned(),
            why: format!("not {want} (line {})", node.span.start.line()),
        }
    }

    fn find(&self, doc: usize, path: &str) -> Result<&MarkedYaml<'t>, EditError> {
        let mut node = self.docs.get(doc).ok_or_else(|| EditError::Path {
            path: path.to_owned(),
            why: format!("there is no document {doc}"),
        })?;
        for step in steps(path) {
            node = untag(node);
            let next = match (&step, &node.data) {
                (Step::Key(k), YamlData::Mapping(m)) => m
                    .iter()
                    .find(|(key, _)| key_text(key).as_deref() == Some(k))
                    .map(|(_, v)| v),
                (Step::Index(i), YamlData::Sequence(s)) => s.get(*i),
                _ => None,
            };
            node = next.ok_or_else(|| EditError::Path {
                path: path.to_owned(),
                why: format!("no {step:?} at line {}", node.span.start.line()),
            })?;
        }
        Ok(untag(node))
    }

    /// Whether any collection on the way to `path` is in flow style.
    fn in_flow(&self, doc: usize, path: &str) -> bool {
        let all = steps(path);
        (0..all.len()).any(|n| {
            let prefix: Vec<String> = all[..n]
                .iter()
                .map(|s| match s {
                    Step::Key(k) => format!(".{k}"),
                    Step::Index(i) => format!("[{i}]"),
                })
                .collect();
            self.find(doc, &prefix.concat())
                .is_ok_and(|node| self.is_flow(node))
        })
    }

    /// A flow collection starts at its bracket.
    fn is_flow(&self, node: &MarkedYaml<'_>) -> bool {
        matches!(node.data, YamlData::Mapping(_) | YamlData::Sequence(_))
            && self.text[self.byte(node.span.start.index())..].starts_with(['{', '['])
    }

    fn is_block_collection(&self, node: &MarkedYaml<'_>) -> bool {
        matches!(node.data, YamlData::Mapping(_) | YamlData::Sequence(_)) && !self.is_flow(node)
    }

    /// Byte range of a scalar or flow node (a flow collection's closing bracket included; a
    /// block scalar from its `|` or `>` to its last character).
    fn flow_extent(&self, node: &MarkedYaml<'_>) -> (usize, usize) {
        let mut a = self.byte(node.span.start.index());
        let mut b = self.byte(node.span.end.index()).min(self.text.len());
        if self.is_flow(node) {
            b += 1; // the span ends at the closing bracket
        } else if let Some(indicator) = self.block_scalar_indicator(a) {
            a = indicator;
            b = self.text[..b].trim_end().len();
        }
        (a, b.min(self.text.len()))
    }

    /// Where the `|` or `>` of a block scalar whose content starts at `a` is.
    fn block_scalar_indicator(&self, a: usize) -> Option<usize> {
        let before = self.text[..a].trim_end();
        let word = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        before[word..].starts_with(['|', '>']).then_some(word)
    }

    /// Where a block mapping entry ends: the end of its last line of content (without the
    /// newline). Lines indented deeper than the key belong to it, and so do `- ` lines at the
    /// key's own column when the value is a sequence written kubectl-style.
    fn entry_end(&self, key: &MarkedYaml<'_>, value: &MarkedYaml<'_>) -> usize {
        let col = key.span.start.col();
        let start = self.byte(key.span.start.index());
        let seq_at_col = matches!(value.data, YamlData::Sequence(_)) && !self.is_flow(value) && {
            let d = self.dash_col(value);
            d == col
        };
        let from = match (&value.data, self.is_flow(value)) {
            (YamlData::Mapping(_) | YamlData::Sequence(_), true) => self.flow_extent(value).1,
            _ => start,
        };
        self.block_end(from, col, seq_at_col)
    }

    /// Where a block sequence item that starts with `- ` at column `dash` ends.
    fn item_end(&self, item: &MarkedYaml<'_>, dash: usize) -> usize {
        let from = if self.is_flow(item) {
            self.flow_extent(item).1
        } else {
            self.byte(item.span.start.index())
        };
        self.block_end(from, dash, false)
    }

    /// From the line holding `from`, the end of the last following content line indented
    /// deeper than `col` (or a `- ` line at `col` when `dashes_at_col`).
    fn block_end(&self, from: usize, col: usize, dashes_at_col: bool) -> usize {
        let line_end = self.text[from..]
            .find('\n')
            .map_or(self.text.len(), |i| from + i);
        let mut end = line_end;
        let mut at = line_end;
        while at < self.text.len() {
            let next = at + 1;
            let stop = self.text[next..]
                .find('\n')
                .map_or(self.text.len(), |i| next + i);
            let line = &self.text[next..stop];
            let content = line.trim_start();
            let indent = line.len() - content.len();
            if content.is_empty() || content.starts_with('#') {
                at = stop;
                continue;
            }
            let belongs = indent > col
                || (dashes_at_col
                    && indent == col
                    && (content == "-" || content.starts_with("- ")));
            if !belongs {
                break;
            }
            end = stop;
            at = stop;
        }
        end
    }

    /// Where the document whose content starts at byte `a` ends: before the next document
    /// marker (`---` or `...` at column 0), or at the end of the text, without trailing
    /// blank lines.
    fn document_end(&self, a: usize) -> usize {
        let mut at = a;
        let mut end = self.text.len();
        while let Some(i) = self.text[at..].find('\n') {
            let next = at + i + 1;
            let line = &self.text[next..];
            if line.starts_with("---") || line.starts_with("...") {
                end = at + i;
                break;
            }
            at = next;
        }
        self.text[..end].trim_end().len().max(a)
    }

    /// The column of the dashes of a block sequence.
    fn dash_col(&self, seq: &MarkedYaml<'_>) -> usize {
        let start = self.byte(seq.span.start.index());
        let before = &self.text[..start];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        // The span starts at the first dash, or at the first item's content after it.
        if self.text[start..].starts_with('-') {
            return self.text[line_start..start].chars().count();
        }
        let line = &self.text[line_start..start];
        match line.rfind('-') {
            Some(i) => line[..i].chars().count(),
            None => seq.span.start.col().saturating_sub(2),
        }
    }

    /// The file's indentation conventions, from its first block mapping and sequence under a
    /// key (2 and 2 when there are none).
    fn style(&self) -> Style {
        let mut step = None;
        let mut seq = None;
        let lines: Vec<&str> = self.text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let content = line.trim_start();
            if !content.ends_with(':') || content.starts_with('#') {
                continue;
            }
            let indent = line.len() - content.len();
            // The key's own column: after a `- ` when it is the first key of an item.
            let key_col = indent + if content.starts_with("- ") { 2 } else { 0 };
            let Some(next) = lines[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            else {
                continue;
            };
            let n = next.trim_start();
            let nindent = next.len() - n.len();
            if n.starts_with("- ") || n == "-" {
                if seq.is_none() && nindent >= key_col {
                    seq = Some(nindent - key_col);
                }
            } else if step.is_none() && nindent > key_col {
                step = Some(nindent - key_col);
            }
            if step.is_some() && seq.is_some() {
                break;
            }
        }
        Style {
            step: step.unwrap_or(2),
            seq: seq.unwrap_or(2),
        }
    }
}

fn json(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Values written on the key's own line.
fn is_inline(value: &Value) -> bool {
    match value {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => true,
    }
}

/// A scalar (or empty collection) as plain YAML when that reads back the same, else quoted.
fn inline(value: &Value) -> String {
    match value {
        Value::String(s) => {
            let plain = !s.is_empty()
                && !s.contains(['\n', '\t'])
                && s.trim() == s
                && matches!(
                    MarkedYaml::load_from_str(&format!("k: {s}\n")).as_deref(),
                    Ok([doc]) if doc_string(doc, "k").as_deref() == Some(s.as_str())
                );
            if plain { s.clone() } else { json(value) }
        }
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        other => json(other),
    }
}

/// The plain string value of `key` in a parsed one-entry mapping, if it is a string.
fn doc_string(doc: &MarkedYaml<'_>, key: &str) -> Option<String> {
    let YamlData::Mapping(m) = &doc.data else {
        return None;
    };
    let (_, v) = m
        .iter()
        .find(|(k, _)| key_text(k).as_deref() == Some(key))?;
    match &untag(v).data {
        YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
        YamlData::Representation(s, saphyr::ScalarStyle::Plain, _) => {
            match Scalar::parse_from_cow(s.clone()) {
                Scalar::String(s) => Some(s.to_string()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `key: value` at column `col` (the first line starts at the cursor; the others are indented).
fn render_entry(key: &str, value: &Value, col: usize, style: Style) -> String {
    let key = inline(&Value::String(key.to_owned()));
    if is_inline(value) {
        return format!("{key}: {}", inline(value));
    }
    let mut out = format!("{key}:");
    match value {
        Value::Object(_) => {
            let inner = col + style.step;
            out.push('\n');
            out.push_str(&" ".repeat(inner));
            out.push_str(&render_map(value, inner, style));
        }
        Value::Array(items) => {
            let dash = col + style.seq;
            for item in items {
                out.push('\n');
                out.push_str(&" ".repeat(dash));
                out.push_str(&render_item(item, dash, style));
            }
        }
        _ => unreachable!("scalars are inline"),
    }
    out
}

/// The entries of a mapping at column `col`.
fn render_map(value: &Value, col: usize, style: Style) -> String {
    let Value::Object(map) = value else {
        return inline(value);
    };
    let entries: Vec<String> = map
        .iter()
        .map(|(k, v)| render_entry(k, v, col, style))
        .collect();
    entries.join(&format!("\n{}", " ".repeat(col)))
}

/// `- item` with its dash at column `dash`.
fn render_item(value: &Value, dash: usize, style: Style) -> String {
    match value {
        Value::Object(o) if !o.is_empty() => format!("- {}", render_map(value, dash + 2, style)),
        Value::Array(a) if !a.is_empty() => format!("- {}", json(value)),
        other => format!("- {}", inline(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DOC: &str = "\
# a comment that must stay
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web # trailing comment
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 30  # too short
      containers:
      - name: app
        image: \"nginx:1\"
        args: [\"--port\", \"8000\"]
        ports:
        - containerPort: 8000

      # between containers
      - name: other
        image: busybox
---
apiVersion: v1
kind: Service
metadata: {name: web}
";

    fn value(text: &str, doc: usize) -> Value {
        let l = crate::load_str(std::path::Path::new("t.yaml"), text);
        assert!(l.errors.is_empty(), "{:?}\n{text}", l.errors);
        l.objects[doc].value.clone()
    }

    #[test]
    fn replacing_a_scalar_keeps_its_comment() {
        let mut e = Editor::new(DOC);
        e.set(
            0,
            "spec.template.spec",
            "terminationGracePeriodSeconds",
            &json!(170),
        )
        .expect("set");
        assert!(
            e.text()
                .contains("terminationGracePeriodSeconds: 170  # too short"),
            "{}",
            e.text()
        );
        assert!(e.text().starts_with("# a comment that must stay\n"));
    }

    #[test]
    fn adding_a_block_value_uses_the_files_indentation() {
        let mut e = Editor::new(DOC);
        let probe = json!({"httpGet": {"path": "/ready", "port": 9901}, "periodSeconds": 2});
        e.set(
            0,
            "spec.template.spec.containers[0]",
            "readinessProbe",
            &probe,
        )
        .expect("set");
        e.set(
            0,
            "spec.template.spec.containers[0]",
            "command",
            &json!(["a", "b c"]),
        )
        .expect("set");
        let v = value(&e.text(), 0);
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["readinessProbe"], probe);
        assert_eq!(c["command"], json!(["a", "b c"]));
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][1]["name"],
            "other"
        );
        // kubectl-style sequences (dash under the key) are kept for new sequences too.
        assert!(
            e.text()
                .contains("\n        command:\n        - a\n        - b c\n"),
            "{}",
            e.text()
        );
        assert!(e.text().contains("      # between containers\n"));
        // The port entry is followed by a blank line that stays.
        assert!(
            e.text().contains("readinessProbe:\n          httpGet:\n"),
            "{}",
            e.text()
        );
    }

    #[test]
    fn appending_and_flow_style() {
        let mut e = Editor::new(DOC);
        e.push(
            0,
            "spec.template.spec.containers",
            &json!({"name": "third", "image": "x"}),
        )
        .expect("push");
        e.push(0, "spec.template.spec.containers[0].args", &json!("--host"))
            .expect("push flow");
        e.replace(
            0,
            "spec.template.spec.containers[0].args[1]",
            &json!("8001"),
        )
        .expect("replace");
        e.set(1, "metadata", "namespace", &json!("prod"))
            .expect("flow set");
        let v = value(&e.text(), 0);
        let cs = &v["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[2], json!({"name": "third", "image": "x"}));
        assert_eq!(cs[0]["args"], json!(["--port", "8001", "--host"]));
        assert_eq!(
            value(&e.text(), 1)["metadata"],
            json!({"name": "web", "namespace": "prod"})
        );
        assert!(e.text().contains("image: \"nginx:1\""));
    }

    #[test]
    fn replacing_a_block_collection() {
        let mut e = Editor::new(DOC);
        e.set(
            0,
            "spec.template.spec.containers[0]",
            "ports",
            &json!([{"containerPort": 9000}]),
        )
        .expect("set");
        let v = value(&e.text(), 0);
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 9000}])
        );
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][1]["image"],
            "busybox"
        );
    }

    #[test]
    fn json_documents_stay_json() {
        let text = "{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"metadata\": {\"name\": \"p\"},\n \"spec\": {\"containers\": [{\"name\": \"a\", \"image\": \"x\"}]}}\n";
        let mut e = Editor::new(text);
        e.set(0, "spec", "terminationGracePeriodSeconds", &json!(60))
            .expect("set");
        e.set(
            0,
            "spec.containers[0]",
            "command",
            &json!(["run", "--port", "1"]),
        )
        .expect("set");
        let parsed: Value = serde_json::from_str(&e.text()).expect("still JSON");
        assert_eq!(parsed["spec"]["terminationGracePeriodSeconds"], 60);
        assert_eq!(parsed["spec"]["containers"][0]["command"][2], "1");
    }

    #[test]
    fn strings_that_would_change_type_are_quoted() {
        for s in [
            "8000", "true", "null", "a: b", "- x", "#x", "", " lead", "*x", "1.5",
        ] {
            let r = inline(&json!(s));
            let back = value(
                &format!("apiVersion: v1\nkind: X\nmetadata: {{name: {r}}}\n"),
                0,
            );
            assert_eq!(back["metadata"]["name"], json!(s), "{s:?} rendered {r}");
        }
        assert_eq!(inline(&json!("/bin/sh")), "/bin/sh");
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let mut e = Editor::new(DOC);
        let err = e
            .set(0, "spec.template.spec.volumes", "x", &json!(1))
            .expect_err("no such path");
        assert!(
            err.to_string().contains("spec.template.spec.volumes"),
            "{err}"
        );
        assert_eq!(e.text(), DOC);
    }
}

#[cfg(test)]
mod layouts {
    //! The same object written in every layout people use, edited the same way: each must
    //! read back as intended, keep its comments, and (but for the cases that need it) keep its
    //! layout rather than fall back to a flow rewrite.

    use super::*;
    use serde_json::json;

    /// (name, text, whether a flow rewrite is acceptable).
    fn layouts() -> Vec<(&'static str, String, bool)> {
        let indented = "\
# top comment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: d
spec:
  template:
    spec:
      containers:
        - name: vllm
          image: vllm/vllm-openai
          args:
            - --port
            - \"8000\"
          env:
            - name: A
              valueFrom:
                secretKeyRef: {name: s, key: k}
          volumeMounts:
            - name: cache
              mountPath: /c
      volumes:
        - name: cache
          emptyDir: {}
";
        // kubectl's style: every list's dashes at its key's column.
        let indentless = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: d
spec:
  template:
    spec:
      containers:
      - name: vllm
        image: vllm/vllm-openai
        args:
        - --port
        - \"8000\"
        env:
        - name: A
          valueFrom:
            secretKeyRef: {name: s, key: k}
        volumeMounts:
        - name: cache
          mountPath: /c
      volumes:
      - name: cache
        emptyDir: {}
"
        .to_owned();
        let commented = indented
            .replace(
                "            - name: A\n",
                "            # the secret\n            - name: A\n",
            )
            .replace(
                "      volumes:\n        - name: cache\n",
                "      volumes:\n        # the cache\n        - name: cache\n\n",
            );
        let flow = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      containers: [{name: vllm, image: vllm/vllm-openai, args: [--port, \"8000\"], env: [{name: A, value: x}], volumeMounts: [{name: cache, mountPath: /c}]}]\n      volumes: [{name: cache, emptyDir: {}}]\n".to_owned();
        let json = serde_json::to_string_pretty(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "vllm", "image": "i", "args": ["--port", "8000"], "env": [{"name": "A", "value": "x"}], "volumeMounts": [{"name": "cache", "mountPath": "/c"}]}], "volumes": [{"name": "cache", "emptyDir": {}}]}}}})).unwrap_or_default();
        let block_scalar = indented.replace(
            "          args:\n            - --port\n            - \"8000\"\n",
            "          command: [/bin/sh, -c]\n          args:\n            - |\n              echo start\n              exec vllm serve m \\\n                --port 8000\n",
        );
        let crlf = indented.replace('\n', "\r\n");
        let multi = format!(
            "# before\n---\n# a service\napiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n--- # the workload\n{indented}---\n"
        );
        vec![
            ("indented", indented.to_owned(), false),
            ("indentless", indentless, false),
            ("commented", commented, false),
            ("flow", flow, false),
            ("json", json, false),
            ("block scalar", block_scalar, false),
            ("crlf", crlf, false),
            ("multi-document", multi, false),
        ]
    }

    fn docs(text: &str) -> Vec<Value> {
        read_docs(&text.replace("\r\n", "\n")).expect("parses")
    }

    #[test]
    fn every_layout_reads_back_as_intended() {
        for (name, text, flow_ok) in layouts() {
            let doc = docs(&text)
                .iter()
                .position(|d| d["kind"] == "Deployment")
                .expect("a Deployment");
            let mut e = Editor::new(text.clone());
            let c = "spec.template.spec.containers[0]";
            let ops = [
                Op::Set(
                    c.into(),
                    "readinessProbe".into(),
                    json!({"httpGet": {"path": "/ready", "port": 9901}}),
                ),
                Op::Push(format!("{c}.env"), json!({"name": "B", "value": "2"})),
                Op::Push(
                    format!("{c}.volumeMounts"),
                    json!({"name": "bin", "mountPath": "/b", "readOnly": true}),
                ),
                Op::Push(
                    "spec.template.spec.volumes".into(),
                    json!({"name": "bin", "emptyDir": {}}),
                ),
                Op::Set(
                    "spec.template.spec".into(),
                    "initContainers".into(),
                    json!([{"name": "g", "image": "x", "restartPolicy": "Always"}]),
                ),
                Op::Set(
                    "spec.template.spec".into(),
                    "terminationGracePeriodSeconds".into(),
                    json!(170),
                ),
            ];
            let mut expected = docs(&text);
            for op in ops {
                op.apply(&mut expected[doc]).expect("the op applies");
                e.edit(doc, op.clone())
                    .unwrap_or_else(|err| panic!("{name}: {op:?}: {err}"));
            }
            let out = e.text().into_owned();
            assert_eq!(docs(&out), expected, "{name}:\n{out}");
            assert!(
                flow_ok || e.rewritten().is_empty(),
                "{name}: fell back for {:?}:\n{out}",
                e.rewritten()
            );
            for line in text.lines().filter(|l| l.trim_start().starts_with('#')) {
                assert!(out.contains(line), "{name}: lost {line:?}");
            }
            assert_eq!(
                text.contains("\r\n"),
                out.contains("\r\n"),
                "{name}: line ends"
            );
        }
    }
}
