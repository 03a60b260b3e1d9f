//! Names from datasets are untrusted text: a tar member called `a\n0 bad, 100 good\x1b[2J.jpg` printed as
//! it is forges a summary line and clears the terminal. Every name, path and message in imgtool's human
//! output goes through [`Esc`]; `--json` output is escaped by serde_json instead.

use std::fmt::{self, Display, Write};

/// Shows `T` with the characters that could fake a line or drive the terminal written as Rust escapes
/// (`char::escape_debug`: `\n`, `\u{1b}`, `\u{202e}`), and `\` as `\\` so that an escape in the output
/// always means an escaped character. Everything else, accents and CJK included, is shown as it is.
#[derive(Debug, Clone, Copy)]
pub struct Esc<T>(pub T);

/// Control characters (C0, DEL, C1: newlines, ESC, the 8-bit CSI) and the invisible format characters
/// that reorder or hide text (bidi overrides and isolates, zero-width characters, the BOM).
fn hostile(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\\' | '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

impl<T: Display> Display for Esc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Escapes what `T` writes on its way to `f`, without a String in between.
        struct Escaper<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl Write for Escaper<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for c in s.chars() {
                    if hostile(c) {
                        write!(self.0, "{}", c.escape_debug())?;
                    } else {
                        self.0.write_char(c)?;
                    }
                }
                Ok(())
            }
        }
        write!(Escaper(f), "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Esc;

    #[test]
    fn controls_and_bidi_are_escaped_text_is_not() {
        let name = "a\n0 bad, 100 good\x1b[2J\u{9b}\u{202e}gpj.exe\\n é 猫.jpg";
        assert_eq!(
            Esc(name).to_string(),
            "a\\n0 bad, 100 good\\u{1b}[2J\\u{9b}\\u{202e}gpj.exe\\\\n é 猫.jpg"
        );
        assert_eq!(
            Esc(std::path::Path::new("/d/x\r.jpg").display()).to_string(),
            "/d/x\\r.jpg"
        );
    }
}
