//! YAML text to JSON values with positions, straight from the parser's events.
//!
//! saphyr's own loader first builds a tree of marked nodes for the whole stream, which we then
//! converted; on a 30 MB stream that tree alone is most of a gigabyte. Here each event goes
//! into the JSON value and its position tree at once, and only what the objects keep is ever
//! allocated. Written by hand because no crate turns YAML events into `serde_json` values with
//! positions; the scalar rules are saphyr's (`Scalar::parse_from_cow`, the YAML 1.2 core
//! schema), so values read exactly as before.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr::{Scalar, ScalarStyle};
use saphyr_parser::{Event, Parser, ScanError, Span, SpannedEventReceiver, Tag};
use serde_json::{Map, Number, Value};

use crate::load::{Pos, Positions};

/// One document of a stream: its value (`Null` for an empty one) and positions.
#[derive(Debug)]
pub(crate) struct Doc {
    pub(crate) value: Value,
    pub(crate) positions: Positions,
}

/// Why a stream could not be read: where, and what the parser said.
#[derive(Debug, Clone)]
pub(crate) struct YamlError {
    /// Line, from 1.
    pub(crate) line: usize,
    /// Column, from 0.
    pub(crate) col: usize,
    pub(crate) message: String,
}

impl From<ScanError> for YamlError {
    fn from(e: ScanError) -> Self {
        YamlError {
            line: e.marker().line(),
            col: e.marker().col(),
            message: e.info().to_owned(),
        }
    }
}

/// Most nodes an alias may expand into over a document: a few nested anchors can otherwise
/// build an exponential tree (the "billion laughs"). Far above any real manifest.
const ALIAS_BUDGET: usize = 1_000_000;

enum Frame {
    Seq {
        items: Vec<Value>,
        /// Its index in the document's positions.
        index: usize,
        anchor: usize,
    },
    Map {
        map: Map<String, Value>,
        index: usize,
        anchor: usize,
        /// The key read, waiting for its value, and where it is.
        key: Option<(String, Pos)>,
    },
    /// A collection used as a mapping key (its text becomes the key; no positions).
    Key { depth: usize, value: Vec<Value> },
}

struct Builder<F: FnMut(Doc)> {
    line_offset: usize,
    stack: Vec<Frame>,
    /// Receives each document as it ends.
    sink: F,
    /// Documents handed to `sink`.
    docs: usize,
    /// The current document's positions, in pre-order.
    nodes: Vec<(u32, u32)>,
    /// Anchored nodes of the current document: value, and their positions' range.
    anchors: HashMap<usize, (Value, usize, usize)>,
    alias_nodes: usize,
    error: Option<YamlError>,
    /// The current document has its root node.
    in_document_with_node: bool,
}

fn nodes(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(nodes).sum::<usize>(),
        Value::Object(m) => 1 + m.values().map(nodes).sum::<usize>(),
        _ => 1,
    }
}

/// A scalar as the core schema reads it: plain scalars are typed, quoted and block ones are
/// strings (and so is anything tagged `!!str`).
fn scalar(text: Cow<'_, str>, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    let is_str_tag = tag.is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
    if style != ScalarStyle::Plain || is_str_tag {
        return Value::String(text.into_owned());
    }
    match Scalar::parse_from_cow(text) {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(b),
        Scalar::Integer(i) => Value::Number(i.into()),
        Scalar::FloatingPoint(f) => {
            Number::from_f64(f.into_inner()).map_or(Value::Null, Value::Number)
        }
        Scalar::String(s) => Value::String(s.into_owned()),
    }
}

