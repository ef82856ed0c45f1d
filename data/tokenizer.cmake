# Tokenizers (Hugging Face tokenizer.json BPE, sentencepiece) and the dataset
# builder behind `llmft data build`. Included from data/CMakeLists.txt.
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)

# libsentencepiece runs in its own dlopen'ed module: it exports a private copy
# of protobuf-lite that clashes with the system libprotobuf (data/sentencepiece_shim.h).
add_library(llmft_sentencepiece_shim MODULE ${CMAKE_CURRENT_SOURCE_DIR}/sentencepiece_shim.cc)
target_include_directories(llmft_sentencepiece_shim PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(llmft_sentencepiece_shim PRIVATE PkgConfig::SENTENCEPIECE llmft_warnings)
set_target_properties(llmft_sentencepiece_shim PROPERTIES CXX_VISIBILITY_PRESET hidden PREFIX "lib")

add_library(llmft_tokenizer
  ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_unicode.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_pretokenizer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/bpe_tokenizer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/sentencepiece_tokenizer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/chat_template.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/chat_template_parser.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/chat_template_renderer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/chat_template_value.cc)
target_include_directories(llmft_tokenizer PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(llmft_tokenizer PUBLIC llmft_core nlohmann_json::nlohmann_json ${CMAKE_DL_LIBS}
  PRIVATE llmft_warnings)
target_compile_definitions(llmft_tokenizer PRIVATE
  LLMFT_SENTENCEPIECE_SHIM="$<TARGET_FILE:llmft_sentencepiece_shim>")
add_dependencies(llmft_tokenizer llmft_sentencepiece_shim)

if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/dataset_builder.cc)
  add_library(llmft_dataset_builder ${CMAKE_CURRENT_SOURCE_DIR}/dataset_builder.cc)
  target_link_libraries(llmft_dataset_builder PUBLIC llmft_tokenizer llmft_data PRIVATE llmft_warnings)
endif()
