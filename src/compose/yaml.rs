//! YAML text → a tree of positioned nodes.
//!
//! Built from the event stream of `granit-parser` (the YAML parser under `serde-saphyr`, which
//! re-exports it as `serde_saphyr::granit_parser`), so every key and value keeps its line and
//! column. Aliases are expanded here (a copy of the anchored node, keeping the positions of the
//! definition) and `<<` merge keys are applied, so later stages see plain mappings.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Options, Parser, ScalarStyle, Span, Tag};

/// Upper bound on the number of nodes after alias expansion ("billion laughs" guard).
const MAX_NODES: usize = 250_000;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// `~`, `null`, an empty value, or `!!null`.
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub(crate) struct Scalar {
    /// The text after YAML escape processing (and, once interpolated, after interpolation).
    pub text: String,
    /// Secret variables whose values were substituted into `text` (filled in by interpolation).
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub pos: Pos,
    pub message: String,
}

impl Node {
    /// A short name of the node's type, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar(_) => "a scalar",
            Value::Seq(_) => "a sequence",
            Value::Map(_) => "a mapping",
        }
    }

    fn count(&self) -> usize {
        match &self.value {
            Value::Null | Value::Scalar(_) => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            Value::Map(entries) => 1 + entries.iter().map(|e| 1 + e.value.count()).sum::<usize>(),
        }
    }
}

/// Parse one YAML document. `Ok(None)` for an empty stream or a document that is just null.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    let mut options = Options::default();
    options.set_emit_comments(false);
    let mut b = Builder {
        parser: Parser::new_from_str_with_options(text, options),
        anchors: HashMap::new(),
        nodes: 0,
        last: Pos { line: 1, column: 1 },
    };
    let mut root = None;
    let mut documents = 0;
    loop {
        let (event, span) = b.next()?;
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        pos: Pos::of(&span),
                        message: "multiple YAML documents in one file are not supported".into(),
                    });
                }
                let (event, span) = b.next()?;
                let node = b.node(event, span)?;
                if !matches!(node.value, Value::Null) {
                    root = Some(node);
                }
            }
            _ => {}
        }
    }
    Ok(root)
}

struct Builder<'a> {
    parser: Parser<'a, serde_saphyr::granit_parser::StrInput<'a>>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    last: Pos,
}

