"""Small randomly initialised Hugging Face detectors saved like hub repositories (real weights are unreachable)."""
from __future__ import annotations

import inspect
import json
import string
from pathlib import Path

import pytest

GD_WORDS = ["red", "dog", "ball", "cat", "tree"]  # every phrase word is its own token in the tiny vocabulary


def _transformers():
    return pytest.importorskip("transformers")


def _bert_tokenizer(vocab_file: Path):
    from transformers import BertTokenizer

    params = inspect.signature(BertTokenizer.__init__).parameters
    return BertTokenizer(vocab=str(vocab_file)) if "vocab" in params else BertTokenizer(vocab_file=str(vocab_file))


def build_tiny_grounding_dino(folder: Path) -> Path:
    """A ~160k-parameter Grounding DINO with a 12-word BERT vocabulary, saved like a hub repository."""
    import torch
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoProcessor, SwinConfig
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *GD_WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 96, "longest_edge": 128}),
        tokenizer=_bert_tokenizer(folder / "vocab.txt"),
    )
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                   window_size=2, out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=30, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32,
    )
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_owlv2(folder: Path) -> Path:
    """A ~11k-parameter OWLv2 with a letters-only CLIP BPE vocabulary, saved like a hub repository."""
    import torch
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    letters = list(string.ascii_lowercase + ".")
    vocab = {token: i for i, token in enumerate(letters + [c + "</w>" for c in letters])}
    merges = ["d o", "do g</w>", "c a", "ca t</w>"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    end = vocab["<|endoftext|>"]
    config = Owlv2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=end - 1, eos_token_id=end,
                         pad_token_id=end),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    Owlv2ForObjectDetection(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
