//! Server-sent events (the HTML standard's `text/event-stream`) as an MCP server
//! streams its answers: read with a bound on each event, written back in the same
//! shape. Lines end with CRLF, LF or CR; an event ends with an empty line; comments
//! (lines starting with `:`) are dropped; a last event with no empty line after it
//! is not an event.

/// One event. `data` is `None` when the event had no `data` line (a priming event
/// that only sets `id` keeps its shape when written back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
}

/// An event grew past the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a server-sent event is larger than {0} bytes")]
pub struct TooLarge(pub usize);

/// Reads events from bytes as they arrive.
#[derive(Debug)]
pub struct Reader {
    /// Bytes of the event being read (whole lines and a partial one).
    pending: Vec<u8>,
    max_event: usize,
}

// === impl Reader ===

impl Reader {
    /// A reader that refuses an event longer than `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        Self {
            pending: Vec::new(),
            max_event,
        }
    }

    /// Takes `bytes`, and returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, TooLarge> {
        let mut out = Vec::new();
        for &b in bytes {
            self.pending.push(b);
            if let Some(end) = event_end(&self.pending) {
                let text = std::mem::take(&mut self.pending);
                if let Some(ev) = parse(&text[..end]) {
                    out.push(ev);
                }
            } else if self.pending.len() > self.max_event {
                return Err(TooLarge(self.max_event));
            }
        }
        Ok(out)
    }

    /// Whether bytes of an unfinished event are held.
    pub fn is_mid_event(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Where the event in `buf` ends, if its last bytes are its closing empty line:
/// two line ends in a row (`\n\n`, `\r\r`, `\r\n\r\n`, and mixes). A `\r` that may
/// yet be followed by `\n` waits for the next byte.
fn event_end(buf: &[u8]) -> Option<usize> {
    let n = buf.len();
    let last = *buf.last()?;
    match last {
        b'\n' => {
            // The line end just completed, and the one before it.
            let before = if n >= 2 && buf[n - 2] == b'\r' {
                n - 2
            } else {
                n - 1
            };
            if before == 0 {
                return Some(0);
            }
            match buf[before - 1] {
                b'\n' | b'\r' => Some(before),
                _ => None,
            }
        }
        // `\r\r` or `\n\r`: the last `\r` may be the start of `\r\n`, but the empty
        // line is already there (a `\n` that follows ends an empty event).
        b'\r' if n >= 2 && matches!(buf[n - 2], b'\r' | b'\n') => Some(n - 1),
        b'\r' if n == 1 => Some(0),
        _ => None,
    }
}

/// The event in `text` (its lines without the closing empty line); `None` for an
/// event with no field (only comments).
fn parse(text: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(text);
    let mut ev = Event::default();
    let mut any = false;
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                any = true;
                match &mut ev.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => ev.data = Some(value.to_owned()),
                }
            }
            "id" if !value.contains('\0') => {
                any = true;
                ev.id = Some(value.to_owned());
            }
            "event" => {
                any = true;
                ev.event = Some(value.to_owned());
            }
            "retry" => {
                if let Ok(ms) = value.parse() {
                    any = true;
                    ev.retry = Some(ms);
                }
            }
            _ => {}
        }
    }
    any.then_some(ev)
}

/// `ev` as it goes on the wire, closing empty line included.
pub fn write(ev: &Event) -> String {
    let mut out = String::new();
    // A value is one line: anything after a line break would be a field of its own.
    let one_line = |v: &str| v.replace(['\r', '\n'], "");
    if let Some(e) = &ev.event {
        out.push_str(&format!("event: {}\n", one_line(e)));
    }
    if let Some(id) = &ev.id {
        out.push_str(&format!("id: {}\n", one_line(id)));
    }
    if let Some(r) = ev.retry {
        out.push_str(&format!("retry: {r}\n"));
    }
    if let Some(d) = &ev.data {
        for line in d.split('\n') {
            out.push_str(&format!("data: {}\n", line.trim_end_matches('\r')));
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(text: &str) -> Vec<Event> {
        Reader::new(1 << 20).push(text.as_bytes()).unwrap()
    }

    #[test]
    fn events_as_servers_send_them() {
        let got = all(
            "event: message\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\n: a comment\n\nid: 2\ndata:\n\ndata: x\ndata: y\r\rdata: z\n\rdata: half",
        );
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].event.as_deref(), Some("message"));
        assert_eq!(got[0].id.as_deref(), Some("1"));
        assert_eq!(got[0].data.as_deref(), Some("{\"a\":1}"));
        assert_eq!(got[1].id.as_deref(), Some("2"));
        assert_eq!(got[1].data.as_deref(), Some(""), "a priming event");
        assert_eq!(got[2].data.as_deref(), Some("x\ny"));
        assert_eq!(
            got[3].data.as_deref(),
            Some("z"),
            "LF then CR is an empty line"
        );
    }

    #[test]
    fn an_event_past_the_bound_is_refused() {
        let mut r = Reader::new(16);
        assert_eq!(r.push(b"data: 0123456789abcdef"), Err(TooLarge(16)));
        let mut r = Reader::new(16);
        assert_eq!(r.push(b"data: 01\n\n").unwrap().len(), 1);
        assert!(!r.is_mid_event());
    }

    #[test]
    fn a_value_cannot_add_a_field_when_written() {
        let ev = Event {
            id: Some("1\ndata: forged".into()),
            data: Some("a\nb".into()),
            ..Event::default()
        };
        let back = all(&write(&ev));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].id.as_deref(), Some("1data: forged"));
        assert_eq!(back[0].data.as_deref(), Some("a\nb"));
    }

    proptest! {
        /// Any bytes, in any chunks: read or refused, never a panic, and the same
        /// events whatever the chunks.
        #[test]
        fn chunks_do_not_change_events(bytes in proptest::collection::vec(any::<u8>(), 0..400), cut in 0usize..400) {
            let whole = Reader::new(1 << 20).push(&bytes).unwrap();
            let mut r = Reader::new(1 << 20);
            let cut = cut.min(bytes.len());
            let mut parts = r.push(&bytes[..cut]).unwrap();
            parts.extend(r.push(&bytes[cut..]).unwrap());
            prop_assert_eq!(whole, parts);
        }

        /// What is written reads back as the same event.
        #[test]
        fn written_events_read_back(id in proptest::option::of("[ -~]{0,20}"), data in "[ -~\n]{0,60}") {
            let ev = Event { id, event: Some("message".into()), data: Some(data), retry: None };
            let back = all(&write(&ev));
            prop_assert_eq!(back, vec![ev]);
        }
    }
}
