# Tokenizers (Hugging Face tokenizer.json BPE, sentencepiece) and the dataset
# builder behind `llmft data build`. Included from data/CMakeLists.txt.
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)

add_library(llmft_tokenizer
  ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_unicode.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_pretokenizer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/bpe_tokenizer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/sentencepiece_tokenizer.cc)
target_include_directories(llmft_tokenizer PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(llmft_tokenizer
  PUBLIC llmft_core nlohmann_json::nlohmann_json
  PRIVATE PkgConfig::SENTENCEPIECE llmft_warnings)

if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/dataset_builder.cc)
  add_library(llmft_dataset_builder ${CMAKE_CURRENT_SOURCE_DIR}/dataset_builder.cc)
  target_link_libraries(llmft_dataset_builder PUBLIC llmft_tokenizer llmft_data PRIVATE llmft_warnings)
endif()
