//! The `output` of a task completion within the API's limit (PROTOCOL.md
//! §6.6: at most 200 000 code points, otherwise the whole completion is
//! refused with 400 — §13 item 9). Longer output keeps its head and its tail
//! with a marker between them that says how much was left out and where the
//! full output is.

use shared::api::task::MAX_COMPLETED_OUTPUT_CHARS;

/// `text` as is when it fits in `max_chars` code points; otherwise its first
/// and last parts around a marker, `max_chars` code points in total.
pub fn clip(text: &str, max_chars: usize, task_id: &str) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_owned();
    }
    // The marker's own length depends on the number it carries; size it for
    // the largest possible number so the total never exceeds the limit.
    let marker_for = |omitted: usize| clip_marker(omitted, task_id);
    let marker_len = marker_for(total).chars().count();
    if marker_len >= max_chars {
        return text.chars().take(max_chars).collect();
    }
    let keep = max_chars - marker_len;
    let head = keep / 2;
    let tail = keep - head;
    let omitted = total - head - tail;
    let mut out: String = text.chars().take(head).collect();
    out.push_str(&marker_for(omitted));
    out.extend(text.chars().skip(total - tail));
    out
}

/// [`clip`] without holding the whole text: push pieces as they come; memory
/// stays near `max_chars` code points however long the output is.
pub struct Clipper {
    max_chars: usize,
    head: String,
    head_chars: usize,
    tail: std::collections::VecDeque<char>,
    total: usize,
}

impl Clipper {
    pub fn new(max_chars: usize) -> Self {
        Self {
            max_chars,
            head: String::new(),
            head_chars: 0,
            tail: std::collections::VecDeque::new(),
            total: 0,
        }
    }

    /// Appends text.
    pub fn push(&mut self, text: &str) {
        for ch in text.chars() {
            self.total += 1;
            if self.head_chars < self.max_chars {
                self.head.push(ch);
                self.head_chars += 1;
            } else {
                self.tail.push_back(ch);
                if self.tail.len() > self.max_chars {
                    self.tail.pop_front();
                }
            }
        }
    }

    /// Code points pushed so far.
    pub fn total_chars(&self) -> usize {
        self.total
    }

    /// The same result as [`clip`] of everything pushed.
    pub fn finish(self, task_id: &str) -> String {
        if self.total <= self.max_chars {
            return self.head;
        }
        // Everything pushed is head + (skipped middle) + tail; clip needs
        // only the first and last `max_chars` code points.
        let mut text = self.head;
        let marker_len = clip_marker(self.total, task_id).chars().count();
        if marker_len >= self.max_chars {
            return text.chars().take(self.max_chars).collect();
        }
        let keep = self.max_chars - marker_len;
        let head = keep / 2;
        let tail = keep - head;
        let omitted = self.total - head - tail;
        text = text.chars().take(head).collect();
        text.push_str(&clip_marker(omitted, task_id));
        let skip = self.tail.len() - tail.min(self.tail.len());
        text.extend(self.tail.iter().skip(skip));
        text
    }
}

fn clip_marker(omitted: usize, task_id: &str) -> String {
    format!(
        "\n…[{omitted} characters omitted; full output on the node: noderax-agent task-output {task_id}]…\n"
    )
}

/// [`clip`] at the API's limit.
pub fn clip_for_api(text: &str, task_id: &str) -> String {
    clip(text, MAX_COMPLETED_OUTPUT_CHARS, task_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "ec9f97f2-7b56-4a7e-a7cb-5c957e9d32d8";

    #[test]
    fn short_output_is_unchanged() {
        assert_eq!(clip("hello", 10, ID), "hello");
        assert_eq!(clip("", 10, ID), "");
        let exact = "é".repeat(MAX_COMPLETED_OUTPUT_CHARS);
        assert_eq!(clip_for_api(&exact, ID), exact);
    }

    #[test]
    fn long_output_keeps_head_and_tail_within_the_limit() {
        let text: String = (0..300_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let out = clip_for_api(&text, ID);
        assert!(out.chars().count() <= MAX_COMPLETED_OUTPUT_CHARS);
        assert!(out.chars().count() > MAX_COMPLETED_OUTPUT_CHARS - 10);
        assert!(out.starts_with("abcdefghij"));
        assert!(out.ends_with(&text[text.len() - 1000..]));
        assert!(out.contains(&format!("noderax-agent task-output {ID}")));
        let omitted: usize = out
            .split("…[")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let marker_len = out.chars().count() - (300_000 - omitted);
        assert_eq!(
            out.chars().count() - marker_len + omitted,
            300_000,
            "nothing counted twice"
        );
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let text = "日本語".repeat(100_000);
        let out = clip_for_api(&text, ID);
        assert!(out.chars().count() <= MAX_COMPLETED_OUTPUT_CHARS);
        assert!(out.starts_with("日本語"));
    }

    #[test]
    fn the_streaming_clipper_equals_clip() {
        for (len, max) in [
            (0, 10),
            (5, 10),
            (10, 10),
            (11, 200),
            (1000, 200),
            (5000, 150),
            (300, 100),
        ] {
            let text: String = (0..len)
                .map(|i| char::from_u32(0x41 + (i % 50) as u32).unwrap())
                .collect();
            let mut c = Clipper::new(max);
            for piece in text.as_bytes().chunks(7) {
                c.push(std::str::from_utf8(piece).unwrap());
            }
            assert_eq!(c.total_chars(), len);
            assert_eq!(c.finish(ID), clip(&text, max, ID), "len {len} max {max}");
        }
    }

    #[test]
    fn a_limit_smaller_than_the_marker_still_holds() {
        assert_eq!(clip("abcdefghijkl", 5, ID), "abcde");
    }
}
