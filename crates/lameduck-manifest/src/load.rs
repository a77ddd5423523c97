//! Reading manifests: files, directories, stdin; multi-document streams; `List` objects. Every
//! node keeps its position, so a finding can point at `file:line:column`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};

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

/// Where every node of an object is, in the shape of its value: a mapping entry at its key, a
/// sequence item at the item. Looked up by path (`spec.template.spec.containers[0].image`)
/// together with the value, so that no path string is built while reading.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    pos: Pos,
    /// Children in the value's order: mapping entries in key order, sequence items.
    kids: Vec<Positions>,
}

impl Positions {
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
        let (mut node, mut value, mut rest) = (self, value, path);
        loop {
            rest = rest.strip_prefix('.').unwrap_or(rest);
            if rest.is_empty() {
                return (node.pos, rest);
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
            match next.and_then(|(i, v, r)| Some((node.kids.get(i)?, v, r))) {
                Some((kid, v, r)) => {
                    node = kid;
                    value = v;
                    rest = r;
                }
                None => return (node.pos, rest),
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
    pub source: Arc<str>,
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

/// Everything read from a set of inputs: the objects, and the errors of the parts that could
/// not be read (the rest is still returned).
#[derive(Debug, Default)]
pub struct Loaded {
    /// Objects in input order.
    pub objects: Vec<Object>,
    /// Errors, in input order.
    pub errors: Vec<LoadError>,
}

/// Streams at least this large are split at document markers and parsed on several threads.
const PARALLEL_MIN: usize = 1 << 20;

/// Reads `text` (the contents of `path`).
pub fn load_str(path: &Path, text: &str) -> Loaded {
    let file = Arc::new(path.to_path_buf());
    let source: Arc<str> = Arc::from(text);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if text.len() < PARALLEL_MIN || threads < 2 {
        return load_chunk(path, text, &source, &file, 0, 0).0;
    }
    let chunks = split_documents(text, threads);
    let parts: Vec<(Loaded, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|&(start, end, lines)| {
                let (source, file) = (&source, &file);
                scope.spawn(move || load_chunk(path, &text[start..end], source, file, lines, 0))
            })
            .collect();
        handles
            .into_iter()
            // A panic in a part is a bug: re-raise it rather than lose the part silently.
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    // Renumber documents: each part counted from 0.
    let mut out = Loaded::default();
    let mut docs_before = 0;
    for (mut part, docs) in parts {
        for o in &mut part.objects {
            o.document += docs_before;
        }
        for e in &mut part.errors {
            if let LoadError::NotAnObject { document, .. } = e {
                *document += docs_before;
            }
        }
        docs_before += docs;
        merge(&mut out, part);
    }
    out
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

/// Reads one chunk of a stream that starts `line_offset` lines into the file; returns what it
/// read and how many documents it had.
fn load_chunk(
    path: &Path,
    text: &str,
    source: &Arc<str>,
    file: &Arc<PathBuf>,
    line_offset: usize,
    doc_offset: usize,
) -> (Loaded, usize) {
    let mut out = Loaded::default();
    // A layout kubectl accepts and the YAML spec does not (see `lenient`): read it the same way.
    let relaxed;
    let parsed = match MarkedYaml::load_from_str(text) {
        Err(e) if e.info().starts_with("invalid indentation") => {
            relaxed = crate::lenient::relax_flow_indentation(text);
            match &relaxed {
                Some(r) => MarkedYaml::load_from_str(r).map_err(|_| e),
                None => Err(e),
            }
        }
        other => other,
    };
    let docs = match parsed {
        Ok(d) => d,
        Err(e) => {
            let m = e.marker();
            out.errors.push(LoadError::Syntax {
                path: path.to_path_buf(),
                pos: Pos {
                    line: m.line() + line_offset,
                    col: m.col() + 1,
                },
                message: e.info().to_owned(),
            });
            return (out, 0);
        }
    };
    let count = docs.len();
    for (document, node) in docs.iter().enumerate() {
        let document = document + doc_offset;
        let (value, positions) = convert(node, line_offset);
        if value.is_null() {
            continue; // an empty document (`---` at the end)
        }
        let at = pos_of(node, line_offset);
        let object =
            |prefix: String, value: Value, positions: Positions| -> Result<Object, LoadError> {
                let get = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
                let not = |why| LoadError::NotAnObject {
                    path: path.to_path_buf(),
                    pos: positions.pos,
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
            out.errors.push(LoadError::NotAnObject {
                path: path.to_path_buf(),
                pos: at,
                document,
                why: "not a mapping",
            });
            continue;
        }
        let is_list = value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"))
            && value.get("items").is_some_and(Value::is_array);
        if is_list {
            let at_items = value
                .as_object()
                .and_then(|m| m.keys().position(|k| k == "items"))
                .and_then(|i| positions.kids.get(i));
            let items = value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                let pos = at_items
                    .and_then(|p| p.kids.get(i))
                    .cloned()
                    .unwrap_or_default();
                match object(format!("items[{i}]"), item, pos) {
                    Ok(o) => out.objects.push(o),
                    Err(e) => out.errors.push(e),
                }
            }
        } else {
            match object(String::new(), value, positions) {
                Ok(o) => out.objects.push(o),
                Err(e) => out.errors.push(e),
            }
        }
    }
    (out, count)
}

/// Parses a single YAML (or JSON) document that is not a Kubernetes object, such as a config
/// file; `None` when it is empty.
pub fn parse_value(path: &Path, text: &str) -> Result<Option<Value>, LoadError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| LoadError::Syntax {
        path: path.to_path_buf(),
        pos: Pos {
            line: e.marker().line(),
            col: e.marker().col() + 1,
        },
        message: e.info().to_owned(),
    })?;
    Ok(docs
        .first()
        .map(|d| convert(d, 0).0)
        .filter(|v| !v.is_null()))
}

/// Reads files, directories (recursively: `*.yaml`, `*.yml`, `*.json`, in name order) and `-`
/// (stdin). Unreadable inputs are reported and the others still read.
pub fn load_paths(inputs: &[PathBuf]) -> Loaded {
    let mut out = Loaded::default();
    for input in inputs {
        if input.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                Ok(_) => merge(&mut out, load_str(input, &text)),
                Err(source) => out.errors.push(LoadError::Io {
                    path: input.clone(),
                    source,
                }),
            }
            continue;
        }
        let mut files = Vec::new();
        if let Err(source) = collect(input, &mut files, true) {
            out.errors.push(LoadError::Io {
                path: input.clone(),
                source,
            });
            continue;
        }
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => merge(&mut out, load_str(&f, &text)),
                Err(source) => out.errors.push(LoadError::Io { path: f, source }),
            }
        }
    }
    out
}

