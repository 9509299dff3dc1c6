"""Tasks (news, arith, extract, codebook, JSONL) and the quantized-layer cache."""

import json
import re

import pytest
import torch
from transformers import AutoTokenizer

from autoqra.domain import QuantFormat
from autoqra.trials.data import (_DAYS, _DELAYS, _SKUS, CODEBOOK_SIZE, IGNORE, TaskError, arith_split, build_task,
                                 codebook, codebook_split, encode_words, extract_split, news_articles, number_words)
from autoqra.trials.layer_cache import LayerCache


@pytest.fixture(scope="module")
def tok(cache_dir):
    from autoqra.trials.models import embedded_default_folder

    return AutoTokenizer.from_pretrained(str(embedded_default_folder()))


def test_news_split_by_article_is_seeded_and_disjoint(tok):
    articles = news_articles()
    assert len(articles) == 300
    a = build_task("news", tok, 64, 16, train_rows=0, data_seed=0)
    b = build_task("news", tok, 64, 16, train_rows=0, data_seed=0)
    c = build_task("news", tok, 64, 16, train_rows=0, data_seed=1)
    assert torch.equal(a.eval_ids, b.eval_ids) and not torch.equal(a.eval_ids, c.eval_ids)
    assert a.eval_ids.shape == (16, 64) and a.train_ids.shape[0] > 500 and a.metric == "loss"
    train_rows = {tuple(r) for r in a.train_ids.tolist()}
    assert not any(tuple(r) in train_rows for r in a.eval_ids.tolist())


def test_arith_is_disjoint_deterministic_and_masked(tok):
    train, evals = arith_split(seed=0, n_train=500, n_eval=50)
    assert not {p.prompt for p in train} & {p.prompt for p in evals}
    assert arith_split(0, 10, 50)[1] == evals  # eval set does not depend on the train size
    for p in evals:
        assert p.answer.strip().lstrip("-").isdigit()
    data = build_task("arith", tok, 64, 8, train_rows=32)
    assert data.metric == "accuracy" and len(data.generation) == 8
    row_ids, row_labels = data.train_ids[0].tolist(), data.train_labels[0].tolist()
    scored = [t for t, lab in zip(row_ids, row_labels, strict=True) if lab != IGNORE]
    text = tok.decode(scored)
    assert text.strip().split("<")[0].strip().lstrip("-").isdigit()  # only the answer (and EOS) is scored
    prompt_len = row_labels.index(next(lab for lab in row_labels if lab != IGNORE))
    assert "Question:" in tok.decode(row_ids[:prompt_len])


def test_extract_is_disjoint_deterministic_masked_and_fits_the_high_rows(tok):
    train, evals = extract_split(seed=0, n_train=400, n_eval=48)
    assert not {p.prompt for p in train} & {p.prompt for p in evals}
    assert extract_split(0, 10, 48)[1] == evals and extract_split(1, 10, 48)[1] != evals
    record = re.compile(r" name=(\w+); sku=([A-Z]{2}\d); count=(\d+); due=(\w+); city=(\w+)")
    spelled, moved, items = 0, 0, {}
    for p in train:
        m = record.fullmatch(p.answer)
        assert m is not None, p.answer
        name, sku, count, due, city = m.groups()
        assert name in p.prompt and city in p.prompt and sku not in p.prompt and 2 <= int(count) <= 99
        item = next(w for w in _SKUS if f" {w}" in p.prompt)
        assert items.setdefault(item, sku) == sku  # one fixed code per item, to be learned
        day = next(d for d in _DAYS if d in p.prompt)
        delay = next(i for i, text in enumerate(_DELAYS) if text in p.prompt)
        assert due == _DAYS[(_DAYS.index(day) + delay) % 7]
        moved += due != day
        spelled += count not in p.prompt  # the count is in words: the adapter must map it to digits
    assert 0.3 < spelled / len(train) < 0.7 and moved / len(train) > 0.6 and len(items) == len(_SKUS)
    assert [number_words(n) for n in (7, 20, 47, 99)] == ["seven", "twenty", "forty-seven", "ninety-nine"]
    data = build_task("extract", tok, 64, 48, train_rows=64)
    assert data.metric == "loss" and data.eval_ids.shape == (48, 64) and not data.generation
    for ids, labels in zip(data.eval_ids.tolist(), data.eval_labels.tolist(), strict=True):
        scored = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])
        assert scored.startswith(" name=") and "city=" in scored  # the whole record is scored, untruncated
        first = labels.index(next(lab for lab in labels if lab != IGNORE))
        assert tok.decode(ids[:first]).startswith("Sentence:")  # the prompt is not


