//! A small namespace-resolved element tree read with quick-xml's `NsReader`: bounded depth
//! and size, no DTDs, predefined and character references only.

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

use crate::http::common::{HttpError, bad};

/// Deepest element nesting accepted (a rule with correlation properties needs 8).
const MAX_DEPTH: usize = 32;
/// Most elements in one document.
const MAX_ELEMENTS: usize = 10_000;

/// One element with its namespace resolved.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Element {
    /// Namespace URI; empty when unbound.
    pub ns: String,
    pub name: String,
    /// `(namespace, local name, value)`; namespace declarations are not attributes.
    pub attrs: Vec<(String, String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attr(&self, ns: &str, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, l, _)| n == ns && l == name)
            .map(|(_, _, v)| v.as_str())
    }

    pub(super) fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    pub(super) fn label(&self) -> String {
        if self.ns.is_empty() {
            self.name.clone()
        } else {
            format!("{{{}}}{}", self.ns, self.name)
        }
    }

    /// The text of a leaf element (trimmed); an element with children is not a value.
    pub(super) fn value(&self) -> Result<&str, HttpError> {
        if !self.children.is_empty() {
            return Err(bad(format!(
                "<{}> must hold a value, not elements",
                self.name
            )));
        }
        Ok(self.text.trim())
    }

    /// Non-whitespace text beside child elements is refused.
    pub(super) fn no_text(&self) -> Result<(), HttpError> {
        if self.text.trim().is_empty() {
            Ok(())
        } else {
            Err(bad(format!("<{}> must not hold text", self.name)))
        }
    }
}

pub(super) fn resolved(res: ResolveResult<'_>) -> Result<String, HttpError> {
    match res {
        ResolveResult::Bound(ns) => String::from_utf8(ns.into_inner().to_vec())
            .map_err(|_| bad("a namespace URI is not UTF-8")),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(p) => Err(bad(format!(
            "the namespace prefix '{}' is not declared",
            String::from_utf8_lossy(&p)
        ))),
    }
}

/// Parse a document into its root element. Refuses DTDs, processing instructions, unknown
/// entities, undeclared prefixes, mismatched tags, more than one root and oversized trees.
pub fn parse(body: &[u8]) -> Result<Element, HttpError> {
    let text = std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8"))?;
    let mut reader = NsReader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let (ns, event) = {
            let (res, event) = reader
                .read_resolved_event()
                .map_err(|e| bad(format!("malformed XML: {e}")))?;
            let ns = match &event {
                Event::Start(_) | Event::Empty(_) => resolved(res)?,
                _ => String::new(),
            };
            (ns, event)
        };
        let (start, empty) = match event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::Eof => break,
            other => {
                other_event(other, &mut stack, &mut root)?;
                continue;
            }
        };
        count += 1;
        if count > MAX_ELEMENTS {
            return Err(bad("the document has too many elements"));
        }
        if stack.len() >= MAX_DEPTH {
            return Err(bad("the document is nested too deeply"));
        }
        if root.is_some() && stack.is_empty() {
            return Err(bad("the document has more than one root element"));
        }
        let name = std::str::from_utf8(start.local_name().into_inner())
            .map_err(|_| bad("an element name is not UTF-8"))?
            .to_string();
        let mut attrs = Vec::new();
        for a in start.attributes() {
            let a = a.map_err(|err| bad(format!("malformed attribute: {err}")))?;
            if a.key.as_namespace_binding().is_some() {
                continue;
            }
            let (ares, local) = reader.resolve_attribute(a.key);
            let ans = resolved(ares)?;
            let local = std::str::from_utf8(local.into_inner())
                .map_err(|_| bad("an attribute name is not UTF-8"))?
                .to_string();
            let value = a
                .decode_and_unescape_value(reader.decoder())
                .map_err(|err| bad(format!("malformed attribute value: {err}")))?
                .into_owned();
            attrs.push((ans, local, value));
        }
        let el = Element {
            ns,
            name,
            attrs,
            children: Vec::new(),
            text: String::new(),
        };
        if empty {
            close(&mut stack, &mut root, el);
        } else {
            stack.push(el);
        }
    }
    if !stack.is_empty() {
        return Err(bad("malformed XML: the document ends inside an element"));
    }
    root.ok_or_else(|| bad("the body holds no XML element"))
}

/// Events other than start tags and the end of the document.
pub(super) fn other_event(
    event: Event<'_>,
    stack: &mut Vec<Element>,
    root: &mut Option<Element>,
) -> Result<(), HttpError> {
    match event {
        Event::End(_) => {
            let el = stack
                .pop()
                .ok_or_else(|| bad("malformed XML: unexpected end tag"))?;
            close(stack, root, el);
        }
        Event::Text(t) => {
            let s = t
                .xml_content()
                .map_err(|e| bad(format!("malformed text: {e}")))?;
            push_text(stack, &s)?;
        }
        Event::CData(t) => {
            let s = t
                .xml_content()
                .map_err(|e| bad(format!("malformed CDATA: {e}")))?;
            push_text(stack, &s)?;
        }
        Event::GeneralRef(r) => {
            let name = r
                .decode()
                .map_err(|e| bad(format!("malformed reference: {e}")))?;
            let raw = format!("&{name};");
            let s = quick_xml::escape::unescape(&raw)
                .map_err(|_| bad(format!("unknown entity reference {raw}")))?;
            push_text(stack, &s)?;
        }
        Event::Decl(_) | Event::Comment(_) | Event::Start(_) | Event::Empty(_) | Event::Eof => {}
        Event::PI(_) => return Err(bad("processing instructions are not accepted")),
        Event::DocType(_) => return Err(bad("document type declarations are not accepted")),
    }
    Ok(())
}

pub(super) fn close(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

pub(super) fn push_text(stack: &mut [Element], s: &str) -> Result<(), HttpError> {
    match stack.last_mut() {
        Some(el) => {
            el.text.push_str(s);
            Ok(())
        }
        None if s.trim().is_empty() => Ok(()),
        None => Err(bad("text outside the root element")),
    }
}
