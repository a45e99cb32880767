"""Tiny random caption models, built in code and saved like real ones (no hub).

Each builder writes a folder with `save_pretrained` (or an ONNX file plus its tag list) that
the backends load through the same `from_pretrained` / `InferenceSession` path as a hub
model. `initializer_range` is raised above the default so the random weights react to the
image: with the default 0.02 every image gets the same caption, which would make the
batching tests say nothing.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

# Big enough that generation text differs per image, small enough to build in well under a second.
INIT_RANGE = 0.2
IMAGE_SIZE = 32
PATCH = 8

LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)
# Idefics3 ends each turn with <end_of_utterance>, as SmolVLM's own template does.
IDEFICS3_TEMPLATE = LLAVA_TEMPLATE.replace("{% endfor %} {% endfor %}", "{% endfor %}<end_of_utterance> {% endfor %}")
assert IDEFICS3_TEMPLATE != LLAVA_TEMPLATE


def bert_tokenizer(n_words: int = 94):
    """A WordPiece tokenizer over w0..wN with BERT's special tokens (ids 0-4)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(n_words)]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return BertTokenizer(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                         sep_token="[SEP]", mask_token="[MASK]")


def _vision(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                image_size=IMAGE_SIZE, patch_size=PATCH, initializer_range=INIT_RANGE, **extra)


def build_blip(out: Path, seed: int = 0) -> Path:
    """A 60k-parameter BlipForConditionalGeneration with a BlipProcessor."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    text = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                encoder_hidden_size=32, bos_token_id=2, eos_token_id=3, pad_token_id=0, sep_token_id=3,
                initializer_range=INIT_RANGE)
    cfg = BlipConfig(vision_config=_vision(), text_config=text, projection_dim=32, initializer_range=INIT_RANGE)
    torch.manual_seed(seed)
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    image_proc = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    BlipProcessor(image_proc, bert_tokenizer()).save_pretrained(out)
    return Path(out)


def build_blip2(out: Path, seed: int = 0) -> Path:
    """A tiny Blip2ForConditionalGeneration (ViT + Q-Former + OPT) with 4 query tokens."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    text = dict(model_type="opt", vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=128, bos_token_id=2,
                eos_token_id=3, pad_token_id=0, init_std=INIT_RANGE)
    qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   encoder_hidden_size=32, initializer_range=INIT_RANGE)
    vision = {k: v for k, v in _vision().items() if k != "initializer_range"}
    cfg = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=4,
                      image_token_index=127)
    torch.manual_seed(seed)
    Blip2ForConditionalGeneration(cfg).save_pretrained(out)
    image_proc = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    Blip2Processor(image_proc, llava_tokenizer(image_attribute=False), num_query_tokens=4).save_pretrained(out)
    return Path(out)


def build_git(out: Path, seed: int = 0) -> Path:
    """A tiny GitForCausalLM with a GitProcessor (CLIP image processor + BERT tokenizer)."""
    import torch
    from transformers import GitConfig, GitForCausalLM, GitProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    cfg = GitConfig(vision_config=_vision(), vocab_size=99, hidden_size=32, intermediate_size=64,
                    num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                    bos_token_id=2, eos_token_id=3, pad_token_id=0, initializer_range=INIT_RANGE)
    torch.manual_seed(seed)
    GitForCausalLM(cfg).save_pretrained(out)
    image_proc = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    GitProcessor(image_proc, bert_tokenizer()).save_pretrained(out)
    return Path(out)


