// WordPiece tokenizer that reproduces Hugging Face `tokenizers`' BERT pipeline id for id:
// BertNormalizer (clean text, spaces around CJK ideographs, NFD accent stripping, lowercasing),
// BertPreTokenizer (split on whitespace and punctuation), greedy longest-match WordPiece with a
// continuation prefix, and the BERT template ([CLS] A [SEP] B [SEP], type ids 0/1) with
// longest_first truncation and right padding. Special tokens written in the input text (e.g.
// "[MASK]") are matched verbatim before normalization, as `tokenizers` does for added tokens.
//
// Input is UTF-8. Bytes that do not form well-formed UTF-8 are each replaced by U+FFFD (which
// clean_text then drops), so any byte string tokenizes and nothing throws on bad text.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lathe::data {

struct TokenizerOptions {
  bool lowercase = true;
  // Unset: follow lowercase (Hugging Face's default).
  std::optional<bool> strip_accents;
  bool clean_text = true;
  bool handle_chinese_chars = true;
  int64_t max_input_chars_per_word = 100;
  std::string continuing_subword_prefix = "##";
  std::string unk_token = "[UNK]";
  std::string cls_token = "[CLS]";
  std::string sep_token = "[SEP]";
  std::string pad_token = "[PAD]";
  std::string mask_token = "[MASK]";
  // Tokens matched verbatim in the raw text before normalization (Hugging Face's added tokens);
  // empty: those of the five special tokens above that the vocabulary holds.
  std::vector<std::string> added_tokens;
};

enum class Padding {
  None,       // every encoding keeps its own length
  Longest,    // a batch is padded to its longest member
  MaxLength,  // padded to EncodeOptions::max_length
};

struct EncodeOptions {
  bool add_special_tokens = true;
  // 0: no truncation. Otherwise the encoding (special tokens included) is cut to max_length;
  // pairs lose tokens from the longer side first (Hugging Face's longest_first). Negative, or 0
  // with Padding::MaxLength, throws lathe::Error.
  int64_t max_length = 0;
  Padding padding = Padding::None;
};

struct Encoding {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> attention_mask;  // 1 for tokens, 0 for padding
  std::vector<int64_t> token_type_ids;  // 0 for the first sentence, 1 for the second
};

class Tokenizer {
 public:
  // vocab[i] is the piece with id i; it must hold unk/cls/sep/pad tokens (mask is optional).
  Tokenizer(std::vector<std::string> vocab, TokenizerOptions options = {});
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // One piece per line (BERT's vocab.txt); the line number (from 0) is the id.
  static Tokenizer from_vocab_file(const std::string& path, TokenizerOptions options = {});
  // The same from memory; `source` names the data in error messages.
  static Tokenizer from_vocab_string(std::string_view content, const std::string& source,
                                     TokenizerOptions options = {});
  // A Hugging Face tokenizer.json with a WordPiece model; reads the BertNormalizer settings, the
  // vocabulary, unk token, prefix and max_input_chars_per_word.
  static Tokenizer from_tokenizer_json(const std::string& path);
  static Tokenizer from_tokenizer_json_string(std::string_view content, const std::string& source);
  // DIR/tokenizer.json when present, else DIR/vocab.txt (with DIR/tokenizer_config.json's
  // do_lower_case / strip_accents / tokenize_chinese_chars when present).
  static Tokenizer from_directory(const std::string& dir);

  // The normalized text (BertNormalizer only), for inspection and tests.
  std::string normalize(std::string_view text) const;
  // Word pieces of text, without special tokens.
  std::vector<std::string> tokenize(std::string_view text) const;
  // Ids of text, without special tokens (appended to out; out is not cleared).
  void encode_ids(std::string_view text, std::vector<int64_t>& out) const;
  std::vector<int64_t> encode_ids(std::string_view text) const;

  Encoding encode(std::string_view text, const EncodeOptions& options = {}) const;
  Encoding encode_pair(std::string_view first, std::string_view second,
                       const EncodeOptions& options = {}) const;
  // Padding::Longest pads every member to the longest of the batch.
  std::vector<Encoding> encode_batch(const std::vector<std::string>& texts,
                                     const EncodeOptions& options = {}) const;
  std::vector<Encoding> encode_pair_batch(
      const std::vector<std::pair<std::string, std::string>>& pairs,
      const EncodeOptions& options = {}) const;

  // -1 when absent.
  int64_t token_to_id(std::string_view token) const;
  // Throws lathe::Error when id is out of range.
  const std::string& id_to_token(int64_t id) const;
  int64_t vocab_size() const;
  const TokenizerOptions& options() const;

  int64_t unk_id() const;
  int64_t cls_id() const;
  int64_t sep_id() const;
  int64_t pad_id() const;
  int64_t mask_id() const;  // -1 when the vocabulary has none

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lathe::data
