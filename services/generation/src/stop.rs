//! Stop strings ([`StopText`]): a row's text as it streams, cut before the first stop string,
//! with any tail that could still begin one held back until the next token decides.

/// One row's text against its stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopText {
    stops: Vec<String>,
    /// Text received and not yet released: it may be the start of a stop string.
    held: String,
    /// The whole text released so far.
    released: String,
    stopped: bool,
}

impl StopText {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.to_vec(), ..Default::default() }
    }

    /// Takes the next piece of text: what can be released now, and whether a stop string
    /// appeared (then nothing after it is ever released).
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(delta);
        // Released text never holds a stop string's beginning, so one that appeared starts in
        // `held`.
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_string();
            self.release(&out);
            self.held.clear();
            self.stopped = true;
            return (out, true);
        }
        let keep = self.longest_open_tail();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        self.release(&out);
        (out, false)
    }

    /// The end of the row without a stop: everything held.
    pub fn finish(&mut self) -> String {
        let out = std::mem::take(&mut self.held);
        self.release(&out);
        out
    }

    /// The row's text: released, cut before the stop string when one appeared.
    pub fn text(&self) -> &str {
        &self.released
    }

    fn release(&mut self, s: &str) {
        self.released.push_str(s);
    }

    /// Bytes at the end of `held` that are a proper beginning of some stop string (on a
    /// character boundary).
    fn longest_open_tail(&self) -> usize {
        let h = &self.held;
        (1..=h.len())
            .rev()
            .filter(|&n| h.is_char_boundary(h.len() - n))
            .find(|&n| self.stops.iter().any(|s| s.len() > n && s.starts_with(&h[h.len() - n..])))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let mut t = StopText::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = vec![];
        for p in pieces {
            let (s, stop) = t.push(p);
            out.push(s);
            if stop {
                return (out, t.text().to_string(), true);
            }
        }
        out.push(t.finish());
        (out, t.text().to_string(), false)
    }

    #[test]
    fn a_stop_string_across_pieces_is_cut_and_never_released() {
        let (out, text, stopped) = run(&["\n\nQ:"], &["Paris", ".\n", "\nQ", ": next"]);
        assert!(stopped);
        assert_eq!(text, "Paris.");
        assert_eq!(out, vec!["Paris", ".", "", ""]);
        assert_eq!(out.concat(), text);
    }

    #[test]
    fn a_tail_that_stops_being_a_stop_is_released_and_the_earliest_stop_wins() {
        let (out, text, stopped) = run(&["END", "!"], &["go E", "N", "D? no: EN", "x"]);
        assert!(stopped, "END appeared");
        assert_eq!((out[0].as_str(), text.as_str()), ("go ", "go "));
        let (out, text, stopped) = run(&["END"], &["go E", "N", "x"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "go ENx");
        assert_eq!(text, "go ENx");
        let (_, text, _) = run(&["b", "ab"], &["xab"]);
        assert_eq!(text, "x", "the earliest occurrence, whichever string");
        let (_, text, _) = run(&["é!"], &["caf", "é", "?"]);
        assert_eq!(text, "café?");
    }
}
