//! Reading manifests: files, directories, stdin; multi-document streams; `List` objects. Every
//! node keeps its position, so a finding can point at `file:line:column`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

/// A position in a source file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

impl Default for Pos {
    /// The start of a file.
    fn default() -> Self {
        Pos { line: 1, col: 1 }
    }
}

/// Where every node of an object is: one position per node of its value, in pre-order (a
/// mapping entry at its key, a sequence item at the item). Looked up by path
/// (`spec.template.spec.containers[0].image`) together with the value, whose shape gives each
/// node's index, so that no path string is built while reading and a node costs 8 bytes.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    nodes: Vec<(u32, u32)>,
}

/// The number of nodes of a value (itself and everything below it).
fn size(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(size).sum::<usize>(),
        Value::Object(m) => 1 + m.values().map(size).sum::<usize>(),
        _ => 1,
    }
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Positions {
    /// From positions in pre-order.
    pub(crate) fn from_nodes(nodes: Vec<(u32, u32)>) -> Self {
        Positions { nodes }
    }

    /// A node's position as a pre-order entry.
    pub(crate) fn entry(pos: Pos) -> (u32, u32) {
        (clamp(pos.line), clamp(pos.col))
    }

    fn at(&self, i: usize) -> Pos {
        self.nodes
            .get(i)
            .map_or_else(Pos::default, |&(line, col)| Pos {
                line: line as usize,
                col: col as usize,
            })
    }

    /// The position of the root node.
    pub fn root(&self) -> Pos {
        self.at(0)
    }

    /// The positions of the subtree rooted at pre-order index `start` of `value`.
    pub(crate) fn subtree(&self, start: usize, value: &Value) -> Positions {
        let end = (start + size(value)).min(self.nodes.len());
        Positions {
            nodes: self
                .nodes
                .get(start..end)
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
        }
    }

    /// The pre-order index of child `k` of the node at `index` with value `value`.
    pub(crate) fn child_index(index: usize, value: &Value, k: usize) -> usize {
        let before: usize = match value {
            Value::Array(a) => a.iter().take(k).map(size).sum(),
            Value::Object(m) => m.values().take(k).map(size).sum(),
            _ => 0,
        };
        index + 1 + before
    }

    /// The position of the node at `path` in `value` (which this mirrors), if it exists.
    pub fn get(&self, value: &Value, path: &str) -> Option<Pos> {
        let (pos, rest) = self.walk(value, path);
        rest.is_empty().then_some(pos)
    }

    /// The position of the node at `path`, or of its nearest ancestor that exists (where a
    /// missing field would have to be added).
    pub fn nearest(&self, value: &Value, path: &str) -> Pos {
        self.walk(value, path).0
    }

    /// Follows `path` as far as it goes: the last position reached and what is left.
    fn walk<'p>(&self, value: &Value, path: &'p str) -> (Pos, &'p str) {
        let (mut index, mut value, mut rest) = (0usize, value, path);
        loop {
            rest = rest.strip_prefix('.').unwrap_or(rest);
            if rest.is_empty() {
                return (self.at(index), rest);
            }
            let next = match value {
                Value::Object(map) => {
                    // The longest key the path continues with (keys may contain dots).
                    map.iter()
                        .enumerate()
                        .filter(|(_, (k, _))| {
                            rest.strip_prefix(k.as_str())
                                .is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']))
                        })
                        .max_by_key(|(_, (k, _))| k.len())
                        .map(|(i, (k, v))| (i, v, &rest[k.len()..]))
                }
                Value::Array(items) => rest.strip_prefix('[').and_then(|r| {
                    let close = r.find(']')?;
                    let i: usize = r[..close].parse().ok()?;
                    Some((i, items.get(i)?, &r[close + 1..]))
                }),
                _ => None,
            };
            match next {
                Some((i, v, r)) if Self::child_index(index, value, i) < self.nodes.len() => {
                    index = Self::child_index(index, value, i);
                    value = v;
                    rest = r;
                }
                _ => return (self.at(index), rest),
            }
        }
    }
}

