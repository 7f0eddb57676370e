"""The umT5 caption encoder on a tiny randomly initialised umT5 and a tokenizer built here (nothing downloads)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from dreamactor_jax.data.umt5 import UMT5TextEncoder  # noqa: E402

WORDS = "a blue red quadruped humanoid with striped tail jumps walks waves on pale background".split()


@pytest.fixture(scope="module")
def umt5_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("umt5")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = transformers.UMT5Config(vocab_size=len(vocab), d_model=24, d_kv=8, d_ff=40, num_layers=2, num_heads=3,
                                  pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    transformers.UMT5EncoderModel(cfg).save_pretrained(d)
    return d


def test_umt5_encoder_matches_model_and_zeroes_padding(umt5_dir):
    enc = UMT5TextEncoder(str(umt5_dir), length=9)
    emb, mask = enc.encode_batch(["a blue quadruped jumps", "a red humanoid with striped tail waves on pale"])
    assert emb.shape == (2, 9, 24) and mask.shape == (2, 9) and emb.dtype == np.float32
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0]  # 4 words + </s>
    assert np.all(emb[0, 5:] == 0) and np.abs(emb[0, :5]).min() > 0
    # Same numbers as running the model directly on the real tokens.
    tok = enc.tokenizer(["a blue quadruped jumps"], return_tensors="pt")
    with torch.no_grad():
        ref = enc.model(**tok).last_hidden_state[0].numpy()
    np.testing.assert_allclose(emb[0, :5], ref, atol=1e-5)
    one, m = enc("a blue quadruped jumps")
    np.testing.assert_array_equal(one, emb[0])
    np.testing.assert_array_equal(m, mask[0])
    long_emb, long_mask = enc(" ".join(WORDS))  # truncated to the length
    assert long_mask.sum() == 9 and long_emb.shape == (9, 24)
