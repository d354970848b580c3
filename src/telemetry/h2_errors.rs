//! Why an agent's HTTP/2 connection ended in an error: the `reason` label of
//! `tollgate_h2_connection_errors_total`.
//!
//! hyper does not say what a connection was doing when it ended, only the error its connection
//! future returns; the h2 crate's error is among that error's sources. Its RFC 9113 error code
//! is what tollgate's GOAWAY carried (an abuse the h2 crate refuses — a CONTINUATION flood,
//! too many reset streams, a header block over the abuse limit — is `ENHANCE_YOUR_CALM`; a
//! broken frame is `PROTOCOL_ERROR`, `FRAME_SIZE_ERROR`, `COMPRESSION_ERROR`…). That code is
//! what is counted: a closed set of label values, whatever the agent sends.

/// The `reason` label of one HTTP/2 connection that ended in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2ConnectionError {
    /// tollgate ended the connection with a GOAWAY carrying this RFC 9113 error code (an
    /// unknown code is [`H2ConnectionError::Other`]).
    GoAway(u32),
    /// The agent ended the connection with a GOAWAY carrying an error code.
    AgentGoAway,
    /// The socket failed (a reset, or a close in the middle of a frame).
    Io,
    /// Any other h2 failure.
    Other,
}

/// RFC 9113 §7 error codes, by value (0x0 ..= 0xd), as label values.
const CODES: [&str; 14] = [
    "no_error",
    "protocol_error",
    "internal_error",
    "flow_control_error",
    "settings_timeout",
    "stream_closed",
    "frame_size_error",
    "refused_stream",
    "cancel",
    "compression_error",
    "connect_error",
    "enhance_your_calm",
    "inadequate_security",
    "http_1_1_required",
];

impl H2ConnectionError {
    /// Every label value, in series order (a series is created for each at start-up).
    pub fn labels() -> impl Iterator<Item = &'static str> {
        CODES
            .iter()
            .copied()
            .chain(["agent_go_away", "io", "other"])
    }

    /// This error's label value.
    pub fn label(self) -> &'static str {
        match self {
            H2ConnectionError::GoAway(code) => usize::try_from(code)
                .ok()
                .and_then(|i| CODES.get(i))
                .copied()
                .unwrap_or("other"),
            H2ConnectionError::AgentGoAway => "agent_go_away",
            H2ConnectionError::Io => "io",
            H2ConnectionError::Other => "other",
        }
    }

    /// The h2 error among `error` and its sources, classified; `None` when the connection was
    /// not HTTP/2 (no h2 error in the chain).
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<H2ConnectionError> {
        let mut next = Some(error);
        // A source chain is a few links long; the bound only guards against a cycle.
        for _ in 0..16 {
            let current = next?;
            if let Some(h2) = current.downcast_ref::<h2::Error>() {
                return Some(Self::classify(h2));
            }
            next = current.source();
        }
        None
    }

    fn classify(error: &h2::Error) -> H2ConnectionError {
        if error.is_io() {
            H2ConnectionError::Io
        } else if error.is_remote() {
            H2ConnectionError::AgentGoAway
        } else if let Some(reason) = error.reason() {
            H2ConnectionError::GoAway(u32::from(reason))
        } else {
            H2ConnectionError::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct Wrapper(#[source] h2::Error);

    #[test]
    fn finds_the_h2_error_among_the_sources() {
        let error = Wrapper(h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM));
        let found = H2ConnectionError::of(&error).unwrap();
        assert_eq!(found, H2ConnectionError::GoAway(0xb));
        assert_eq!(found.label(), "enhance_your_calm");
        let io = std::io::Error::other("not h2");
        assert_eq!(H2ConnectionError::of(&io), None);
    }

    #[test]
    fn labels_every_code_and_no_other_value() {
        let labels: Vec<_> = H2ConnectionError::labels().collect();
        assert_eq!(labels.len(), 17);
        assert_eq!(H2ConnectionError::GoAway(0x1).label(), "protocol_error");
        assert_eq!(H2ConnectionError::GoAway(0xd).label(), "http_1_1_required");
        assert_eq!(H2ConnectionError::GoAway(0x99).label(), "other");
        for error in [
            H2ConnectionError::AgentGoAway,
            H2ConnectionError::Io,
            H2ConnectionError::Other,
        ] {
            assert!(labels.contains(&error.label()));
        }
    }
}
