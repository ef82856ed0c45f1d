// The quickstart's task: structured extraction with a fixed answer format.
//
//   user:      Extract the record as JSON: At 34, Alice Martin calls Lyon home.
//   assistant: {"name": "Alice Martin", "age": 34, "city": "Lyon"}
//
// SmolLM2-135M-Instruct already copies names and numbers well; what it lacks
// is this exact format (key names, key order, spacing, the age as a number,
// nothing before or after), so its held-out exact match is near 0% and a short
// LoRA fine-tune can learn it. The held-out split uses first names, last names
// and cities that never occur in the training split, so a correct answer shows
// the format was learned rather than the records memorised.
//
//   quickstart_task make --out DIR [--train N] [--heldout N] [--seed S]
//       DIR/train.jsonl:   {"messages": [user, assistant]} (OpenAI messages)
//       DIR/heldout.jsonl: {"messages": [user], "expected": "<the assistant answer>"}
//   quickstart_task compare --before B.jsonl --after A.jsonl [--count N]
//       prints N held-out prompts with the expected answer and the generations
//       before and after fine-tuning side by side (files from
//       `llmft generate --batch ... --batch-output`).
//   quickstart_task prompt FILE.jsonl N
//       prints the last user message of line N (1-based) of a held-out file,
//       for `llmft generate --chat "$(quickstart_task prompt ...)"`.
//
// Deterministic: the same seed gives byte-identical files on every platform
// (SplitMix64 draws and our own index mapping; the standard library's
// distributions are implementation-defined, so they are not used).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace {

// SplitMix64 (Steele, Lea and Flood 2014; the seeding generator of
// xoshiro256**): a full-period 64-bit generator with good mixing.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // In [0, n); the modulo bias, below n / 2^64, is irrelevant for lists of a
  // few dozen entries.
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }

 private:
  uint64_t state_;
};

// Each list is split: the last kHeldOutPerList entries appear only in the
// held-out split.
constexpr size_t kHeldOutPerList = 12;

constexpr std::string_view kFirstNames[] = {
    "Alice", "Bruno",  "Chloe",  "Diego",   "Emma",   "Farid",  "Grace",   "Hugo",  "Ines",  "Jonas",
    "Keiko", "Liam",   "Maya",   "Nikolai", "Olivia", "Pablo",  "Quentin", "Rosa",  "Samir", "Tara",
    "Umar",  "Vera",   "Wei",    "Xavier",  "Yara",   "Zoe",    "Amara",   "Boris", "Clara", "Dmitri",
    "Elena", "Felix",  "Greta",  "Hassan",  "Ingrid", "Javier", "Kofi",    "Lena",  "Mateo", "Nadia",
    "Oscar", "Priya",  "Rafael", "Sofia",   "Tomas",  "Ursula", "Viktor",  "Wanda", "Yusuf", "Zara",
    "Aiko",  "Bianca", "Carlos", "Daria",   "Emil",   "Fatima", "Gustav",  "Hana",  "Ivan",  "Julia"};
constexpr std::string_view kLastNames[] = {
    "Martin",   "Rossi",     "Nakamura", "Okafor",    "Schmidt",   "Garcia", "Kowalski",  "Haddad",  "Larsen",
    "Dubois",   "Novak",     "Silva",    "Fischer",   "Moreau",    "Tanaka", "Andersen",  "Petrov",  "Mensah",
    "Costa",    "Lindqvist", "Ferreira", "Yilmaz",    "Horvat",    "Jensen", "Nguyen",    "Popescu", "Bianchi",
    "Murphy",   "Svoboda",   "Weber",    "Alvarez",   "Bergstrom", "Chen",   "Dimitriou", "Eriksen", "Fontaine",
    "Gonzalez", "Hoffmann",  "Ivanova",  "Jovanovic", "Kim",       "Lopez",  "Mueller",   "Nilsson", "Oliveira",
    "Park",     "Quinn",     "Richter",  "Santos",    "Takahashi", "Ueda",   "Varga",     "Walsh",   "Xu",
    "Yamada",   "Zielinski", "Abebe",    "Brennan",   "Castillo",  "Devlin"};
constexpr std::string_view kCities[] = {
    "Lyon",    "Porto",   "Osaka",   "Lagos",   "Munich", "Seville",  "Krakow",   "Beirut",   "Bergen",  "Nantes",
    "Brno",    "Recife",  "Leipzig", "Lille",   "Kyoto",  "Aarhus",   "Kazan",    "Accra",    "Braga",   "Uppsala",
    "Coimbra", "Izmir",   "Zagreb",  "Odense",  "Hanoi",  "Cluj",     "Turin",    "Cork",     "Ostrava", "Bremen",
    "Malaga",  "Tampere", "Taipei",  "Patras",  "Gdansk", "Bordeaux", "Valencia", "Dresden",  "Riga",    "Split",
    "Sapporo", "Toledo",  "Graz",    "Geneva",  "Dakar",  "Hobart",   "Quito",    "Perth",    "Salta",   "Tbilisi",
    "Kigali",  "Nagoya",  "Bilbao",  "Antwerp", "Lublin", "Pune",     "Cusco",    "Adelaide", "Galway",  "Tromso"};

