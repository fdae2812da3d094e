"""Token counting with offline tiktoken encodings, and the normalised usage type; format-free.

Used by the wire formats (`usage`, `streams`) to estimate prompts and count streamed text, by the
pipeline and settlement (`TokenCounts`), and by `server` to preload encodings at start-up.

Encodings are the BPE rank files shipped in `llmkeys_proxy/encodings/`, checked against tiktoken's
published SHA-256 hashes and parsed here, so nothing ever touches the network or a cache directory
(air-gapped clusters, read-only root file systems).
"""

from __future__ import annotations

import base64
import ctypes
import functools
import gc
import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import tiktoken.model

#: Folder of the shipped `<encoding>.tiktoken` rank files.
ENCODINGS_DIR = Path(__file__).parent / "encodings"

#: Fallback encoding for models tiktoken does not know (newer OpenAI families, Claude, Gemini, ...).
DEFAULT_ENCODING = "o200k_base"

_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"

_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


@dataclass(frozen=True, slots=True)
class EncodingSpec:
    """How to build one tiktoken encoding from a shipped rank file (mirrors tiktoken_ext.openai_public)."""

    name: str
    file: str
    sha256: str
    size: int
    pattern: str
    special_tokens: Mapping[str, int]


def _harmony_special_tokens() -> dict[str, int]:
    tokens = {
        _ENDOFTEXT: 199999,
        _ENDOFPROMPT: 200018,
        "<|startoftext|>": 199998,
        "<|reserved_200000|>": 200000,
        "<|reserved_200001|>": 200001,
        "<|return|>": 200002,
        "<|constrain|>": 200003,
        "<|reserved_200004|>": 200004,
        "<|channel|>": 200005,
        "<|start|>": 200006,
        "<|end|>": 200007,
        "<|message|>": 200008,
        "<|reserved_200009|>": 200009,
        "<|reserved_200010|>": 200010,
        "<|reserved_200011|>": 200011,
        "<|call|>": 200012,
    }
    tokens.update({f"<|reserved_{i}|>": i for i in range(200013, 201088)})
    return tokens


#: Shipped encodings; hashes and sizes are tiktoken's published ones (tiktoken_ext/openai_public.py).
ENCODINGS: Mapping[str, EncodingSpec] = {
    "cl100k_base": EncodingSpec(
        name="cl100k_base",
        file="cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        size=1_681_126,
        pattern=_CL100K_PATTERN,
        special_tokens={
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    "o200k_base": EncodingSpec(
        name="o200k_base",
        file="o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        size=3_613_922,
        pattern=_O200K_PATTERN,
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    # gpt-oss: the o200k ranks with the harmony chat-format specials.
    "o200k_harmony": EncodingSpec(
        name="o200k_harmony",
        file="o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        size=3_613_922,
        pattern=_O200K_PATTERN,
        special_tokens=_harmony_special_tokens(),
    ),
}


class EncodingIntegrityError(ValueError):
    """A shipped encoding file is missing, truncated or altered (its SHA-256 does not match)."""


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Usage of one request, normalised across providers.

    `input_tokens` is ALL input: for OpenAI/Gemini the reported prompt count (it includes cached
    tokens); for Anthropic/Bedrock input + cache reads + cache writes. `output_tokens` includes
    reasoning/thinking tokens; the detail fields are subsets of the totals, for pricing and audit.
    """

    input_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def plausible(self) -> bool:
        """No field negative (a provider's report read as `apis.base.INVALID_COUNT` makes it so)."""
        return (
            min(
                self.input_tokens,
                self.cached_input_tokens,
                self.cache_write_tokens,
                self.output_tokens,
                self.reasoning_tokens,
            )
            >= 0
        )


# --------------------------------------------------------------------------------------------------
# Encodings


def _parse_ranks(data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _read_verified(path: Path, sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EncodingIntegrityError(f"encoding file {path.name} cannot be read: {exc.strerror}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise EncodingIntegrityError(
            f"encoding file {path.name} has SHA-256 {actual}, expected {sha256}: refusing to use it"
        )
    return data


_LOAD_LOCK = threading.Lock()
_LOADED: dict[tuple[str, Path], tiktoken.Encoding] = {}


def load_encoding(name: str, directory: Path = ENCODINGS_DIR) -> tiktoken.Encoding:
    """The named encoding built from the shipped (hash-verified) rank file; cached per process.

    Raises KeyError for an encoding we do not ship and EncodingIntegrityError for a bad file.
    Loading takes a fraction of a second: call `preload_encodings` at start-up, not on a request.
    """
    key = (name, directory)
    encoding = _LOADED.get(key)
    if encoding is not None:
        return encoding
    spec = ENCODINGS[name]
    with _LOAD_LOCK:  # estimates may run in worker threads: build each encoding once
        encoding = _LOADED.get(key)
        if encoding is None:
            data = _read_verified(directory / spec.file, spec.sha256)
            encoding = tiktoken.Encoding(
                name=spec.name,
                pat_str=spec.pattern,
                mergeable_ranks=_parse_ranks(data),
                special_tokens=dict(spec.special_tokens),
            )
            # tiktoken keeps the Python dict of ranks beside its Rust copy, for pickling only
            # (~28 MB for o200k): counting never needs it, and every proxy worker would carry it.
            encoding._mergeable_ranks = {}
            del data
            _return_freed_memory()
            _LOADED[key] = encoding
    return encoding


def _return_freed_memory() -> None:
    """Give the parse's garbage (the rank file and its dict) back to the OS (glibc; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    gc.collect()
    trim(0)


def preload_encodings(names: tuple[str, ...] = ("o200k_base", "cl100k_base")) -> None:
    """Load (and verify) encodings ahead of traffic; raises EncodingIntegrityError on a bad file,
    so a broken image fails at start-up rather than on the first request."""
    for name in names:
        load_encoding(name)


#: Routing prefixes some clients put before OpenAI model names (tiktoken knows `ft:` itself).
_MODEL_PREFIXES = ("openai/", "azure/", "models/")


@functools.lru_cache(maxsize=4096)
def encoding_name_for_model(model: str) -> str:
    """tiktoken's model map (shipped encodings only); unknown models get `DEFAULT_ENCODING`."""
    name = model
    for prefix in _MODEL_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    try:
        encoding = str(tiktoken.model.encoding_name_for_model(name))
    except KeyError:
        return DEFAULT_ENCODING
    # r50k/p50k/gpt2 (retired models) are not shipped: cl100k is their closest successor.
    return encoding if encoding in ENCODINGS else "cl100k_base"


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding used to count `model`'s tokens (an estimate for non-OpenAI models)."""
    return load_encoding(encoding_name_for_model(model))


def count_tokens(model: str, text: str) -> int:
    """Number of tokens of `text`; special-token look-alikes in user text count as plain text."""
    if not text:
        return 0
    return len(encoding_for_model(model).encode_ordinary(text))
