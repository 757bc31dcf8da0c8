//! GPT-2's byte-level BPE through the `tokenizers` crate, with optional BOS, and a streaming
//! decoder that only ever emits whole UTF-8 characters.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{ModelError, Result};

/// `<|endoftext|>`: GPT-2's BOS and EOS.
pub const END_OF_TEXT: u32 = 50256;
/// `" "`: the token ActAdd pads contrast prompts with.
pub const SPACE: u32 = 220;

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// GPT-2 tokenizer.
#[derive(Clone)]
pub struct Gpt2Tokenizer {
    inner: Tokenizer,
    bos: u32,
    /// Raw bytes of every token, for streaming decode.
    token_bytes: Vec<Vec<u8>>,
}

impl Gpt2Tokenizer {
    /// `tokenizer.json` if the directory has one, otherwise `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.exists() {
            return Self::from_tokenizer_json(&json);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.exists() && merges.exists() {
            return Self::from_vocab_merges(&vocab, &merges);
        }
        Err(ModelError::NotFound(format!("no tokenizer in {}: looked for tokenizer.json, or vocab.json + merges.txt", dir.display())))
    }

    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
        Self::from_tokenizer(inner)
    }

    /// From the text of a `tokenizer.json`.
    pub fn from_json_str(json: &str) -> Result<Self> {
        let inner: Tokenizer = json.parse().map_err(tok_err)?;
        Self::from_tokenizer(inner)
    }

    /// Builds the tokenizer GPT-2 ships from its two vocabulary files.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| tok_err(format!("{} / {}: {e}", vocab.display(), merges.display())))?;
        Self::byte_level(bpe)
    }

    /// From a token list (id = index, byte-level strings as in `vocab.json`) and its merges,
    /// as a GGUF file carries them.
    pub fn from_tokens_and_merges(tokens: Vec<String>, merges: Vec<(String, String)>) -> Result<Self> {
        let vocab: tokenizers::models::bpe::Vocab = tokens.into_iter().enumerate().map(|(i, t)| (t, i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tok_err)?;
        Self::byte_level(bpe)
    }

    fn byte_level(bpe: BPE) -> Result<Self> {
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.add_special_tokens([AddedToken::from("<|endoftext|>", true)]).map_err(tok_err)?;
        Self::from_tokenizer(inner)
    }

    fn from_tokenizer(inner: Tokenizer) -> Result<Self> {
        let bos = inner.token_to_id("<|endoftext|>").ok_or_else(|| tok_err("vocabulary has no <|endoftext|>"))?;
        let unicode_to_byte: HashMap<char, u8> = bytes_to_unicode().into_iter().map(|(b, c)| (c, b)).collect();
        let n = inner.get_vocab_size(true);
        let token_bytes = (0..n as u32)
            .map(|id| {
                let piece = inner.id_to_token(id).unwrap_or_default();
                if id == bos {
                    return piece.into_bytes();
                }
                piece.chars().map(|c| unicode_to_byte.get(&c).copied().unwrap_or(b'?')).collect()
            })
            .collect();
        Ok(Self { inner, bos, token_bytes })
    }

    /// Writes `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(tok_err)
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Token ids of `text`, with `<|endoftext|>` in front when `bos`.
    pub fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if bos {
            ids.push(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.bytes_of(i).iter().copied()).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The string form of each token (lossy for tokens that are partial characters).
    pub fn token_strings(&self, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&i| String::from_utf8_lossy(self.bytes_of(i)).into_owned()).collect()
    }

    pub fn bytes_of(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], |b| b.as_slice())
    }
}

/// GPT-2's reversible byte <-> printable-character map.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars = printable.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable.into_iter().zip(chars).map(|(b, c)| (b as u8, char::from_u32(c).unwrap())).collect()
}

/// Turns a stream of token ids into text deltas that are always valid UTF-8: bytes of a
/// character split across tokens wait for the token that completes it.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn push(&mut self, tokenizer: &Gpt2Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(tokenizer.bytes_of(id));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(), // incomplete tail: wait
            Err(e) => e.valid_up_to() + e.error_len().unwrap(),   // invalid bytes: emit lossily
        };
        let out: Vec<u8> = self.pending.drain(..valid).collect();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// What is left at the end of the stream (lossy).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
