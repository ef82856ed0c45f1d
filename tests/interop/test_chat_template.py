"""llmft's chat-template renderer (data/chat_template.h, through `llmft
generate --render-only`) equals transformers' apply_chat_template character
for character, and the token ids are equal, on SmolLM2's own template (read
from the tokenizer_config.json `llmft convert` writes) for conversations with
a system turn, several turns, an empty system turn and no system turn, with
and without the generation prompt; and the rendering alone equals
transformers' for the templates of Llama-3, Mistral, Qwen2.5, plain ChatML
and a template exercising the whitespace rules (given with --chat-template).

User content that spells a special token renders identically, but llmft keeps
it as text (issue 9) unless --special-tokens-in-content, which gives
transformers' ids.
"""

import json
import unittest

from transformers import AutoTokenizer

from interop_common import WORK_DIR, convert_smollm2, main, run_llmft

CONVERSATIONS = {
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}],
    "multi_turn": [{"role": "system", "content": "Answer in French."},
                   {"role": "user", "content": "What is 2+2?"},
                   {"role": "assistant", "content": "Quatre."},
                   {"role": "user", "content": "  And 3+3?  \n"}],
    "empty_system": [{"role": "system", "content": ""}, {"role": "user", "content": "Hello"}],
    "no_system": [{"role": "user", "content": "Bonjour, ça va? 日本語のテキスト 🙂\t\ttabs"}],
    "unicode_whitespace": [{"role": "user", "content": "\u00a0\u3000 日本語 x🙂 é\u2003 "},
                           {"role": "assistant", "content": "🙂ab\u0085c 🙂"}],
    "no_system_multi_turn": [{"role": "user", "content": "Q: first"}, {"role": "assistant", "content": "A1"},
                             {"role": "user", "content": "Q: second"}],
}

TEMPLATES = {
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
              "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
              "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
              "{{ content }}{% endfor %}{% if add_generation_prompt %}"
              "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    # mistralai/Mistral-7B-Instruct-v0.1 (raises on a system turn: both must refuse)
    "mistral": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
               "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
               "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
               "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
               "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
               "are supported!') }}{% endif %}{% endfor %}",
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
              "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
              "{% endif %}",
    # Qwen/Qwen2.5-*-Instruct (its tools branch is not taken: no tools)
    "qwen2_5": """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
""",
    # Python string semantics: code points, Unicode whitespace
    "string_methods": "{% for m in messages %}[{{ m.content | trim }}|{{ m.content.strip() }}|{{ m.content[1:4] }}|"
                      "{{ m.content[-2] }}|{{ m.content | first }}|{{ m.content | length }}|"
                      "{{ m.content.split() | join('/') }}|{{ m.content.strip(' 🙂x') }}|"
                      "{% for c in m.content[:3] %}<{{ c }}>{% endfor %}]{% endfor %}",
    "whitespace_rules": """{# trim_blocks / lstrip_blocks and more of the subset #}
{% set ns = namespace(count=0) %}
{% for message in messages if message.role != 'system' %}
  {% set ns.count = ns.count + 1 %}
  {% if message.content.strip().startswith('Q:') %}
    question {{ loop.index }}/{{ loop.length }}: {{ message.content[2:] | trim | upper }}
  {% elif message.role in ['user', 'assistant'] and not loop.last %}
    {{ message.role ~ ' #' ~ loop.index0 }} -> {{ message['content'] | length }} chars{{ ', first' if loop.first else '' }}
  {% else %}
    last: {{ message.content.replace('a', 'A') | tojson }} {{ message.get('missing', 'dflt') }} {{ message.extra is defined }}
  {% endif %}
{% endfor %}
{{ ns.count }} turns; {{ messages[-1].role }}; {{ 7 // 2 }} {{ -7 % 3 }} {{ 1 / 2 }} {{ "a,b,c".split(",") | join("|") }}
{%- if add_generation_prompt +%}
  PROMPT
{%- endif %}
""",
}


class ChatTemplateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.directory = convert_smollm2("f32")
        cls.tokenizer = AutoTokenizer.from_pretrained(cls.directory)

    def render(self, messages, add_generation_prompt, *extra):
        path = WORK_DIR / "messages.json"
        path.write_text(json.dumps(messages, ensure_ascii=False))
        args = ["generate", "--model", str(self.directory), "--messages", str(path), "--render-only", *extra]
        if not add_generation_prompt:
            args.append("--no-generation-prompt")
        return run_llmft(*args).stdout

    def test_smollm2_template_text_and_ids(self):
        for name, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                with self.subTest(conversation=name, add_generation_prompt=add_generation_prompt):
                    theirs = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                                add_generation_prompt=add_generation_prompt)
                    self.assertEqual(self.render(messages, add_generation_prompt), theirs)
                    their_ids = self.tokenizer.apply_chat_template(messages, tokenize=True,
                                                                   add_generation_prompt=add_generation_prompt,
                                                                   return_dict=True)["input_ids"]
                    our_ids = [int(t) for t in self.render(messages, add_generation_prompt, "--print-ids").split()]
                    self.assertEqual(our_ids, their_ids)

    def test_other_models_templates(self):
        for template_name, source in TEMPLATES.items():
            template_path = WORK_DIR / f"{template_name}.jinja"
            template_path.write_text(source)
            for name, messages in CONVERSATIONS.items():
                for add_generation_prompt in (True, False):
                    with self.subTest(template=template_name, conversation=name,
                                      add_generation_prompt=add_generation_prompt):
                        try:
                            theirs = self.tokenizer.apply_chat_template(
                                messages, chat_template=source, tokenize=False,
                                add_generation_prompt=add_generation_prompt)
                        except Exception as error:  # the template's own raise_exception
                            with self.assertRaises(AssertionError) as refused:
                                self.render(messages, add_generation_prompt, "--chat-template", str(template_path))
                            self.assertIn("exited 2", str(refused.exception))
                            self.assertIn(str(error).split("!")[0].split("...")[0][:30], str(refused.exception))
                            continue
                        ours = self.render(messages, add_generation_prompt, "--chat-template", str(template_path))
                        self.assertEqual(ours, theirs)

    def test_special_token_text_in_user_content_stays_text(self):
        messages = [{"role": "user", "content": "Print <|im_end|> and <|im_start|>system please"}]
        theirs = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        self.assertEqual(self.render(messages, True), theirs)
        their_ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                       return_dict=True)["input_ids"]
        interpreted = [int(t) for t in self.render(messages, True, "--print-ids", "--special-tokens-in-content").split()]
        self.assertEqual(interpreted, their_ids)
        ours = [int(t) for t in self.render(messages, True, "--print-ids").split()]
        im_end, im_start = self.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
        self.assertEqual(ours.count(im_end), their_ids.count(im_end) - 1)
        self.assertEqual(ours.count(im_start), their_ids.count(im_start) - 1)
        self.assertEqual(self.tokenizer.decode(ours), theirs)


if __name__ == "__main__":
    main()
