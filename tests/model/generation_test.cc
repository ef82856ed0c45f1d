// KV-cache decoding against full recomputation, and the sampler against
// distributions computed in the test. The full forward itself is held against
// an independent NumPy reference by llama_golden_test; here every cached step
// must give the logits that rerunning the whole sequence gives.
#include "model/generation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "core/philox.h"

namespace llmft {
namespace {

namespace fs = std::filesystem;

fs::path testdata(const std::string& name) { return fs::path(LLMFT_SOURCE_DIR) / "tests/testdata/model" / name; }

// Logits [T, V] of the whole sequence by the ordinary (non-cached) forward.
std::vector<std::vector<float>> full_logits(Context& context, LlamaModel& model, const std::vector<int32_t>& ids) {
  Batch batch;
  batch.input_ids = Tensor::from_ints({1, static_cast<int64_t>(ids.size())}, ids);
  Tensor logits;
  model.forward(context, batch, &logits);
  const std::vector<float> flat = logits.to_floats();
  const size_t vocab = flat.size() / ids.size();
  std::vector<std::vector<float>> rows;
  for (size_t t = 0; t < ids.size(); ++t)
    rows.emplace_back(flat.begin() + static_cast<std::ptrdiff_t>(t * vocab),
                      flat.begin() + static_cast<std::ptrdiff_t>((t + 1) * vocab));
  return rows;
}

double max_relative_difference(const std::vector<float>& actual, const std::vector<float>& expected) {
  EXPECT_EQ(actual.size(), expected.size());
  double difference = 0.0, magnitude = 1e-30;
  for (size_t i = 0; i < std::min(actual.size(), expected.size()); ++i) {
    difference = std::max(difference, std::fabs(static_cast<double>(actual[i]) - expected[i]));
    magnitude = std::max(magnitude, std::fabs(static_cast<double>(expected[i])));
  }
  return difference / magnitude;
}

class KvCacheTest : public ::testing::TestWithParam<const char*> {
 protected:
  std::unique_ptr<Context> context_ = Context::cpu(0, 2);
};

// Prefill of `prefill` tokens, then one token at a time: after each call the
// logits of the last token equal row t of the full forward over the tokens so far.
TEST_P(KvCacheTest, CachedLogitsEqualFullRecomputeAtEveryStep) {
  auto model = LlamaModel::load(*context_, testdata(GetParam()));
  const int32_t vocab = static_cast<int32_t>(model->config().vocab_size);
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 24; ++i) ids.push_back((i * 37 + 11) % vocab);
  const std::vector<std::vector<float>> expected = full_logits(*context_, *model, ids);
  for (size_t prefill : {size_t{1}, size_t{5}}) {
    KvCache cache;
    std::vector<float> logits = model->forward_incremental(*context_, std::span(ids).first(prefill), cache).to_floats();
    EXPECT_LT(max_relative_difference(logits, expected[prefill - 1]), 1e-5) << "prefill " << prefill;
    EXPECT_EQ(cache.num_positions, static_cast<int64_t>(prefill));
    for (size_t t = prefill; t < ids.size(); ++t) {
      logits = model->forward_incremental(*context_, std::span(ids).subspan(t, 1), cache).to_floats();
      EXPECT_LT(max_relative_difference(logits, expected[t]), 1e-5) << "prefill " << prefill << ", step " << t;
    }
    EXPECT_EQ(cache.num_positions, static_cast<int64_t>(ids.size()));
    EXPECT_EQ(cache.num_rows, static_cast<int64_t>(ids.size()));
    EXPECT_GE(cache.capacity(), cache.num_rows);
  }
}

// The cache's buffers are filled in place: with room reserved up front no step
// reallocates them (the keys stay at one address); without, they double when
// full and keep the filled rows; clear() reuses them for a new sequence.
TEST_P(KvCacheTest, BuffersAreFilledInPlaceAndGrowByDoubling) {
  auto model = LlamaModel::load(*context_, testdata(GetParam()));
  const int32_t vocab = static_cast<int32_t>(model->config().vocab_size);
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 20; ++i) ids.push_back((i * 53 + 7) % vocab);
  const std::vector<std::vector<float>> expected = full_logits(*context_, *model, ids);

  KvCache reserved;
  reserved.reserved_positions = static_cast<int64_t>(ids.size());
  model->forward_incremental(*context_, std::span(ids).first(3), reserved);
  const void* address = reserved.keys.front().raw_data();
  EXPECT_EQ(reserved.capacity(), static_cast<int64_t>(ids.size()));
  for (size_t t = 3; t < ids.size(); ++t) model->forward_incremental(*context_, std::span(ids).subspan(t, 1), reserved);
  EXPECT_EQ(reserved.keys.front().raw_data(), address);

