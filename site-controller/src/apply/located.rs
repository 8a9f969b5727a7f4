//! YAML read with locations: a stream split into documents (line numbers kept), each
//! document as a tree of located fields, and YAML errors turned into problems that name the
//! file, line, column and field.

use std::fmt;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::Problem;
/// One document's text, padded with empty lines so that every location in it is the line of
/// the whole file.
pub(super) struct Chunk {
    pub(super) text: String,
    /// The first line with content.
    pub(super) line: u64,
}

/// Splits a YAML stream at its document markers (`---` starts a document, `...` ends one, both
/// at the start of a line, where YAML allows no scalar to hold them). Documents holding only
/// comments and blank lines are left out.
pub(super) fn split_documents(text: &str) -> Vec<Chunk> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let marker = |l: &str, m: &str| {
        l.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    };
    let mut chunks = Vec::new();
    let mut start = 0usize;
    let mut lines: Vec<&str> = Vec::new();
    let flush = |start: usize, lines: &mut Vec<&str>, chunks: &mut Vec<Chunk>| {
        let content = lines.iter().position(|l| {
            let t = l.trim();
            let after_marker = t
                .strip_prefix("---")
                .or_else(|| t.strip_prefix("..."))
                .map(str::trim);
            match after_marker {
                Some(rest) if marker(t, "---") || marker(t, "...") => {
                    !(rest.is_empty() || rest.starts_with('#'))
                }
                // A directive (`%YAML 1.2`) alone is no document either.
                _ => !(t.is_empty() || t.starts_with('#') || t.starts_with('%')),
            }
        });
        if let Some(first) = content {
            let mut text = "\n".repeat(start);
            for l in lines.iter() {
                text.push_str(l);
                text.push('\n');
            }
            chunks.push(Chunk {
                text,
                line: (start + first + 1) as u64,
            });
        }
        lines.clear();
    };
    for (i, l) in text.lines().enumerate() {
        if marker(l, "---") {
            flush(start, &mut lines, &mut chunks);
            start = i;
        }
        lines.push(l);
        if marker(l, "...") {
            flush(start, &mut lines, &mut chunks);
            start = i + 1;
        }
    }
    flush(start, &mut lines, &mut chunks);
    chunks
}

/// A problem from a YAML error, with the field at its location when one is there.
pub(super) fn yaml_problem(
    origin: &str,
    first_line: u64,
    fields: &Fields,
    e: &serde_saphyr::Error,
) -> Problem {
    let plain = e.render_with_options(serde_saphyr::render_options! {
        snippets: serde_saphyr::SnippetMode::Off
    });
    let location = e.location().filter(|l| l.line() > 0);
    let mut message = match location {
        Some(l) => {
            let suffix = format!(" at line {}, column {}", l.line(), l.column());
            plain.strip_suffix(&suffix).unwrap_or(&plain).to_string()
        }
        None => plain.clone(),
    };
    let field = location.and_then(|l| fields.field_at(l, &message));
    if let Some(f) = &field {
        let leaf = f.rsplit('.').next().unwrap_or(f);
        let found = fields
            .scalar(f)
            .map(|v| format!("{v:?} "))
            .unwrap_or_default();
        if message.starts_with("invalid u16") {
            message = if leaf.to_ascii_lowercase().contains("port") {
                format!("{found}is not a port (a whole number from 0 to 65535)")
            } else {
                format!("{found}is not a whole number from 0 to 65535")
            };
        } else if message.starts_with("invalid u32") {
            message = format!("{found}is not a whole number from 0 to 4294967295");
        } else if message.starts_with("invalid bool") || message.contains("boolean") {
            message = format!("{found}is not true or false ({message})");
        }
    }
    Problem {
        origin: origin.to_string(),
        line: location.map_or(first_line, |l| l.line()),
        column: location.map(|l| l.column()),
        field,
        message,
    }
}

/// A YAML document as a tree of located nodes: used to find the field at an error's location
/// and the line of a field a check refused.
#[derive(Debug)]
pub(super) enum Node {
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar(String),
    Null,
}

/// A mapping key (any scalar, as text).
#[derive(Debug)]
pub(super) struct Key(String);

struct ScalarText;

impl<'de> serde::de::Visitor<'de> for ScalarText {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a scalar")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<String, E> {
        Ok(String::new())
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarText).map(Key)
    }
}