/// One Kubernetes object read from a manifest.
#[derive(Debug, Clone)]
pub struct Object {
    /// The file it came from (`-` for stdin).
    pub file: Arc<PathBuf>,
    /// The whole text of that file (for source snippets).
    pub source: Arc<String>,
    /// The document's index in the file, from 0.
    pub document: usize,
    /// Path of the object inside its document: empty, or `items[3]` inside a `List`.
    pub prefix: String,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name` (empty when missing).
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// The object as JSON.
    pub value: Value,
    /// Positions of the object's nodes.
    pub positions: Positions,
}

impl Object {
    /// The absolute path (in the document) of `path` within this object.
    pub fn path(&self, path: &str) -> String {
        match (self.prefix.is_empty(), path.is_empty()) {
            (true, _) => path.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{path}", self.prefix),
        }
    }

    /// The position of `path` within this object, or of its nearest ancestor.
    pub fn pos(&self, path: &str) -> Pos {
        self.positions.nearest(&self.value, path)
    }

    /// `kind/name` (with the namespace when set), as people write it.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{} (namespace {ns})", self.kind, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }

    /// The object as a typed Kubernetes API object.
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.value)
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.value
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    }
}

/// Why (part of) an input could not be read. Each names the input and the position.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file or directory could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The input.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid YAML (or JSON).
    #[error("{path}:{}:{}: invalid YAML: {message}", pos.line, pos.col)]
    Syntax {
        /// The input.
        path: PathBuf,
        /// Where.
        pos: Pos,
        /// The parser's message.
        message: String,
    },
    /// A document that is not a Kubernetes object (no `kind`/`apiVersion` mapping).
    #[error("{path}:{}:{}: document {document} is not a Kubernetes object ({why})", pos.line, pos.col)]
    NotAnObject {
        /// The input.
        path: PathBuf,
        /// Where.
        pos: Pos,
        /// Document index, from 0.
        document: usize,
        /// What is missing.
        why: &'static str,
    },
}

/// Receives what a load reads, as it is read: a consumer that keeps only what it needs (the
/// linter) never holds a whole stream's objects.
pub trait Sink: Send + Sized {
    /// An object read.
    fn object(&mut self, object: Object);
    /// A part of the input that could not be read.
    fn error(&mut self, error: LoadError);
    /// Takes over what `later` received, from a later part of the same stream, which had
    /// `documents_before` documents before it (a large stream is read in parts on several
    /// threads, each part into its own sink).
    fn append(&mut self, later: Self, documents_before: usize);
}

/// Everything read from a set of inputs: the objects, and the errors of the parts that could
/// not be read (the rest is still returned).
#[derive(Debug, Default)]
pub struct Loaded {
    /// Objects in input order.
    pub objects: Vec<Object>,
    /// Errors, in input order.
    pub errors: Vec<LoadError>,
}

impl Sink for Loaded {
    fn object(&mut self, object: Object) {
        self.objects.push(object);
    }

    fn error(&mut self, error: LoadError) {
        self.errors.push(error);
    }

    fn append(&mut self, mut later: Self, documents_before: usize) {
        for o in &mut later.objects {
            o.document += documents_before;
        }
        for e in &mut later.errors {
            if let LoadError::NotAnObject { document, .. } = e {
                *document += documents_before;
            }
        }
        self.objects.extend(later.objects);
        self.errors.extend(later.errors);
    }
}

/// Streams at least this large are split at document markers and parsed on several threads.
const PARALLEL_MIN: usize = 1 << 20;

/// Reads `text` (the contents of `path`).
pub fn load_str(path: &Path, text: &str) -> Loaded {
    load_string(path, text.to_owned())
}

/// [`load_str`] for a text already owned (no copy of it is made).
pub fn load_string(path: &Path, text: String) -> Loaded {
    let mut out = Loaded::default();
    read_string(path, text, &mut out, &Loaded::default);
    out
}

/// Reads `text` (the contents of `path`) into `sink`; `new` makes the sinks of the parts a
/// large stream is split into.
pub fn read_string<S: Sink>(path: &Path, text: String, sink: &mut S, new: &(dyn Fn() -> S + Sync)) {
    let file = Arc::new(path.to_path_buf());
    let source: Arc<String> = Arc::new(text);
    let text: &str = &source;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if text.len() < PARALLEL_MIN || threads < 2 {
        read_chunk(path, text, &source, &file, 0, sink);
        return;
    }
    let chunks = split_documents(text, threads);
    let parts: Vec<(S, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|&(start, end, lines)| {
                let (source, file) = (&source, &file);
                scope.spawn(move || {
                    let mut part = new();
                    let docs = read_chunk(path, &text[start..end], source, file, lines, &mut part);
                    (part, docs)
                })
            })
            .collect();
        handles
            .into_iter()
            // A panic in a part is a bug: re-raise it rather than lose the part silently.
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    // Each part counted its documents from 0.
    let mut docs_before = 0;
    for (part, docs) in parts {
        sink.append(part, docs_before);
        docs_before += docs;
    }
}

/// Splits a stream into about `parts` chunks at document-start lines (`---` at column 0,
/// which valid YAML never has inside a scalar): `(start, end, lines before start)`.
fn split_documents(text: &str, parts: usize) -> Vec<(usize, usize, usize)> {
    let target = text.len() / parts;
    let mut cuts = vec![(0usize, 0usize)];
    let mut offset = 0;
    for (line, l) in text.split_inclusive('\n').enumerate() {
        let is_marker = l.starts_with("---") && l[3..].starts_with([' ', '\t', '\r', '\n']);
        let last = cuts.last().map_or(0, |c| c.0);
        if is_marker && offset - last >= target && cuts.len() < parts {
            cuts.push((offset, line));
        }
        offset += l.len();
    }
    (0..cuts.len())
        .map(|i| {
            let end = cuts.get(i + 1).map_or(text.len(), |c| c.0);
            (cuts[i].0, end, cuts[i].1)
        })
        .collect()
}

/// Reads one chunk of a stream that starts `line_offset` lines into the file into `sink`, one
/// document at a time; returns how many documents it had.
fn read_chunk<S: Sink>(
    path: &Path,
    text: &str,
    source: &Arc<String>,
    file: &Arc<PathBuf>,
    line_offset: usize,
    sink: &mut S,
) -> usize {
    // Documents after the first `skip` go to `sink`, numbered from 0.
    let mut each = |text: &str, skip: usize| {
        let mut document = 0;
        crate::yaml::parse_each(text, line_offset, |doc| {
            if document >= skip {
                for r in objects(path, source, file, document, doc) {
                    match r {
                        Ok(o) => sink.object(o),
                        Err(e) => sink.error(e),
                    }
                }
            }
            document += 1;
        })
    };
    // A layout kubectl accepts and the YAML spec does not (see `lenient`): read it the same
    // way. The relaxed text has the same documents; those already handed on are skipped.
    let result = match each(text, 0) {
        Err((e, read)) if e.message.starts_with("invalid indentation") => {
            match crate::lenient::relax_flow_indentation(text) {
                Some(r) => each(&r, read).map_err(|(_, n)| (e, n.max(read))),
                None => Err((e, read)),
            }
        }
        other => other,
    };
    match result {
        Ok(docs) => docs,
        Err((e, read)) => {
            sink.error(LoadError::Syntax {
                path: path.to_path_buf(),
                pos: Pos {
                    line: e.line,
                    col: e.col + 1,
                },
                message: e.message,
            });
            read
        }
    }
}

/// The objects of one document: itself, or the items of a `List`.
fn objects(
    path: &Path,
    source: &Arc<String>,
    file: &Arc<PathBuf>,
    document: usize,
    doc: crate::yaml::Doc,
) -> Vec<Result<Object, LoadError>> {
    let crate::yaml::Doc { value, positions } = doc;
    if value.is_null() {
        return Vec::new(); // an empty document (`---` at the end)
    }
    let at = positions.root();
    let object =
        |prefix: String, value: Value, positions: Positions| -> Result<Object, LoadError> {
            let get = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
            let not = |why| LoadError::NotAnObject {
                path: path.to_path_buf(),
                pos: positions.root(),
                document,
                why,
            };
            let kind = get("kind").ok_or_else(|| not("no `kind`"))?;
            let api_version = get("apiVersion").ok_or_else(|| not("no `apiVersion`"))?;
            let meta = value.get("metadata");
            let name = meta
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let namespace = meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok(Object {
                file: file.clone(),
                source: source.clone(),
                document,
                prefix,
                api_version,
                kind,
                name,
                namespace,
                value,
                positions,
            })
        };
    if !value.is_object() {
        return vec![Err(LoadError::NotAnObject {
            path: path.to_path_buf(),
            pos: at,
            document,
            why: "not a mapping",
        })];
    }
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && value.get("items").is_some_and(Value::is_array);
    if !is_list {
        return vec![object(String::new(), value, positions)];
    }
    let items_index = value
        .as_object()
        .and_then(|m| m.keys().position(|k| k == "items"))
        .map(|k| Positions::child_index(0, &value, k));
    let items_value = value.get("items").cloned().unwrap_or(Value::Null);
    let items = items_value.as_array().cloned().unwrap_or_default();
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let pos = items_index
                .map(|at| positions.subtree(Positions::child_index(at, &items_value, i), &item))
                .unwrap_or_default();
            object(format!("items[{i}]"), item, pos)
        })
        .collect()
}

/// Parses a single YAML (or JSON) document that is not a Kubernetes object, such as a config
/// file; `None` when it is empty.
pub fn parse_value(path: &Path, text: &str) -> Result<Option<Value>, LoadError> {
    let docs = crate::yaml::parse(text, 0).map_err(|e| LoadError::Syntax {
        path: path.to_path_buf(),
        pos: Pos {
            line: e.line,
            col: e.col + 1,
        },
        message: e.message,
    })?;
    Ok(docs
        .into_iter()
        .next()
        .map(|d| d.value)
        .filter(|v| !v.is_null()))
}

/// Reads files, directories (recursively: `*.yaml`, `*.yml`, `*.json`, in name order) and `-`
/// (stdin). Unreadable inputs are reported and the others still read.
pub fn load_paths(inputs: &[PathBuf]) -> Loaded {
    let mut out = Loaded::default();
    read_paths(inputs, &mut out, &Loaded::default);
    out
}

/// [`load_paths`] into `sink`, each object handed on as soon as it is read (see
/// [`read_string`]).
pub fn read_paths<S: Sink>(inputs: &[PathBuf], sink: &mut S, new: &(dyn Fn() -> S + Sync)) {
    for input in inputs {
        if input.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                Ok(_) => read_string(input, text, sink, new),
                Err(source) => sink.error(LoadError::Io {
                    path: input.clone(),
                    source,
                }),
            }
            continue;
        }
        let mut files = Vec::new();
        if let Err(source) = collect(input, &mut files, true) {
            sink.error(LoadError::Io {
                path: input.clone(),
                source,
            });
            continue;
        }
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => read_string(&f, text, sink, new),
                Err(source) => sink.error(LoadError::Io { path: f, source }),
            }
        }
    }
}

fn collect(path: &Path, files: &mut Vec<PathBuf>, explicit: bool) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            let hidden = e
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if !hidden {
                collect(&e, files, false)?;
            }
        }
    } else if explicit
        || path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
    {
        files.push(path.to_path_buf());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_DOCS: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: a
spec:
  containers:
    - name: web
      image: nginx
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: b
  namespace: prod
spec:
  replicas: 3
";

    #[test]
    fn documents_objects_and_positions() {
        let l = load_str(Path::new("m.yaml"), TWO_DOCS);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.objects.len(), 2);
        let pod = &l.objects[0];
        assert_eq!((pod.kind.as_str(), pod.name.as_str()), ("Pod", "a"));
        assert_eq!(pod.pos("spec.containers[0].image"), Pos { line: 8, col: 7 });
        assert_eq!(pod.pos("spec.containers[0].name"), Pos { line: 7, col: 7 });
        assert_eq!(pod.pos("spec.containers[0]"), Pos { line: 7, col: 7 });
        // A missing field points at its nearest existing ancestor.
        assert_eq!(
            pod.pos("spec.containers[0].lifecycle.preStop"),
            pod.pos("spec.containers[0]")
        );
        let d = &l.objects[1];
        assert_eq!(d.document, 1);
        assert_eq!(d.namespace.as_deref(), Some("prod"));
        assert_eq!(d.value["spec"]["replicas"], 3);
        assert_eq!(d.pos("spec.replicas"), Pos { line: 16, col: 3 });
        assert_eq!(d.display_name(), "Deployment/b (namespace prod)");
    }

    #[test]
    fn lists_are_expanded_with_their_paths() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: p\n";
        let l = load_str(Path::new("l.yaml"), text);
        assert_eq!(l.objects.len(), 2);
        assert_eq!(l.objects[1].prefix, "items[1]");
        assert_eq!(l.objects[1].pos("metadata.name"), Pos { line: 10, col: 5 });
    }

    #[test]
    fn dotted_keys_and_missing_paths() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    lameduck.io/ignore: all\nspec: {a: 1}\n";
        let l = load_str(Path::new("d.yaml"), text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let o = &l.objects[0];
        assert_eq!(
            o.pos("metadata.annotations.lameduck.io/ignore"),
            Pos { line: 6, col: 5 }
        );
        assert_eq!(
            o.positions.get(&o.value, "spec.a"),
            Some(Pos { line: 7, col: 8 })
        );
        assert_eq!(o.positions.get(&o.value, "spec.b"), None);
        assert_eq!(o.pos("spec.b.c"), Pos { line: 7, col: 1 });
    }

    #[test]
    fn json_reads_with_positions() {
        let text = "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Pod\",\n  \"metadata\": {\"name\": \"j\"},\n  \"spec\": {\"terminationGracePeriodSeconds\": 120}\n}\n";
        let l = load_str(Path::new("p.json"), text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(
            l.objects[0].value["spec"]["terminationGracePeriodSeconds"],
            120
        );
        assert_eq!(
            l.objects[0].pos("spec.terminationGracePeriodSeconds").line,
            5
        );
    }

    #[test]
    fn malformed_yaml_is_reported_with_its_position() {
        let l = load_str(
            Path::new("bad.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: [x\n",
        );
        assert!(l.objects.is_empty());
        let e = l.errors[0].to_string();
        assert!(e.starts_with("bad.yaml:"), "{e}");
        assert!(e.contains("invalid YAML"), "{e}");
        let l = load_str(Path::new("x.yaml"), "just: a map\n");
        assert!(l.errors[0].to_string().contains("no `kind`"));
    }

    #[test]
    fn large_streams_parse_in_parallel_exactly_as_in_one_piece() {
        let mut text = String::new();
        for i in 0..6000 {
            text.push_str("---\n");
            text.push_str(&TWO_DOCS.replace("name: a", &format!("name: a{i}")));
        }
        assert!(text.len() > PARALLEL_MIN);
        let mut seq = Loaded::default();
        let docs = read_chunk(
            Path::new("big.yaml"),
            &text,
            &Arc::new(text.clone()),
            &Arc::new("big.yaml".into()),
            0,
            &mut seq,
        );
        let par = load_str(Path::new("big.yaml"), &text);
        assert!(
            par.errors.is_empty(),
            "{} errors, first: {:?}",
            par.errors.len(),
            par.errors.first()
        );
        assert_eq!(docs, 12000);
        assert_eq!(
            par.objects.len(),
            seq.objects.len(),
            "{:?}",
            par.errors.first()
        );
        for (a, b) in par.objects.iter().zip(&seq.objects) {
            assert_eq!(
                (a.document, &a.kind, &a.name),
                (b.document, &b.kind, &b.name)
            );
            for path in [
                "metadata.name",
                "spec",
                "spec.containers[0].image",
                "spec.replicas",
            ] {
                assert_eq!(
                    a.positions.get(&a.value, path),
                    b.positions.get(&b.value, path),
                    "{path} of document {}",
                    a.document
                );
            }
        }
        // A syntax error in a late part is reported at its real line.
        let lines = text.lines().count();
        text.push_str("---\napiVersion: v1\nkind: Pod\nmetadata: {name: [x\n");
        let bad = load_str(Path::new("big.yaml"), &text);
        match &bad.errors[..] {
            [LoadError::Syntax { pos, .. }] => assert_eq!(pos.line, lines + 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn quoted_numbers_stay_strings() {
        let l = load_str(
            Path::new("q.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  a: \"30\"\n  b: 30\n  c: yes\n",
        );
        let v = &l.objects[0].value["data"];
        assert_eq!(v["a"], "30");
        assert_eq!(v["b"], 30);
        // YAML 1.2: `yes` is a string.
        assert_eq!(v["c"], "yes");
    }
}