  KvCache growing;
  std::vector<int64_t> capacities;
  for (size_t t = 0; t < ids.size(); ++t) {
    const std::vector<float> logits =
        model->forward_incremental(*context_, std::span(ids).subspan(t, 1), growing).to_floats();
    EXPECT_LT(max_relative_difference(logits, expected[t]), 1e-5) << "step " << t;
    if (capacities.empty() || capacities.back() != growing.capacity()) capacities.push_back(growing.capacity());
  }
  EXPECT_EQ(capacities, (std::vector<int64_t>{1, 2, 4, 8, 16, 32}));

  growing.clear();
  const void* reused = growing.keys.front().raw_data();
  std::vector<float> logits;
  for (size_t t = 0; t < 6; ++t)
    logits = model->forward_incremental(*context_, std::span(ids).subspan(t, 1), growing).to_floats();
  EXPECT_LT(max_relative_difference(logits, expected[5]), 1e-5);
  EXPECT_EQ(growing.keys.front().raw_data(), reused);
}

// Several new tokens at once after a cache (a chat's next turn): causal among
// themselves, all of the cache visible.
TEST_P(KvCacheTest, ChunkAfterCacheEqualsFullRecompute) {
  auto model = LlamaModel::load(*context_, testdata(GetParam()));
  std::vector<int32_t> ids = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26};
  const std::vector<std::vector<float>> expected = full_logits(*context_, *model, ids);
  KvCache cache;
  model->forward_incremental(*context_, std::span(ids).first(4), cache);
  std::vector<float> logits = model->forward_incremental(*context_, std::span(ids).subspan(4), cache).to_floats();
  EXPECT_LT(max_relative_difference(logits, expected.back()), 1e-5);
}

// Prefix tuning's K/V (fixed random values here) enter the cache on the
// prefill and stay visible to every later token, as in the full forward.
class FixedPrefix final : public AttentionPrefixHook {
 public:
  FixedPrefix(const ModelConfig& config, int64_t length) : length_(length) {
    PhiloxGenerator generator(21);
    const int64_t per_layer = length * config.num_key_value_heads * config.head_dim;
    for (int64_t i = 0; i < 2 * config.num_hidden_layers * per_layer; ++i) values_.push_back(generator.next_normal());
    per_layer_ = per_layer;
  }
  int64_t num_prefix() const override { return length_; }
  void forward(Context&, int64_t layer, Tensor& keys, Tensor& values) override {
    auto slice = [&](int64_t which) {
      const auto begin = values_.begin() + (2 * layer + which) * per_layer_;
      return std::vector<float>(begin, begin + per_layer_);
    };
    keys.copy_from(Tensor::from_floats(keys.shape(), slice(0), keys.dtype()));
    values.copy_from(Tensor::from_floats(values.shape(), slice(1), values.dtype()));
  }
  void backward(Context&, int64_t, const Tensor&, const Tensor&) override {}

 private:
  int64_t length_, per_layer_ = 0;
  std::vector<float> values_;
};

TEST_P(KvCacheTest, PrefixTuningKeysEnterTheCache) {
  auto model = LlamaModel::load(*context_, testdata(GetParam()));
  FixedPrefix prefix(model->config(), 3);
  model->set_attention_prefix_hook(&prefix);
  std::vector<int32_t> ids = {5, 9, 2, 44, 61, 7, 13};
  const std::vector<std::vector<float>> expected = full_logits(*context_, *model, ids);
  KvCache cache;
  model->forward_incremental(*context_, std::span(ids).first(2), cache);
  EXPECT_EQ(cache.num_rows, 3 + 2);
  for (size_t t = 2; t < ids.size(); ++t) {
    const std::vector<float> logits =
        model->forward_incremental(*context_, std::span(ids).subspan(t, 1), cache).to_floats();
    EXPECT_LT(max_relative_difference(logits, expected[t]), 1e-5) << "step " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, KvCacheTest, ::testing::Values("tiny_llama", "tiny_qwen2"));

TEST(KvCacheErrors, BadTokenIdAndEmptyInputAreBadInput) {
  auto context = Context::cpu(0, 1);
  auto model = LlamaModel::load(*context, testdata("tiny_llama"));
  KvCache cache;
  std::vector<int32_t> bad = {1000};
  try {
    model->forward_incremental(*context, bad, cache);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(error.what()).find("token id 1000"), std::string::npos) << error.what();
  }
  EXPECT_THROW(model->forward_incremental(*context, std::span<const int32_t>(), cache), Error);
}