// Sentences stating a person's name {n}, current age {a} and home city {c}, in
// varied orders, so the answer is a reading of the sentence, not a position.
constexpr std::string_view kSentences[] = {
    "{n} is {a} years old and lives in {c}.",
    "{n}, {a}, lives in {c}.",
    "Meet {n}, a {a}-year-old from {c}.",
    "At {a}, {n} calls {c} home.",
    "{c} resident {n} is {a}.",
    "{n} ({a}) lives in {c}.",
    "Our new member is {n} from {c}, aged {a}.",
    "Name: {n}. Age: {a}. Home town: {c}.",
    "In {c}, {n} turned {a} this spring.",
    "The {a}-year-old {n} lives and works in {c}.",
    "Hello! I'm {n}, I'm {a} and I live in {c}.",
    "{n} lives in {c} and is {a} years old.",
};

constexpr std::string_view kInstruction = "Extract the record as JSON: ";

struct Record {
  std::string prompt, answer;
};

std::string replace_all(std::string text, std::string_view key, std::string_view value) {
  for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + value.size()))
    text.replace(at, key.size(), value);
  return text;
}

template <size_t N>
std::string_view pick(SplitMix64& rng, const std::string_view (&list)[N], bool held_out) {
  static_assert(N > 2 * kHeldOutPerList);
  const size_t train_count = N - kHeldOutPerList;
  return held_out ? list[train_count + rng.below(kHeldOutPerList)] : list[rng.below(train_count)];
}

Record make_record(SplitMix64& rng, bool held_out) {
  const std::string name =
      std::string(pick(rng, kFirstNames, held_out)) + " " + std::string(pick(rng, kLastNames, held_out));
  const int age = 18 + static_cast<int>(rng.below(72));  // 18..89
  const std::string_view city = pick(rng, kCities, held_out);
  const std::string_view sentence = kSentences[rng.below(std::size(kSentences))];
  std::string text = replace_all(std::string(sentence), "{n}", name);
  text = replace_all(std::move(text), "{a}", std::to_string(age));
  text = replace_all(std::move(text), "{c}", city);
  // The fixed format: these keys in this order, ", " and ": " separators, the
  // age as a JSON number (what json.dumps writes for such a dict).
  const std::string answer =
      "{\"name\": \"" + name + "\", \"age\": " + std::to_string(age) + ", \"city\": \"" + std::string(city) + "\"}";
  return {std::string(kInstruction) + text, answer};
}

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "quickstart_task: %s\n", message.c_str());
  std::exit(2);
}

int64_t parse_count(std::string_view option, const std::string& text) {
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < 0)
    fail(std::string(option) + ": expected a non-negative integer, found '" + text + "'");
  return value;
}

void write_lines(const std::filesystem::path& path, const std::vector<nlohmann::ordered_json>& lines) {
  std::ofstream out(path, std::ios::binary);
  if (!out) fail(path.string() + ": cannot open for writing");
  for (const auto& line : lines) out << line.dump() << '\n';
  if (!out.flush()) fail(path.string() + ": write failed");
}

int make(std::span<char*> args) {
  std::string out_dir;
  int64_t train_count = 2000, heldout_count = 50;
  uint64_t seed = 1;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) fail(std::string(arg) + " needs a value");
      return args[++i];
    };
    if (arg == "--out")
      out_dir = value();
    else if (arg == "--train")
      train_count = parse_count(arg, value());
    else if (arg == "--heldout")
      heldout_count = parse_count(arg, value());
    else if (arg == "--seed")
      seed = static_cast<uint64_t>(parse_count(arg, value()));
    else
      fail("make: unexpected argument '" + std::string(arg) + "'");
  }
  if (out_dir.empty()) fail("make: --out DIR is required");
  std::filesystem::create_directories(out_dir);

  // Separate streams so the held-out set does not change with --train.
  SplitMix64 train_rng(seed * 2 + 0), heldout_rng(seed * 2 + 1);
  std::vector<nlohmann::ordered_json> train, heldout;
  for (int64_t i = 0; i < train_count; ++i) {
    const Record record = make_record(train_rng, /*held_out=*/false);
    train.push_back(
        {{"messages",
          {{{"role", "user"}, {"content", record.prompt}}, {{"role", "assistant"}, {"content", record.answer}}}}});
  }
  for (int64_t i = 0; i < heldout_count; ++i) {
    const Record record = make_record(heldout_rng, /*held_out=*/true);
    heldout.push_back({{"messages", {{{"role", "user"}, {"content", record.prompt}}}}, {"expected", record.answer}});
  }
  write_lines(std::filesystem::path(out_dir) / "train.jsonl", train);
  write_lines(std::filesystem::path(out_dir) / "heldout.jsonl", heldout);
  std::printf("quickstart_task: wrote %lld training and %lld held-out conversations to %s (seed %llu)\n",
              static_cast<long long>(train_count), static_cast<long long>(heldout_count), out_dir.c_str(),
              static_cast<unsigned long long>(seed));
  return 0;
}