struct NodeVisitor;

impl<'de> serde::de::Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("YAML")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(entry) = map.next_entry()? {
            out.push(entry);
        }
        Ok(Node::Map(out))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element()? {
            out.push(item);
        }
        Ok(Node::Seq(out))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Node, E> {
        ScalarText.visit_str(v).map(Node::Scalar)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Node, E> {
        ScalarText.visit_bool(v).map(Node::Scalar)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Node, E> {
        ScalarText.visit_i64(v).map(Node::Scalar)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Node, E> {
        ScalarText.visit_u64(v).map(Node::Scalar)
    }
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Node, E> {
        ScalarText.visit_i128(v).map(Node::Scalar)
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Node, E> {
        ScalarText.visit_u128(v).map(Node::Scalar)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Node, E> {
        ScalarText.visit_f64(v).map(Node::Scalar)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// Every field of a document by path (`spec.weighted[0].routingKey`), with where its key and
/// its value are.
#[derive(Debug, Clone, Default)]
pub(super) struct Fields {
    entries: Vec<Field>,
}

#[derive(Debug, Clone)]
pub(super) struct Field {
    path: String,
    key: Option<Location>,
    value: Location,
    scalar: Option<String>,
    mapping: bool,
}

impl Fields {
    pub(super) fn collect(&mut self, path: &str, node: &Spanned<Node>) {
        let child = |p: &str, k: &str| {
            if p.is_empty() {
                k.to_string()
            } else {
                format!("{p}.{k}")
            }
        };
        match &node.value {
            Node::Map(entries) => {
                for (k, v) in entries {
                    let p = child(path, &k.value.0);
                    self.push(&p, Some(k.referenced), v);
                    self.collect(&p, v);
                }
            }
            Node::Seq(items) => {
                for (i, v) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.push(&p, None, v);
                    self.collect(&p, v);
                }
            }
            Node::Scalar(_) | Node::Null => {}
        }
    }

    fn push(&mut self, path: &str, key: Option<Location>, v: &Spanned<Node>) {
        self.entries.push(Field {
            path: path.to_string(),
            key,
            value: v.referenced,
            scalar: match &v.value {
                Node::Scalar(s) => Some(s.clone()),
                _ => None,
            },
            mapping: matches!(v.value, Node::Map(_)),
        });
    }

    pub(super) fn get(&self, path: &str) -> Option<&Field> {
        self.entries.iter().find(|f| f.path == path)
    }

    pub(super) fn scalar(&self, path: &str) -> Option<&str> {
        self.get(path).and_then(|f| f.scalar.as_deref())
    }

    /// The line of a field, else `default` (the document's first line).
    pub(super) fn line_of(&self, path: &str, default: u64) -> u64 {
        self.get(path).map_or(default, |f| f.value.line())
    }

    /// The field a YAML error at `at` is about: an unknown field's key, a missing field's
    /// mapping (with the missing name), else the innermost value there.
    pub(super) fn field_at(&self, at: Location, message: &str) -> Option<String> {
        let same = |l: &Location| l.line() == at.line() && l.column() == at.column();
        let quoted = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|r| r.split('`').next())
                .map(str::to_string)
        };
        if let Some(unknown) = quoted("unknown field `") {
            let path = self
                .entries
                .iter()
                .find(|f| f.key.as_ref().is_some_and(same))
                .map(|f| f.path.clone())
                .unwrap_or(unknown);
            return Some(path);
        }
        if let Some(missing) = quoted("missing field `") {
            let parent = self
                .entries
                .iter()
                .filter(|f| f.mapping && same(&f.value))
                .min_by_key(|f| f.path.len());
            return Some(match parent {
                Some(p) => format!("{}.{missing}", p.path),
                None => missing,
            });
        }
        self.entries
            .iter()
            .filter(|f| same(&f.value))
            .max_by_key(|f| f.path.len())
            .map(|f| f.path.clone())
    }

    /// A problem with `path`, at its value's location (else at the document's first line).
    pub(super) fn problem(
        &self,
        origin: &str,
        line: u64,
        path: &str,
        message: impl Into<String>,
    ) -> Problem {
        let at = self.get(path);
        Problem {
            origin: origin.to_string(),
            line: at.map_or(line, |f| f.value.line()),
            column: at.map(|f| f.value.column()),
            field: Some(path.to_string()),
            message: message.into(),
        }
    }
}