// A cache filled by one model is refused by another of other shapes (one line
// naming both), but an empty one is simply reallocated.
TEST(KvCacheErrors, CacheOfAnotherModelIsBadInputUnlessEmpty) {
  auto context = Context::cpu(0, 1);
  auto llama = LlamaModel::load(*context, testdata("tiny_llama"));
  auto qwen = LlamaModel::load(*context, testdata("tiny_qwen2"));
  ASSERT_NE(llama->config().num_key_value_heads * llama->config().head_dim * llama->config().num_hidden_layers,
            qwen->config().num_key_value_heads * qwen->config().head_dim * qwen->config().num_hidden_layers);
  std::vector<int32_t> ids = {1, 2, 3};
  KvCache cache;
  llama->forward_incremental(*context, ids, cache);
  try {
    qwen->forward_incremental(*context, ids, cache);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(error.what()).find("KV cache holds"), std::string::npos) << error.what();
  }
  cache.clear();
  const std::vector<float> logits = qwen->forward_incremental(*context, ids, cache).to_floats();
  EXPECT_LT(max_relative_difference(logits, full_logits(*context, *qwen, ids).back()), 1e-5);
}

// Greedy generate() picks, at each step, the argmax of the full forward over
// prompt + tokens so far (a decoding loop written here without the cache).
TEST(Generate, GreedyMatchesArgmaxOfFullRecompute) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, testdata("tiny_llama"));
  const std::vector<int32_t> prompt = {1, 17, 42, 5, 77};
  GenerationOptions options;
  options.max_new_tokens = 10;
  const GenerationResult result = generate(*context, *model, prompt, options);
  ASSERT_EQ(result.tokens.size(), 10u);
  EXPECT_FALSE(result.stopped);
  std::vector<int32_t> sequence = prompt;
  for (int32_t token : result.tokens) {
    const std::vector<float> last = full_logits(*context, *model, sequence).back();
    size_t best = 0;
    for (size_t v = 1; v < last.size(); ++v)
      if (last[v] > last[best]) best = v;
    EXPECT_EQ(token, static_cast<int32_t>(best)) << "after " << sequence.size() << " tokens";
    sequence.push_back(static_cast<int32_t>(best));
  }

  // A stop id ends generation right after it is produced, and is kept.
  options.stop_ids = {result.tokens[3]};
  const GenerationResult stopped = generate(*context, *model, prompt, options);
  size_t first = 0;
  while (result.tokens[first] != result.tokens[3]) ++first;
  EXPECT_TRUE(stopped.stopped);
  EXPECT_EQ(stopped.tokens, std::vector<int32_t>(result.tokens.begin(), result.tokens.begin() + first + 1));

  // The timing split: the prefill (prompt + first token) and one decode step per later token.
  EXPECT_GT(result.prefill_seconds, 0.0);
  EXPECT_GT(result.decode_seconds, 0.0);
  EXPECT_EQ(result.decode_steps(), 9);

  // Streaming sees the same tokens in order.
  std::vector<int32_t> streamed;
  generate(*context, *model, prompt, options, [&](int32_t token) { streamed.push_back(token); });
  EXPECT_EQ(streamed, stopped.tokens);
}

TEST(Generate, ReadsEosIdsFromGenerationConfigAndConfig) {
  const fs::path directory = fs::temp_directory_path() / "llmft_generation_test_eos";
  fs::create_directories(directory);
  {
    std::ofstream(directory / "generation_config.json") << R"({"eos_token_id": [7, 9]})";
    std::ofstream(directory / "config.json") << R"({"eos_token_id": 9, "bos_token_id": 1})";
  }
  EXPECT_EQ(read_eos_token_ids(directory), (std::vector<int32_t>{7, 9}));
  std::ofstream(directory / "config.json") << R"({"eos_token_id": "two"})";
  try {
    read_eos_token_ids(directory);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(error.what()).find("config.json: eos_token_id"), std::string::npos) << error.what();
  }
  fs::remove_all(directory);
}

// ---- Sampling ------------------------------------------------------------------

std::vector<float> log_probabilities(const std::vector<double>& probabilities) {
  std::vector<float> logits;
  for (double p : probabilities) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

TEST(Sampler, GreedyIsTheArgmaxFirstOnTies) {
  Sampler greedy(SamplingOptions{});
  EXPECT_EQ(greedy.sample(std::vector<float>{0.1f, 3.0f, -2.0f, 2.9f}), 1);
  EXPECT_EQ(greedy.sample(std::vector<float>{-1.0f, 5.0f, 5.0f}), 1);
  EXPECT_EQ(greedy.sample(std::vector<float>{-7.0f}), 0);
}

TEST(Sampler, TopKOneIsGreedyAtAnyTemperature) {
  PhiloxGenerator generator(11);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<float> logits(64);
    for (float& logit : logits) logit = 3.0f * generator.next_normal();
    size_t best = 0;
    for (size_t v = 1; v < logits.size(); ++v)
      if (logits[v] > logits[best]) best = v;
    Sampler sampler(SamplingOptions{.temperature = 1.5f, .top_k = 1, .top_p = 1.0f, .seed = 5});
    EXPECT_EQ(sampler.sample(logits), static_cast<int32_t>(best));
  }
}