std::vector<nlohmann::json> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path + ": cannot open");
  std::vector<nlohmann::json> lines;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    nlohmann::json json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object())
      fail(path + ": line " + std::to_string(number) + ": expected a JSON object");
    for (const char* field : {"prompt", "expected", "generated"})
      if (!json.contains(field) || !json[field].is_string())
        fail(path + ": line " + std::to_string(number) + ": expected a string field \"" + field + "\"");
    lines.push_back(std::move(json));
  }
  return lines;
}

int prompt(std::span<char*> args) {
  if (args.size() != 2) fail("prompt: expected FILE.jsonl N");
  const std::string path = args[0];
  const int64_t wanted = parse_count("prompt: N", args[1]);
  std::ifstream in(path);
  if (!in) fail(path + ": cannot open");
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (number != wanted) continue;
    const nlohmann::json json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (json.is_object() && json.contains("messages") && json["messages"].is_array())
      for (auto it = json["messages"].rbegin(); it != json["messages"].rend(); ++it)
        if (it->is_object() && it->value("role", "") == "user" && it->contains("content") &&
            (*it)["content"].is_string()) {
          std::printf("%s\n", (*it)["content"].get<std::string>().c_str());
          return 0;
        }
    fail(path + ": line " + std::to_string(number) + ": expected {\"messages\": [...]} with a user message");
  }
  fail(path + ": has no line " + std::to_string(wanted));
}

// The generations of one held-out prompt, before and after, one block each.
int compare(std::span<char*> args) {
  std::string before_path, after_path;
  int64_t count = 5;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) fail(std::string(arg) + " needs a value");
      return args[++i];
    };
    if (arg == "--before")
      before_path = value();
    else if (arg == "--after")
      after_path = value();
    else if (arg == "--count")
      count = parse_count(arg, value());
    else
      fail("compare: unexpected argument '" + std::string(arg) + "'");
  }
  if (before_path.empty() || after_path.empty()) fail("compare: --before FILE and --after FILE are required");
  const std::vector<nlohmann::json> before = read_lines(before_path), after = read_lines(after_path);
  if (before.size() != after.size())
    fail(before_path + " has " + std::to_string(before.size()) + " generations but " + after_path + " has " +
         std::to_string(after.size()));
  auto one_line = [](std::string text) {  // a multi-line generation shown on one line
    text = replace_all(std::move(text), "\n", "\\n");
    return text.size() > 110 ? text.substr(0, 107) + "..." : text;
  };
  for (size_t i = 0; i < before.size() && static_cast<int64_t>(i) < count; ++i) {
    if (before[i]["prompt"] != after[i]["prompt"])
      fail(before_path + " and " + after_path + ": line " + std::to_string(i + 1) + " is not the same prompt");
    auto mark = [](const nlohmann::json& line) { return line.value("exact", false) ? "ok  " : "miss"; };
    std::printf("prompt:   %s\n", one_line(before[i]["prompt"].get<std::string>()).c_str());
    std::printf("expected: %s\n", one_line(before[i]["expected"].get<std::string>()).c_str());
    std::printf("  before [%s] %s\n", mark(before[i]), one_line(before[i]["generated"].get<std::string>()).c_str());
    std::printf("  after  [%s] %s\n\n", mark(after[i]), one_line(after[i]["generated"].get<std::string>()).c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string_view usage =
      "usage: quickstart_task make --out DIR [--train N] [--heldout N] [--seed S]\n"
      "       quickstart_task compare --before B.jsonl --after A.jsonl [--count N]\n"
      "       quickstart_task prompt FILE.jsonl N\n";
  if (argc < 2) {
    std::fputs(usage.data(), stderr);
    return 2;
  }
  const std::string_view verb = argv[1];
  std::span<char*> rest(argv + 2, static_cast<size_t>(argc - 2));
  if (verb == "make") return make(rest);
  if (verb == "compare") return compare(rest);
  if (verb == "prompt") return prompt(rest);
  if (verb == "--help" || verb == "-h") {
    std::fputs(usage.data(), stdout);
    return 0;
  }
  fail("unknown verb '" + std::string(verb) + "'; expected make, compare or prompt");
}
