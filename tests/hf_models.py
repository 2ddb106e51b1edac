"""Tiny Hugging Face translation teachers built offline: a Marian (OPUS-MT's architecture) and an
M2M-100 (multilingual), each with its own SentencePiece models trained on Bible verses.

Shared by the Hugging Face teacher tests and ``benchmarks/hf_teacher.py`` (which builds a random
6+6-layer, 512-wide Marian with the same code). Nothing here needs the network but the Bible
database, which the other tests download once into the LSKD cache.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

#: Short verses only: the tiny models learn them in seconds and outputs stay short
MAX_CHARS = 70


def bible_pairs(src_code: str = "e", tgt_code: str = "k", count: int = 600) -> list[tuple[str, str]]:
    """The first ``count`` training verse pairs (Bible codes, as data_prep.bible names them) of at most
    :data:`MAX_CHARS` characters a side, each source once (Numbers 7 repeats its verses twelve times)."""
    from data_prep.bible import extract_parallel, fetch_bible_db

    pairs = extract_parallel(fetch_bible_db(), src_code, tgt_code)["train"]
    short: dict[str, str] = {}
    for source, target in pairs:
        if len(source) <= MAX_CHARS and len(target) <= MAX_CHARS:
            short.setdefault(source, target)
    return list(short.items())[:count]


def train_sentencepiece(lines: Sequence[str], prefix: Path, vocab_size: int) -> Path:
    """A unigram model without its own ``<s>``/``</s>`` (the model's vocabulary adds ``</s>``); returns
    ``PREFIX.model``."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0,
                                   hard_vocab_limit=False, minloglevel=2)
    return prefix.with_suffix(".model")


def sentencepiece_pieces(model: Path) -> list[str]:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(model))
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def build_marian(out: Path, pairs: Sequence[tuple[str, str]], *, vocab_size: int = 200, d_model: int = 64,
                 layers: int = 2, heads: int = 2, ffn: int = 128, max_positions: int = 64, seed: int = 0):
    """A MarianMTModel with random weights and its tokenizer, in memory (save with :func:`save`).

    ``vocab.json``: ``</s>`` 0, ``<unk>`` 1, the pieces of both SentencePiece models, ``<pad>`` last
    (OPUS-MT's layout); ``<pad>`` starts the decoder from its embedding, a zero row as in OPUS-MT (which
    CTranslate2's converter assumes: ``start_from_zero_embedding``). Returns (model, tokenizer)."""
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    out.mkdir(parents=True, exist_ok=True)
    source = train_sentencepiece([s for s, _ in pairs], out / "source", vocab_size)
    target = train_sentencepiece([t for _, t in pairs], out / "target", vocab_size)
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in sentencepiece_pieces(source) + sentencepiece_pieces(target):
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(source_spm=str(source), target_spm=str(target), vocab=str(out / "vocab.json"))
    config = MarianConfig(vocab_size=len(vocab), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                          encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
                          decoder_ffn_dim=ffn, max_position_embeddings=max_positions, dropout=0.0,
                          scale_embedding=True, pad_token_id=vocab["<pad>"], eos_token_id=0,
                          decoder_start_token_id=vocab["<pad>"])
    torch.manual_seed(seed)
    model = MarianMTModel(config)
    model.generation_config.bad_words_ids = [[config.pad_token_id]]  # as OPUS-MT's generation config
    with torch.no_grad():
        model.get_input_embeddings().weight[config.pad_token_id].zero_()
    return model, tokenizer


def build_m2m100(out: Path, texts: dict[str, Sequence[str]], *, vocab_size: int = 300, d_model: int = 32,
                 max_positions: int = 64, seed: int = 0):
    """An M2M100ForConditionalGeneration with random weights over the languages of ``texts`` (``{code:
    lines}``): one SentencePiece model for all, ``vocab.json`` with fairseq's four specials first, the
    language tokens ``__CODE__`` after the pieces (as M2M100Tokenizer adds them). Returns (model, tokenizer)."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer

    out.mkdir(parents=True, exist_ok=True)
    model_file = train_sentencepiece([line for lines in texts.values() for line in lines], out / "spm", vocab_size)
    model_file = model_file.rename(out / "sentencepiece.bpe.model")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for piece in sentencepiece_pieces(model_file):
        vocab.setdefault(piece, len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = M2M100Tokenizer(vocab_file=str(out / "vocab.json"), spm_file=str(model_file),
                                language_codes="m2m100", src_lang=next(iter(texts)))
    # the language tokens and made-up words follow vocab.json's entries (tokenizer.get_vocab() omits them)
    vocab_size = max(tokenizer.lang_code_to_id.values()) + 1 + tokenizer.num_madeup_words
    config = M2M100Config(vocab_size=vocab_size, d_model=d_model, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
                          decoder_ffn_dim=2 * d_model, max_position_embeddings=max_positions, dropout=0.0,
                          pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    torch.manual_seed(seed)
    return M2M100ForConditionalGeneration(config), tokenizer


def train_briefly(model, tokenizer, pairs: Sequence[tuple[str, str]], steps: int, batch_size: int = 16,
                  lr: float = 5e-3) -> float:
    """``steps`` Adam updates on ``pairs`` (cycled), so that outputs are peaked rather than degenerate
    (random weights make both engines loop, each its own way); returns the last loss."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if model.config.decoder_start_token_id == model.config.pad_token_id:  # Marian: keep the start row zero
        # (the tied output layer would train it), as Marian-trained models and CTranslate2 have it
        pad = model.config.pad_token_id
        model.get_input_embeddings().weight.register_hook(lambda grad: grad.index_fill(0, torch.tensor([pad]), 0))
    model.train()
    loss = float("nan")
    for step in range(steps):
        start = step * batch_size % len(pairs)
        batch = (list(pairs) * 2)[start:start + batch_size]
        encoded = tokenizer([s for s, _ in batch], text_target=[t for _, t in batch], return_tensors="pt",
                            padding=True)
        encoded["labels"][encoded["labels"] == model.config.pad_token_id] = -100
        output = model(**encoded)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        loss = float(output.loss.detach())
    model.eval()
    return loss


def save(model, tokenizer, out: Path) -> Path:
    """``save_pretrained`` both into ``out`` (a Hugging Face model directory, as a hub download is)."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
