// Packing without cross-contamination (issue 9): a row packing two documents
// (position ids restarting at the second, doc_start keeping attention inside
// each document, target -100 at the boundary) gives each document the logits
// and the parameter gradients it gets when run alone — for full fine-tuning
// and for LoRA adapters. The solo runs are the reference: they take the
// unpacked path (no doc_start, default positions). And the check can fail: the
// same row without doc_start lets the second document see the first, which
// moves its logits far beyond the tolerance.
//
// Tolerances: the packed and solo runs do the same arithmetic except for GEMM
// row blocking, attention tiles that add masked zeros, and the order in which
// the two solo gradients are summed, so they agree to f32 round-off; 1e-5 of
// the largest magnitude (logits per document, gradients per tensor) leaves a
// margin of ~10x over what is measured and is far below the effect of a leak.
#include <gtest/gtest.h>

#include <cstdio>

#include "tests/model/packing_cases.h"

namespace llmft {
namespace {

using namespace packing;

constexpr double kLogitTolerance = 1e-5;
constexpr double kGradientTolerance = 1e-5;

class PackingTest : public ::testing::Test {
 protected:
  std::unique_ptr<Context> context_ = Context::cpu(0, 2);
};

TEST_F(PackingTest, EachDocumentGetsItsSoloLogits) {
  LlamaModel model(*context_, tiny_config());
  randomize(model, 1);
  const std::vector<Document> documents = two_documents();
  const int64_t vocab = model.config().vocab_size;
  const std::vector<float> packed = logits_of(*context_, model, packed_batch(documents, /*with_doc_start=*/true));
  int64_t begin = 0;
  for (size_t d = 0; d < documents.size(); ++d) {
    const int64_t end = begin + static_cast<int64_t>(documents[d].ids.size());
    const std::vector<float> solo = logits_of(*context_, model, solo_batch(documents[d]));
    const double difference = relative_difference(rows(packed, vocab, begin, end), solo);
    std::printf("document %zu: packed vs solo logits, max relative difference %.2e (tolerance %.0e)\n", d, difference,
                kLogitTolerance);
    EXPECT_LE(difference, kLogitTolerance) << "document " << d;
    begin = end;
  }
}

// The check is sensitive: without doc_start the second document attends to
// the first (and its positions continue from 5), so its logits move by far
// more than the tolerance, while the first document (which sees nothing
// before it either way) is unchanged.
TEST_F(PackingTest, WithoutDocStartTheSecondDocumentSeesTheFirst) {
  LlamaModel model(*context_, tiny_config());
  randomize(model, 1);
  const std::vector<Document> documents = two_documents();
  const int64_t vocab = model.config().vocab_size;
  const int64_t first_length = static_cast<int64_t>(documents[0].ids.size());
  const int64_t total = first_length + static_cast<int64_t>(documents[1].ids.size());
  const std::vector<float> causal = logits_of(*context_, model, packed_batch(documents, /*with_doc_start=*/false));
  const double first =
      relative_difference(rows(causal, vocab, 0, first_length), logits_of(*context_, model, solo_batch(documents[0])));
  const double second = relative_difference(rows(causal, vocab, first_length, total),
                                            logits_of(*context_, model, solo_batch(documents[1])));
  std::printf("plain causal row: first document %.2e, second document %.2e (must exceed 1000x %.0e)\n", first, second,
              kLogitTolerance);
  EXPECT_LE(first, kLogitTolerance);
  EXPECT_GT(second, 1000 * kLogitTolerance);
}

// d(sum of token losses)/dW of the packed row equals the sum over documents of
// each solo run's d(sum of its token losses)/dW, for every parameter.
TEST_F(PackingTest, FullFineTuningGradientsEqualTheSumOfSoloGradients) {
  LlamaModel model(*context_, tiny_config());
  randomize(model, 2);
  const std::vector<Document> documents = two_documents();
  const auto packed =
      summed_loss_gradients(*context_, model, model.parameters(), {packed_batch(documents, /*with_doc_start=*/true)});
  const auto solo =
      summed_loss_gradients(*context_, model, model.parameters(), {solo_batch(documents[0]), solo_batch(documents[1])});
  ASSERT_EQ(packed.size(),
            model.parameters().size());  // every parameter trainable and checked
  ASSERT_EQ(solo.size(), packed.size());
  double worst = 0.0;
  for (const auto &[name, gradient] : packed) {
    const double difference = relative_difference(gradient, solo.at(name));
    worst = std::max(worst, difference);
    EXPECT_LE(difference, kGradientTolerance) << name;
  }
  std::printf(
      "%zu parameter tensors: packed vs summed solo gradients, worst relative difference %.2e (tolerance %.0e)\n",
      packed.size(), worst, kGradientTolerance);
}

TEST_F(PackingTest, LoraGradientsEqualTheSumOfSoloGradients) {
  LlamaModel model(*context_, tiny_config());
  randomize(model, 3);
  LoraModel lora(*context_, model, lora_config());
  randomize_lora(lora, 4);
  const std::vector<Document> documents = two_documents();
  const auto packed =
      summed_loss_gradients(*context_, model, lora.parameters(), {packed_batch(documents, /*with_doc_start=*/true)});
  const auto solo =
      summed_loss_gradients(*context_, model, lora.parameters(), {solo_batch(documents[0]), solo_batch(documents[1])});
  // 2 layers x 7 projections x (A, B).
  ASSERT_EQ(packed.size(), 28u);
  ASSERT_EQ(solo.size(), packed.size());
  double worst = 0.0;
  for (const auto &[name, gradient] : packed) {
    double magnitude = 0.0;
    for (float value : gradient) magnitude = std::max(magnitude, std::fabs(static_cast<double>(value)));
    EXPECT_GT(magnitude, 0.0) << name << ": a zero gradient would make the comparison empty";
    const double difference = relative_difference(gradient, solo.at(name));
    worst = std::max(worst, difference);
    EXPECT_LE(difference, kGradientTolerance) << name;
  }
  for (Parameter *parameter : model.parameters().all())
    EXPECT_FALSE(parameter->grad.defined()) << parameter->name << " is frozen under LoRA";
  std::printf("%zu LoRA tensors: packed vs summed solo gradients, worst relative difference %.2e (tolerance %.0e)\n",
              packed.size(), worst, kGradientTolerance);
}

// The same leak shows in the gradients: the plain causal row's gradients are
// not the sum of the solo ones.
TEST_F(PackingTest, WithoutDocStartGradientsDiffer) {
  LlamaModel model(*context_, tiny_config());
  randomize(model, 2);
  const std::vector<Document> documents = two_documents();
  const auto causal =
      summed_loss_gradients(*context_, model, model.parameters(), {packed_batch(documents, /*with_doc_start=*/false)});
  const auto solo =
      summed_loss_gradients(*context_, model, model.parameters(), {solo_batch(documents[0]), solo_batch(documents[1])});
  const std::string name = "model.layers.0.self_attn.q_proj.weight";
  EXPECT_GT(relative_difference(causal.at(name), solo.at(name)), 1000 * kGradientTolerance);
}

}  // namespace
}  // namespace llmft