def llava_tokenizer(specials: tuple[str, ...] = ("<pad>", "<unk>", "<s>", "</s>"), image_attribute: bool = True):
    """A whitespace WordLevel tokenizer of 128 ids: `specials` first, '<image>' is id 127.

    `image_attribute` sets `tokenizer.image_token` (LLaVA/Florence-2 processors read it; the
    BLIP-2 processor wants to register '<image>' itself).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(specials) + [f"w{i}" for i in range(127 - len(specials))] + ["<image>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(["<image>", *specials])
    extra = {"extra_special_tokens": {"image_token": "<image>"}} if image_attribute else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", **extra)


def build_llava(out: Path, seed: int = 0) -> Path:
    """A JoyCaption-shaped LlavaForConditionalGeneration (SigLIP vision, Llama text), 16 image tokens."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    vision = {**_vision(), "model_type": "siglip_vision_model"}
    vision.pop("initializer_range")
    text = dict(model_type="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                initializer_range=INIT_RANGE)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=127,
                      vision_feature_select_strategy="full", vision_feature_layer=-1,
                      image_seq_length=(IMAGE_SIZE // PATCH) ** 2)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    image_proc = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    LlavaProcessor(image_proc, llava_tokenizer(), patch_size=PATCH, vision_feature_select_strategy="full",
                   chat_template=LLAVA_TEMPLATE).save_pretrained(out)
    return Path(out)


def build_idefics3(out: Path, seed: int = 0) -> Path:
    """A tiny Idefics3ForConditionalGeneration (the SmolVLM architecture), 4 image tokens, no splitting."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = llava_tokenizer(specials=("<pad>", "<unk>", "<s>", "</s>", "<fake_token_around_image>",
                                          "<global-img>", "<end_of_utterance>"))
    text = dict(model_type="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                initializer_range=INIT_RANGE)
    vision = {k: v for k, v in _vision().items() if k != "initializer_range"}
    torch.manual_seed(seed)
    Idefics3ForConditionalGeneration(Idefics3Config(vision_config=vision, text_config=text, image_token_id=127,
                                                    scale_factor=2)).save_pretrained(out)
    image_proc = Idefics3ImageProcessorPil(size={"longest_edge": IMAGE_SIZE},
                                           max_image_size={"longest_edge": IMAGE_SIZE}, do_image_splitting=False)
    # (32 / 8)^2 patches, merged 2x2 by the pixel-shuffle connector -> 4 tokens per image.
    Idefics3Processor(image_proc, tokenizer, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE).save_pretrained(out)
    return Path(out)


def build_florence2(out: Path, seed: int = 0) -> Path:
    """A tiny native Florence2ForConditionalGeneration (DaViT vision, BART text), 17 image tokens."""
    import torch
    from transformers import Florence2Config, Florence2ForConditionalGeneration, Florence2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    # BART ids: <s> 0, <pad> 1, </s> 2; the tokenizer's first ids match.
    tokenizer = llava_tokenizer(specials=("<s>", "<pad>", "</s>", "<unk>"))
    text = dict(model_type="bart", vocab_size=128, d_model=32, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=128, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                decoder_start_token_id=2, forced_bos_token_id=0, init_std=INIT_RANGE)
    vision = dict(embed_dim=[16, 32], depths=[1, 1], num_heads=[2, 4], num_groups=[2, 4], patch_size=[7, 3],
                  patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True], projection_dim=32,
                  window_size=4)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(Florence2Config(text_config=text, vision_config=vision,
                                                              image_token_id=127))
    model.save_pretrained(out)
    image_proc = CLIPImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False)
    # 4x4 DaViT cells plus one pooled token; the processor must reserve exactly that many.
    image_proc.image_seq_length = (IMAGE_SIZE // 8) ** 2 + 1
    Florence2Processor(image_proc, tokenizer).save_pretrained(out)
    return Path(out)


def build_clip(out: Path, seed: int = 0, model_type: str = "clip") -> Path:
    """A tiny CLIPModel (or SiglipModel) with the shipped offline CLIP tokenizer and a PIL image processor.

    The SigLIP variant keeps the CLIP tokenizer and processor (a SentencePiece model cannot be
    built offline here); the backend still takes its SigLIP path (full-length padding).
    """
    import json

    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer, SiglipConfig, SiglipModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from lorastudio.models.tiny import tokenizer_files_dir

    vocab = json.loads((tokenizer_files_dir() / "vocab.json").read_text(encoding="utf-8"))
    eos = vocab["<|endoftext|>"]
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=eos, pad_token_id=eos)
    vision = {k: v for k, v in _vision().items() if k != "initializer_range"}
    torch.manual_seed(seed)
    if model_type == "siglip":
        cfg = SiglipConfig(text_config={**text, "projection_size": 32}, vision_config=vision)
        SiglipModel(cfg).save_pretrained(out)
    else:
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(out)
    image_proc = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_files_dir()))
    CLIPProcessor(image_proc, tokenizer).save_pretrained(out)
    return Path(out)


def build_tagger(out: Path, tags: list[tuple[str, int]], weights: np.ndarray, bias: np.ndarray,
                 size: int = IMAGE_SIZE, batch: int | str = "N") -> Path:
    """A WD14-shaped ONNX tagger: NHWC input -> channel mean -> MatMul + bias -> sigmoid.

    `weights` is [3, T] over the *model's* channel order (BGR) and pixel values 0-255, so a
    test can predict each score exactly; `tags` are (name, category) rows of selected_tags.csv.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_tags = len(tags)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input_1:0", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "B"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
        ],
        "tiny_wd_tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch, n_tags])],
        initializer=[
            numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.asarray(weights, dtype=np.float32).reshape(3, n_tags), "W"),
            numpy_helper.from_array(np.asarray(bias, dtype=np.float32).reshape(n_tags), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # what onnxruntime builds of the last two years all read
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    with (out / "selected_tags.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category) in enumerate(tags):
            writer.writerow([1000 + i, name, category, 10 * (n_tags - i)])
    return out


def sample_images(count: int = 4, seed: int = 0):
    """Varied RGB images of different sizes (noise, solid colours, a gradient)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        if i % 4 == 0:
            arr = rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)
        elif i % 4 == 1:
            arr = np.zeros((36, 52, 3), dtype=np.uint8) + np.array([200, 30, 30], dtype=np.uint8)
        elif i % 4 == 2:
            arr = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
        else:
            arr = rng.integers(0, 128, (30, 30, 3), dtype=np.uint8)
        images.append(Image.fromarray(arr))
    return images


def write_dataset(root: Path, images) -> Path:
    """A minimal dataset dir (manifest + images/) holding `images` as PNG files."""
    import hashlib

    from lorastudio.data.manifest import write_dataset_json, write_manifest

    ds = Path(root)
    (ds / "images").mkdir(parents=True)
    records = []
    for i, img in enumerate(images):
        rid = f"img{i:03d}"
        path = ds / "images" / f"{rid}.png"
        img.save(path)
        records.append({
            "id": rid, "file": f"images/{rid}.png", "source": f"raw/{rid}.png",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "orig_width": img.width, "orig_height": img.height, "width": img.width, "height": img.height,
            "crop": [0, 0, img.width, img.height], "repeats": 1, "flags": [],
        })
    write_manifest(ds, records)
    write_dataset_json(ds, {"resolution": 32, "counts": {"accepted": len(records)}})
    return ds
