"""`llmft data build` on conversations (issue 9) against transformers, on the
real SmolLM2 directory `llmft convert` writes.

For conversations with a system turn, several turns, an empty system turn, no
system turn (the template then writes its default one), non-ASCII text and an
answer that also appears in the user turn:
1. the shards, read by TensorFlow (tf.data.TFRecordDataset and
   tf.io.parse_single_example), hold input_ids equal to transformers'
   apply_chat_template(tokenize=True) and to tokenizer(apply_chat_template(
   tokenize=False), add_special_tokens=False); decoding them gives
   apply_chat_template's text character for character;
2. the loss mask is exactly the assistant contents and the <|im_end|> closing
   each: the reference is made here from transformers' offset mapping and the
   character ranges of each turn in the ChatML layout SmolLM2's template writes
   ('<|im_start|>' + role + '\\n' + content + '<|im_end|>' + '\\n', checked
   against apply_chat_template first), and the trained runs decode to
   content + '<|im_end|>'; --train-on last keeps only the final turn;
3. ShareGPT and Alpaca records give the ids transformers gives their mapped
   messages (human -> user, gpt -> assistant; instruction + '\\n\\n' + input).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before the import: silences TF's info lines

import unittest

import tensorflow as tf
from transformers import AutoTokenizer

from interop_common import WORK_DIR, convert_smollm2, main, run_llmft

IM_END = "<|im_end|>"

CONVERSATIONS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello."}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "Quatre."}, {"role": "user", "content": "  And 3+3?  \n"},
     {"role": "assistant", "content": "Six, évidemment. 🙂"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Bonjour, ça va? 日本語のテキスト\t\ttabs"}],
    [{"role": "user", "content": "Q: first"}, {"role": "assistant", "content": "A1"},
     {"role": "user", "content": "Q: second"}, {"role": "assistant", "content": " spaced answer \n"}],
    # The answer is word for word in the user turn and in an earlier answer.
    [{"role": "user", "content": "Reply with exactly: Sure thing"}, {"role": "assistant", "content": "Sure thing"},
     {"role": "user", "content": "Sure thing"}, {"role": "assistant", "content": "Sure thing"}],
]


def read_records(path):
    """(input_ids, loss_mask) of every record of a TFRecord file, read by TensorFlow."""
    features = {"input_ids": tf.io.VarLenFeature(tf.int64), "loss_mask": tf.io.VarLenFeature(tf.int64)}
    records = []
    for serialized in tf.data.TFRecordDataset(str(path)):
        parsed = tf.io.parse_single_example(serialized, features)
        records.append(([int(x) for x in tf.sparse.to_dense(parsed["input_ids"]).numpy()],
                        [int(x) for x in tf.sparse.to_dense(parsed["loss_mask"]).numpy()]))
    return records


class ChatDataTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.directory = convert_smollm2("f32")
        cls.tokenizer = AutoTokenizer.from_pretrained(cls.directory)

    def build(self, name, records, *extra):
        path = WORK_DIR / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        prefix = WORK_DIR / name
        run_llmft("data", "build", "--input", str(path), "--tokenizer", str(self.directory), "--output", str(prefix),
                  *extra)
        return read_records(f"{prefix}-00000-of-00001.tfrecord")

    def chatml_ranges(self, messages, text):
        """Character ranges [begin, end) of each assistant content + <|im_end|> in `text`, from the layout of
        SmolLM2's template (checked to give `text` exactly)."""
        if messages[0]["role"] != "system":
            messages = [{"role": "system",
                         "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"}] + messages
        layout, ranges = "", []
        for message in messages:
            layout += "<|im_start|>" + message["role"] + "\n"
            if message["role"] == "assistant":
                ranges.append((len(layout), len(layout) + len(message["content"]) + len(IM_END)))
            layout += message["content"] + IM_END + "\n"
        self.assertEqual(layout, text, "SmolLM2's template is not the ChatML layout this reference assumes")
        return ranges

    def expected_mask(self, messages, text, last_only=False):
        ranges = self.chatml_ranges(messages, text)
        if last_only:
            ranges = ranges[-1:]
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        # A token is trained when any of its characters is inside a range (data/dataset_builder.h).
        return [int(any(start < e and end > b for b, e in ranges)) for start, end in encoding["offset_mapping"]]

    def test_messages_ids_text_and_mask(self):
        records = self.build("messages", [{"messages": m} for m in CONVERSATIONS], "--format", "messages")
        last = self.build("messages_last", [{"messages": m} for m in CONVERSATIONS], "--train-on", "last")
        self.assertEqual(len(records), len(CONVERSATIONS))
        for index, messages in enumerate(CONVERSATIONS):
            with self.subTest(conversation=index):
                ids, mask = records[index]
                text = self.tokenizer.apply_chat_template(messages, tokenize=False)
                their_ids = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
                self.assertEqual(ids, their_ids)
                self.assertEqual(ids, self.tokenizer(text, add_special_tokens=False)["input_ids"])
                self.assertEqual(self.tokenizer.decode(ids), text)
                self.assertEqual(mask, self.expected_mask(messages, text))
                # Trained runs, decoded: each assistant content with its <|im_end|>, nothing else.
                runs, run = [], []
                for token, trained in zip(ids + [None], mask + [0]):
                    if trained:
                        run.append(token)
                    elif run:
                        runs.append(self.tokenizer.decode(run))
                        run = []
                assistant = [m["content"] + IM_END for m in messages if m["role"] == "assistant"]
                self.assertEqual(runs, assistant)

                last_ids, last_mask = last[index]
                self.assertEqual(last_ids, ids)
                self.assertEqual(last_mask, self.expected_mask(messages, text, last_only=True))

    def test_sharegpt_and_alpaca_map_to_messages(self):
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        sharegpt = [{"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in c]}
                    for c in CONVERSATIONS]
        for (ids, mask), messages in zip(self.build("sharegpt", sharegpt), CONVERSATIONS):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            self.assertEqual(ids, self.tokenizer(text, add_special_tokens=False)["input_ids"])
            self.assertEqual(mask, self.expected_mask(messages, text))

        alpaca = [{"instruction": "Translate to French.", "input": "good morning", "output": "Bonjour"},
                  {"instruction": "Name a colour.", "input": "", "output": "Blue"}]
        for (ids, mask), record in zip(self.build("alpaca", alpaca), alpaca):
            user = record["instruction"] + ("\n\n" + record["input"] if record["input"] else "")
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            self.assertEqual(ids, self.tokenizer(text, add_special_tokens=False)["input_ids"])
            self.assertEqual(mask, self.expected_mask(messages, text))


if __name__ == "__main__":
    main()
