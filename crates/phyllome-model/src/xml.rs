//! A minimal XML element tree and writer.
//!
//! The typed domain model (the `domain` module) lowers itself to this tree; the
//! writer escapes every attribute value and text node, so names and paths are
//! safe whatever characters they contain.

use std::fmt::Write;

/// One XML element with ordered attributes and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    name: &'static str,
    attrs: Vec<(&'static str, String)>,
    children: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    pub fn new(name: &'static str) -> Self {
        Element { name, attrs: Vec::new(), children: Vec::new() }
    }

    /// Adds an attribute (builder style).
    pub fn attr(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.attrs.push((key, value.into()));
        self
    }

    /// Adds an attribute only when `value` is `Some`.
    pub fn attr_opt(self, key: &'static str, value: Option<impl Into<String>>) -> Self {
        match value {
            Some(v) => self.attr(key, v),
            None => self,
        }
    }

    pub fn child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    pub fn child_opt(self, child: Option<Element>) -> Self {
        match child {
            Some(c) => self.child(c),
            None => self,
        }
    }

    pub fn children(mut self, children: impl IntoIterator<Item = Element>) -> Self {
        self.children.extend(children.into_iter().map(Node::Element));
        self
    }

    pub fn push(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Adds a text node.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    /// Shorthand for `<name>text</name>`.
    pub fn leaf(name: &'static str, text: impl Into<String>) -> Self {
        Element::new(name).text(text)
    }

    /// Renders the element as an indented document (two spaces, trailing newline).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.write_into(&mut out, 0);
        out
    }

    fn write_into(&self, out: &mut String, depth: usize) {
        for _ in 0..depth {
            out.push_str("  ");
        }
        out.push('<');
        out.push_str(self.name);
        for (k, v) in &self.attrs {
            let _ = write!(out, " {k}='");
            escape_into(out, v);
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>\n");
            return;
        }
        out.push('>');
        let only_text = self.children.iter().all(|c| matches!(c, Node::Text(_)));
        if only_text {
            for c in &self.children {
                if let Node::Text(t) = c {
                    escape_into(out, t);
                }
            }
        } else {
            out.push('\n');
            for c in &self.children {
                match c {
                    Node::Element(e) => e.write_into(out, depth + 1),
                    Node::Text(t) => {
                        for _ in 0..=depth {
                            out.push_str("  ");
                        }
                        escape_into(out, t);
                        out.push('\n');
                    }
                }
            }
            for _ in 0..depth {
                out.push_str("  ");
            }
        }
        let _ = writeln!(out, "</{}>", self.name);
    }
}

/// Escapes the five XML metacharacters. Control characters other than tab,
/// newline and carriage return cannot appear in XML 1.0 at all; callers refuse
/// them before they get here (see `crate::names`), and they are dropped here as
/// a last line of defence so the output is always well-formed.
pub fn escape_into(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_attributes_and_text() {
        let e = Element::new("a").attr("x", "1'2\"3<&>").text("<b>&amp;</b>\u{1}");
        assert_eq!(e.render(), "<a x='1&apos;2&quot;3&lt;&amp;&gt;'>&lt;b&gt;&amp;amp;&lt;/b&gt;</a>\n");
    }

    #[test]
    fn nests_with_indentation() {
        let e = Element::new("a").child(Element::new("b").child(Element::leaf("c", "t")));
        assert_eq!(e.render(), "<a>\n  <b>\n    <c>t</c>\n  </b>\n</a>\n");
    }

    #[test]
    fn empty_element_is_self_closing() {
        assert_eq!(Element::new("x").attr("k", "v").render(), "<x k='v'/>\n");
    }
}