impl<'a> Builder<'a> {
    /// The next data event (comments and anchor metadata are skipped).
    fn next(&mut self) -> Result<(Event<'a>, Span), YamlError> {
        loop {
            match self.parser.next_event() {
                None => {
                    return Err(YamlError {
                        pos: self.last,
                        message: "unexpected end of YAML input".into(),
                    });
                }
                Some(Err(e)) => {
                    let mut message = e.info();
                    if message.is_empty() {
                        message = "invalid YAML".into();
                    }
                    return Err(YamlError {
                        pos: Pos {
                            line: e.marker().line(),
                            column: e.marker().col() + 1,
                        },
                        message: format!("invalid YAML: {message}"),
                    });
                }
                Some(Ok((event, span))) => {
                    self.last = Pos::of(&span);
                    match event {
                        Event::Anchor(..) | Event::StreamStart | Event::DocumentEnd => continue,
                        Event::Scalar(..)
                        | Event::SequenceStart(..)
                        | Event::SequenceEnd
                        | Event::MappingStart(..)
                        | Event::MappingEnd
                        | Event::Alias(..)
                        | Event::StreamEnd
                        | Event::DocumentStart(..)
                        | Event::UnresolvedAlias(..) => return Ok((event, span)),
                        // Comments and any metadata events added in later parser versions.
                        _ => continue,
                    }
                }
            }
        }
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                pos,
                message: format!(
                    "document too large: more than {MAX_NODES} nodes after expanding aliases"
                ),
            });
        }
        Ok(())
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), node.count()));
        }
    }

    fn node(&mut self, event: Event<'a>, span: Span) -> Result<Node, YamlError> {
        let pos = Pos::of(&span);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, pos)?;
                let node = Node {
                    pos,
                    value: scalar_value(text.into_owned(), style, tag.as_deref(), pos)?,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::SequenceStart(_, anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", pos)?;
                self.count(1, pos)?;
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(event, span)?);
                }
                let node = Node {
                    pos,
                    value: Value::Seq(items),
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(_, anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", pos)?;
                self.count(1, pos)?;
                let node = Node {
                    pos,
                    value: Value::Map(self.mapping()?),
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((node, n)) => {
                    let (node, n) = (node.clone(), *n);
                    self.count(n, pos)?;
                    Ok(node)
                }
                None => Err(YamlError {
                    pos,
                    message: "an alias refers to its own enclosing anchor (recursive alias)".into(),
                }),
            },
            Event::UnresolvedAlias(name) => Err(YamlError {
                pos,
                message: format!("unknown anchor '{name}'"),
            }),
            _ => Err(YamlError {
                pos,
                message: "unexpected YAML event".into(),
            }),
        }
    }

    /// The entries of a mapping whose `MappingStart` was just read, with `<<` merges applied:
    /// keys written in the mapping win over merged ones; among merged mappings the first wins.
    fn mapping(&mut self) -> Result<Vec<Entry>, YamlError> {
        enum Item {
            Explicit(Entry),
            Merged(Vec<Entry>),
        }
        let mut items = Vec::new();
        let mut explicit: HashMap<String, Pos> = HashMap::new();
        loop {
            let (event, span) = self.next()?;
            if matches!(event, Event::MappingEnd) {
                break;
            }
            let key_pos = Pos::of(&span);
            let is_merge =
                matches!(&event, Event::Scalar(t, ScalarStyle::Plain, _, None) if t == "<<");
            let key_node = self.node(event, span)?;
            let key = match key_node.value {
                Value::Scalar(s) => s.text,
                Value::Null => {
                    return Err(YamlError {
                        pos: key_pos,
                        message: "mapping keys must not be null".into(),
                    });
                }
                _ => {
                    return Err(YamlError {
                        pos: key_pos,
                        message: format!("mapping keys must be strings, found {}", key_node.kind()),
                    });
                }
            };
            let (event, span) = self.next()?;
            // An empty value (`key:`, a zero-length `~`) is reported at its key rather than
            // after the colon.
            let empty =
                matches!(&event, Event::Scalar(..)) && span.start.index() == span.end.index();
            let mut value = self.node(event, span)?;
            if empty {
                value.pos = key_pos;
            }
            if is_merge {
                items.push(Item::Merged(merge_sources(value)?));
                continue;
            }
            if let Some(first) = explicit.get(&key) {
                return Err(YamlError {
                    pos: key_pos,
                    message: format!(
                        "duplicate key '{key}' (first defined at line {})",
                        first.line
                    ),
                });
            }
            explicit.insert(key.clone(), key_pos);
            items.push(Item::Explicit(Entry {
                key,
                key_pos,
                value,
            }));
        }
        let mut seen: HashMap<String, ()> = HashMap::new();
        let mut out = Vec::new();
        for item in items {
            match item {
                Item::Explicit(e) => {
                    seen.insert(e.key.clone(), ());
                    out.push(e);
                }
                Item::Merged(entries) => {
                    for e in entries {
                        if !explicit.contains_key(&e.key) && !seen.contains_key(&e.key) {
                            seen.insert(e.key.clone(), ());
                            out.push(e);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The entries a `<<` value contributes: a mapping, or a sequence of mappings (earlier first).
fn merge_sources(value: Node) -> Result<Vec<Entry>, YamlError> {
    match value.value {
        Value::Map(entries) => Ok(entries),
        Value::Seq(items) => {
            let mut out = Vec::new();
            for item in items {
                match item.value {
                    Value::Map(entries) => out.extend(entries),
                    _ => {
                        return Err(YamlError {
                            pos: item.pos,
                            message: format!("a '<<' merge takes mappings, found {}", item.kind()),
                        });
                    }
                }
            }
            Ok(out)
        }
        _ => Err(YamlError {
            pos: value.pos,
            message: format!(
                "a '<<' merge takes a mapping or a list of mappings, found {}",
                value.kind()
            ),
        }),
    }
}

fn scalar_value(
    text: String,
    style: ScalarStyle,
    tag: Option<&Tag>,
    pos: Pos,
) -> Result<Value, YamlError> {
    if let Some(tag) = tag {
        return match tag.core_suffix() {
            Some("null") => Ok(Value::Null),
            Some("str" | "int" | "float" | "bool") => Ok(Value::Scalar(Scalar {
                text,
                secrets: Vec::new(),
            })),
            _ => Err(YamlError {
                pos,
                message: format!("unsupported YAML tag '{}' on a scalar", tag.original()),
            }),
        };
    }
    let null =
        style == ScalarStyle::Plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL");
    Ok(if null {
        Value::Null
    } else {
        Value::Scalar(Scalar {
            text,
            secrets: Vec::new(),
        })
    })
}

fn check_collection_tag(tag: Option<&Tag>, core: &str, pos: Pos) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(t) if t.core_suffix() == Some(core) => Ok(()),
        Some(t) => Err(YamlError {
            pos,
            message: format!("unsupported YAML tag '{}'", t.original()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Node {
        parse(text).expect("parses").expect("not empty")
    }

    fn map(node: &Node) -> &[Entry] {
        match &node.value {
            Value::Map(e) => e,
            other => panic!("not a map: {other:?}"),
        }
    }

    fn text(node: &Node) -> &str {
        match &node.value {
            Value::Scalar(s) => &s.text,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    fn get<'n>(node: &'n Node, key: &str) -> &'n Node {
        &map(node)
            .iter()
            .find(|e| e.key == key)
            .unwrap_or_else(|| panic!("no key {key}"))
            .value
    }

    #[test]
    fn positions_of_keys_and_values() {
        let n = p("services:\n  web:\n    image: nginx\n    ports: [\"80\", 81]\n");
        let services = map(&n);
        assert_eq!(services[0].key_pos, Pos { line: 1, column: 1 });
        let web = &map(&services[0].value)[0];
        assert_eq!(web.key, "web");
        assert_eq!(web.key_pos, Pos { line: 2, column: 3 });
        let image = &map(&web.value)[0];
        assert_eq!(image.key_pos, Pos { line: 3, column: 5 });
        assert_eq!(
            image.value.pos,
            Pos {
                line: 3,
                column: 12
            }
        );
        assert_eq!(text(&image.value), "nginx");
        let ports = get(&web.value, "ports");
        let Value::Seq(items) = &ports.value else {
            panic!("seq")
        };
        assert_eq!(
            items[1].pos,
            Pos {
                line: 4,
                column: 19
            }
        );
        assert_eq!(text(&items[1]), "81");
    }

    #[test]
    fn nulls_and_quoted_nulls() {
        let n = p("a:\nb: ~\nc: null\nd: 'null'\ne: \"\"\nf: !!str null\n");
        assert!(matches!(get(&n, "a").value, Value::Null));
        assert!(matches!(get(&n, "b").value, Value::Null));
        assert!(matches!(get(&n, "c").value, Value::Null));
        assert_eq!(text(get(&n, "d")), "null");
        assert_eq!(text(get(&n, "e")), "");
        assert_eq!(text(get(&n, "f")), "null");
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let n = p(
            "x-base: &base\n  image: a\n  restart: always\nweb:\n  <<: *base\n  image: b\nlist: &l [1, 2]\nagain: *l\n",
        );
        let web = get(&n, "web");
        let keys: Vec<_> = map(web).iter().map(|e| e.key.as_str()).collect();
        // Merged keys sit where the `<<` is; keys written in the mapping win.
        assert_eq!(keys, ["restart", "image"]);
        assert_eq!(text(get(web, "image")), "b");
        assert_eq!(text(get(web, "restart")), "always");
        // Merged values keep the position of their definition.
        assert_eq!(
            get(web, "restart").pos,
            Pos {
                line: 3,
                column: 12
            }
        );
        let Value::Seq(items) = &get(&n, "again").value else {
            panic!("seq")
        };
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn merge_of_a_list_prefers_earlier_mappings() {
        let n = p("a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc:\n  <<: [*a, *b]\n  z: 3\n");
        let c = get(&n, "c");
        assert_eq!(text(get(c, "x")), "1");
        assert_eq!(text(get(c, "y")), "1");
        assert_eq!(text(get(c, "z")), "3");
    }

    #[test]
    fn quoted_merge_key_is_an_ordinary_key() {
        let n = p("a: {x: 1}\nb:\n  '<<': {x: 1}\n");
        assert_eq!(map(get(&n, "b"))[0].key, "<<");
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, column: 1 });
        assert_eq!(e.message, "duplicate key 'a' (first defined at line 1)");

        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.message.starts_with("invalid YAML: "), "{}", e.message);

        let e = parse("a: *nope\n").unwrap_err();
        assert_eq!(e.pos.line, 1);

        let e = parse("a: !reset 1\n").unwrap_err();
        assert_eq!(e.message, "unsupported YAML tag '!reset' on a scalar");

        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);

        let e = parse("<<: 1\n").unwrap_err();
        assert!(e.message.contains("merge"), "{}", e.message);
    }

    #[test]
    fn empty_documents() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# just a comment\n").unwrap().is_none());
        assert!(parse("---\n").unwrap().is_none());
    }

    #[test]
    fn alias_bomb_is_rejected() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let e = parse(&doc).unwrap_err();
        assert!(e.message.starts_with("document too large"), "{}", e.message);
    }
}