def test_codebook_rewrites_held_out_windows_with_one_fixed_table(tok):
    table = codebook()
    assert len(table) == CODEBOOK_SIZE and len(set(table.values())) == CODEBOOK_SIZE and table == codebook()
    assert "the" in table and "said" in table and not set(table.values()) & set(table)  # codes are not corpus words
    assert encode_words('"The zebra said, the end.', table) == f'"{table["the"]} zebra {table["said"]}, {table["the"]} end.'
    train, evals = codebook_split(seed=0, n_train=400, n_eval=48)
    assert codebook_split(0, 10, 48)[1] == evals and codebook_split(1, 10, 48)[1] != evals
    assert len(train) == 400 and not {p.prompt for p in train} & {p.prompt for p in evals}
    articles = [" ".join(a.split()) for a in news_articles()]
    for item in evals:  # 8-word windows of the corpus, rewritten
        text = item.prompt.removeprefix("Encode: ").removesuffix("\nCode:")
        assert len(text.split()) == 8 and any(text in a for a in articles)
        assert item.answer == " " + encode_words(text, table)
    coded = sum(w in table.values() for p in train for w in re.findall(r"[a-z]+", p.answer))
    assert 0.3 < coded / sum(len(p.answer.split()) for p in train) < 0.7  # about half the words are codes
    data = build_task("codebook", tok, 64, 48, train_rows=64)
    assert data.metric == "loss" and data.eval_ids.shape == (48, 64) and data.train_ids.shape == (64, 64)
    for ids, labels, item in zip(data.eval_ids.tolist(), data.eval_labels.tolist(), evals, strict=True):
        first = labels.index(next(lab for lab in labels if lab != IGNORE))
        assert tok.decode(ids[:first]) == item.prompt  # the prompt is not scored, the whole answer is
        assert tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]) == item.answer + tok.eos_token
    with pytest.raises(TaskError, match="held-out windows"):
        codebook_split(0, 1, 10**6)


def test_jsonl_text_and_alpaca(tok, tmp_path):
    text = tmp_path / "docs.jsonl"
    text.write_text("\n".join(json.dumps({"text": f"Document {i}. " + "words " * 80}) for i in range(20)))
    data = build_task(str(text), tok, 32, 4, train_rows=0)
    assert data.metric == "loss" and data.eval_ids.shape == (4, 32)
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text("\n".join(json.dumps({"instruction": f"Repeat {i}", "input": "x" if i % 2 else "",
                                            "output": f"{i} {i}"}) for i in range(20)))
    data = build_task(str(alpaca), tok, 48, 4, train_rows=0)
    assert (data.train_labels == IGNORE).any() and (data.train_labels != IGNORE).any()


@pytest.mark.parametrize("content, needle", [
    ("not json\n{}", "not JSON"),
    ('{"text": "only one"}', "at least 2"),
    ('{"foo": 1}\n{"foo": 2}', "needs 'text'"),
    ("[1, 2]\n[3]", "JSON object"),
])
def test_bad_jsonl_is_task_error(tok, tmp_path, content, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TaskError, match=needle):
        build_task(str(path), tok, 32, 4, train_rows=0)
    with pytest.raises(TaskError, match="unknown task"):
        build_task("poetry", tok, 32, 4, train_rows=0)


@pytest.mark.parametrize("fmt", [QuantFormat(name="hqq", bits=3), QuantFormat(name="nf4", double_quant=True),
                                 QuantFormat(name="int8", bits=8)], ids=lambda f: f.label)
def test_layer_cache_round_trips_through_memory_and_disk(tmp_path, fmt):
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(256, 128, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(128, 256, generator=gen) * 0.05)
    x = torch.randn(3, 256, generator=gen).to(torch.bfloat16)
    cache = LayerCache(tmp_path, "fp")
    import copy

    first = cache.layer("m.l", copy.deepcopy(linear), fmt, "bf16", "cpu")
    again = cache.layer("m.l", copy.deepcopy(linear), fmt, "bf16", "cpu")
    assert (cache.misses, cache.hits) == (1, 1)
    fresh_process = LayerCache(tmp_path, "fp")  # a new process: only the disk entry is there
    from_disk = fresh_process.layer("m.l", copy.deepcopy(linear), fmt, "bf16", "cpu")
    assert fresh_process.hits == 1 and list(tmp_path.rglob("*.safetensors"))
    with torch.no_grad():
        ref = first(x)
        assert torch.equal(again(x), ref) and torch.equal(from_disk(x), ref)
    assert type(from_disk) is type(first)
    other = cache.layer("m.l", copy.deepcopy(linear), QuantFormat(name="hqq", bits=8), "bf16", "cpu")
    assert cache.misses == 2 and type(other).__name__ == "HQQLinear"


def test_task_fingerprint_follows_the_data(tmp_path):
    from autoqra.trials.data import task_fingerprint

    names = ("news", "arith", "extract", "codebook")
    prints = [task_fingerprint(t) for t in names]
    assert len(set(prints)) == 4 and prints == [task_fingerprint(t) for t in names]
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    before = task_fingerprint(str(data))
    data.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "three"}) + "\n")
    assert task_fingerprint(str(data)) != before  # an edited file is new data: cached priors are not reused
    with pytest.raises(TaskError, match="cannot read task file"):
        task_fingerprint(str(tmp_path / "missing.jsonl"))