fn key_text(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

impl<F: FnMut(Doc)> Builder<F> {
    fn pos(&self, span: &Span) -> Pos {
        Pos {
            line: span.start.line() + self.line_offset,
            col: span.start.col() + 1,
        }
    }

    /// Whether the next node is a mapping key (or inside one).
    fn reading_key(&self) -> bool {
        match self.stack.last() {
            Some(Frame::Map { key, .. }) => key.is_none(),
            Some(Frame::Key { .. }) => true,
            _ => false,
        }
    }

    /// A node starts at `pos`: records its position (its key's, when it is a mapping value)
    /// and returns its index.
    fn start_node(&mut self, pos: Pos) -> usize {
        let at = match self.stack.last() {
            Some(Frame::Map {
                key: Some((_, k)), ..
            }) => *k,
            _ => pos,
        };
        self.nodes.push(crate::load::Positions::entry(at));
        self.nodes.len() - 1
    }

    /// A finished node goes into its parent (or ends the document).
    fn insert(
        &mut self,
        value: Value,
        key_pos: Pos,
        anchor: usize,
        index: usize,
    ) -> Result<(), YamlError> {
        if anchor > 0 {
            let len = self.nodes.len() - index;
            self.anchors.insert(anchor, (value.clone(), index, len));
        }
        match self.stack.last_mut() {
            None => {
                let nodes = std::mem::take(&mut self.nodes);
                self.docs += 1;
                (self.sink)(Doc {
                    value,
                    positions: crate::load::Positions::from_nodes(nodes),
                });
            }
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Key { value: v, .. }) => v.push(value),
            Some(Frame::Map { map, key, .. }) => match key.take() {
                None => *key = Some((key_text(value), key_pos)),
                Some((k, at)) => {
                    if map.contains_key(&k) {
                        return Err(YamlError {
                            line: at.line,
                            col: at.col.saturating_sub(1),
                            message: format!("duplicated key in mapping: `{k}`"),
                        });
                    }
                    map.insert(k, value);
                }
            },
        }
        Ok(())
    }

    fn on(&mut self, ev: Event<'_>, span: Span) -> Result<(), YamlError> {
        let pos = self.pos(&span);
        // Inside a collection used as a key: build its value only.
        if let Some(Frame::Key { depth, value }) = self.stack.last_mut() {
            match ev {
                Event::SequenceStart(..) | Event::MappingStart(..) => *depth += 1,
                Event::SequenceEnd | Event::MappingEnd => {
                    *depth -= 1;
                    if *depth == 0 {
                        let parts = std::mem::take(value);
                        self.stack.pop();
                        let text = Value::Array(parts).to_string();
                        return self.insert(Value::String(text), pos, 0, self.nodes.len());
                    }
                }
                Event::Scalar(text, style, _, tag) => {
                    value.push(scalar(text, style, tag.as_deref()))
                }
                _ => {}
            }
            return Ok(());
        }
        match ev {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
            Event::DocumentStart(_) => {
                self.anchors.clear();
                self.nodes.clear();
            }
            Event::DocumentEnd => {
                if self.stack.is_empty() && !self.in_document_with_node {
                    self.docs += 1;
                    (self.sink)(Doc {
                        value: Value::Null,
                        positions: crate::load::Positions::from_nodes(vec![
                            crate::load::Positions::entry(pos),
                        ]),
                    });
                }
                self.alias_nodes = 0;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _)
                if self.reading_key() =>
            {
                let _ = anchor;
                self.stack.push(Frame::Key {
                    depth: 1,
                    value: Vec::new(),
                });
            }
            Event::SequenceStart(anchor, _) => {
                let index = self.start_node(pos);
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    index,
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                let index = self.start_node(pos);
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    index,
                    anchor,
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, index, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        index,
                        anchor,
                    }) => (Value::Array(items), index, anchor),
                    Some(Frame::Map {
                        map, index, anchor, ..
                    }) => (Value::Object(map), index, anchor),
                    Some(Frame::Key { .. }) | None => return Ok(()),
                };
                self.insert(value, pos, anchor, index)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar(text, style, tag.as_deref());
                if self.reading_key() {
                    return self.insert(value, pos, 0, self.nodes.len());
                }
                let index = self.start_node(pos);
                self.insert(value, pos, anchor, index)?;
            }
            Event::Alias(id) => {
                let (value, start, len) =
                    self.anchors
                        .get(&id)
                        .cloned()
                        .unwrap_or((Value::Null, 0, 0));
                self.alias_nodes += nodes(&value);
                if self.alias_nodes > ALIAS_BUDGET {
                    return Err(YamlError {
                        line: pos.line,
                        col: pos.col.saturating_sub(1),
                        message: format!("aliases expand to more than {ALIAS_BUDGET} nodes"),
                    });
                }
                if self.reading_key() {
                    return self.insert(value, pos, 0, self.nodes.len());
                }
                let index = self.start_node(pos);
                // The aliased node's descendants keep their anchor's positions.
                if len > 1 {
                    let copy: Vec<(u32, u32)> = self.nodes[start + 1..start + len].to_vec();
                    self.nodes.extend(copy);
                }
                self.insert(value, pos, 0, index)?;
            }
        }
        Ok(())
    }
}

impl<'input, F: FnMut(Doc)> SpannedEventReceiver<'input> for Builder<F> {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        if self.error.is_some() {
            return;
        }
        // Tracks whether the current document has its root yet.
        match &ev {
            Event::DocumentStart(_) => self.in_document_with_node = false,
            Event::SequenceStart(..)
            | Event::MappingStart(..)
            | Event::Scalar(..)
            | Event::Alias(_)
                if self.stack.is_empty() =>
            {
                self.in_document_with_node = true;
            }
            _ => {}
        }
        if let Err(e) = self.on(ev, span) {
            self.error = Some(e);
        }
    }
}

/// Every document of `text` (which starts `line_offset` lines into its file).
pub(crate) fn parse(text: &str, line_offset: usize) -> Result<Vec<Doc>, YamlError> {
    let mut docs = Vec::new();
    parse_each(text, line_offset, |d| docs.push(d)).map_err(|(e, _)| e)?;
    Ok(docs)
}

/// Hands each document of `text` to `sink` as soon as it is read, so that a long stream is
/// never held whole; returns how many there were. On an error, also says how many documents
/// `sink` received before it.
pub(crate) fn parse_each(
    text: &str,
    line_offset: usize,
    sink: impl FnMut(Doc),
) -> Result<usize, (YamlError, usize)> {
    let mut b = Builder {
        line_offset,
        stack: Vec::new(),
        sink,
        docs: 0,
        nodes: Vec::new(),
        anchors: HashMap::new(),
        alias_nodes: 0,
        error: None,
        in_document_with_node: false,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, true) {
        let mut e = YamlError::from(e);
        e.line += line_offset;
        return Err((e, b.docs));
    }
    match b.error {
        Some(e) => Err((e, b.docs)),
        None => Ok(b.docs),
    }
}
