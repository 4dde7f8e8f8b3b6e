//! A small element tree over quick-xml, for the XML documents providers read:
//! libvirt domain XML, vSphere SOAP responses. Nesting is bounded, entities
//! are only the predefined ones and character references (no DTDs), and
//! every error names the byte position.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Deepest nesting accepted (libvirt domains and vSphere responses are far
/// shallower).
const MAX_DEPTH: usize = 64;

/// One element: qualified name, attributes, child elements and text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Qualified name as written, e.g. `soapenv:Body` or `disk`.
    pub name: String,
    /// Attributes as written (qualified names, unescaped values).
    pub attrs: Vec<(String, String)>,
    /// Child elements in order.
    pub children: Vec<Element>,
    /// Text content (all text children concatenated, entities resolved).
    pub text: String,
}

impl Element {
    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All children named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Trimmed text of child `name`.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// The name without a namespace prefix.
    pub fn local_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }

    /// The first child whose local name (prefix ignored) is `name`.
    pub fn find(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.local_name() == name)
    }

    /// All children whose local name is `name`.
    pub fn find_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.local_name() == name)
    }

    /// Trimmed text of the first child with local name `name`.
    pub fn find_text(&self, name: &str) -> Option<&str> {
        self.find(name).map(|c| c.text.trim())
    }

    /// The value of an attribute by local name (`xsi:type` → `type`).
    pub fn attr_local(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k.rsplit(':').next() == Some(name))
            .map(|(_, v)| v.as_str())
    }
}

fn start(e: &BytesStart<'_>) -> Result<Element, String> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| format!("bad attribute in <{name}>: {err}"))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a
            .unescape_value()
            .map_err(|err| format!("bad value of attribute {key} in <{name}>: {err}"))?
            .into_owned();
        attrs.push((key, value));
    }
    Ok(Element {
        name,
        attrs,
        ..Default::default()
    })
}

/// Parses a document and returns its root element, or a message naming the
/// byte position of the first problem.
pub fn parse(text: &str) -> Result<Element, String> {
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let pos = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| format!("malformed XML at byte {pos}: {e}"))?;
        match event {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!(
                        "XML nested deeper than {MAX_DEPTH} levels at byte {pos}"
                    ));
                }
                stack.push(start(&e)?);
            }
            Event::Empty(e) => {
                let el = start(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(format!("second root element at byte {pos}")),
                }
            }
            Event::Text(t) => {
                let s = t
                    .xml_content()
                    .map_err(|e| format!("bad text at byte {pos}: {e}"))?;
                match stack.last_mut() {
                    Some(top) => top.text.push_str(&s),
                    None => outside_root(&s, pos)?,
                }
            }
            Event::GeneralRef(r) => {
                let Some(top) = stack.last_mut() else {
                    return Err(format!(
                        "an entity reference outside the root element at byte {pos}"
                    ));
                };
                let name = String::from_utf8_lossy(r.as_ref()).into_owned();
                let resolved = match name.as_str() {
                    "lt" => "<".to_string(),
                    "gt" => ">".to_string(),
                    "amp" => "&".to_string(),
                    "apos" => "'".to_string(),
                    "quot" => "\"".to_string(),
                    _ => match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        _ => return Err(format!("unknown entity &{name}; at byte {pos}")),
                    },
                };
                top.text.push_str(&resolved);
            }
            Event::CData(c) => {
                let Some(top) = stack.last_mut() else {
                    return Err(format!(
                        "a CDATA section outside the root element at byte {pos}"
                    ));
                };
                top.text.push_str(&String::from_utf8_lossy(&c));
            }
            Event::DocType(_) => {
                return Err(format!(
                    "a document type declaration at byte {pos}: DTDs are not accepted"
                ))
            }
            Event::End(_) => {
                let Some(el) = stack.pop() else {
                    return Err(format!("unexpected closing tag at byte {pos}"));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(format!("second root element at byte {pos}")),
                }
            }
            Event::Eof => break,
            // The XML declaration, processing instructions and comments may
            // stand anywhere.
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(format!(
            "document ends inside <{}>",
            stack[stack.len() - 1].name
        ));
    }
    root.ok_or_else(|| "document has no root element".to_string())
}

/// Text outside the root element: only whitespace is allowed there (a log
/// file holding an XML fragment is not a document).
fn outside_root(text: &str, pos: u64) -> Result<(), String> {
    match text.char_indices().find(|(_, c)| !c.is_whitespace()) {
        None => Ok(()),
        Some((i, _)) => {
            let shown: String = text[i..]
                .chars()
                .take(20)
                .flat_map(char::escape_debug)
                .collect();
            Err(format!(
                "text \"{shown}\" outside the root element at byte {}: only whitespace, comments, the XML declaration and processing instructions may stand there",
                pos + i as u64
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tree() {
        let r = parse("<a x='1'><b>t &amp; u</b><c/><!-- c --></a>").unwrap();
        assert_eq!(r.attr("x"), Some("1"));
        assert_eq!(r.child_text("b"), Some("t & u"));
        assert!(r.child("c").is_some());
    }

    #[test]
    fn rejects_broken() {
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a>").is_err());
        assert!(parse("").is_err());
        assert!(parse(&"<a>".repeat(100)).is_err());
    }

    #[test]
    fn only_markup_stands_outside_the_root() {
        let ok = "<?xml version='1.0'?>\n<!-- dumped -->\n<?pi x?>\n<a/>\n<!-- end -->\n";
        assert_eq!(parse(ok).unwrap().name, "a");
        for junk in [
            "2024-01-01 INFO starting\n<a/>",
            "<a/>\ntrailing log line",
            "<a/>&amp;",
            "<![CDATA[x]]><a/>",
            "<!DOCTYPE a [<!ENTITY e 'x'>]><a/>",
        ] {
            let err = parse(junk).unwrap_err();
            assert!(
                err.contains("outside the root") || err.contains("DTD"),
                "{junk:?}: {err}"
            );
        }
    }
}
