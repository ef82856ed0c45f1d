// config/train_config: text-format loading, --set overrides, defaults from
// proto/llmft.proto's comments, and one exact error line per mistake.
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "config/train_config.h"
#include "tests/test_util.h"

namespace llmft::config {
namespace {

using ::llmft::testing::bad_input_message;

namespace fs = std::filesystem;

// A config file in a fresh directory; its path is what errors must name.
class ConfigFile {
 public:
  explicit ConfigFile(const std::string& text, const std::string& name = "run.pbtxt") {
    directory_ = fs::path(::testing::TempDir()) /
                 ("llmft_config_test_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::create_directories(directory_);
    path_ = (directory_ / name).string();
    std::ofstream(path_) << text;
  }
  ~ConfigFile() { fs::remove_all(directory_); }
  const std::string& path() const { return path_; }

 private:
  fs::path directory_;
  std::string path_;
};

// The smallest valid config: the two fields without defaults.
constexpr const char* kMinimal = R"(model { hf_dir: "models/m" }
data { train_files: "data/train-*.tfrecord" }
)";

std::string load_error(const std::string& text, const std::vector<std::string>& overrides = {}) {
  ConfigFile file(text);
  std::string message = bad_input_message([&] { load_train_config(file.path(), overrides); });
  // Errors name the path as given; report it as "run.pbtxt" so expectations
  // read like the docs.
  const size_t at = message.find(file.path());
  if (at == 0) message = "run.pbtxt" + message.substr(file.path().size());
  return message;
}

TEST(TrainConfig, ReadsEveryWrittenFieldAsWritten) {
  ConfigFile file(R"(
model { hf_dir: "m" weights_dtype: BFLOAT16 }
peft { lora { r: 4 alpha: 8 dropout: 0.25 use_rslora: true target_modules: ["q_proj", "down_proj"] } }
data { train_files: ["a", "b"] validation_files: "v" seq_len: 64 batch_size: 2 grad_accumulation_steps: 3
       batch_mode: PADDED shuffle_buffer: 0 seed: 18446744073709551615 input_ids_feature: "ids"
       labels_feature: "y" loss_mask_feature: "m" skip_corrupt_records: true long_documents: SPLIT
       pack_window: 64 }
optimizer { lr: 3e-4 weight_decay: 0.1 beta1: 0.8 beta2: 0.95 eps: 1e-6 max_grad_norm: 0
            exclude_norms_and_biases_from_decay: false }
schedule { kind: COSINE warmup_steps: 5 min_lr_ratio: 0.5 total_steps: 50 }
precision { compute_dtype: FLOAT16 init_scale: 1024 growth_factor: 4 backoff_factor: 0.25 growth_interval: 7
            hysteresis: 2 }
parallel { dp: 4 tp: 1 }
checkpoint { dir: "ck" every_n_steps: 9 keep_last: 0 resume: "latest" }
logging { every_n_steps: 0 jsonl_path: "m.jsonl" tensorboard_dir: "tb" eval_every_n_steps: 25 }
)");
  const TrainConfig config = load_train_config(file.path());
  EXPECT_EQ(config.model().hf_dir(), "m");
  EXPECT_EQ(config.model().weights_dtype(), BFLOAT16);
  ASSERT_TRUE(config.peft().has_lora());
  EXPECT_EQ(config.peft().lora().r(), 4);
  EXPECT_EQ(config.peft().lora().alpha(), 8.0f);
  EXPECT_EQ(config.peft().lora().dropout(), 0.25f);
  EXPECT_TRUE(config.peft().lora().use_rslora());
  EXPECT_EQ(std::vector<std::string>(config.peft().lora().target_modules().begin(),
                                     config.peft().lora().target_modules().end()),
            (std::vector<std::string>{"q_proj", "down_proj"}));
  EXPECT_EQ(config.data().train_files_size(), 2);
  EXPECT_EQ(config.data().train_files(1), "b");
  EXPECT_EQ(config.data().validation_files(0), "v");
  EXPECT_EQ(config.data().seq_len(), 64);
  EXPECT_EQ(config.data().batch_size(), 2);
  EXPECT_EQ(config.data().grad_accumulation_steps(), 3);
  EXPECT_EQ(config.data().batch_mode(), PADDED);
  EXPECT_EQ(config.data().shuffle_buffer(), 0);
  EXPECT_EQ(config.data().seed(), 18446744073709551615ull);
  EXPECT_EQ(config.data().input_ids_feature(), "ids");
  EXPECT_EQ(config.data().labels_feature(), "y");
  EXPECT_EQ(config.data().loss_mask_feature(), "m");
  EXPECT_TRUE(config.data().skip_corrupt_records());
  EXPECT_EQ(config.data().long_documents(), SPLIT);
  EXPECT_EQ(config.data().pack_window(), 64);
  EXPECT_EQ(config.optimizer().lr(), 3e-4);
  EXPECT_EQ(config.optimizer().weight_decay(), 0.1);
  EXPECT_EQ(config.optimizer().beta1(), 0.8);
  EXPECT_EQ(config.optimizer().beta2(), 0.95);
  EXPECT_EQ(config.optimizer().eps(), 1e-6);
  EXPECT_EQ(config.optimizer().max_grad_norm(),
            0.0);  // written 0 stays 0: presence, not value, decides
  EXPECT_FALSE(config.optimizer().exclude_norms_and_biases_from_decay());
  EXPECT_EQ(config.schedule().kind(), COSINE);
  EXPECT_EQ(config.schedule().warmup_steps(), 5);
  EXPECT_EQ(config.schedule().min_lr_ratio(), 0.5);
  EXPECT_EQ(config.schedule().total_steps(), 50);
  EXPECT_EQ(config.precision().compute_dtype(), FLOAT16);
  EXPECT_EQ(config.precision().init_scale(), 1024.0f);
  EXPECT_EQ(config.precision().growth_factor(), 4.0f);
  EXPECT_EQ(config.precision().backoff_factor(), 0.25f);
  EXPECT_EQ(config.precision().growth_interval(), 7);
  EXPECT_EQ(config.precision().hysteresis(), 2);
  EXPECT_EQ(config.parallel().dp(), 4);
  EXPECT_EQ(config.parallel().tp(), 1);
  EXPECT_EQ(config.checkpoint().dir(), "ck");
  EXPECT_EQ(config.checkpoint().every_n_steps(), 9);
  EXPECT_EQ(config.checkpoint().keep_last(), 0);
  EXPECT_EQ(config.checkpoint().resume(), "latest");
  EXPECT_EQ(config.logging().every_n_steps(), 0);
  EXPECT_EQ(config.logging().jsonl_path(), "m.jsonl");
  EXPECT_EQ(config.logging().tensorboard_dir(), "tb");
  EXPECT_EQ(config.logging().eval_every_n_steps(), 25);
}

TEST(TrainConfig, PrintedConfigParsesBackToTheSameMessage) {
  ConfigFile file(std::string(kMinimal) + "peft { lora { r: 16 } }\noptimizer { lr: 1e-5 }\n");
  const TrainConfig loaded = load_train_config(file.path());
  const std::string text = train_config_to_text(loaded);
  const TrainConfig reparsed = parse_train_config(text, "printed");
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(loaded, reparsed)) << text;
  // Every default is written out, so the printed config is complete on its own.
  EXPECT_NE(text.find("total_steps: 1000"), std::string::npos) << text;
  EXPECT_NE(text.find("r: 16"), std::string::npos) << text;
}

// The values below are copied by hand from proto/llmft.proto's comments.
TEST(TrainConfig, UnwrittenFieldsTakeTheDefaultsTheProtoDocuments) {
  ConfigFile file(kMinimal);
  const TrainConfig config = load_train_config(file.path());
  EXPECT_EQ(config.model().weights_dtype(), FLOAT32);
  EXPECT_TRUE(config.peft().has_none());
  EXPECT_EQ(config.data().validation_files_size(), 0);
  EXPECT_EQ(config.data().seq_len(), 1024);
  EXPECT_EQ(config.data().batch_size(), 8);
  EXPECT_EQ(config.data().grad_accumulation_steps(), 1);
  EXPECT_EQ(config.data().batch_mode(), PACKED);
  EXPECT_EQ(config.data().shuffle_buffer(), 1024);
  EXPECT_EQ(config.data().seed(), 0u);
  EXPECT_EQ(config.data().input_ids_feature(), "input_ids");
  EXPECT_EQ(config.data().labels_feature(), "labels");
  EXPECT_EQ(config.data().loss_mask_feature(), "loss_mask");
  EXPECT_FALSE(config.data().skip_corrupt_records());
  EXPECT_EQ(config.data().long_documents(), TRUNCATE);
  EXPECT_EQ(config.data().pack_window(), 1024);
  EXPECT_EQ(config.optimizer().lr(), 1e-4);
  EXPECT_EQ(config.optimizer().weight_decay(), 0.01);
  EXPECT_EQ(config.optimizer().beta1(), 0.9);
  EXPECT_EQ(config.optimizer().beta2(), 0.999);
  EXPECT_EQ(config.optimizer().eps(), 1e-8);
  EXPECT_EQ(config.optimizer().max_grad_norm(), 1.0);
  EXPECT_TRUE(config.optimizer().exclude_norms_and_biases_from_decay());
  EXPECT_EQ(config.schedule().kind(), CONSTANT);
  EXPECT_EQ(config.schedule().warmup_steps(), 0);
  EXPECT_EQ(config.schedule().min_lr_ratio(), 0.0);
  EXPECT_EQ(config.schedule().total_steps(), 1000);
  EXPECT_EQ(config.precision().compute_dtype(), FLOAT32);
  EXPECT_EQ(config.precision().init_scale(), 65536.0f);
  EXPECT_EQ(config.precision().growth_factor(), 2.0f);
  EXPECT_EQ(config.precision().backoff_factor(), 0.5f);
  EXPECT_EQ(config.precision().growth_interval(), 2000);
  EXPECT_EQ(config.precision().hysteresis(), 1);
  EXPECT_FALSE(config.parallel().has_dp());  // the launched world size / tp, known only at run time
  EXPECT_EQ(config.parallel().tp(), 1);
  EXPECT_EQ(config.parallel().bucket_mb(), 25.0);
  EXPECT_EQ(config.parallel().timeout_s(), 600.0);
  EXPECT_FALSE(config.precision().loss_scaling());  // on only for FLOAT16 unless written
  EXPECT_FALSE(config.precision().deterministic());
  EXPECT_EQ(config.memory().activation_checkpointing(), NONE);
  EXPECT_EQ(config.memory().checkpoint_every_n_layers(), 1);
  EXPECT_EQ(config.checkpoint().dir(), "checkpoints");
  EXPECT_EQ(config.checkpoint().every_n_steps(), 0);
  EXPECT_EQ(config.checkpoint().keep_last(), 3);
  EXPECT_EQ(config.checkpoint().resume(), "");
  EXPECT_EQ(config.logging().every_n_steps(), 10);
  EXPECT_EQ(config.logging().jsonl_path(), "");
  EXPECT_EQ(config.logging().tensorboard_dir(), "");
  EXPECT_EQ(config.logging().eval_every_n_steps(), 0);
}

TEST(TrainConfig, LoraDefaultsApplyWhenLoraIsChosen) {
  ConfigFile file(std::string(kMinimal) + "peft { lora {} }\n");
  const TrainConfig config = load_train_config(file.path());
  ASSERT_TRUE(config.peft().has_lora());
  EXPECT_EQ(config.peft().lora().r(), 8);
  EXPECT_EQ(config.peft().lora().alpha(), 16.0f);
  EXPECT_EQ(config.peft().lora().dropout(), 0.0f);
  EXPECT_FALSE(config.peft().lora().use_rslora());
  ASSERT_EQ(config.peft().lora().target_modules_size(), 2);
  EXPECT_EQ(config.peft().lora().target_modules(0), "q_proj");
  EXPECT_EQ(config.peft().lora().target_modules(1), "v_proj");
}

TEST(TrainConfigOverride, SetsNestedScalarOverTheFileValue) {
  ConfigFile file(std::string(kMinimal) + "optimizer { lr: 1e-3 }\n");
  const TrainConfig config = load_train_config(file.path(), {"optimizer.lr=2.5e-5", "data.seq_len=+77"});
  EXPECT_EQ(config.optimizer().lr(), 2.5e-5);
  EXPECT_EQ(config.data().seq_len(), 77);
}

TEST(TrainConfigOverride, LaterOverridesWin) {
  ConfigFile file(kMinimal);
  EXPECT_EQ(load_train_config(file.path(), {"data.batch_size=2", "data.batch_size=5"}).data().batch_size(), 5);
}

TEST(TrainConfigOverride, SetsEnumByValueNameInAnyCase) {
  ConfigFile file(kMinimal);
  const TrainConfig config = load_train_config(
      file.path(), {"schedule.kind=cosine", "schedule.warmup_steps=10", "precision.compute_dtype=BFLOAT16"});
  EXPECT_EQ(config.schedule().kind(), COSINE);
  EXPECT_EQ(config.precision().compute_dtype(), BFLOAT16);
}

TEST(TrainConfigOverride, RepeatedFieldTakesACommaListThatReplacesTheFile) {
  ConfigFile file(std::string(kMinimal) +
                  "peft { lora { target_modules: [\"q_proj\", \"v_proj\", "
                  "\"k_proj\"] } }\n");
  const TrainConfig config = load_train_config(file.path(), {"peft.lora.target_modules=o_proj,gate_proj"});
  ASSERT_EQ(config.peft().lora().target_modules_size(), 2);
  EXPECT_EQ(config.peft().lora().target_modules(0), "o_proj");
  EXPECT_EQ(config.peft().lora().target_modules(1), "gate_proj");
  // An empty list clears the field, so the default comes back.
  const TrainConfig cleared = load_train_config(file.path(), {"peft.lora.target_modules="});
  ASSERT_EQ(cleared.peft().lora().target_modules_size(), 2);
  EXPECT_EQ(cleared.peft().lora().target_modules(1), "v_proj");
}

TEST(TrainConfigOverride, SetsBoolsAndUnsigned) {
  ConfigFile file(kMinimal);
  const TrainConfig config = load_train_config(
      file.path(), {"data.skip_corrupt_records=true", "optimizer.exclude_norms_and_biases_from_decay=false",
                    "peft.lora.use_rslora=1", "data.seed=18446744073709551615"});
  EXPECT_TRUE(config.data().skip_corrupt_records());
  EXPECT_FALSE(config.optimizer().exclude_norms_and_biases_from_decay());
  EXPECT_TRUE(config.peft().lora().use_rslora());
  EXPECT_EQ(config.data().seed(), 18446744073709551615ull);
}

TEST(TrainConfigOverride, SettingALoraFieldSwitchesPeftFromNoneToLora) {
  ConfigFile file(std::string(kMinimal) + "peft { none {} }\n");
  const TrainConfig config = load_train_config(file.path(), {"peft.lora.r=4"});
  ASSERT_TRUE(config.peft().has_lora());
  EXPECT_EQ(config.peft().lora().r(), 4);
  EXPECT_EQ(config.peft().lora().alpha(), 16.0f);
  // And back: an empty value selects the empty `none` message.
  EXPECT_TRUE(load_train_config(file.path(), {"peft.lora.r=4", "peft.none="}).peft().has_none());
}

// --- Errors: one line each, exact text. ---

TEST(TrainConfigErrors, UnknownTopLevelFieldNamesLineColumnAndSuggestion) {
  EXPECT_EQ(load_error("# comment\n"
                       "model { hf_dir: \"m\" }\n"
                       "data {\n"
                       "  train_files: \"t\"\n"
                       "}\n"
                       "\n"
                       "optimiser {\n"
                       "  lr: 1\n"
                       "}\n"),
            "run.pbtxt:7:1: unknown field 'optimiser' in llmft.TrainConfig "
            "(did you mean 'optimizer'?)");
}

TEST(TrainConfigErrors, UnknownNestedFieldNamesItsMessage) {
  EXPECT_EQ(load_error("optimizer {\n  lrr: 1\n}\n"),
            "run.pbtxt:2:3: unknown field 'lrr' in llmft.OptimizerConfig (did "
            "you mean 'lr'?)");
}

TEST(TrainConfigErrors, UnknownFieldWithNothingCloseHasNoSuggestion) {
  EXPECT_EQ(load_error("data { completely_different: 1 }\n"),
            "run.pbtxt:1:8: unknown field 'completely_different' in "
            "llmft.DataConfig");
}

TEST(TrainConfigErrors, UnknownPeftMethodNamesTheField) {
  EXPECT_EQ(load_error("peft { ia3 {} }\n"), "run.pbtxt:1:8: unknown field 'ia3' in llmft.PeftConfig");
}

TEST(TrainConfig, BottleneckDefaultsAndRanges) {
  ConfigFile file(std::string(kMinimal) + "peft { bottleneck { placement: HOULSBY } }\n");
  const TrainConfig config = load_train_config(file.path());
  EXPECT_EQ(config.peft().bottleneck().placement(), BottleneckConfig::HOULSBY);
  EXPECT_EQ(config.peft().bottleneck().reduction_factor(), 16);
  EXPECT_EQ(config.peft().bottleneck().bottleneck(), 0);
  EXPECT_EQ(config.peft().bottleneck().non_linearity(), BottleneckConfig::RELU);
  EXPECT_EQ(load_error(kMinimal, {"peft.bottleneck.reduction_factor=0"}),
            "run.pbtxt: field 'peft.bottleneck.reduction_factor': 0 out of range, expected >= 1");
  EXPECT_EQ(load_error(kMinimal, {"peft.bottleneck.bottleneck=-4"}),
            "run.pbtxt: field 'peft.bottleneck.bottleneck': -4 out of range, expected >= 0");
}

TEST(TrainConfig, PromptLearningMethodsGetTheirDefaults) {
  const std::vector<std::string> padded = {"data.batch_mode=PADDED"};
  ConfigFile prompt(std::string(kMinimal) + "peft { prompt_tuning {} }\n");
  const TrainConfig prompt_config = load_train_config(prompt.path(), padded);
  EXPECT_EQ(prompt_config.peft().prompt_tuning().num_virtual_tokens(), 20);
  EXPECT_EQ(prompt_config.peft().prompt_tuning().init(), PromptTuningConfig::RANDOM);
  const TrainConfig p_config = load_train_config(prompt.path(), {"peft.p_tuning.num_virtual_tokens=4",
                                                                 "data.batch_mode=PADDED"});
  EXPECT_EQ(p_config.peft().p_tuning().num_virtual_tokens(), 4);
  EXPECT_EQ(p_config.peft().p_tuning().encoder_hidden_size(), 0);
  ConfigFile prefix(std::string(kMinimal) + "peft { prefix_tuning { prefix_projection: true } }\n");
  const TrainConfig prefix_config = load_train_config(prefix.path());
  EXPECT_EQ(prefix_config.peft().prefix_tuning().num_virtual_tokens(), 20);
  EXPECT_TRUE(prefix_config.peft().prefix_tuning().prefix_projection());
  EXPECT_EQ(prefix_config.peft().prefix_tuning().encoder_hidden_size(), 0);
}

TEST(TrainConfigErrors, PromptLearningFieldsNameTheFieldAndTheExpectation) {
  EXPECT_EQ(load_error(kMinimal, {"peft.prompt_tuning.num_virtual_tokens=3"}),
            "run.pbtxt: field 'data.batch_mode': PACKED, expected PADDED with peft.prompt_tuning (its virtual tokens "
            "go in front of each sequence, so a row holds one document)");
  EXPECT_EQ(load_error(kMinimal, {"peft.p_tuning.num_virtual_tokens=3", "data.batch_mode=PACKED_CONTIGUOUS"}),
            "run.pbtxt: field 'data.batch_mode': PACKED_CONTIGUOUS, expected PADDED with peft.p_tuning (its virtual "
            "tokens go in front of each sequence, so a row holds one document)");
  EXPECT_EQ(load_error(kMinimal, {"peft.prompt_tuning.num_virtual_tokens=0", "data.batch_mode=PADDED"}),
            "run.pbtxt: field 'peft.prompt_tuning.num_virtual_tokens': 0 out of range, expected > 0");
  EXPECT_EQ(load_error(kMinimal, {"peft.prompt_tuning.init=TEXT", "data.batch_mode=PADDED"}),
            "run.pbtxt: field 'peft.prompt_tuning.init_text': empty, expected the text whose embeddings start the "
            "prompt (init TEXT)");
  EXPECT_EQ(load_error(kMinimal, {"peft.prompt_tuning.init_text=hello", "data.batch_mode=PADDED"}),
            "run.pbtxt: field 'peft.prompt_tuning.init_text': set, but init is not TEXT (set init: TEXT or drop "
            "init_text)");
  EXPECT_EQ(load_error(kMinimal, {"peft.p_tuning.encoder_hidden_size=-2", "data.batch_mode=PADDED"}),
            "run.pbtxt: field 'peft.p_tuning.encoder_hidden_size': -2 out of range, expected >= 0");
  EXPECT_EQ(load_error(kMinimal, {"peft.prefix_tuning.num_virtual_tokens=-1"}),
            "run.pbtxt: field 'peft.prefix_tuning.num_virtual_tokens': -1 out of range, expected > 0");
  EXPECT_EQ(load_error(kMinimal, {"peft.prefix_tuning.num_virtual_tokens=2", "parallel.tp=2"}),
            "run.pbtxt: field 'parallel.tp': 2, expected 1 with peft.prefix_tuning (prefix tuning under tensor "
            "parallelism is not supported yet)");
}

TEST(TrainConfigErrors, WrongTypeInFileNamesLineAndExpectation) {
  EXPECT_EQ(load_error("data {\n  seq_len: \"long\"\n}\n"), "run.pbtxt:2:12: Expected integer, got: \"long\"");
  EXPECT_EQ(load_error("optimizer { lr: abc }\n"), "run.pbtxt:1:17: Expected double, got: abc");
  EXPECT_EQ(load_error("schedule { kind: SIDEWAYS }\n"),
            "run.pbtxt:1:18: field 'kind': unknown value 'SIDEWAYS', expected "
            "one of CONSTANT, LINEAR, COSINE");
}

TEST(TrainConfigErrors, BadBatchModeAndLongDocumentsNameTheFieldAndTheChoices) {
  EXPECT_EQ(load_error("model { hf_dir: \"m\" }\ndata { train_files: \"t\" long_documents: CHOP }\n"),
            "run.pbtxt:2:41: field 'long_documents': unknown value 'CHOP', expected one of TRUNCATE, SPLIT, DROP");
  EXPECT_EQ(load_error("model { hf_dir: \"m\" }\ndata { train_files: \"t\" batch_mode: BFD }\n"),
            "run.pbtxt:2:37: field 'batch_mode': unknown value 'BFD', expected one of PACKED, PADDED, "
            "PACKED_CONTIGUOUS");
  EXPECT_EQ(load_error(kMinimal, {"data.long_documents=cut"}),
            "--set data.long_documents=cut: field 'data.long_documents' expects one of TRUNCATE, SPLIT, DROP");
  EXPECT_EQ(load_error(kMinimal, {"data.pack_window=0"}),
            "run.pbtxt: field 'data.pack_window': 0 out of range, expected >= 1");
  EXPECT_EQ(load_error(kMinimal, {"data.long_documents=LONG_DOCUMENTS_UNSPECIFIED"}),
            "--set data.long_documents=LONG_DOCUMENTS_UNSPECIFIED: field 'data.long_documents' expects one of "
            "TRUNCATE, SPLIT, DROP");
  EXPECT_EQ(load_error("model { hf_dir: \"m\" }\n"
                       "data { train_files: \"t\" long_documents: LONG_DOCUMENTS_UNSPECIFIED }\n"),
            "run.pbtxt: field 'data.long_documents': LONG_DOCUMENTS_UNSPECIFIED, expected TRUNCATE, SPLIT or DROP");
}

TEST(TrainConfigErrors, TwoPeftMethodsAtOnce) {
  const std::string message = load_error("peft {\n  none {}\n  lora { r: 2 }\n}\n");
  EXPECT_EQ(message.rfind("run.pbtxt:3:", 0), 0u) << message;
  EXPECT_NE(message.find("oneof"), std::string::npos) << message;
}

TEST(TrainConfigErrors, FieldWrittenTwice) {
  EXPECT_EQ(load_error("data { seq_len: 1 seq_len: 2 }\n"),
            "run.pbtxt:1:19: Non-repeated field \"seq_len\" is specified "
            "multiple times.");
}

TEST(TrainConfigErrors, OutOfRangeNamesFieldValueAndRange) {
  EXPECT_EQ(load_error(std::string(kMinimal) + "peft { lora { dropout: 1.5 } }\n"),
            "run.pbtxt: field 'peft.lora.dropout': 1.5 out of range [0, 1)");
  // Float fields print as written (1.1), not as the widened double (1.100000023841858).
  EXPECT_EQ(load_error(kMinimal, {"peft.lora.dropout=1.1"}),
            "run.pbtxt: field 'peft.lora.dropout': 1.1 out of range [0, 1)");
  EXPECT_EQ(load_error(kMinimal, {"peft.lora.alpha=-0.3"}),
            "run.pbtxt: field 'peft.lora.alpha': -0.3 out of range, expected > 0");
  EXPECT_EQ(load_error(kMinimal, {"precision.growth_factor=1"}),
            "run.pbtxt: field 'precision.growth_factor': 1 out of range, expected > 1");
  EXPECT_EQ(load_error(std::string(kMinimal) + "precision { compute_dtype: FLOAT16 loss_scaling: false }\n"),
            "run.pbtxt: field 'precision.loss_scaling': false with compute_dtype FLOAT16, expected true (f16 "
            "gradients underflow without loss scaling)");
  EXPECT_EQ(load_error(kMinimal, {"memory.checkpoint_every_n_layers=0"}),
            "run.pbtxt: field 'memory.checkpoint_every_n_layers': 0 out of range, expected >= 1");
  EXPECT_EQ(load_error(kMinimal, {"parallel.bucket_mb=0"}),
            "run.pbtxt: field 'parallel.bucket_mb': 0 out of range, expected > 0");
  EXPECT_EQ(load_error(kMinimal, {"parallel.dp=0"}), "run.pbtxt: field 'parallel.dp': 0 out of range, expected >= 1");
  EXPECT_EQ(load_error(std::string(kMinimal) + "optimizer { lr: 0 }\n"),
            "run.pbtxt: field 'optimizer.lr': 0 out of range, expected > 0");
  EXPECT_EQ(load_error(std::string(kMinimal) + "optimizer { beta2: 1 }\n"),
            "run.pbtxt: field 'optimizer.beta2': 1 out of range [0, 1)");
  EXPECT_EQ(load_error(std::string(kMinimal) + "peft { lora { r: 0 } }\n"),
            "run.pbtxt: field 'peft.lora.r': 0 out of range, expected > 0");
  EXPECT_EQ(load_error("model { hf_dir: \"m\" }\ndata { train_files: \"t\" seq_len: -5 }\n"),
            "run.pbtxt: field 'data.seq_len': -5 out of range, expected > 0");
  EXPECT_EQ(load_error(std::string(kMinimal) + "checkpoint { every_n_steps: -1 }\n"),
            "run.pbtxt: field 'checkpoint.every_n_steps': -1 out of range, expected "
            ">= 0");
  EXPECT_EQ(load_error(std::string(kMinimal) + "parallel { dp: 0 }\n"),
            "run.pbtxt: field 'parallel.dp': 0 out of range, expected >= 1");
  EXPECT_EQ(load_error(std::string(kMinimal) + "precision { backoff_factor: 1 }\n"),
            "run.pbtxt: field 'precision.backoff_factor': 1 out of range (0, 1)");
}

TEST(TrainConfigErrors, OutOfRangeFromAnOverrideIsCaughtToo) {
  EXPECT_EQ(load_error(kMinimal, {"optimizer.lr=-1e-4"}),
            "run.pbtxt: field 'optimizer.lr': -1e-04 out of range, expected > 0");
  EXPECT_EQ(load_error(kMinimal, {"optimizer.lr=nan"}),
            "run.pbtxt: field 'optimizer.lr': nan out of range, expected > 0");
}

TEST(TrainConfigErrors, CrossFieldRules) {
  EXPECT_EQ(load_error(kMinimal, {"parallel.tp=0"}), "run.pbtxt: field 'parallel.tp': 0 out of range, expected >= 1");
  EXPECT_EQ(load_error(kMinimal, {"schedule.kind=LINEAR", "schedule.total_steps=10", "schedule.warmup_steps=10"}),
            "run.pbtxt: field 'schedule.warmup_steps': 10 out of range, expected < "
            "schedule.total_steps (10) for a "
            "LINEAR schedule");
  EXPECT_EQ(load_error(kMinimal, {"logging.eval_every_n_steps=5"}),
            "run.pbtxt: field 'logging.eval_every_n_steps': 5 needs "
            "data.validation_files, which is empty");
  EXPECT_EQ(load_error(kMinimal, {"peft.lora.target_modules=q_proj,all-linear"}),
            "run.pbtxt: field 'peft.lora.target_modules': 'all-linear' must be the "
            "only entry");
  EXPECT_EQ(load_error(kMinimal, {"peft.lora.target_modules=qproj"}),
            "run.pbtxt: field 'peft.lora.target_modules': 'qproj' is not a "
            "module name, expected q_proj, k_proj, "
            "v_proj, o_proj, gate_proj, up_proj, down_proj or all-linear");
}

TEST(TrainConfigErrors, MissingRequiredFields) {
  EXPECT_EQ(load_error("data { train_files: \"t\" }\n"),
            "run.pbtxt: field 'model.hf_dir': empty, expected a Hugging Face "
            "model directory");
  EXPECT_EQ(load_error("model { hf_dir: \"m\" }\n"),
            "run.pbtxt: field 'data.train_files': empty, expected at least one "
            "file or pattern");
}

TEST(TrainConfigErrors, BadSetPath) {
  EXPECT_EQ(load_error(kMinimal, {"optimiser.lr=1"}),
            "--set optimiser.lr=1: unknown field 'optimiser' in "
            "llmft.TrainConfig (did you mean 'optimizer'?)");
  EXPECT_EQ(load_error(kMinimal, {"optimizer.learning_rate=1"}),
            "--set optimizer.learning_rate=1: unknown field 'learning_rate' in "
            "llmft.OptimizerConfig");
  EXPECT_EQ(load_error(kMinimal, {"optimizer.lr.x=1"}),
            "--set optimizer.lr.x=1: field 'optimizer.lr' is a double, it has "
            "no field 'x'");
  EXPECT_EQ(load_error(kMinimal, {"optimizer=1"}),
            "--set optimizer=1: field 'optimizer' is a message "
            "(llmft.OptimizerConfig); set one of its fields, e.g. "
            "optimizer.lr=...");
  EXPECT_EQ(load_error(kMinimal, {"optimizer.lr"}),
            "--set optimizer.lr: expected field.path=value (e.g. --set "
            "optimizer.lr=1e-4)");
  EXPECT_EQ(load_error(kMinimal, {"optimizer..lr=1"}),
            "--set optimizer..lr=1: empty field name in path 'optimizer..lr'");
}

TEST(TrainConfigErrors, BadSetValue) {
  EXPECT_EQ(load_error(kMinimal, {"optimizer.lr=abc"}),
            "--set optimizer.lr=abc: field 'optimizer.lr' expects a number");
  EXPECT_EQ(load_error(kMinimal, {"optimizer.lr=1e-4x"}),
            "--set optimizer.lr=1e-4x: field 'optimizer.lr' expects a number");
  EXPECT_EQ(load_error(kMinimal, {"data.seq_len=1.5"}),
            "--set data.seq_len=1.5: field 'data.seq_len' expects an integer");
  EXPECT_EQ(load_error(kMinimal, {"data.seq_len=99999999999999999999"}),
            "--set data.seq_len=99999999999999999999: field 'data.seq_len' "
            "expects an integer");
  EXPECT_EQ(load_error(kMinimal, {"data.seed=-1"}),
            "--set data.seed=-1: field 'data.seed' expects a non-negative integer");
  EXPECT_EQ(load_error(kMinimal, {"data.skip_corrupt_records=yes"}),
            "--set data.skip_corrupt_records=yes: field "
            "'data.skip_corrupt_records' expects true or false");
  EXPECT_EQ(load_error(kMinimal, {"schedule.kind=sideways"}),
            "--set schedule.kind=sideways: field 'schedule.kind' expects one "
            "of CONSTANT, LINEAR, COSINE");
  EXPECT_EQ(load_error(kMinimal, {"schedule.kind=SCHEDULE_KIND_UNSPECIFIED"}),
            "--set schedule.kind=SCHEDULE_KIND_UNSPECIFIED: field "
            "'schedule.kind' expects one of CONSTANT, LINEAR, "
            "COSINE");
}

TEST(TrainConfigErrors, MissingFile) {
  const std::string path = (fs::path(::testing::TempDir()) / "llmft_no_such_dir" / "run.pbtxt").string();
  EXPECT_EQ(bad_input_message([&] { load_train_config(path); }), path + ": cannot open: No such file or directory");
}

TEST(TrainConfigErrors, ExplicitUnspecifiedEnumIsRejected) {
  EXPECT_EQ(load_error(std::string(kMinimal) + "precision { compute_dtype: DTYPE_UNSPECIFIED }\n"),
            "run.pbtxt: field 'precision.compute_dtype': DTYPE_UNSPECIFIED, "
            "expected one of FLOAT32, BFLOAT16, "
            "FLOAT16");
}

TEST(TrainConfigExamples, EveryExampleParsesAndValidates) {
  for (const char* name : {"lora_smollm2.pbtxt", "full_finetune_small.pbtxt"}) {
    SCOPED_TRACE(name);
    const std::string path = std::string(LLMFT_SOURCE_DIR) + "/examples/" + name;
    TrainConfig config;
    ASSERT_NO_THROW(config = load_train_config(path)) << name;
    EXPECT_FALSE(config.model().hf_dir().empty());
  }
  const TrainConfig lora = load_train_config(std::string(LLMFT_SOURCE_DIR) + "/examples/lora_smollm2.pbtxt");
  EXPECT_TRUE(lora.peft().has_lora());
  EXPECT_EQ(lora.peft().lora().target_modules_size(), 4);
  EXPECT_EQ(lora.schedule().kind(), COSINE);
  const TrainConfig full = load_train_config(std::string(LLMFT_SOURCE_DIR) + "/examples/full_finetune_small.pbtxt");
  EXPECT_TRUE(full.peft().has_none());
  EXPECT_EQ(full.precision().compute_dtype(), FLOAT16);
}

}  // namespace
}  // namespace llmft::config
