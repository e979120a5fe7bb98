"""MMBench's GPT answer matching (what lmms-eval's ``mmbench_en_dev`` does when its rules find no
option letter), through any OpenAI-compatible chat-completions endpoint. Off unless asked for
(``vtwctl run --judge-url URL [--judge-model M]``; the key is read from ``$OPENAI_API_KEY``).

The prompt, the retries and the fall-back are MMBench's (lmms-eval ``mmbench_evals.py``): the judge
is asked which option is most similar to the answer; its reply is read with ``can_infer``; after
three replies that name no option (or an endpoint that keeps failing) a random letter of A-E is
taken; here seeded by the sample id (lmms-eval seeds once per run, so its
draws depend on the order of the whole run).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from ..errors import VTWError
from .lmms_rules import can_infer

DEFAULT_MODEL = "gpt-4o-2024-11-20"  # lmms-eval's MODEL_VERSION default
FAILED = "Failed to obtain answer via API"

TEMPLATE = (
    "You are an AI assistant who will help me to match an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, and you need to find which option is most "
    "similar to the answer. If the meaning of all options are significantly different from the answer, output E. "
    "Your should output a single uppercase character in A, B, C, D (if they are valid options), and E. \n"
    "Example 1: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\nYour output: A\n"
    "Example 2: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: Spider\nYour output: E\n"
    "Example 3: \n"
    "Question: {}?\nOptions: {}\nAnswer: {}\nYour output: "
)


def option_str(choices: dict[str, str]) -> str:
    """MMBench's ``build_option_str`` over the leading run of options A-D."""
    s = "There are several options: \n"
    for c in "ABCD":
        if c not in choices:
            break
        s += f"{c}. {choices[c]}\n"
    return s


def endpoint(url: str) -> str:
    """``…/chat/completions`` for a base URL such as ``http://host:8000/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


@dataclass
class OpenAIJudge:
    url: str
    model: str = DEFAULT_MODEL
    api_key: str | None = None
    timeout: float = 30.0
    patience: int = 5  # attempts per question to the endpoint (MMBench: 5, 3 s apart)
    sleep: float = 3.0

    @property
    def name(self) -> str:
        return f"{self.model}@{self.url}"

    def check(self) -> None:
        """A bad URL is bad input: say so before any model loads."""
        if not self.url.startswith(("http://", "https://")):
            raise VTWError(f"--judge-url must be an http(s) URL of an OpenAI-compatible API, got {self.url!r}")

    def ask(self, prompt: str) -> str:
        payload = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                   "max_tokens": 256, "n": 1}
        key = self.api_key if self.api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        request = urllib.request.Request(endpoint(self.url), data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        for attempt in range(self.patience):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    reply = json.loads(resp.read().decode())["choices"][0]["message"]["content"].strip()
                if reply:
                    return reply
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError):
                pass
            if attempt + 1 < self.patience and self.sleep > 0:
                time.sleep(self.sleep)
        return FAILED

    def match(self, sample, answer: str, choices: dict[str, str]) -> str:
        """The option letter the judge matches ``answer`` to (MMBench's ``extract_answer_from_item``)."""
        prompt = TEMPLATE.format(sample.meta.get("question", ""), option_str(choices), answer)
        for _ in range(3):
            reply = self.ask(prompt)
            if FAILED in reply:
                continue
            found = can_infer(reply, choices)
            if found:
                return found
        rng = random.Random(int(hashlib.md5(str(sample.id).encode()).hexdigest(), 16) % 2**32)
        return rng.choice("ABCDE")  # MMBench: one of the A-D columns or E
