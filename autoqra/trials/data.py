"""Tasks: what a trial trains on and how it is scored. No downloads: the data ships in wheels or is generated.

- ``news`` (default): causal-LM domain adaptation on the Lee news corpus shipped in gensim 4.4.0's
  wheel (``gensim/test/test_data/lee_background.cor``, 300 articles; located, never imported).
  Seeded split by article; metric: held-out token loss (perplexity reported too).
- ``arith``: multi-step arithmetic word problems generated from a seed, one numeric answer each;
  disjoint train/eval; prompt tokens masked out of the labels; metric: exact match by greedy decoding.
- ``extract``: instruction following where the adapter must learn new mappings: a sentence about an
  order (five templates) to a fixed-format record (``name=...; sku=...; count=...; due=...; city=...``):
  the count in words or digits -> digits, the item -> its stock code from a fixed table, the order day
  and the stated delay -> the delivery weekday. Generated from a seed; disjoint train/eval; prompt
  masked; metric: held-out loss on the record tokens.
- ``codebook``: the adapter must store many new facts: an 8-word window of news text is rewritten with a
  fixed codebook that replaces the corpus's 128 most frequent words by invented code words (``the`` ->
  ``toto``), copying every other word. Each code word is its own fact, seen from hundreds of times
  (``the``) to a couple of times per `final` run (the rarest); windows of held-out articles; prompt
  masked; metric: held-out loss on the rewritten window. Measured at `final`: a trial seed moves every
  plan alike (~0.07), so plans are compared at the same seeds (``docs/results-memory-v1.md``, paired column).
- a ``.jsonl`` path: records with ``text`` (language modelling) or Alpaca-style
  ``instruction``/``input``/``output`` (prompt masked); metric: held-out loss.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autoqra.errors import AutoQRAError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IGNORE = -100
EVAL_FRACTION = 0.1
TASK_NAMES = ("news", "arith", "extract", "codebook")


class TaskError(AutoQRAError):
    """A task name or data file that cannot be used."""


@dataclass(frozen=True)
class Prompted:
    """A prompt and its target answer (for generation-scored tasks)."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class TaskData:
    """Tokenized splits: rows of ``seq_len`` token ids with labels (IGNORE where not scored)."""

    train_ids: torch.Tensor
    train_labels: torch.Tensor
    eval_ids: torch.Tensor
    eval_labels: torch.Tensor
    generation: tuple[Prompted, ...]  # held-out prompts scored by exact match; empty for LM tasks
    metric: Literal["loss", "accuracy"]


def _gensim_data(name: str) -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("task 'news' needs the data in gensim==4.4.0 (pip install --no-deps gensim==4.4.0; "
                        "`make setup` does this)")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / name
    if not path.is_file():
        raise TaskError(f"gensim's test data has no {name}; install gensim==4.4.0")
    return path


def news_articles() -> list[str]:
    text = _gensim_data("lee_background.cor").read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena")
_ITEMS = ("apples", "books", "coins", "stamps", "marbles", "pencils", "cards", "shells")


