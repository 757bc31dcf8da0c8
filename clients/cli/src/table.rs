//! The seed's side-by-side table (Unsteered | Steered), wrapped to the terminal.

use steer_client::Comparison;

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![];
    for para in text.split('\n') {
        let mut line = String::new();
        for word in para.split(' ') {
            let mut word = word.to_string();
            while word.chars().count() > width {
                let head: String = word.chars().take(width).collect();
                word = word.chars().skip(width).collect();
                if !line.is_empty() {
                    lines.push(std::mem::take(&mut line));
                }
                lines.push(head);
            }
            if line.chars().count() + word.chars().count() + usize::from(!line.is_empty()) > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&word);
        }
        lines.push(line);
    }
    lines
}

fn pad(s: &str, w: usize) -> String {
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(w.saturating_sub(n)))
}

/// Renders the comparison as a two-column table, one block per comparison.
pub fn render(prompt: &str, cmp: &Comparison, width: usize) -> String {
    let col = (width.saturating_sub(7) / 2).max(20);
    let rule = format!("+{}+{}+\n", "-".repeat(col + 2), "-".repeat(col + 2));
    let mut out = String::new();
    out.push_str(&rule);
    out.push_str(&format!("| {} | {} |\n", pad("Unsteered", col), pad("Steered", col)));
    out.push_str(&rule);
    for (u, s) in cmp.unsteered.iter().zip(&cmp.steered) {
        let left = wrap(&format!("{prompt}{}", u.text), col);
        let right = wrap(&format!("{prompt}{}", s.text), col);
        for i in 0..left.len().max(right.len()) {
            let l = left.get(i).map_or("", |s| s.as_str());
            let r = right.get(i).map_or("", |s| s.as_str());
            out.push_str(&format!("| {} | {} |\n", pad(l, col), pad(r, col)));
        }
        out.push_str(&rule);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_words_and_long_tokens() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("abcdefgh", 3), vec!["abc", "def", "gh"]);
        assert_eq!(wrap("a\nb", 10), vec!["a", "b"]);
    }
}
