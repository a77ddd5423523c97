//! A layout real manifests use that our YAML parser refuses: a flow collection spread over
//! several lines in block context whose later lines (often just the closing bracket) are not
//! indented past the key that holds it:
//!
//! ```yaml
//!         args: [
//!           "vllm serve …"
//!         ]
//! ```
//!
//! YAML 1.2 wants those lines indented more than the enclosing block; libyaml, go-yaml (and so
//! kubectl) accept them anyway, and vLLM's own Kubernetes guide writes them so. When a text
//! fails to parse with "invalid indentation", [`relax_flow_indentation`] indents such lines
//! two spaces past the line that opened the collection. Inside a flow collection indentation
//! means nothing, so the document reads the same; only those lines' columns change.
//!
//! Written by hand: it is a line scanner that tracks quotes, comments, block scalars and flow
//! brackets, nothing a YAML crate offers without parsing (which is what fails here).

/// The text with the continuation lines of multi-line flow collections indented past their
/// opening line, or `None` when there was nothing to change.
pub fn relax_flow_indentation(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut changed = false;
    // Flow nesting at the start of the current line, and the indentation of the line that
    // opened the outermost collection.
    let mut depth = 0usize;
    let mut opener_indent = 0usize;
    // Inside a quoted scalar that continues over lines.
    let mut quote: Option<char> = None;
    // Inside a block scalar: lines indented more than this belong to it.
    let mut block_scalar: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let content = line.trim_start_matches(' ');
        let indent = line.len() - content.len();
        let blank = content.trim().is_empty();
        if let Some(bi) = block_scalar {
            if blank || indent > bi {
                out.push_str(line);
                continue;
            }
            block_scalar = None;
        }
        let mut line = std::borrow::Cow::Borrowed(line);
        if depth > 0
            && quote.is_none()
            && !blank
            && !content.starts_with('#')
            && indent <= opener_indent
        {
            let pad = opener_indent + 2 - indent;
            line = std::borrow::Cow::Owned(format!("{}{line}", " ".repeat(pad)));
            changed = true;
        }
        // Scan the line's characters for quotes, comments and brackets.
        let chars: Vec<char> = content.chars().collect();
        let mut prev_sig: Option<char> = None; // the last non-space character outside quotes
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if let Some(q) = quote {
                if q == '"' && c == '\\' {
                    i += 2;
                    continue;
                }
                if c == q {
                    if q == '\'' && chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    quote = None;
                    prev_sig = Some(c);
                }
                i += 1;
                continue;
            }
            match c {
                '#' if i == 0 || chars[i - 1].is_whitespace() => break,
                '"' | '\'' => quote = Some(c),
                '[' | '{' => {
                    // A flow collection starts a value: at the line's start, after `: `, `- `,
                    // or inside another flow collection.
                    let starts_value = depth > 0
                        || matches!(
                            prev_sig,
                            None | Some(':') | Some('-') | Some('[') | Some('{') | Some(',')
                        );
                    if starts_value {
                        if depth == 0 {
                            opener_indent = indent;
                        }
                        depth += 1;
                    }
                }
                ']' | '}' if depth > 0 => depth -= 1,
                _ => {}
            }
            if !c.is_whitespace() {
                prev_sig = Some(c);
            }
            i += 1;
        }
        // A block scalar indicator ends the line (`key: |`, `- >-`, `key: |2`).
        if depth == 0 && quote.is_none() {
            let code = strip_comment(content).trim_end();
            let last = code
                .rsplit(|ch: char| ch.is_whitespace())
                .next()
                .unwrap_or("");
            if (last.starts_with('|') || last.starts_with('>'))
                && last[1..]
                    .chars()
                    .all(|ch| matches!(ch, '-' | '+' | '0'..='9'))
                && code.len() > last.len()
            {
                block_scalar = Some(indent);
            }
        }
        out.push_str(&line);
    }
    changed.then_some(out)
}

/// The part of a line before a comment (outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), x) if x == q => quote = None,
            (None, b'#') if i == 0 || bytes[i - 1].is_ascii_whitespace() => return &line[..i],
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_brackets_move_past_their_key() {
        let text = "spec:\n  args: [\n    \"a b\"\n  ]\n  other: 1\n";
        let relaxed = relax_flow_indentation(text).expect("changed");
        assert_eq!(
            relaxed,
            "spec:\n  args: [\n    \"a b\"\n    ]\n  other: 1\n"
        );
    }

    #[test]
    fn nothing_to_do_leaves_none() {
        assert_eq!(relax_flow_indentation("a: [1, 2]\nb:\n  - [x]\n"), None);
        // Brackets in quotes, comments and block scalars are not flow collections.
        let text = "a: \"[\"\nb: x # [\nc: |\n  [\nd: 1\n";
        assert_eq!(relax_flow_indentation(text), None);
    }
}