def arith_problem(rng: random.Random) -> Prompted:
    """One multi-step word problem with a single integer answer."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(3, 60), rng.randint(2, 40)
    c = rng.randint(1, a + b)
    k = rng.randint(2, 4)
    kind = rng.randrange(3)
    if kind == 0:
        q = f"{name} has {a} {item}, gets {b} more and gives away {c}. How many {item} does {name} have now?"
        ans = a + b - c
    elif kind == 1:
        q = f"{name} has {a} {item}, then buys {k} bags of {b} {item} each. How many {item} are there in total?"
        ans = a + k * b
    else:
        q = (f"{name} had {a} {item} and {b} more arrived; then {name} lost {c}, "
             f"and finally the pile was multiplied by {k}. How many {item} are there?")
        ans = (a + b - c) * k
    return Prompted(prompt=f"Question: {q}\nAnswer:", answer=f" {ans}")


def arith_split(seed: int, n_train: int, n_eval: int) -> tuple[list[Prompted], list[Prompted]]:
    """Disjoint train/eval problems; the eval set depends on the seed only, not on n_train."""
    return _generated_split("arith", arith_problem, seed, n_train, n_eval)


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_CITIES = ("Oslo", "Lima", "Accra", "Hanoi", "Quito", "Porto", "Tunis", "Riga", "Perth", "Cusco")
_UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# Stock codes: an arbitrary item -> code table the base model cannot know; the adapter has to store it.
_SKUS = {"apples": "QX4", "books": "LM7", "coins": "ZR2", "stamps": "KT9", "marbles": "WB3", "pencils": "HN6",
         "cards": "PV1", "shells": "DJ8", "lamps": "XC5", "kites": "RF0", "mugs": "GY3", "ropes": "TS7"}
_DELAYS = ("the same day", "a day later", "two days later", "three days later", "four days later",
           "five days later", "six days later")
_TEMPLATES = (
    "On {day}, {name} ordered {count} {item} in {city}, delivered {delay}.",
    "{name} ordered {count} {item} in {city} on {day}; they came {delay}.",
    "In {city}, {count} {item} were ordered by {name} on {day} and arrived {delay}.",
    "{count} {item} is what {name} ordered in {city} on {day}, shipped {delay}.",
    "It was {day} when {name}, visiting {city}, ordered {count} {item}; delivery came {delay}.",
)


def number_words(n: int) -> str:
    """0..99 in English words (``forty-seven``)."""
    if n < 20:
        return _UNITS[n]
    tens, unit = divmod(n, 10)
    return _TENS[tens] + (f"-{_UNITS[unit]}" if unit else "")


def extract_problem(rng: random.Random) -> Prompted:
    """One order sentence and its record. Three fields are not copied: the count is in words half the
    time (the record has digits), the item becomes its stock code from a fixed table, and the delivery
    day is the order day moved by the stated delay (weekday arithmetic)."""
    name, item, day, city = rng.choice(_NAMES), rng.choice(tuple(_SKUS)), rng.randrange(7), rng.choice(_CITIES)
    count, delay = rng.randint(2, 99), rng.randrange(len(_DELAYS))
    spoken = number_words(count) if rng.random() < 0.5 else str(count)
    sentence = rng.choice(_TEMPLATES).format(name=name, item=item, day=_DAYS[day], city=city, count=spoken,
                                             delay=_DELAYS[delay])
    return Prompted(prompt=f"Sentence: {sentence}\nRecord:",
                    answer=f" name={name}; sku={_SKUS[item]}; count={count}; due={_DAYS[(day + delay) % 7]}; "
                           f"city={city}")


def extract_split(seed: int, n_train: int, n_eval: int) -> tuple[list[Prompted], list[Prompted]]:
    """Disjoint train/eval items; the eval set depends on the seed only, not on n_train."""
    return _generated_split("extract", extract_problem, seed, n_train, n_eval)


CODEBOOK_SIZE = 128  # the most frequent words of the news corpus (49% of its words)
CODEBOOK_WINDOW = 8  # words per record: prompt and answer fit the default space's 64-token rows
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_EDGES = re.compile(r"^(\W*)(.*?)(\W*)$")


def _word_core(word: str) -> tuple[str, str, str]:
    """(leading punctuation, the word, trailing punctuation)."""
    m = _EDGES.match(word)
    assert m is not None  # the pattern matches every string
    return m.group(1), m.group(2), m.group(3)


def codebook() -> dict[str, str]:
    """The ``codebook`` task's fixed table: the news corpus's ``CODEBOOK_SIZE`` most frequent lowercase
    words -> invented two-syllable code words (seeded; none is a word of the corpus, none repeats)."""
    from collections import Counter

    counts = Counter(core.lower() for doc in news_articles() for word in doc.split()
                     if (core := _word_core(word)[1]).isalpha())
    vocab, rng, table = set(counts), random.Random("codebook"), {}
    for word, _ in counts.most_common(CODEBOOK_SIZE):  # ties keep corpus order: deterministic
        code = word
        while code in vocab or code in table.values():
            code = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(2))
        table[word] = code
    return table


def encode_words(text: str, table: dict[str, str]) -> str:
    """``text`` with every word of ``table`` (matched in lowercase, punctuation kept) replaced by its code."""
    out = []
    for word in text.split():
        lead, core, trail = _word_core(word)
        code = table.get(core.lower())
        out.append(lead + code + trail if code else word)
    return " ".join(out)


def codebook_split(seed: int, n_train: int, n_eval: int) -> tuple[list[Prompted], list[Prompted]]:
    """Windows of training articles and of held-out articles (the news split of ``seed``), each shuffled
    by the seed; the eval set depends on the seed only, not on n_train."""
    table = codebook()
    train_docs, eval_docs = _split_docs(news_articles(), seed)

    def windows(docs: list[str], tag: str) -> list[Prompted]:
        items = []
        for doc in docs:
            words = doc.split()
            for i in range(0, len(words) - CODEBOOK_WINDOW + 1, CODEBOOK_WINDOW):
                text = " ".join(words[i:i + CODEBOOK_WINDOW])
                items.append(Prompted(prompt=f"Encode: {text}\nCode:", answer=f" {encode_words(text, table)}"))
        random.Random(f"codebook-{tag}-{seed}").shuffle(items)
        return items

    train, evals = windows(train_docs, "train"), windows(eval_docs, "eval")
    if n_eval > len(evals):
        raise TaskError(f"task codebook has {len(evals)} held-out windows; {n_eval} were asked for")
    return [train[i % len(train)] for i in range(n_train)], evals[:n_eval]


def _generated_split(kind: str, make: Any, seed: int, n_train: int, n_eval: int) -> tuple[list[Prompted], list[Prompted]]:
    eval_rng = random.Random(f"{kind}-eval-{seed}")
    evals: list[Prompted] = []
    seen: set[str] = set()
    while len(evals) < n_eval:
        p = make(eval_rng)
        if p.prompt not in seen:
            seen.add(p.prompt)
            evals.append(p)
    train_rng = random.Random(f"{kind}-train-{seed}")
    train: list[Prompted] = []
    while len(train) < n_train:
        p = make(train_rng)
        if p.prompt not in seen:
            seen.add(p.prompt)
            train.append(p)
    return train, evals


def _lm_rows(docs: list[str], tokenizer: Any, seq_len: int) -> list[list[int]]:
    """Concatenate documents (EOS between) and cut into rows of seq_len tokens."""
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


def _prompted_rows(items: list[Prompted], tokenizer: Any, seq_len: int) -> tuple[list[list[int]], list[list[int]]]:
    ids_rows, label_rows = [], []
    cut = 0
    for item in items:
        p = tokenizer(item.prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(item.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        cut += len(p) + len(a) > seq_len
        ids = (p + a)[:seq_len]
        labels = ([IGNORE] * len(p) + a)[:seq_len]
        pad = seq_len - len(ids)
        ids_rows.append(ids + [tokenizer.pad_token_id] * pad)
        label_rows.append(labels + [IGNORE] * pad)
    if cut:
        log.warning(f"{cut} of {len(items)} prompted examples are longer than seq_len {seq_len}: their answers are "
                    "cut (scored on what is left)")
    return ids_rows, label_rows


def _tensor(rows: list[list[int]]) -> torch.Tensor:
    import torch

    return torch.tensor(rows, dtype=torch.long) if rows else torch.empty((0, 0), dtype=torch.long)


def _split_docs(docs: list[Any], seed: int) -> tuple[list[Any], list[Any]]:
    order = list(range(len(docs)))
    random.Random(f"split-{seed}").shuffle(order)
    n_eval = max(1, int(round(EVAL_FRACTION * len(docs))))
    eval_idx = set(order[:n_eval])
    return [d for i, d in enumerate(docs) if i not in eval_idx], [d for i, d in enumerate(docs) if i in eval_idx]


def build_task(task: str, tokenizer: Any, seq_len: int, eval_examples: int, train_rows: int,
               data_seed: int = 0) -> TaskData:
    """Tokenized data of ``task`` for one fidelity. ``data_seed`` fixes the splits (not the trial seed)."""
    if task == "news":
        train_docs, eval_docs = _split_docs(news_articles(), data_seed)
        return _lm_task(train_docs, eval_docs, tokenizer, seq_len, eval_examples)
    if task == "arith":
        train, evals = arith_split(data_seed, train_rows, eval_examples)
        ti, tl = _prompted_rows(train, tokenizer, seq_len)
        ei, el = _prompted_rows(evals, tokenizer, seq_len)
        return TaskData(_tensor(ti), _tensor(tl), _tensor(ei), _tensor(el), tuple(evals), "accuracy")
    if task in ("extract", "codebook"):
        split = extract_split if task == "extract" else codebook_split
        train, evals = split(data_seed, train_rows, eval_examples)
        ti, tl = _prompted_rows(train, tokenizer, seq_len)
        ei, el = _prompted_rows(evals, tokenizer, seq_len)
        return TaskData(_tensor(ti), _tensor(tl), _tensor(ei), _tensor(el), (), "loss")
    path = Path(task).expanduser()
    if path.suffix == ".jsonl":
        return _jsonl_task(path, tokenizer, seq_len, eval_examples, data_seed)
    raise TaskError(f"unknown task {task!r}: use {', '.join(TASK_NAMES)} or a path to a .jsonl file")


def _lm_task(train_docs: list[str], eval_docs: list[str], tokenizer: Any, seq_len: int, eval_examples: int) -> TaskData:
    train = _lm_rows(train_docs, tokenizer, seq_len)
    evals = _lm_rows(eval_docs, tokenizer, seq_len)[:eval_examples]
    if not train or not evals:
        raise TaskError(f"not enough text for rows of {seq_len} tokens (train {len(train)}, eval {len(evals)})")
    ti, ei = _tensor(train), _tensor(evals)
    return TaskData(ti, ti.clone(), ei, ei.clone(), (), "loss")


def check_task(task: str) -> None:
    """Raise TaskError unless ``task`` can be built: a known name whose data is installed, or a
    readable ``.jsonl`` file with enough well-formed records. Needs no tokenizer (cheap, before any
    model load)."""
    if task in ("news", "codebook"):
        _gensim_data("lee_background.cor")
        return
    if task in ("arith", "extract"):
        return
    path = Path(task).expanduser()
    if path.suffix != ".jsonl":
        raise TaskError(f"unknown task {task!r}: use {', '.join(TASK_NAMES)} or a path to a .jsonl file")
    read_jsonl_task(path)


def task_fingerprint(task: str) -> str:
    """A short digest of the data a task trains and scores on, for cache keys: the corpus file's bytes
    (``news``, a ``.jsonl`` file), or the first generated examples (``arith``, ``extract``), so that a
    change of a generator or a file invalidates what was measured on the old data."""
    import hashlib

    if task == "news":
        data = _gensim_data("lee_background.cor").read_bytes()
    elif task == "codebook":
        data = _gensim_data("lee_background.cor").read_bytes() + json.dumps(
            [CODEBOOK_WINDOW, sorted(codebook().items())]).encode()
    elif task in ("arith", "extract"):
        train, evals = _generated_split(task, arith_problem if task == "arith" else extract_problem, 0, 16, 16)
        data = json.dumps([[p.prompt, p.answer] for p in train + evals]).encode()
    else:
        path = Path(task).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TaskError(f"cannot read task file {path}: {exc.strerror or exc}") from None
    return hashlib.sha256(data).hexdigest()[:16]


def read_jsonl_task(path: Path) -> list[str] | list[Prompted]:
    """The documents (``text`` records) or prompted items (``instruction``/``input``/``output``) of a
    JSONL task file; TaskError with the file and line for anything malformed."""
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"cannot read task file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise TaskError(f"{path}:{number}: each line must be a JSON object")
        records.append((number, rec))
    if len(records) < 2:
        raise TaskError(f"task file {path} has {len(records)} record(s); it needs at least 2 (train and eval)")
    if all(isinstance(r.get("text"), str) for _, r in records):
        return [r["text"] for _, r in records]
    items = []
    for number, rec in records:
        if not isinstance(rec.get("instruction"), str) or not isinstance(rec.get("output"), str):
            raise TaskError(f"{path}:{number}: needs 'text', or 'instruction' and 'output' strings")
        extra = rec.get("input") or ""
        prompt = f"### Instruction:\n{rec['instruction']}\n" + (f"### Input:\n{extra}\n" if extra else "")
        items.append(Prompted(prompt=prompt + "### Response:\n", answer=rec["output"]))
    return items


def _jsonl_task(path: Path, tokenizer: Any, seq_len: int, eval_examples: int, seed: int) -> TaskData:
    records = read_jsonl_task(path)
    if all(isinstance(r, str) for r in records):
        train_docs, eval_docs = _split_docs(records, seed)
        return _lm_task(train_docs, eval_docs, tokenizer, seq_len, eval_examples)
    train, evals = _split_docs(records, seed)
    ti, tl = _prompted_rows(train, tokenizer, seq_len)
    ei, el = _prompted_rows(evals[:eval_examples], tokenizer, seq_len)
    return TaskData(_tensor(ti), _tensor(tl), _tensor(ei), _tensor(el), (), "loss")


_INT = re.compile(r"-?\d+")


def first_integer(text: str) -> str | None:
    m = _INT.search(text)
    return m.group(0) if m else None
