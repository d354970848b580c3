//! A chunked request body, walked with the same grammar as hyper's decoder, so the tracker
//! knows where the body ends exactly where hyper does.

/// A chunked body, walked with the same grammar as hyper's decoder (`decode.rs`), so the
/// body ends where hyper thinks it ends. Chunk data is skipped by counting.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    state: ChunkState,
    /// The chunk size being read, then the chunk data still to skip.
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// What a chunked body did with some bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ChunkStep {
    /// All bytes belong to the body; it has not ended.
    NeedMore,
    /// The body ended after this many bytes.
    Done(usize),
    /// The body is not valid chunked encoding; hyper fails it.
    Invalid,
}

impl Chunked {
    pub(super) fn feed(&mut self, data: &[u8]) -> ChunkStep {
        let mut i = 0;
        while i < data.len() {
            if self.state == ChunkState::Data {
                let available = data.len() - i;
                let n = usize::try_from(self.size).map_or(available, |s| s.min(available));
                i += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            let Some(&b) = data.get(i) else { break };
            i += 1;
            self.state = match (self.state, b) {
                (ChunkState::Start | ChunkState::Size, _) if b.is_ascii_hexdigit() => {
                    let digit = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        _ => b - b'A' + 10,
                    };
                    let Some(size) = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(digit)))
                    else {
                        return ChunkStep::Invalid;
                    };
                    self.size = size;
                    ChunkState::Size
                }
                (ChunkState::Size | ChunkState::SizeLws, b'\t' | b' ') => ChunkState::SizeLws,
                (ChunkState::Size | ChunkState::SizeLws, b';') => ChunkState::Extension,
                (ChunkState::Size | ChunkState::SizeLws | ChunkState::Extension, b'\r') => {
                    ChunkState::SizeLf
                }
                // hyper refuses a bare LF inside an extension.
                (ChunkState::Extension, b'\n') => return ChunkStep::Invalid,
                (ChunkState::Extension, _) => ChunkState::Extension,
                (ChunkState::SizeLf, b'\n') if self.size == 0 => ChunkState::EndCr,
                (ChunkState::SizeLf, b'\n') => ChunkState::Data,
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => ChunkState::Start,
                (ChunkState::Trailer, b'\r') => ChunkState::TrailerLf,
                (ChunkState::Trailer, _) => ChunkState::Trailer,
                (ChunkState::TrailerLf, b'\n') => ChunkState::EndCr,
                (ChunkState::EndCr, b'\r') => ChunkState::EndLf,
                (ChunkState::EndCr, _) => ChunkState::Trailer,
                (ChunkState::EndLf, b'\n') => return ChunkStep::Done(i),
                _ => return ChunkStep::Invalid,
            };
        }
        ChunkStep::NeedMore
    }
}