fn merge(into: &mut Loaded, from: Loaded) {
    into.objects.extend(from.objects);
    into.errors.extend(from.errors);
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

fn pos_of(node: &MarkedYaml<'_>, line_offset: usize) -> Pos {
    Pos {
        line: node.span.start.line() + line_offset,
        col: node.span.start.col() + 1,
    }
}

/// Converts a node to JSON, with the positions of it and of everything below it.
pub(crate) fn convert(node: &MarkedYaml<'_>, line_offset: usize) -> (Value, Positions) {
    convert_at(node, line_offset, None)
}

/// [`convert`], with the position to record when it is not the node's own (a mapping entry's
/// key).
fn convert_at(node: &MarkedYaml<'_>, off: usize, at: Option<Pos>) -> (Value, Positions) {
    let (value, kids) = match &node.data {
        YamlData::Value(s) => (scalar(s), Vec::new()),
        YamlData::Representation(text, style, _) => {
            let v = if matches!(style, saphyr::ScalarStyle::Plain) {
                scalar(&Scalar::parse_from_cow(text.clone()))
            } else {
                Value::String(text.to_string())
            };
            (v, Vec::new())
        }
        YamlData::Sequence(items) => {
            let mut values = Vec::with_capacity(items.len());
            let mut kids = Vec::with_capacity(items.len());
            for item in items {
                let (v, p) = convert_at(item, off, None);
                values.push(v);
                kids.push(p);
            }
            (Value::Array(values), kids)
        }
        YamlData::Mapping(map) => {
            let mut out = Map::new();
            let mut kids: Vec<Positions> = Vec::with_capacity(map.len());
            for (k, v) in map {
                let key = match convert(k, off).0 {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                // A mapping entry is located at its key, as people point at `replicas:`.
                let (v, p) = convert_at(v, off, Some(pos_of(k, off)));
                // The parser refuses repeated keys; were one to get through, the map keeps its
                // first place and so do the positions.
                let before = out.len();
                out.insert(key, v);
                if out.len() > before {
                    kids.push(p);
                }
            }
            (Value::Object(out), kids)
        }
        YamlData::Tagged(_, inner) => return convert_at(inner, off, at),
        // Aliases are resolved by the loader; anything left is treated as empty.
        YamlData::Alias(_) | YamlData::BadValue => (Value::Null, Vec::new()),
    };
    let pos = at.unwrap_or_else(|| pos_of(node, off));
    (value, Positions { pos, kids })
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number((*i).into()),
        Scalar::FloatingPoint(f) => {
            Number::from_f64(f.into_inner()).map_or(Value::Null, Value::Number)
        }
        Scalar::String(s) => Value::String(s.to_string()),
    }
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
        let (seq, docs) = load_chunk(
            Path::new("big.yaml"),
            &text,
            &Arc::from(text.as_str()),
            &Arc::new("big.yaml".into()),
            0,
            0,
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
