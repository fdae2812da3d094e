"""The shipped tiktoken encodings stay lean in memory once loaded (every proxy worker holds them)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import os
from llmkeys_proxy import tokens
def rss_mb():
    return int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = rss_mb()
tokens.preload_encodings(("o200k_base", "cl100k_base"))
assert tokens.count_tokens("gpt-4o", "Hello, world!") == 4
assert tokens.count_tokens("gpt-4", "Hello, world!") == 4
print(rss_mb() - before)
"""


def test_both_encodings_cost_well_under_what_tiktoken_keeps_by_default() -> None:
    # tiktoken's default keeps a Python copy of the ranks beside the Rust one: ~108 MB for both.
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    grown_mb = float(result.stdout.strip())
    assert grown_mb < 80, f"loading both encodings grew RSS by {grown_mb:.1f} MB"