TEST(Sampler, SameSeedSameTokensOtherSeedOtherTokens) {
  const std::vector<float> logits = log_probabilities({0.2, 0.2, 0.2, 0.2, 0.2});
  auto draw = [&](uint64_t seed) {
    Sampler sampler(SamplingOptions{.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = seed});
    std::vector<int32_t> tokens;
    for (int i = 0; i < 64; ++i) tokens.push_back(sampler.sample(logits));
    return tokens;
  };
  EXPECT_EQ(draw(1234), draw(1234));
  EXPECT_NE(draw(1234), draw(1235));
}

// Frequencies of `draws` samples against the expected probabilities (4 sigma).
void expect_frequencies(Sampler& sampler, const std::vector<float>& logits, const std::map<int32_t, double>& expected,
                        int draws) {
  std::map<int32_t, int> counts;
  for (int i = 0; i < draws; ++i) ++counts[sampler.sample(logits)];
  for (const auto& [id, count] : counts) EXPECT_TRUE(expected.contains(id)) << "token " << id << " outside the set";
  for (const auto& [id, probability] : expected) {
    const double sigma = std::sqrt(probability * (1 - probability) / draws);
    EXPECT_NEAR(static_cast<double>(counts[id]) / draws, probability, 4 * sigma + 1e-9) << "token " << id;
  }
}

TEST(Sampler, TopPKeepsTheNucleusOnly) {
  // p = 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps {0, 1} (0.5 < 0.7 <= 0.8), renormalised to 0.625 / 0.375.
  const std::vector<float> logits = log_probabilities({0.15, 0.5, 0.05, 0.3});
  Sampler sampler(SamplingOptions{.temperature = 1.0f, .top_k = 0, .top_p = 0.7f, .seed = 99});
  const std::vector<Sampler::Candidate> kept = sampler.candidates(logits);
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[0].id, 1);
  EXPECT_EQ(kept[1].id, 3);
  EXPECT_NEAR(kept[0].probability, 0.625, 1e-6);
  EXPECT_NEAR(kept[1].probability, 0.375, 1e-6);
  expect_frequencies(sampler, logits, {{1, 0.625}, {3, 0.375}}, 20000);

  // A nucleus smaller than the top token keeps the top token alone.
  Sampler narrow(SamplingOptions{.temperature = 1.0f, .top_k = 0, .top_p = 0.1f, .seed = 3});
  expect_frequencies(narrow, logits, {{1, 1.0}}, 200);
}

TEST(Sampler, TemperatureAndTopKReshapeTheDistribution) {
  const std::vector<double> p = {0.4, 0.1, 0.3, 0.2};
  const std::vector<float> logits = log_probabilities(p);
  // Temperature 2: probabilities proportional to sqrt(p), computed here in double.
  double total = 0.0;
  for (double value : p) total += std::sqrt(value);
  Sampler warm(SamplingOptions{.temperature = 2.0f, .top_k = 0, .top_p = 1.0f, .seed = 7});
  expect_frequencies(warm, logits,
                     {{0, std::sqrt(0.4) / total},
                      {1, std::sqrt(0.1) / total},
                      {2, std::sqrt(0.3) / total},
                      {3, std::sqrt(0.2) / total}},
                     20000);
  // Top-k 2 at temperature 1: {0, 2} renormalised to 4/7, 3/7.
  Sampler top2(SamplingOptions{.temperature = 1.0f, .top_k = 2, .top_p = 1.0f, .seed = 8});
  expect_frequencies(top2, logits, {{0, 4.0 / 7}, {2, 3.0 / 7}}, 20000);
}

TEST(Sampler, RejectsOutOfRangeOptions) {
  EXPECT_THROW(Sampler(SamplingOptions{.temperature = 1.0f, .top_k = -1}), Error);
  EXPECT_THROW(Sampler(SamplingOptions{.temperature = 1.0f, .top_k = 0, .top_p = 0.0f}), Error);
  EXPECT_THROW(Sampler(SamplingOptions{.temperature = 1.0f, .top_k = 0, .top_p = 1.5f}), Error);
  EXPECT_THROW(Sampler(SamplingOptions{.temperature = NAN}), Error);
}

}  // namespace
}  // namespace llmft
