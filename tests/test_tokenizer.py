"""The offline tokenizer against OpenAI's ids (golden file produced once by openai/CLIP's simple_tokenizer.py)."""
import json
import os

import numpy as np
import pytest

from ffclip_jax.errors import InputError
from ffclip_jax.text.tokenizer import CONTEXT_LENGTH, Tokenizer, default_tokenizer, tokenize

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "clip_tokenizer_ids.json")


def _golden():
    with open(GOLDEN, encoding="utf-8") as f:
        return json.load(f)


def test_ids_equal_openai_golden():
    rows = _golden()["prompts"]
    want = np.zeros((len(rows), CONTEXT_LENGTH), np.int32)
    for i, r in enumerate(rows):
        want[i, :len(r["ids"])] = r["ids"]
    with pytest.warns(UserWarning, match="truncated"):
        got = tokenize([r["prompt"] for r in rows])
    assert got.dtype == np.int32 and got.shape == want.shape
    bad = [rows[i]["prompt"][:40] for i in np.nonzero((got != want).any(axis=1))[0]]
    assert not bad, bad


def test_special_tokens_padding_and_vocabulary():
    tok = default_tokenizer()
    assert len(tok.tokens) == 49408 and (tok.sot, tok.eot) == (49406, 49407)
    ids = tokenize("Blue eyes")[0]
    n = int(np.argmax(ids)) + 1
    assert ids[0] == 49406 and ids[n - 1] == 49407 and not ids[n:].any()
    assert tok.decode(ids[1:n - 1]) == "blue eyes"


def test_overlong_prompt_is_truncated_with_end_token_last():
    with pytest.warns(UserWarning, match="prompt 0 .* more than the context length 77"):
        ids = tokenize("word " * 100)[0]
    assert ids[-1] == 49407 and (ids != 0).all()


@pytest.mark.parametrize("prompts", [[""], ["Bald", "   \t\n "], []])
def test_empty_prompt_is_one_line_error(prompts):
    with pytest.raises(InputError) as e:
        tokenize(prompts)
    assert "\n" not in str(e.value) and ("empty" in str(e.value) or "no prompts" in str(e.value))


def test_explicit_vocab_file_is_used(tmp_path):
    import gzip
    from ffclip_jax.text.tokenizer import VOCAB_FILE
    copy = tmp_path / "vocab.txt.gz"
    copy.write_bytes(open(VOCAB_FILE, "rb").read())
    assert gzip.open(copy).readline().startswith(b"\"bpe_simple_vocab_16e6.txt")
    np.testing.assert_array_equal(Tokenizer(str(copy))("Taylor Swift"), tokenize("Taylor Swift"))
