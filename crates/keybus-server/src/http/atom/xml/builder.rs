//! A small builder over quick-xml's `Writer`: elements with attributes and text, escaped by
//! quick-xml, and fragments already written by another builder embedded as they are.

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

/// An XML document or fragment being written.
pub(super) struct Xml {
    writer: Writer<Vec<u8>>,
}

impl Xml {
    /// An empty fragment.
    pub(super) fn new() -> Self {
        Self {
            writer: Writer::new(Vec::with_capacity(2048)),
        }
    }

    /// A document: `<?xml version="1.0" encoding="utf-8"?>` first.
    pub(super) fn document() -> Self {
        let mut x = Self::new();
        x.event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)));
        x
    }

    fn event(&mut self, e: Event<'_>) {
        // Writing into a `Vec` cannot fail.
        let _ = self.writer.write_event(e);
    }

    /// `<name attrs…>`.
    pub(super) fn start(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.event(Event::Start(
            BytesStart::new(name).with_attributes(attrs.iter().copied()),
        ));
    }

    /// `</name>`.
    pub(super) fn end(&mut self, name: &str) {
        self.event(Event::End(BytesEnd::new(name)));
    }

    /// `<name attrs…/>`.
    pub(super) fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.event(Event::Empty(
            BytesStart::new(name).with_attributes(attrs.iter().copied()),
        ));
    }

    /// `<name attrs…>text</name>`.
    pub(super) fn text_el(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) {
        self.start(name, attrs);
        self.event(Event::Text(BytesText::new(text)));
        self.end(name);
    }

    /// `<name>text</name>`.
    pub(super) fn el(&mut self, name: &str, text: &str) {
        self.text_el(name, &[], text);
    }

    /// `<name>text</name>` when there is a text.
    pub(super) fn opt(&mut self, name: &str, text: &Option<String>) {
        if let Some(t) = text {
            self.el(name, t);
        }
    }

    /// A fragment written by another builder, as it is.
    pub(super) fn fragment(&mut self, xml: &str) {
        self.event(Event::Text(BytesText::from_escaped(xml)));
    }

    /// The text written.
    pub(super) fn finish(self) -> String {
        String::from_utf8_lossy(&self.writer.into_inner()).into_owned()
    }
}
